"""Log partition functions `log Z(x) = log E_{q(y|x)} e^{T(x,y)}` (nats), the hard term of the MISA bounds.

Two estimators with one contract, `log_z(law, critic, generator=None, init=None) -> LogZEstimate`:

* `MonteCarloLogZ(k)`: `log (1/K) sum_k e^{T(x, y_k)}` over K proposal draws `y_k ~ q(.|x)`. Its value is biased
  low (Jensen, O(1/K)); its gradient is self-normalised importance sampling (SNIS): wrt the critic
  `sum_k w_k grad T(y_k)`, and wrt the proposal either the SNIS score-function form `sum_k w_k grad log q(y_k)`
  (`grad="snis"`, default) or the pathwise gradient through reparameterised draws (`grad="reparam"`, the
  `misa-biased` estimator), with `w = softmax_k T(x, y_k)`.
* `MCMCLogZ(sampler)`: the same Monte Carlo value, but the gradient `grad log Z(x) = E_tilted[grad (log q + T)]`
  is estimated from S samples `y~` of the tilted law `q(y|x) e^T / Z(x)` drawn by MCMC (a `Sampler` from
  `samplers.py`, started at given points such as the data y), through the surrogate
  `mean_s [T(x, y~_s) + log q(y~_s|x)]` evaluated on detached samples: its gradient flows into the critic's and
  the proposal's parameters only. This is `Scores.tilted`.

`LogZEstimate.log_z [N]` carries the value and the chosen gradient in one tensor (value + surrogate - surrogate
detached), so `log_z.mean().backward()` gives the estimator's gradient; `negative [N, K]` and `tilted [N, S]` are
what an estimator puts in `Scores`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._math import logmeanexp
from .options import require_int
from .samplers import SPACES, Sampler, SampleResult, make_sampler, sample_tilted

__all__ = ["LogZEstimate", "MCMCLogZ", "MonteCarloLogZ", "PartitionError", "mcmc_log_z_surrogate"]

Critic = Callable[[Tensor], Tensor]


class PartitionError(ValueError):
    """Bad input to a partition function (a count of zero, wrong shapes); the message names what was wrong."""


@dataclass(frozen=True, eq=False)
class LogZEstimate:
    """A log partition estimate for N rows.

    Attributes:
        log_z: `[N]` nats: the Monte Carlo value, carrying the partition function's gradient.
        negative: `[N, K]` critic scores `T(x_i, y_ik)` on the K proposal draws (the MC value's summands).
        tilted: `[N, S]` `T(x_i, y~_is) + log q(y~_is|x_i)` on detached MCMC samples of the tilted law (graph into
            critic and proposal), or None for Monte Carlo.
        samples: `[N, S, d]` the detached tilted samples (constrained space), or None.
        result: the sampler's `SampleResult` (acceptance, step sizes, non-finite counts), or None.
    """

    log_z: Tensor
    negative: Tensor
    tilted: Tensor | None = None
    samples: Tensor | None = None
    result: SampleResult | None = None


def _check_law(law: Any) -> tuple[int, int]:
    mean = getattr(law, "mean", None)
    if not isinstance(mean, Tensor) or mean.dim() != 2:
        raise PartitionError(
            f"law must be a batched proposal law with mean of shape [N, d] (e.g. DiagGaussian); got {type(law).__name__}"
        )
    return mean.shape[0], mean.shape[1]


def _score(critic: Critic, y: Tensor, what: str) -> Tensor:
    """`critic(y [N, K, d]) -> [N, K]`, with the shape checked (named error otherwise)."""
    t = critic(y)
    if not isinstance(t, Tensor) or t.shape != y.shape[:-1]:
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise PartitionError(
            f"critic must map {what} y of shape {tuple(y.shape)} to shape {tuple(y.shape[:-1])}; got {got}"
        )
    return t


def mcmc_log_z_surrogate(negative: Tensor, tilted: Tensor) -> Tensor:
    """`[N]` log Z whose value is the Monte Carlo `logmeanexp(negative)` and whose gradient is that of the MCMC
    surrogate `mean_s tilted[:, s]` (the unbiased `E_tilted[grad(log q + T)]`); no gradient flows through
    `negative`. Shapes: `negative [N, K]`, `tilted [N, S]`."""
    if negative.dim() != 2 or tilted.dim() != 2 or tilted.shape[0] != negative.shape[0]:
        raise PartitionError(
            f"need negative [N, K] and tilted [N, S] with the same N; got {tuple(negative.shape)} and "
            f"{tuple(tilted.shape)}"
        )
    surrogate = tilted.mean(1)
    return logmeanexp(negative.detach(), 1) + (surrogate - surrogate.detach())


class MonteCarloLogZ:
    """`log Z(x) ≈ log mean_k e^{T(x, y_k)}`, `y_k ~ q(.|x)`, K draws per row.

    Args:
        k: draws per row K (>= 1).
        grad: how the gradient reaches the proposal: `"snis"` (detached draws; the score-function SNIS term
            `sum_k w_k grad log q(y_k)` rides on the negatives with zero value) or `"reparam"` (draws by `rsample`,
            the pathwise gradient through the log-mean-exp: MISA-biased). Both give SNIS wrt the critic.
    """

    #: whether this partition function runs an MCMC chain (`MCMCLogZ.sample`) for its gradient
    runs_chain = False

    def __init__(self, k: int = 50, grad: str = "snis") -> None:
        self.k = require_int("k", k, 1, PartitionError)
        if grad not in ("snis", "reparam"):
            raise PartitionError(f"grad must be 'snis' or 'reparam'; got {grad!r}")
        self.grad = grad

    def __repr__(self) -> str:
        return f"MonteCarloLogZ(k={self.k}, grad={self.grad!r})"

    def negatives(self, law: Any, critic: Critic, generator: torch.Generator | None = None) -> Tensor:
        """`[N, K]` critic scores on K proposal draws per row, carrying the chosen proposal gradient."""
        _check_law(law)
        if self.grad == "reparam":
            return _score(critic, law.rsample(self.k, generator), "proposal draws")
        y = law.sample(self.k, generator)
        t = _score(critic, y, "proposal draws")
        log_q = law.log_prob(y)
        # Zero in value, SNIS in gradient: d/dtheta logmeanexp(T + lq - lq.detach()) = sum_k w_k dlq_k/dtheta.
        return t + (log_q - log_q.detach())

    def policy_negatives(
        self,
        law: Any,
        critic: Critic,
        draws: Tensor,
        draw_scores: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`[N, K]` negatives that carry this partition function's gradient wrt the proposal alone, the critic held
        fixed (an RL actor's view: `T = Q` frozen, the policy the proposal), reusing K detached `draws [N, K, d]`
        and their scores `draw_scores [N, K]` where the gradient allows: SNIS rides on them with zero value;
        `grad="reparam"` draws K fresh reparameterised actions from `generator` and scores them with `critic`."""
        if self.grad == "reparam":
            return _score(critic, law.rsample(draws.shape[1], generator), "proposal draws")
        log_q = law.log_prob(draws)
        return draw_scores + (log_q - log_q.detach())

    def __call__(
        self, law: Any, critic: Critic, generator: torch.Generator | None = None, init: Tensor | None = None
    ) -> LogZEstimate:
        """Estimate `log Z` for the rows of `law` (`init` is ignored: no chain).

        Args:
            law: batched proposal law for N rows (`mean [N, d]`, `sample`/`rsample(k, generator)` -> `[N, K, d]`,
                `log_prob`).
            critic: `y [N, K, d] -> [N, K]`, `T(x_i, y)` with x closed over, nats.
            generator: source of the draws.
        """
        neg = self.negatives(law, critic, generator)
        return LogZEstimate(log_z=logmeanexp(neg, 1), negative=neg)

    @staticmethod
    def from_scores(negative: Tensor) -> Tensor:
        """`[N]` log-mean-exp of precomputed scores `[N, K]` (nats)."""
        if not isinstance(negative, Tensor) or negative.dim() != 2 or negative.shape[1] == 0:
            shape = tuple(negative.shape) if isinstance(negative, Tensor) else type(negative).__name__
            raise PartitionError(f"negative must have shape [N, K] with K >= 1; got {shape}")
        return logmeanexp(negative, 1)


class MCMCLogZ:
    """Monte Carlo value of `log Z(x)`, MCMC (tilted-sample) gradient.

    Args:
        sampler: a `Sampler` instance or a name for `make_sampler` (`"hmc"` default, `"mala"`, `"ula"`,
            `"pyro-hmc"`, `"pyro-nuts"`).
        n_samples: retained tilted samples per chain S (the official MISA code: 50 consecutive states).
        burn_in: discarded initial steps (official: 5).
        thin: keep every `thin`-th state.
        k: proposal draws per row for the Monte Carlo value; None = `n_samples`.
        chains: chains per row C (samples pooled: `tilted` is `[N, C*S]`).
        precondition: run the chain whitened by the proposal's mean and scale (step size in units of the proposal's
            std); False runs on the raw (unconstrained) coordinates.
        space: where a bounded law's chain runs, "unconstrained" (`atanh y`, default) or "constrained" (`y` itself,
            as the official MISA code runs HMC on the action; `precondition` does not apply there).
        **sampler_options: passed to `make_sampler` when `sampler` is a name (`step_size`, `n_leapfrog`, `adapt`,
            `target_accept`, ...).

    `__call__(law, critic, generator, init)` starts the chains at `init` (`[N, d]` constrained points, e.g. the
    data y or the dataset action), or at proposal draws when `init` is None.
    """

    def __init__(
        self,
        sampler: str | Sampler = "hmc",
        n_samples: int = 50,
        burn_in: int = 5,
        thin: int = 1,
        k: int | None = None,
        chains: int = 1,
        precondition: bool = True,
        space: str = "unconstrained",
        **sampler_options: Any,
    ) -> None:
        self.n_samples = require_int("n_samples", n_samples, 1, PartitionError)
        if not isinstance(burn_in, int) or isinstance(burn_in, bool) or burn_in < 0:
            raise PartitionError(f"burn_in must be an int >= 0; got {burn_in!r}")
        self.burn_in, self.thin = burn_in, require_int("thin", thin, 1, PartitionError)
        self.k = self.n_samples if k is None else require_int("k", k, 1, PartitionError)
        self.chains, self.precondition = require_int("chains", chains, 1, PartitionError), precondition
        if space not in SPACES:
            raise PartitionError(f"space must be one of {SPACES}; got {space!r}")
        self.space = space
        if isinstance(sampler, str):
            sampler_options.setdefault("burn_in", burn_in)
        self.sampler = make_sampler(sampler, **sampler_options)
        self._monte_carlo = MonteCarloLogZ(self.k)

    #: whether this partition function runs an MCMC chain (`sample`) for its gradient
    runs_chain = True

    @property
    def thread_safe(self) -> bool:
        """Whether `sample` may run in a worker thread beside other torch work (the sampler's `thread_safe`)."""
        return self.sampler.thread_safe

    def __repr__(self) -> str:
        return (
            f"MCMCLogZ(sampler={self.sampler!r}, n_samples={self.n_samples}, burn_in={self.burn_in}, "
            f"thin={self.thin}, k={self.k}, chains={self.chains}, space={self.space!r})"
        )

    def monte_carlo(self, law: Any, critic: Critic, generator: torch.Generator | None = None) -> LogZEstimate:
        """The Monte Carlo value over `k` proposal draws alone (no chain): enough for a bound's value."""
        return self._monte_carlo(law, critic, generator)

    def policy_negatives(
        self,
        law: Any,
        critic: Critic,
        draws: Tensor,
        draw_scores: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`draw_scores [N, K]`, detached: the value's summands. The gradient wrt the proposal comes from the tilted
        samples (`sample`), not from the negatives (see `MonteCarloLogZ.policy_negatives`)."""
        return draw_scores.detach()

    def sample(
        self,
        law: Any,
        critic: Critic,
        generator: torch.Generator | None = None,
        init: Tensor | None = None,
        critic_value_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> SampleResult:
        """Run the chains on the tilted law of `law` and `critic`; samples `[N, C*S, d]`, detached.
        `critic_value_and_grad` (optional, `y -> (T, dT/dy)`, a hand-written or compiled input gradient) replaces
        autograd through the critic where the sampler takes explicit gradients; a sampler that differentiates the
        density itself (pyro's) uses `critic`."""
        _check_law(law)
        if not self.sampler.takes_value_and_grad:
            critic_value_and_grad = None
        with torch.no_grad() if critic_value_and_grad is not None else torch.enable_grad():
            return sample_tilted(
                self.sampler,
                law,
                critic,
                self.n_samples,
                init=init,
                generator=generator,
                chains=self.chains,
                precondition=self.precondition,
                critic_value_and_grad=critic_value_and_grad,
                space=self.space,
                burn_in=self.burn_in,
                thin=self.thin,
            )

    @staticmethod
    def tilted_scores(law: Any, critic: Critic, result: SampleResult) -> Tensor:
        """`[N, S]` `T(x, y~) + log q(y~|x)` on the detached samples of `result`, with graph into `critic` and the
        parameters of `law`. For bounded laws `log q(y~)` is computed from the unconstrained sample (no atanh of a
        value near +-1)."""
        y = result.samples.detach()
        t = _score(critic, y, "tilted samples")
        if getattr(law, "bounded", False):
            u = result.unconstrained.detach()
            log_q = law.log_prob_of_squashed(u)
        else:
            log_q = law.log_prob(y)
        return t + log_q

    def __call__(
        self,
        law: Any,
        critic: Critic,
        generator: torch.Generator | None = None,
        init: Tensor | None = None,
        critic_value_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> LogZEstimate:
        """Estimate `log Z` for the rows of `law`: MC value over `k` draws, gradient from `n_samples` tilted samples.

        Args:
            law: batched proposal law for N rows (`DiagGaussian` / `TanhDiagGaussian`).
            critic: `y [N, K, d] -> [N, K]`, `T(x_i, y)` with x closed over, nats.
            generator: source of every draw (proposal draws and the chains).
            init: `[N, d]` or `[N, C, d]` chain starts in the constrained space; None = proposal draws.
            critic_value_and_grad: optional `y [N, C, d] -> (T [N, C], dT/dy)` for the chain, replacing autograd
                through `critic` (a compiled or hand-written input gradient of a Q network; same x as `critic`).
        """
        with torch.no_grad():  # the value only: the gradient comes from the tilted surrogate
            neg = _score(critic, law.sample(self.k, generator), "proposal draws")
        res = self.sample(law, critic, generator, init, critic_value_and_grad)
        tilted = self.tilted_scores(law, critic, res)
        return LogZEstimate(
            log_z=mcmc_log_z_surrogate(neg, tilted),
            negative=neg,
            tilted=tilted,
            samples=res.samples,
            result=res,
        )


def make_log_z(
    spec: str | MonteCarloLogZ | MCMCLogZ, k: int = 50, **mcmc_options: Any
) -> MonteCarloLogZ | MCMCLogZ:
    """A partition function from a name: `"mc"` -> `MonteCarloLogZ(k)`, `"mcmc"` -> `MCMCLogZ(k=k, **mcmc_options)`;
    an instance is returned as is."""
    if isinstance(spec, (MonteCarloLogZ, MCMCLogZ)):
        return spec
    if spec == "mc":
        return MonteCarloLogZ(k)
    if spec == "mcmc":
        return MCMCLogZ(k=k, **mcmc_options)
    raise PartitionError(f"log_z must be 'mc', 'mcmc' or a MonteCarloLogZ/MCMCLogZ instance; got {spec!r}")
