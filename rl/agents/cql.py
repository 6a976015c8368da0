"""Conservative Q-Learning, CQL(H) with importance sampling (Kumar et al. 2020), as CORL's `cql.py` for gym.

Critic, for each member `Q_k`:
    (Q_k(s, a_D) - y)^2 + cql_alpha * mean_s [ T logsumexp_j (Q_k(s, a_j) - log w_j) / T  - Q_k(s, a_D) ]
with `y = r + gamma (1 - d) min_k Qtarg_k(s', a'), a' ~ pi(s')` (no entropy backup) and, per state, the
`3 n_actions` importance-weighted actions: `n_actions` uniform on [-1, 1]^da (`w = 0.5^da`), `n_actions` from
`pi(.|s)` and `n_actions` from `pi(.|s')` (both with `w = pi(a|.)`, detached), all scored at `s`.
Actor: SAC's `mean(alpha log pi(a~|s) - min Q(s, a~))`; temperature tuned towards `-|A|`.
Defaults are CORL's gym config: cql_alpha 10, n_actions 10, temperature 1, policy lr 3e-5, Q lr 3e-4, alpha lr
3e-5 (= policy lr), tau 5e-3, batch 256, observations standardised, rewards scaled by 1000 / (return range), and
the CQL-JAX policy head (`log_std_mode: misa`). Networks 256-256 (d3rlpy's default; CORL and the paper use three
hidden layers: set `hidden_q`/`hidden_pi` to [256, 256, 256]); last layers variance-scaled 1e-2 (CORL: orthogonal
init, last layer xavier with gain 1e-2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rl.agents.base import AgentConfig, Batch, Losses, OfflineAgent, frozen
from rl.common import actor_loss, alpha_loss, critic_loss, td_target


@dataclass
class CQLConfig(AgentConfig):
    """CQL(H); defaults are CORL's gym-locomotion settings.

    Attributes:
        cql_alpha: weight of the conservative penalty `logsumexp_j Q(s, a_j) - Q(s, a_D)`.
        n_actions: sampled actions per state from each of the three sources (uniform, pi(.|s), pi(.|s')).
        temperature: the log-sum-exp's temperature T (`T logsumexp(Q / T)`).
    """

    log_std_mode: str = "misa"
    output_init_scale: float | None = 1e-2
    lr_pi: float = 3e-5
    lr_alpha: float = 3e-5
    normalize_observations: bool = True
    normalize_rewards: bool = True
    cql_alpha: float = 10.0
    n_actions: int = 10
    temperature: float = 1.0


class CQLAgent(OfflineAgent):
    config_cls = CQLConfig
    cfg: CQLConfig

    def losses(self, batch: Batch) -> Losses:
        cfg, g = self.cfg, self.generator
        obs, act, nobs = batch["observations"], batch["actions"], batch["next_observations"]
        b, da, n = obs.shape[0], self.act_dim, cfg.n_actions
        alpha = self.alpha
        dist = self.policy(obs)

        # Actor and temperature (SAC), from the same pre-update parameters as the critic.
        new_act, log_pi = self.policy.rsample_with_log_prob(dist, 1, g)
        with frozen(self.critic):
            q_new = self.critic.q_min(obs, new_act.squeeze(1))
        actor = actor_loss(log_pi.squeeze(1), q_new, alpha)

        # Critic: TD + conservative penalty over uniform, current-policy and next-policy actions.
        with torch.no_grad():
            next_dist = self.policy(nobs)
            next_act = next_dist.sample(1, g).squeeze(1)
            y = td_target(
                batch["rewards"], batch["dones"], self.critic_target.q_min(nobs, next_act), cfg.gamma
            )
            uniform = torch.rand(b, n, da, generator=g, device=obs.device) * 2.0 - 1.0
            cur_act, cur_log_pi = self.policy.rsample_with_log_prob(dist, n, g)
            nxt_act, nxt_log_pi = self.policy.rsample_with_log_prob(next_dist, n, g)
            log_w = torch.cat(
                [torch.full((b, n), da * math.log(0.5), device=obs.device), nxt_log_pi, cur_log_pi], dim=1
            )  # [B, 3n] log importance weights (log density of each proposal)
        q_data = self.critic(obs, act)  # [E, B]
        q_ood = self.critic(obs, torch.cat([uniform, nxt_act, cur_act], dim=1))  # [E, B, 3n], one pass
        td = critic_loss(q_data, y)
        t = cfg.temperature
        lse = t * torch.logsumexp((q_ood - log_w) / t, dim=2)  # [E, B]
        penalty = (lse - q_data).mean(1).sum()  # summed over members, as each member has its own loss

        objectives = {"critic": td + cfg.cql_alpha * penalty, "actor": actor}
        logs = {
            "critic_td": td.detach(),
            "critic_cql": penalty.detach(),
            "actor_loss": actor.detach(),
            "alpha": alpha,
            "entropy": -log_pi.detach().mean(),
        }
        if cfg.auto_alpha:
            objectives["alpha"] = alpha_loss(self.log_alpha, log_pi, self.target_entropy)
            logs["alpha_loss"] = objectives["alpha"].detach()
        return objectives, logs
