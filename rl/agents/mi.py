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

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

import mi_estimators as mie
import mi_estimators.misa as mie_misa  # registers the MISA family
from mi_estimators.partition import MCMCLogZ, MonteCarloLogZ
from mi_estimators.samplers import Sampler
from rl.agents.base import AgentConfig, Batch, Losses, OfflineAgent, frozen
from rl.agents.tilted import MemberHelper, TiltedDensity
from rl.common import alpha_loss, critic_loss, td_target

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
        estimator: any name from `mi_estimators.available()` except upper bounds (`club`), including those
            registered by the `imports` modules and by installed plugins (entry points `mi_estimators.plugins`).
        estimator_options: passed to `mi_estimators.make` (MISA family: sampler, n_samples, burn_in, step_size,
            n_leapfrog, adapt, target_accept, chains, log_z, precondition, ...).
        n_negatives: policy actions per state for the critic term (official: 50).
        critic_weight: weight of the critic term (official `min_q_weight`: 5.0).
        bc_weight: weight of `alpha log pi(a~|s) - log pi(a_D|s)` (official: 0.5).
        ub_weight: weight of the estimator's policy term (official: 0.1).
        mcmc_per_chain: False (official): one HMC step size for all chains, adapted from their mean acceptance
            probability, as TFP's `SimpleStepSizeAdaptation` does with the official scalar step size; True: each
            chain adapts its own. (An explicit `per_chain` or sampler object in `estimator_options` wins.)
        mcmc_space: "action" runs the chain on the action (official; proposals outside (-1, 1) are rejected),
            "unconstrained" on `atanh(a)` via the estimator's `MCMCLogZ.sample` (whitened when the
            estimator's `precondition` is on).
        compile: `torch.compile` the chain's critic gradient.
        chain_parts: the MCMC chains (one per state) are run as this many groups of states, each drawing from its
            own generator; with per-chain step-size adaptation (`mcmc_per_chain`) the chains are independent, so
            this changes no law, only the random streams. Samplers that couple the chains (pyro's, `per_chain=False`)
            run as one group.
        overlap_chain: on the CPU with >= 2 torch threads, run each chain group in a worker thread while the
            critic's losses and backward pass run (every thread on one torch thread); the main thread then serves
            the chains' per-member pieces (`rl.agents.tilted.MemberHelper`). Same numbers either way.
    """

    algo: str = "mi"
    seed: int = 42
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
    mcmc_per_chain: bool = False
    mcmc_space: str = "action"
    compile: bool = False
    chain_parts: int = 1
    overlap_chain: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mcmc_space not in ("action", "unconstrained"):
            raise ValueError(f"mcmc_space must be 'action' or 'unconstrained'; got {self.mcmc_space!r}")
        if self.n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1; got {self.n_negatives}")
        if self.chain_parts < 1:
            raise ValueError(f"chain_parts must be >= 1; got {self.chain_parts}")


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
        sampler, opts = getattr(partition, "sampler", None), cfg.estimator_options
        # A sampler the estimator built by name follows `mcmc_per_chain`; one handed in as an object is the user's.
        if (
            isinstance(sampler, Sampler)
            and "per_chain" not in opts
            and not isinstance(opts.get("sampler"), Sampler)
        ):
            sampler.per_chain = cfg.mcmc_per_chain
        self.estimator, self.partition = est, partition
        self.modules["estimator"] = est
        # The chains' own streams (one per group of states), so that they can run beside the critic's draws and
        # give the same numbers.
        self.chain_generators = [
            torch.Generator(self.device).manual_seed(self.cfg.seed + 1 + i)
            for i in range(self.cfg.chain_parts)
        ]
        self._executor: ThreadPoolExecutor | None = None

    def _chain_groups(self, n: int) -> list[slice]:
        """Row slices of the `n` states, one per chain group (one group when the sampler couples the chains)."""
        sampler = getattr(self.partition, "sampler", None)
        independent = isinstance(sampler, Sampler) and getattr(sampler, "per_chain", True)
        parts = min(self.cfg.chain_parts, n) if independent else 1
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def _chain_executor(self) -> ThreadPoolExecutor | None:
        """The worker threads for the chain groups, when overlapping pays (CPU, >= 2 threads, our samplers)."""
        part = self.partition
        if not (
            self.cfg.overlap_chain
            and self.device.type == "cpu"
            and torch.get_num_threads() >= 2
            and isinstance(part, MCMCLogZ)
            and isinstance(part.sampler, Sampler)
        ):
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.cfg.chain_parts, thread_name_prefix="mi-chain"
            )
        return self._executor

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["chain_generators"] = [gen.get_state() for gen in self.chain_generators]
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        super().load_state_dict(sd)
        for gen, state in zip(self.chain_generators, sd["chain_generators"], strict=True):
            gen.set_state(state)

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
        no_scores = cfg.estimator == "ba"  # BA has T = 0: no critic scores at all
        policy_side = not no_scores and est.needs_proposal
        chain = None
        if policy_side and isinstance(self.partition, MCMCLogZ):
            # The chains read the pre-update critic and policy only, so they can run while the critic learns.
            groups = self._chain_groups(obs.shape[0])
            executor = self._chain_executor()
            # Once this thread has done its part of the update it takes ensemble members' share of the chain.
            helper = MemberHelper() if executor is not None else None
            jobs = [
                partial(self._chain, dist, obs, act, rows, gen, helper)
                for rows, gen in zip(groups, self.chain_generators)
            ]
            chain = _Jobs(jobs, executor, helper)
        try:
            # Critic: TD (no entropy backup) + critic_weight x the estimator's critic term per ensemble member.
            with torch.no_grad():
                next_act = self.policy(nobs).sample(1, g).squeeze(1)
                y = td_target(rew, done, self.critic_target.q_min(nobs, next_act), cfg.gamma)
            q_data = self.critic(obs, act)  # [E, B]
            td = critic_loss(q_data, y)
            if no_scores:
                critic_mi = torch.zeros((), device=obs.device)
            else:
                neg_act = dist.sample(cfg.n_negatives, g)  # [B, N, da], detached
                q_neg = self.critic(obs, neg_act)  # [E, B, N]
                critic_mi = sum(self._critic_term(q_data[k], q_neg[k]) for k in range(q_data.shape[0]))
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
                actor_mi, extra = self._policy_term(
                    dist,
                    obs,
                    q_data.detach().min(0).values,
                    q_neg.detach().min(0).values,
                    neg_act,
                    chain,
                )
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
        bound = _MC_BOUNDS.get(type(self.estimator))
        return -bound(s, log_z="mc") if bound is not None else self.estimator.loss(s)

    def _policy_term(
        self,
        dist: Any,
        obs: Tensor,
        q_data: Tensor,
        q_neg: Tensor,
        neg_act: Tensor,
        chain: _Jobs | None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The estimator's loss on policy-side scores: Q is frozen and `log pi(a_D|s)` left out (it is the BC term,
        weighted separately), so its gradient wrt the policy is that of the partition term alone; its value is
        `partition - mean min Q(s, a_D)`. `chain` holds the MCMC samples when the partition is `MCMCLogZ`.
        Returns `(loss, logs)`."""
        part, extra = self.partition, {}
        tilted = None
        if chain is not None:
            u, accept, step = (torch.cat(parts) for parts in zip(*chain.result()))  # u: [B, S, da], detached
            extra = {"mcmc_accept": accept.mean(), "mcmc_step_size": step.mean()}
            # log pi on the tilted samples, from u (no atanh near +-1); T = Q is constant in theta and left out:
            # the surrogate enters with zero value, so only its gradient E_tilted[grad log pi] matters.
            tilted = dist.log_prob_of_squashed(u)
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

    def _chain(
        self,
        dist: Any,
        obs: Tensor,
        act: Tensor,
        rows: slice,
        generator: torch.Generator,
        helper: MemberHelper | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Samples of `pi(a|s) e^{min Q(s,a)}` for the states `rows`, one (or `chains`) chain per state started at
        the dataset action. Returns the unconstrained samples `[b, C*S, da]` (detached) and the per-chain
        acceptance rate and final step size `[b(, C)]`."""
        part = self.partition
        assert isinstance(part, MCMCLogZ)
        dist, obs, act = type(dist)(dist.mean[rows], dist.log_std[rows]), obs[rows], act[rows]
        sampler = part.sampler
        init = act if part.chains == 1 else act.unsqueeze(1).expand(-1, part.chains, -1)
        density = TiltedDensity(dist, self.critic, obs, compile=self.cfg.compile, helper=helper)
        ours = isinstance(sampler, Sampler)
        # Our samplers get explicit gradients (no graph needed); pyro's differentiate the density themselves.
        with torch.no_grad() if ours else torch.enable_grad():
            if self.cfg.mcmc_space == "action" and ours:
                res = sampler.sample(
                    None,
                    init,
                    part.n_samples,
                    generator,
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
                    generator,
                    init=act,
                    critic_value_and_grad=density.q_value_and_grad if ours else None,
                )
                u = res.unconstrained
        return u.detach(), res.accept_rate.reshape(-1), res.step_size.reshape(-1)


class _Jobs:
    """`fns` run now, in order, or each in a worker thread of `executor` while the caller goes on (`concurrent`).
    Meanwhile torch runs one intra-op thread per Python thread (its thread count is process-wide); the count is
    restored when the jobs are collected. When the caller collects the results it first serves `helper` (the
    workers' offers of independent pieces of their work) until every job has finished."""

    def __init__(
        self,
        fns: list[Callable[[], Any]],
        executor: ThreadPoolExecutor | None,
        helper: MemberHelper | None = None,
    ) -> None:
        self.concurrent = executor is not None
        self._futures: list[Future] = []
        self._helper = helper if self.concurrent else None
        if executor is None:
            self._values = [fn() for fn in fns]
            return
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._futures = [executor.submit(fn) for fn in fns]
        if self._helper is not None:
            pending = [len(self._futures)]
            lock = threading.Lock()

            def finished(_: Future) -> None:
                with lock:
                    pending[0] -= 1
                    last = pending[0] == 0
                if last:
                    self._helper.close()

            for f in self._futures:
                f.add_done_callback(finished)

    def result(self) -> list[Any]:
        if self._futures:
            try:
                if self._helper is not None:
                    self._helper.serve()  # returns when the last job has finished
                self._values = [f.result() for f in self._futures]
            finally:
                self.close()
        return self._values

    def close(self) -> None:
        """Wait for the workers (also when the caller failed) and give torch its threads back; idempotent."""
        if self._futures:
            futures, self._futures = self._futures, []
            wait(futures)  # a failure surfaces through result()
            torch.set_num_threads(self._threads)
