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
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

import mi_estimators as mie
import mi_estimators.misa  # noqa: F401  (registers the MISA family)
from mi_estimators.samplers import SampleResult
from rl import _fast
from rl.agents.base import AgentConfig, Batch, Losses, OfflineAgent, frozen
from rl.common import alpha_loss, critic_loss, td_target


@dataclass
class MIConfig(AgentConfig):
    """MI actor-critic; defaults = official MISA on gym-locomotion.

    Attributes:
        estimator: any name from `mi_estimators.available()` except upper bounds (`club`), including those
            registered by the `imports` modules and by installed plugins (entry points `mi_estimators.plugins`).
        estimator_options: passed to `mi_estimators.make` (MISA family: sampler, n_samples, burn_in, step_size,
            n_leapfrog, adapt, target_accept, chains, log_z, precondition, per_chain, space, ...). With
            `log_z: mcmc` the chain defaults are the official code's unless given here: `space: constrained` (HMC on
            the action itself, proposals outside (-1, 1) rejected; samplers that differentiate the density
            themselves, pyro's, run unconstrained) and `per_chain: false` (one step size for all chains, adapted from
            their mean acceptance probability, as TFP's `SimpleStepSizeAdaptation` with a scalar step size).
        n_negatives: policy actions per state for the critic term (official: 50).
        critic_weight: weight of the critic term (official `min_q_weight`: 5.0).
        bc_weight: weight of `alpha log pi(a~|s) - log pi(a_D|s)` (official: 0.5).
        ub_weight: weight of the estimator's policy term (official: 0.1).
    """

    #: keys of earlier configs that moved: key -> (the value that meant the default, where the setting lives now)
    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {
        "mcmc_per_chain": (False, "estimator_options.per_chain"),
        "mcmc_space": ("action", "estimator_options.space ('constrained' or 'unconstrained')"),
        "compile": (
            False,
            "nothing (the compiled chain gradient was slower on the CPU; `fast` picks the paths)",
        ),
        "chain_parts": (1, "nothing (the chain runs as one group)"),
        "overlap_chain": (True, "fast"),
    }

    RUN_DEFAULTS: ClassVar[dict[str, Any]] = {"seed": 42}  # the official code's

    q_activation: str = "elu"
    output_init_scale: float | None = 1e-2
    hidden_init: str = "lecun"
    log_std_mode: str = "misa"
    lr_pi: float = 1e-4
    lr_alpha: float = 1e-4
    estimator: str = "misa"
    estimator_options: dict[str, Any] = field(default_factory=dict)
    n_negatives: int = 50
    critic_weight: float = 5.0
    bc_weight: float = 0.5
    ub_weight: float = 0.1

    def run_tag(self) -> str:
        return f"{self.estimator}-"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1; got {self.n_negatives}")


