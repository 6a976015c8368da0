"""MI-regularised offline actor-critic: any registry estimator as the regulariser, with `T = Q` and the policy as
proposal. MISA (Ma et al. 2022, arXiv 2210.07484) is `estimator: misa`; the defaults are the official code's
(sail-sg/MISA, `algos/misa.py`; docs/rl.md lists where this port deviates).

Critic, for each ensemble member `Q_k` (twin Q):
    (Q_k(s, a_D) - y)^2 + critic_weight * critic_term_k,      y = r + gamma (1 - d) min_k Qtarg_k(s', a'), a' ~ pi(s')
with no entropy backup, and `critic_term_k = estimator.loss(Scores(positive=Q_k(s, a_D) [B],
negative=Q_k(s, a_j) [B, N]))` over N = 50 fresh policy actions `a_j ~ pi(.|s)` (detached). For `misa` this is
`mean_s [logmeanexp_j Q_k(s, a_j) - Q_k(s, a_D)]`, the official regulariser up to a constant (the official code
subtracts log B instead of log N; no gradient effect).

Actor:
    mean[-min Q(s, a~)] + bc_weight * mean[alpha log pi(a~|s) - log pi(a_D|s)] + ub_weight * policy_term
with `a~` reparameterised. The policy term is the estimator's partition term as a function of the policy:
* `misa` (log_z="mcmc"): gradient `E_s E_{a ~ pi e^{minQ}/Z} grad log pi(a|s)`, from 50 HMC samples per state
  (2 leapfrog steps, step 1, simple adaptation over 4 of 5 burn-in steps, start at the dataset action), detached;
* `misa-biased`: the log-mean-exp of `min Q` over reparameterised policy actions, backpropagated into the policy;
* `misa-dv`, `misa-f` (log_z="mc" by default): their global / NWJ partition terms with the self-normalised
  score-function gradient over the critic's N policy actions (log_z="mcmc" uses the HMC samples instead);
* score-only estimators (dv, mine, nwj, infonce, js, tuba, smile, interpolated): no policy term;
* `ba` (T = 0, the MISA paper's Barber-Agakov ablation): neither a critic term nor a policy term (its policy
  gradient `E log pi(a_D|s)` is already the BC term);
* `club` is an upper bound and cannot serve (a clear error names it).
Temperature: `-mean(log_alpha (log pi(a~|s) + target_entropy))`, target `-|A|`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import mi_estimators as mie
import mi_estimators.misa as mie_misa  # registers the MISA family
from mi_estimators.partition import MCMCLogZ, MonteCarloLogZ
from mi_estimators.proposals import DiagGaussian, tanh_log_abs_det_jacobian
from mi_estimators.samplers import Sampler
from rl.agents.base import AgentConfig, Batch, Losses, OfflineAgent, frozen
from rl.agents.tilted import TiltedDensity
from rl.sac import alpha_loss, critic_loss, td_target

# The critic term of the MISA family always uses the Monte Carlo (SNIS) gradient of log Z, as the official code:
# its regulariser is logsumexp over policy actions. (The MCMC samples only train the policy.)
_MC_BOUNDS = {
    mie_misa.MISA: mie_misa.misa_bound,
    mie_misa.MISABiased: mie_misa.misa_bound,
    mie_misa.MISADV: mie_misa.misa_dv_bound,
    mie_misa.MISAF: mie_misa.misa_f_bound,
}


@dataclass
class MIConfig(AgentConfig):
    """MI actor-critic; defaults = official MISA on gym-locomotion.

    Attributes:
        estimator: any name from `mi_estimators.available()` except upper bounds (`club`).
        estimator_options: passed to `mi_estimators.make` (MISA family: sampler, n_samples, burn_in, step_size,
            n_leapfrog, adapt, target_accept, chains, log_z, precondition, ...).
        n_negatives: policy actions per state for the critic term (official: 50).
        critic_weight: weight of the critic term (official `min_q_weight`: 5.0).
        bc_weight: weight of `alpha log pi(a~|s) - log pi(a_D|s)` (official: 0.5).
        ub_weight: weight of the estimator's policy term (official: 0.1).
        mcmc_space: "action" runs the chain on the action (official; proposals outside (-1, 1) are rejected),
            "unconstrained" on `atanh(a)` via the estimator's `MCMCLogZ.sample` (whitened when the
            estimator's `precondition` is on).
        compile: `torch.compile` the chain's critic gradient.
    """

    algo: str = "mi"
    seed: int = 42
    q_activation: str = "elu"
    output_init_scale: float | None = 1e-2
    log_std_mode: str = "misa"
    lr_pi: float = 1e-4
    lr_alpha: float = 1e-4
    estimator: str = "misa"
    estimator_options: dict[str, Any] = field(default_factory=dict)
    n_negatives: int = 50
    critic_weight: float = 5.0
    bc_weight: float = 0.5
    ub_weight: float = 0.1
    mcmc_space: str = "action"
    compile: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mcmc_space not in ("action", "unconstrained"):
            raise ValueError(f"mcmc_space must be 'action' or 'unconstrained'; got {self.mcmc_space!r}")
        if self.n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1; got {self.n_negatives}")


class MIAgent(OfflineAgent):
    config_cls = MIConfig
    cfg: MIConfig

    def build(self) -> None:
        cfg = self.cfg
        if cfg.estimator not in mie.available():
            raise ValueError(f"unknown estimator {cfg.estimator!r}; available: {', '.join(mie.available())}")
        est = mie.make(cfg.estimator, **cfg.estimator_options).to(self.device)
        if not est.lower_bound:
            raise ValueError(
                f"estimator {cfg.estimator!r} is an upper bound on MI; the MI actor-critic maximises a lower bound "
                "(choose e.g. misa, nwj, infonce, dv)"
            )
        partition = getattr(est, "partition", None)
        if est.needs_proposal and partition is None and cfg.estimator != "ba":
            raise ValueError(
                f"estimator {cfg.estimator!r} needs a proposal but has no partition function (`partition`) that "
                "the RL layer can drive with the policy"
            )
        self.estimator, self.partition = est, partition
        self.modules["estimator"] = est

    def critic_parameters(self) -> list[torch.nn.Parameter]:
        # An estimator's own parameters (a learned TUBA/interpolated baseline) belong to the critic's bound.
        return list(self.critic.parameters()) + list(self.estimator.parameters())

    def describe(self, key: str) -> str:
        names = {"critic_mi": "critic term", "actor_mi": "policy term"}
        if key in names:
            return f"{names[key]} {self.cfg.estimator!r}"
        return super().describe(key)

    # -- losses ---------------------------------------------------------------------------------------------------
    def losses(self, batch: Batch) -> Losses:
        cfg, g, est = self.cfg, self.generator, self.estimator
        obs, act, rew = batch["observations"], batch["actions"], batch["rewards"]
        nobs, done = batch["next_observations"], batch["dones"]
        alpha = self.alpha
        dist = self.policy(obs)  # mean and log-std at the states, once; reused by every term below

        # Critic: TD (no entropy backup) + critic_weight x the estimator's critic term per ensemble member.
        with torch.no_grad():
            next_act = self.policy(nobs).sample(1, g).squeeze(1)
            y = td_target(rew, done, self.critic_target.q_min(nobs, next_act), cfg.gamma)
        q_data = self.critic(obs, act)  # [E, B]
        td = critic_loss(q_data, y)
        log_pi_data = dist.log_prob(act)  # [B]
        no_scores = cfg.estimator == "ba"  # BA has T = 0: no critic scores at all
        if no_scores:
            critic_mi = torch.zeros((), device=obs.device)
        else:
            neg_act = dist.sample(cfg.n_negatives, g)  # [B, N, da], detached
            q_neg = self.critic(obs, neg_act)  # [E, B, N]
            critic_mi = sum(self._critic_term(q_data[k], q_neg[k]) for k in range(q_data.shape[0]))

        # Actor: -Q + BC/entropy + ub_weight x the estimator's policy term.
        new_act, log_pi_new = self.policy.rsample_with_log_prob(dist, 1, g)
        with frozen(self.critic):
            q_new = self.critic.q_min(obs, new_act.squeeze(1))
        actor_q = -q_new.mean()
        actor_bc = cfg.bc_weight * (alpha * log_pi_new.mean() - log_pi_data.mean())
        if no_scores or not est.needs_proposal:
            actor_mi, extra = torch.zeros((), device=obs.device), {}
        else:
            actor_mi, extra = self._policy_term(
                dist,
                obs,
                act,
                q_data.detach().min(0).values,
                q_neg.detach().min(0).values,
                neg_act,
                log_pi_data,
            )
        actor = actor_q + actor_bc + cfg.ub_weight * actor_mi

        objectives = {"critic": td + cfg.critic_weight * critic_mi, "actor": actor}
        logs = {
            "critic_td": td.detach(),
            "critic_mi": critic_mi.detach(),
            "actor_q": actor_q.detach(),
            "actor_bc": actor_bc.detach(),
            "actor_mi": actor_mi.detach(),
            "alpha": alpha,
            "entropy": -log_pi_new.detach().mean(),
            **extra,
        }
        if cfg.auto_alpha:
            objectives["alpha"] = alpha_loss(self.log_alpha, log_pi_new, self.target_entropy)
            logs["alpha_loss"] = objectives["alpha"].detach()
        return objectives, logs

    def _critic_term(self, positive: Tensor, negative: Tensor) -> Tensor:
        """The estimator's critic loss for one Q member: scores `positive [B]`, `negative [B, N]` (policy actions).

        Proposal-based bounds get `log q(a_D|s) = 0` and `H(A) = 0`: both are constants for the critic, and leaving
        them out makes the logged value the official regulariser `mean_s [logmeanexp_j Q(s, a_j) - Q(s, a_D)]`."""
        zeros = torch.zeros_like(positive)
        s = mie.Scores(positive, negative, log_proposal=zeros, marginal_entropy=0.0, validate=False)
        bound = _MC_BOUNDS.get(type(self.estimator))
        return -bound(s, log_z="mc") if bound is not None else self.estimator.loss(s)

    def _policy_term(
        self,
        dist: Any,
        obs: Tensor,
        act: Tensor,
        q_data: Tensor,
        q_neg: Tensor,
        neg_act: Tensor,
        log_pi_data: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The estimator's loss on policy-side scores: Q is frozen and `log pi(a_D|s)` left out (it is the BC term,
        weighted separately), so its gradient wrt the policy is that of the partition term alone; its value is
        `partition - mean min Q(s, a_D)`. Returns `(loss, logs)`."""
        part, extra = self.partition, {}
        tilted = None
        if isinstance(part, MCMCLogZ):
            u = self._chain(dist, obs, act, part, extra)  # [B, S, da] unconstrained, detached
            # log pi on the tilted samples, from u (no atanh near +-1); T = Q is constant in theta and left out:
            # the surrogate enters with zero value, so only its gradient E_tilted[grad log pi] matters.
            tilted = DiagGaussian.log_prob_unconstrained(dist, u) - tanh_log_abs_det_jacobian(u)
            negative = q_neg
        elif isinstance(part, MonteCarloLogZ) and part.grad == "reparam":
            with frozen(self.critic):  # pathwise gradient through the actions into the policy only
                negative = self.critic.q_min(obs, dist.rsample(self.cfg.n_negatives, self.generator))
        else:  # SNIS: zero in value, sum_j w_j grad log pi(a_j|s) in gradient, on the critic's policy actions
            log_q = dist.log_prob(neg_act)
            negative = q_neg + (log_q - log_q.detach())
        s = mie.Scores(
            q_data,
            negative,
            log_proposal=torch.zeros_like(q_data),
            marginal_entropy=0.0,
            tilted=tilted,
            validate=False,
        )
        return self.estimator.loss(s), extra

    def _chain(self, dist: Any, obs: Tensor, act: Tensor, part: MCMCLogZ, logs: dict[str, Tensor]) -> Tensor:
        """Samples of `pi(a|s) e^{min Q(s,a)}`, one (or `chains`) chain per state started at the dataset action;
        returns the unconstrained samples `[B, C*S, da]`, detached."""
        sampler = part.sampler
        init = act if part.chains == 1 else act.unsqueeze(1).expand(-1, part.chains, -1)
        density = TiltedDensity(dist, self.critic, obs, compile=self.cfg.compile)
        ours = isinstance(sampler, Sampler)
        # Our samplers get explicit gradients (no graph needed); pyro's differentiate the density themselves.
        with torch.no_grad() if ours else torch.enable_grad():
            if self.cfg.mcmc_space == "action" and ours:
                res = sampler.sample(
                    None,
                    init,
                    part.n_samples,
                    self.generator,
                    burn_in=part.burn_in,
                    thin=part.thin,
                    value_and_grad=density.value_and_grad,
                )
                u = dist.to_unconstrained(res.samples)  # accepted states are strictly inside the box
            else:  # unconstrained space (also the only one pyro's samplers run in)
                critic = self.critic

                def q_fn(y: Tensor) -> Tensor:
                    return critic.q_min(obs, y)

                res = part.sample(
                    dist,
                    q_fn,
                    self.generator,
                    init=act,
                    critic_value_and_grad=density.q_value_and_grad if ours else None,
                )
                u = res.unconstrained
        logs["mcmc_accept"] = res.accept_rate.mean()
        logs["mcmc_step_size"] = res.step_size.mean()
        return u.detach()
