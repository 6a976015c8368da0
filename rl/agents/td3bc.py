"""TD3+BC (Fujimoto & Gu 2021), on the shared networks; the actor is the policy's deterministic `tanh(mu(s))`.

Critic: `sum_k (Q_k(s, a) - y)^2`, `y = r + gamma (1 - d) min_k Qtarg_k(s', clip(pi_targ(s') + clip(eps), -1, 1))`,
`eps ~ N(0, policy_noise^2)` clipped to `+-noise_clip`. Actor, every `policy_freq` updates, after the critic's step
(as in the paper): `-lambda mean Q_1(s, pi(s)) + mean (pi(s) - a_D)^2` with `lambda = alpha / mean|Q_1(s, pi(s))|`
(detached). Targets (critic and policy) move by Polyak averaging on actor steps.
Paper defaults (gym-locomotion): alpha 2.5, policy noise 0.2, noise clip 0.5, policy_freq 2, Adam lr 3e-4 for both,
tau 5e-3, batch 256, gamma 0.99, 256-256 ReLU, observations standardised (std + 1e-3), 1M steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from rl.agents.base import AgentConfig, Batch, Losses, OfflineAgent, frozen
from rl.common import critic_loss, soft_update_, td_target


@dataclass
class TD3BCConfig(AgentConfig):
    """TD3+BC; defaults are the paper's.

    Attributes:
        alpha_bc: the actor maximises `lambda Q - (pi(s) - a_D)^2` with `lambda = alpha_bc / mean |Q|`.
        policy_noise: std of the Gaussian noise on the target action (target policy smoothing).
        noise_clip: that noise is clipped to `[-noise_clip, noise_clip]`.
        policy_freq: the actor and the targets are updated every `policy_freq` critic updates.
    """

    normalize_observations: bool = True
    auto_alpha: bool = False  # no entropy temperature: the actor is deterministic
    alpha_bc: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2


class TD3BCAgent(OfflineAgent):
    config_cls = TD3BCConfig
    cfg: TD3BCConfig
    uses_alpha = False

    def build(self) -> None:
        self.policy_target = copy.deepcopy(self.policy).requires_grad_(False)
        self.modules["policy_target"] = self.policy_target

    def phases(self):
        # The paper steps the critic first; every policy_freq-th update the actor then uses the new critic.
        if (self.num_updates + 1) % self.cfg.policy_freq == 0:
            return (self.critic_losses, self.actor_losses)
        return (self.critic_losses,)

    def critic_losses(self, batch: Batch) -> Losses:
        cfg = self.cfg
        obs, act, nobs = batch["observations"], batch["actions"], batch["next_observations"]
        with torch.no_grad():
            next_mu = torch.tanh(self.policy_target(nobs).mean)
            noise = torch.randn(next_mu.shape, generator=self.generator, device=next_mu.device)
            noise = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_act = (next_mu + noise).clamp(-1.0, 1.0)
            y = td_target(
                batch["rewards"], batch["dones"], self.critic_target.q_min(nobs, next_act), cfg.gamma
            )
        loss = critic_loss(self.critic(obs, act), y)
        return {"critic": loss}, {"critic_td": loss.detach()}

    def actor_losses(self, batch: Batch) -> Losses:
        obs, act = batch["observations"], batch["actions"]
        pi = torch.tanh(self.policy(obs).mean)
        with frozen(self.critic):
            q = self.critic(obs, pi, members=[0])[0]  # Q_1 alone, as the paper
        lam = self.cfg.alpha_bc / q.abs().mean().detach()
        actor_q = -lam * q.mean()
        actor_bc = (pi - act).square().mean()
        return {"actor": actor_q + actor_bc}, {"actor_q": actor_q.detach(), "actor_bc": actor_bc.detach()}

    def after_update(self) -> None:
        if (
            self.num_updates % self.cfg.policy_freq == self.cfg.policy_freq - 1
        ):  # this update had an actor step
            soft_update_(self.critic_target, self.critic, self.cfg.tau)
            soft_update_(self.policy_target, self.policy, self.cfg.tau)