class MIAgent(OfflineAgent):
    config_cls = MIConfig
    cfg: MIConfig

    def build(self) -> None:
        cfg = self.cfg
        if cfg.estimator not in mie.available():
            # An installed plugin package may register it (its `imports:` modules ran at the Trainer's start).
            # Loaded here only when a name is missing: runs on built-in estimators never import third-party code.
            from rl.plugins import load_plugins

            load_plugins()
        if cfg.estimator not in mie.available():
            raise ValueError(
                f"unknown estimator {cfg.estimator!r}; available: {', '.join(mie.available())} (one of your own: "
                "name the module that registers it in `imports:` or with --import)"
            )
        est = self._make_estimator(cfg.estimator, dict(cfg.estimator_options))
        if not est.lower_bound:
            raise ValueError(
                f"estimator {cfg.estimator!r} is an upper bound on MI; the MI actor-critic maximises a lower bound "
                "(choose e.g. misa, nwj, infonce, dv)"
            )
        if est.needs_critic and est.needs_proposal and not callable(getattr(est, "policy_scores", None)):
            raise ValueError(
                f"estimator {cfg.estimator!r} needs a proposal but has no `policy_scores(...)` (the MISA family's "
                "contract) through which the RL layer can drive it with the policy"
            )
        self.estimator = est
        self.partition = getattr(est, "partition", None)
        self.modules["estimator"] = est
        # The chain's own stream, so that it can run beside the critic's draws and give the same numbers.
        self.chain_generator = torch.Generator(self.device).manual_seed(self.seed + 1)

    def _make_estimator(self, name: str, opts: dict[str, Any]) -> mie.Estimator:
        """`mie.make(name, **opts)`, with the official MISA chain where `opts` leave it open (see `MIConfig`)."""
        est = mie.make(name, **opts)
        part = getattr(est, "partition", None)
        if getattr(part, "runs_chain", False) and not hasattr(opts.get("log_z"), "sample"):
            official: dict[str, Any] = {}
            if "space" not in opts and "precondition" not in opts and part.sampler.takes_value_and_grad:
                official["space"] = "constrained"
            if (
                "per_chain" not in opts
                and not hasattr(opts.get("sampler"), "sample")
                and part.sampler.per_chain
            ):
                official["per_chain"] = False
            if official:
                est = mie.make(name, **{**official, **opts})
        return est.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["chain_generator"] = self.chain_generator.get_state()
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        super().load_state_dict(sd)
        self.chain_generator.set_state(sd["chain_generator"])

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
        policy_side = est.needs_critic and est.needs_proposal
        chain = None
        if policy_side and self.partition.runs_chain:
            # The chain reads the pre-update critic and policy only, so it can run while the critic learns.
            overlap = self.fast and self.device.type == "cpu" and self.partition.thread_safe
            chain = _fast.beside(partial(self._chain, dist, obs, act), overlap)
        try:
            # Critic: TD (no entropy backup) + critic_weight x the estimator's critic term per ensemble member.
            with torch.no_grad():
                next_act = self.policy(nobs).sample(1, g).squeeze(1)
                y = td_target(rew, done, self.critic_target.q_min(nobs, next_act), cfg.gamma)
            q_data = self.critic(obs, act)  # [E, B]
            td = critic_loss(q_data, y)
            if est.needs_critic:
                neg_act = dist.sample(cfg.n_negatives, g)  # [B, N, da], detached
                q_neg = self.critic(obs, neg_act)  # [E, B, N]
                critic_mi = sum(self._critic_term(q_data[k], q_neg[k]) for k in range(q_data.shape[0]))
            else:  # T = 0 (Barber-Agakov): no critic scores at all
                critic_mi = torch.zeros((), device=obs.device)
            critic_objective: Tensor | None = td + cfg.critic_weight * critic_mi
            if chain is not None and chain.concurrent:
                # The critic's loss reaches only the critic (and the estimator's parameters): its backward pass
                # can run now, beside the chain; the update then steps it without a second backward.
                critic_objective.backward()
                critic_objective = None

            # Actor: -Q + BC/entropy + ub_weight x the estimator's policy term.
            log_pi_data = dist.log_prob(act)  # [B]
            new_act, log_pi_new = self.policy.rsample_with_log_prob(dist, 1, g)
            with frozen(self.critic):
                q_new = self.critic.q_min(obs, new_act.squeeze(1))
            actor_q = -q_new.mean()
            actor_bc = cfg.bc_weight * (alpha * log_pi_new.mean() - log_pi_data.mean())
            if policy_side:
                samples = chain.result() if chain is not None else None
                actor_mi = self._policy_term(dist, obs, q_data, q_neg, neg_act, samples)
                extra = {} if samples is None else _chain_logs(samples)
            else:
                actor_mi, extra = torch.zeros((), device=obs.device), {}
        finally:
            if chain is not None:
                chain.close()
        actor = actor_q + actor_bc + cfg.ub_weight * actor_mi

        objectives = {"critic": critic_objective, "actor": actor}
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
        return self.estimator.critic_loss(s)

    def _policy_term(
        self,
        dist: Any,
        obs: Tensor,
        q_data: Tensor,
        q_neg: Tensor,
        neg_act: Tensor,
        samples: SampleResult | None,
    ) -> Tensor:
        """The estimator's loss on policy-side scores (`policy_scores`): Q frozen, `log pi(a_D|s)` left out (it is
        the BC term, weighted separately), so its gradient wrt the policy is that of the partition term alone; its
        value is `partition - mean min Q(s, a_D)`. `samples`: the chain's, when the partition function runs one."""
        critic = self.critic

        def q_min(a: Tensor) -> Tensor:
            return critic.q_min(obs, a)

        with frozen(
            critic
        ):  # a pathwise gradient (misa-biased) goes through the actions into the policy only
            s = self.estimator.policy_scores(
                dist,
                q_min,
                q_data.detach().min(0).values,
                neg_act,
                q_neg.detach().min(0).values,
                generator=self.generator,
                samples=samples,
            )
            return self.estimator.loss(s)

    def _chain(self, dist: Any, obs: Tensor, act: Tensor) -> SampleResult:
        """Samples of `pi(a|s) e^{min Q(s,a)} / Z(s)`, one (or `chains`) chain per state started at the dataset
        action, through the critic's input gradient: `samples [B, C*S, da]`, detached."""
        critic = self.critic

        def q_min(a: Tensor) -> Tensor:
            return critic.q_min(obs, a)

        return self.partition.sample(
            dist, q_min, self.chain_generator, init=act, critic_value_and_grad=critic.input_gradient(obs)
        )


def _chain_logs(samples: SampleResult) -> dict[str, Tensor]:
    return {"mcmc_accept": samples.accept_rate.mean(), "mcmc_step_size": samples.step_size.mean()}
