"""Implicit Q-Learning (Kostrikov et al. 2022), as CORL's `iql.py` for gym, on the shared networks.

Value: expectile regression `mean |tau - 1(u < 0)| u^2`, `u = min_k Qtarg_k(s, a_D) - V(s)`, tau = 0.7.
Critic: `sum_k (Q_k(s, a_D) - (r + gamma (1 - d) V(s')))^2` (V(s') from the pre-update value net).
Actor (advantage-weighted regression): `-mean exp(beta (Qtarg - V)) log pi(a_D|s)`, weights clipped at 100,
beta (inverse temperature) = 3.0; the policy's learning rate follows a cosine decay over the run (as the paper).
Every loss uses the pre-update parameters (CORL computes V(s') and the advantage before stepping).
Defaults (CORL gym / IQL paper): Adam lr 3e-4 for V, Q and policy, tau 5e-3, batch 256, gamma 0.99, 256-256 ReLU,
observations standardised, rewards scaled by 1000 / (return range), no entropy temperature. The policy is the shared
tanh-Gaussian (CORL: a tanh-squashed deterministic or Gaussian actor); evaluation uses `tanh(mean)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rl.agents.base import AgentConfig, Batch, Losses, OfflineAgent
from rl.common import critic_loss, make_adam
from rl.networks import mlp

if TYPE_CHECKING:
    from rl.config import RunConfig


@dataclass
class IQLConfig(AgentConfig):
    """IQL; defaults are the paper's gym-locomotion settings.

    Attributes:
        lr_v: Adam learning rate of the value network V.
        expectile: tau of the expectile regression of V on the target Q (0.5: the mean; towards 1: the max).
        beta: inverse temperature of the advantage weights `exp(beta (Q - V))`.
        max_weight: the advantage weights are clipped at this value.
        cosine_lr: the policy's learning rate follows a cosine decay over the run's `steps`.
    """

    auto_alpha: bool = False
    normalize_observations: bool = True
    normalize_rewards: bool = True
    lr_v: float = 3e-4
    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0
    cosine_lr: bool = True

    def resume_refusal(self, saved: Mapping[str, Any], run: RunConfig) -> str | None:
        if self.cosine_lr and saved.get("steps") != run.steps:
            # the schedule was laid over the run's steps; a new horizon would restart it
            return (
                f"follows a cosine learning-rate schedule over steps={saved.get('steps')!r}; it cannot be "
                f"extended to steps={run.steps!r} (start a new run, or set cosine_lr: false when starting one)"
            )
        return None


class IQLAgent(OfflineAgent):
    config_cls = IQLConfig
    cfg: IQLConfig
    uses_alpha = False

    def build(self) -> None:
        cfg = self.cfg
        self.value = mlp([self.obs_dim, *cfg.hidden_q, 1], cfg.q_activation).to(self.device)
        self.modules["value"] = self.value
        self.optimizers["value"] = make_adam(self.value.parameters(), cfg.lr_v)
        self.optimizers["actor"] = make_adam(self.policy.parameters(), cfg.lr_pi)
        if cfg.cosine_lr and self.total_steps is None:
            raise ValueError(
                "IQL's cosine schedule runs over the run's updates: pass total_steps (or cosine_lr=False)"
            )
        # kept (and saved) without cosine_lr too, never stepped then
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizers["actor"], self.total_steps or 1
        )

    def losses(self, batch: Batch) -> Losses:
        cfg = self.cfg
        obs, act, nobs = batch["observations"], batch["actions"], batch["next_observations"]
        with torch.no_grad():
            q_targ = self.critic_target.q_min(obs, act)  # [B]
            next_v = self.value(nobs).squeeze(-1)
            y = batch["rewards"] + cfg.gamma * (1.0 - batch["dones"]) * next_v
        v = self.value(obs).squeeze(-1)
        u = q_targ - v
        value_loss = ((cfg.expectile - (u.detach() < 0).float()).abs() * u.square()).mean()
        q_loss = critic_loss(self.critic(obs, act), y)
        weight = torch.exp(cfg.beta * u.detach()).clamp(max=cfg.max_weight)
        actor = -(weight * self.policy.log_prob(obs, act)).mean()
        objectives = {"value": value_loss, "critic": q_loss, "actor": actor}
        logs = {"value_loss": value_loss.detach(), "critic_td": q_loss.detach(), "actor_awr": actor.detach()}
        return objectives, logs

    def after_update(self) -> None:
        super().after_update()
        if self.cfg.cosine_lr:
            self.actor_schedule.step()

    def state_dict(self):
        sd = super().state_dict()
        sd["actor_schedule"] = self.actor_schedule.state_dict()
        return sd

    def load_state_dict(self, sd) -> None:
        super().load_state_dict(sd)
        self.actor_schedule.load_state_dict(sd["actor_schedule"])
