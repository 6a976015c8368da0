"""Behaviour cloning (the BC baseline of TD3+BC / CORL's `any_percent_bc` with 100% of the data).

Loss: `mean ||tanh(mu(s)) - a_D||^2` on the policy's deterministic action (`bc_loss: mse`, CORL's), or the
negative log-likelihood `-mean log pi(a_D|s)` of the tanh-Gaussian (`bc_loss: nll`). Defaults (CORL gym): Adam
lr 3e-4, batch 256, 256-256 ReLU, observations standardised with the dataset statistics, 1M steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.agents.base import AgentConfig, Batch, Losses, OfflineAgent


@dataclass
class BCConfig(AgentConfig):
    """Behaviour cloning.

    Attributes:
        bc_loss: "mse" (squared error of `tanh(mu(s))` to the dataset action) or "nll" (its negative log-likelihood
            under the tanh-Gaussian policy).
    """

    normalize_observations: bool = True
    bc_loss: str = "mse"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bc_loss not in ("mse", "nll"):
            raise ValueError(f"bc_loss must be 'mse' or 'nll'; got {self.bc_loss!r}")


class BCAgent(OfflineAgent):
    config_cls = BCConfig
    cfg: BCConfig
    uses_critic = False
    uses_alpha = False

    def losses(self, batch: Batch) -> Losses:
        obs, act = batch["observations"], batch["actions"]
        dist = self.policy(obs)
        if self.cfg.bc_loss == "mse":
            loss = (torch.tanh(dist.mean) - act).square().sum(-1).mean()
        else:
            loss = -dist.log_prob(act).mean()
        return {"actor": loss}, {"actor_bc": loss.detach()}
