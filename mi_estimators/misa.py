"""The MISA family: Barber-Agakov bounds with an energy-based variational law (Ma et al. 2022).

With a proposal `q(y|x)` and a critic `T`, the variational law `q(y|x) e^{T(x,y)} / Z(x)` gives

    I(X; Y) >= E_p[log q(y|x) + T(x, y)] - (partition term) + H(Y)            (nats)

with the partition term, for negatives `y'_ik ~ q(.|x_i)` (the scores `negative [N, K]`):

* `misa`:        `E_x log E_q e^T`, one log partition per x                 (tightest)
* `misa-dv`:     `log E_x E_q e^T`, one global log partition (Donsker-Varadhan form)
* `misa-f`:      `E_x E_q e^{T - 1}`, the NWJ (f-divergence) form            (loosest)
* `misa-biased`: the `misa` bound, whose gradient wrt the proposal runs through the log-mean-exp of
  reparameterised negatives (as CQL does), instead of the MCMC estimate.

On the same scores `misa >= misa-dv >= misa-f` (Jensen across x, then `log z <= z / e`). Each bound is a short pure
function of `Scores` (`misa_bound`, `misa_dv_bound`, `misa_f_bound`); the `log_z` argument picks the gradient of the
partition term: `"mc"` differentiates the Monte Carlo value (SNIS), `"mcmc"` uses `Scores.tilted` (samples of the
tilted law drawn by MCMC: the unbiased `E_tilted[grad(log q + T)]`) while keeping the Monte Carlo value, `"auto"` is
"mcmc" when `Scores.tilted` is present. The values are log-sum-exp stable in float32 for scores of +-1e4; `misa-f`
is `-inf` when `mean e^{T-1}` overflows float (the honest value of that bound).

The registered estimators own a learned proposal (`GaussianProposal`, or any module mapping `x [N, dx]` to a batched
law) and build their scores with `est.scores(x, y, critic, generator)`; that is how `mie.estimate` and the RL layer
use them. An estimator's `bound(s)` needs no tilted samples: its value is always the Monte Carlo one over the
proposal negatives, and `Scores.tilted`, when present in `log_z="mcmc"` mode, only supplies the gradient; its
`loss(s)` in that mode does need them and says so by name when they are missing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._math import computed_in_float32, exp_minus_one_mean, logmeanexp
from .options import Option, choice, flag, integer, number
from .partition import (
    LogZEstimate,
    MCMCLogZ,
    MonteCarloLogZ,
    PartitionError,
    make_log_z,
    mcmc_log_z_surrogate,
)
from .proposals import ProposalEstimator
from .registry import register
from .samplers import SPACES, Sampler, SampleResult, available_samplers
from .scores import Scores

__all__ = [
    "MISA",
    "MISABiased",
    "MISADV",
    "MISAF",
    "misa_bound",
    "misa_dv_bound",
    "misa_f_bound",
]

_MODES = ("auto", "mc", "mcmc")


def _describe(spec: Any) -> str:
    return repr(spec) if isinstance(spec, str) else f"<{type(spec).__name__} instance>"


def _mode(s: Scores, log_z: str, name: str) -> str:
    if log_z not in _MODES:
        raise ValueError(f"{name}: log_z must be one of {_MODES}; got {log_z!r}")
    if log_z == "auto":
        return "mcmc" if s.tilted is not None else "mc"
    if log_z == "mcmc" and s.tilted is None:
        raise ValueError(
            f"estimator {name!r} with log_z='mcmc' needs Scores.tilted ([N, S] scores on MCMC samples of the tilted "
            "law); it is missing"
        )
    return log_z


def _data_term(s: Scores, name: str) -> Tensor:
    """`E[log q(y|x) + T(x, y)] + H(Y)`, nats."""
    lq = s.log_proposal_or_raise(name)
    h = s.entropy_or_raise(name)
    return (lq + s.positive).mean() + h


@computed_in_float32
def misa_bound(s: Scores, log_z: str = "auto") -> Tensor:
    """MISA: `E[log q + T] - E_x logmeanexp_k T(x, y'_k) + H(Y)`, per-x log partition. Nats, 0-d.

    Needs `log_proposal` and `marginal_entropy`; `log_z="mcmc"` (or "auto" with `tilted` present) gives the
    partition term the MCMC gradient of `Scores.tilted`."""
    data = _data_term(s, "misa")
    if _mode(s, log_z, "misa") == "mcmc":
        per_x = mcmc_log_z_surrogate(s.negative, s.tilted)  # type: ignore[arg-type]
    else:
        per_x = logmeanexp(s.negative, 1)
    return data - per_x.mean()


def _tilted_mean(s: Scores) -> Tensor:
    m = s.tilted.mean(1)  # type: ignore[union-attr]
    return m - m.detach()  # zero value, gradient of the per-x surrogate


@computed_in_float32
def misa_dv_bound(s: Scores, log_z: str = "auto") -> Tensor:
    """MISA-DV: `E[log q + T] - log mean_{x,k} e^{T(x, y'_k)} + H(Y)`, one global log partition. Nats, 0-d.

    With `log_z="mcmc"` the gradient of the global `log Z = log mean_x Z(x)` is `sum_x w_x grad log Z(x)` with
    `w = softmax_x log Z(x)` (Monte Carlo weights, detached) and `grad log Z(x)` from the tilted samples."""
    data = _data_term(s, "misa-dv")
    value = logmeanexp(s.negative)
    if _mode(s, log_z, "misa-dv") == "mcmc":
        w = torch.softmax(logmeanexp(s.negative.detach(), 1), 0)
        return data - (value.detach() + (w * _tilted_mean(s)).sum())
    return data - value


@computed_in_float32
def misa_f_bound(s: Scores, log_z: str = "auto") -> Tensor:
    """MISA-f: `E[log q + T] - mean_{x,k} e^{T(x, y'_k) - 1} + H(Y)`, the NWJ form. Nats, 0-d.

    `-inf` when the mean overflows float (scores beyond ~88 + log K in float32): the honest value. With
    `log_z="mcmc"` the gradient of `mean_x Z(x)/e` is `mean_x (Z(x)/e) grad log Z(x)` from the tilted samples."""
    data = _data_term(s, "misa-f")
    value = exp_minus_one_mean(s.negative)
    if _mode(s, log_z, "misa-f") == "mcmc":
        c = exp_minus_one_mean(s.negative.detach(), 1)
        # Rows whose Z overflowed carry no finite gradient: their weight is zeroed before the product, so that
        # neither the value nor the gradient meets inf * 0.
        c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
        term = c * _tilted_mean(s)
        return data - (value.detach() + term.mean())
    return data - value


class _MISAFamily(ProposalEstimator):
    """Shared machinery: a learned proposal, a partition function, and `scores(x, y, critic, generator)`.

    Options (all keyword, all optional):
        log_z: "mc", "mcmc", or a `MonteCarloLogZ`/`MCMCLogZ` instance; None = the estimator's default.
        sampler: MCMC sampler name ("hmc", "mala", "ula", "pyro-hmc", "pyro-nuts") or a `Sampler` (log_z="mcmc").
        n_samples, burn_in, thin, chains: the chain's retained samples per x, burn-in, thinning, chains per x
            (defaults 50, 5, 1, 1). These, `sampler`, the sampler options below, `per_chain`, `precondition` and
            `init` configure the chain of `log_z="mcmc"`; given where no chain is built they are refused by name.
        k: proposal draws per x for the Monte Carlo value of log Z (the negatives).
        step_size, n_leapfrog, adapt, target_accept: sampler options (None = the sampler's default; `adapt` may
            be "simple", "dual_averaging" or "none").
        per_chain: adapt each chain's step size from its own acceptance (the samplers' default), or False: one
            step size for all chains from their mean acceptance probability (TFP's `SimpleStepSizeAdaptation` with
            a scalar step size, as the official MISA code runs it).
        precondition: run the chain whitened by the proposal's scale (step size in proposal std units).
        space: where a tanh-squashed proposal's chain runs: "unconstrained" (on `atanh y`, default) or
            "constrained" (on `y` itself, as the official MISA code runs HMC on the action; proposals outside the
            box are rejected; `precondition` does not apply, so giving it as well is refused).
        init: chain start, "data" (the positive y, as the official MISA code starts at the dataset action) or
            "proposal" (a proposal draw).
        proposal: a module mapping `x [N, dx]` to a batched law (`GaussianProposal`, an RL policy); else one is
            built from `x_dim`, `y_dim`, `hidden` (and `squashed` for a tanh-Gaussian on (-1, 1)^dy).
        marginal_entropy: H(Y) in nats, when the caller of `scores` does not pass it.
    """

    needs_proposal = True
    chain_optional_for_value = True
    default_log_z = "mc"
    options = {
        **ProposalEstimator.options,
        "log_z": choice(
            None,
            "mc",
            "mcmc",
            types=(MonteCarloLogZ, MCMCLogZ),
            what="'mc', 'mcmc', a MonteCarloLogZ/MCMCLogZ or None",
        ),
        "sampler": Option(
            f"a sampler name ({', '.join(available_samplers())}) or a Sampler",
            lambda v: isinstance(v, Sampler) or (isinstance(v, str) and v.lower() in available_samplers()),
        ),
        "n_samples": integer(1, optional=True),
        "burn_in": integer(0, optional=True),
        "thin": integer(1, optional=True),
        "chains": integer(1, optional=True),
        "k": integer(1, optional=True),
        "step_size": number(0.0, low_open=True, optional=True, what="a positive finite number"),
        "n_leapfrog": integer(1, optional=True),
        "adapt": choice(None, "simple", "dual_averaging", "none"),
        "target_accept": number(
            0.0, 1.0, low_open=True, high_open=True, optional=True, what="a number in (0, 1)"
        ),
        "per_chain": flag(optional=True),
        "precondition": flag(optional=True),
        "space": choice(None, *SPACES),
        "init": choice(None, "data", "proposal"),
    }
    #: the chain's options and their defaults: they configure the MCMC run of `log_z="mcmc"` and nothing else
    CHAIN_DEFAULTS: dict[str, Any] = {
        "sampler": "hmc",
        "n_samples": 50,
        "burn_in": 5,
        "thin": 1,
        "chains": 1,
        "step_size": None,
        "n_leapfrog": None,
        "adapt": None,
        "target_accept": None,
        "per_chain": None,
        "precondition": True,
        "space": "unconstrained",
    }

    def __init__(
        self,
        log_z: str | MonteCarloLogZ | MCMCLogZ | None = None,
        sampler: Any = None,
        n_samples: int | None = None,
        burn_in: int | None = None,
        thin: int | None = None,
        chains: int | None = None,
        k: int | None = None,
        step_size: float | None = None,
        n_leapfrog: int | None = None,
        adapt: str | None = None,
        target_accept: float | None = None,
        per_chain: bool | None = None,
        precondition: bool | None = None,
        space: str | None = None,
        init: str | None = None,
        proposal: nn.Module | None = None,
        x_dim: int | None = None,
        y_dim: int | None = None,
        hidden: tuple[int, ...] = (),
        squashed: bool = False,
        marginal_entropy: float | None = None,
    ) -> None:
        super().__init__(proposal, x_dim, y_dim, hidden, squashed, marginal_entropy)
        spec = self.default_log_z if log_z is None else log_z
        chain = {
            "sampler": sampler,
            "n_samples": n_samples,
            "burn_in": burn_in,
            "thin": thin,
            "chains": chains,
            "step_size": step_size,
            "n_leapfrog": n_leapfrog,
            "adapt": adapt,
            "target_accept": target_accept,
            "per_chain": per_chain,
            "precondition": precondition,
            "space": space,
        }
        # An option that nothing reads is refused by name rather than silently dropped (e.g. `n_samples` with the
        # Monte Carlo partition function of misa-dv's default).
        given = [name for name, v in chain.items() if v is not None]
        if given and isinstance(spec, MCMCLogZ):
            raise ValueError(
                f"{self.name}: option {given[0]!r} configures the MCMC chain; the MCMCLogZ instance given as log_z "
                "brings its own chain (set it there)"
            )
        if given and spec != "mcmc":
            raise ValueError(
                f"{self.name}: option {given[0]!r} configures the MCMC chain, which log_z={_describe(spec)} does "
                "not build (only log_z='mcmc' runs one)"
            )
        if init is not None and not (spec == "mcmc" or isinstance(spec, MCMCLogZ)):
            raise ValueError(
                f"{self.name}: option 'init' is where the MCMC chain starts; log_z={_describe(spec)} runs no chain"
            )
        if k is not None and not isinstance(spec, str):
            raise ValueError(
                f"{self.name}: option 'k' sizes a partition function built by name; the log_z "
                f"instance given has its own (k={spec.k})"
            )
        if space == "constrained" and precondition is not None:
            raise ValueError(
                f"{self.name}: option 'precondition' whitens the unconstrained chain; space='constrained' runs on y "
                "itself (leave precondition out)"
            )
        self.init = "data" if init is None else init
        chain = {name: self.CHAIN_DEFAULTS[name] if v is None else v for name, v in chain.items()}
        options = ("step_size", "n_leapfrog", "adapt", "target_accept", "per_chain")
        sampler_options = {name: chain.pop(name) for name in options}
        if sampler_options["step_size"] is not None:
            sampler_options["step_size"] = float(sampler_options["step_size"])
        self.partition = self._make_partition(
            spec, k=50 if k is None else k, sampler_options=sampler_options, **chain
        )
        #: the last `LogZEstimate` built by `scores` (acceptance rates and step sizes for logging), or None
        self.last_log_z: LogZEstimate | None = None

    @staticmethod
    def _make_partition(
        spec: Any, k: int, sampler: Any, sampler_options: dict[str, Any], **mcmc: Any
    ) -> MonteCarloLogZ | MCMCLogZ:
        if spec != "mcmc":
            return make_log_z(spec, k=k)
        opts = {name: v for name, v in sampler_options.items() if v is not None}
        if opts and not isinstance(sampler, str):
            raise ValueError(f"sampler options {sorted(opts)} only apply when sampler is given by name")
        return MCMCLogZ(sampler, k=k, **mcmc, **opts)

    def scores(
        self,
        x: Tensor,
        y: Tensor,
        critic: Any,
        generator: torch.Generator | None = None,
        marginal_entropy: float | Tensor | None = None,
        tilted: bool = True,
    ) -> Scores:
        """Scores of a joint batch for this bound: positive `T(x_i, y_i)` `[N]`, `log q(y_i|x_i)` `[N]`, K proposal
        negatives `[N, K]` (one batched critic call `critic(x[:, None], y' [N, K, dy])`), and for `log_z="mcmc"` the
        tilted scores `[N, S]` on MCMC samples started at `y` (or at proposal draws).

        Args:
            x: `[N, dx]`, y: `[N, dy]` joint samples.
            critic: `critic(x [..., dx], y [..., dy]) -> [...]` with broadcasting leading axes, nats.
            generator: every draw (negatives, chains).
            marginal_entropy: H(Y) in nats (defaults to the constructor's option).
            tilted: run the MCMC chains for `Scores.tilted` (with `log_z="mcmc"`); False skips them and returns
                only the Monte Carlo negatives, enough for `bound` (the value) but not for the MCMC `loss`: what
                `mie.evaluate` uses.
        """
        law = self._law(x, y)
        x_k = x.unsqueeze(1)

        def critic_k(y_k: Tensor) -> Tensor:
            return critic(x_k, y_k)

        positive = critic(x, y)
        log_proposal = law.log_prob(y)
        init = y if self.init == "data" else None
        if not tilted and isinstance(self.partition, MCMCLogZ):
            est = self.partition.monte_carlo(law, critic_k, generator)  # the Monte Carlo value's draws only
        else:
            est = self.partition(law, critic_k, generator, init=init)
        self.last_log_z = est
        return Scores(
            positive,
            est.negative,
            log_proposal=log_proposal,
            marginal_entropy=self._entropy(marginal_entropy),
            tilted=est.tilted,
        )

    def critic_loss(self, s: Scores) -> Tensor:
        """The critic's loss beside a proposal it does not train (the RL critic, `T = Q`, negatives from the policy):
        `-bound(s)` with the Monte Carlo (SNIS) gradient of log Z whatever `log_z` is, as the official MISA code
        trains its Q on the logsumexp over policy actions; the MCMC samples serve the proposal's side
        (`policy_scores`)."""
        return -self._bound_fn(s, log_z="mc")

    def policy_scores(
        self,
        law: Any,
        critic: Any,
        positive: Tensor,
        draws: Tensor,
        draw_scores: Tensor,
        generator: torch.Generator | None = None,
        samples: SampleResult | None = None,
    ) -> Scores:
        """Scores whose `loss` has the partition term's gradient wrt the proposal alone, the critic held fixed (the
        RL actor's view: `T = Q` frozen, the policy the proposal). `log q(y|x)` on the data and H(Y) are left out
        (zero): a caller that wants them weights them itself (MISA's BC term), so `loss(...)` is
        `partition term - mean(positive)` in value.

        Args:
            law: the proposal's law at the N states (gradient into its parameters).
            critic: `y [N, K, d] -> [N, K]`, x closed over, fixed.
            positive: `[N]` critic scores on the data pairs (detached).
            draws: `[N, K, d]` detached proposal draws and `draw_scores [N, K]` their critic scores (detached),
                reused as the negatives where the gradient allows (`partition.policy_negatives`).
            generator: fresh draws (`misa-biased`'s reparameterised negatives).
            samples: `partition.sample(...)`'s tilted samples when `partition.runs_chain`.
        """
        negative = self.partition.policy_negatives(law, critic, draws, draw_scores, generator)
        tilted = None
        if samples is not None:
            # T = Q is constant in the proposal's parameters and left out; the surrogate has zero value, so only its
            # gradient E_tilted[grad log q] matters. Bounded laws: log q from u (no atanh near +-1).
            if getattr(law, "bounded", False):
                tilted = law.log_prob_of_squashed(samples.unconstrained.detach())
            else:
                tilted = law.log_prob(samples.samples.detach())
        zeros = torch.zeros_like(positive)
        return Scores(
            positive, negative, log_proposal=zeros, marginal_entropy=0.0, tilted=tilted, validate=False
        )

    @property
    def log_z_mode(self) -> str:
        """ "mcmc" when the partition function is `MCMCLogZ`, else "mc"."""
        return "mcmc" if isinstance(self.partition, MCMCLogZ) else "mc"

    #: the pure bound of this member (`misa_bound`, `misa_dv_bound`, `misa_f_bound`)
    _bound_fn: Any = None

    def bound(self, s: Scores) -> Tensor:
        """The bound's value (nats, 0-d) from the Monte Carlo log partition over the proposal negatives `[N, K]`.
        With `log_z="mcmc"` and `Scores.tilted` present its gradient wrt the partition term is the MCMC one; without
        `tilted` it is the Monte Carlo (SNIS) one: the tilted samples serve only the gradient, never the value."""
        return self._bound_fn(s, log_z="auto" if self.log_z_mode == "mcmc" else "mc")

    def loss(self, s: Scores) -> Tensor:
        """`-bound(s)`; with `log_z="mcmc"` it needs `Scores.tilted` (the MCMC gradient of log Z is the point of
        that mode), and says so by name when it is missing."""
        if self.log_z_mode == "mcmc" and s.tilted is None:
            raise ValueError(
                f"estimator {self.name!r} with log_z='mcmc' needs Scores.tilted ([N, S] scores on MCMC samples of the "
                "tilted law) for its loss (the MCMC gradient of log Z); it is missing. Build the scores with "
                "est.scores(x, y, critic), or use log_z='mc'; bound() gives the value without them"
            )
        return -self.bound(s)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, partition={self.partition!r}"


@register("misa")
class MISA(_MISAFamily):
    """MISA: per-x log partition, MCMC gradient by default (`log_z="mcmc"`, HMC with 2 leapfrog steps, 5 burn-in,
    50 samples, as the official code); `log_z="mc"` uses the log-mean-exp (SNIS) gradient. See `misa_bound`."""

    default_log_z = "mcmc"
    _bound_fn = staticmethod(misa_bound)


@register("misa-biased")
class MISABiased(_MISAFamily):
    """MISA with the biased gradient: negatives by `rsample`, backprop through their log-mean-exp (the CQL-style
    estimator of `grad log Z`). `log_z` may only be "mc" (or a `MonteCarloLogZ` with `grad="reparam"`).

    A baseline, not a reliable estimator: with a flexible critic the proposal and the critic can co-adapt so that
    the K draws avoid the region where T is high, driving the Monte Carlo log Z (not the true one) to -inf and the
    estimate to +inf (docs/partition.md, staircase)."""

    default_log_z = "mc"
    _bound_fn = staticmethod(misa_bound)

    @staticmethod
    def _make_partition(
        spec: Any, k: int, sampler: Any, sampler_options: dict[str, Any], **mcmc: Any
    ) -> MonteCarloLogZ | MCMCLogZ:
        if isinstance(spec, MonteCarloLogZ) and spec.grad == "reparam":
            return spec
        if spec != "mc":
            raise PartitionError(
                "misa-biased differentiates the log-mean-exp of reparameterised samples; log_z must be 'mc' "
                f"(use 'misa' for the MCMC gradient); got {spec!r}"
            )
        return MonteCarloLogZ(k, grad="reparam")

    def bound(self, s: Scores) -> Tensor:
        return misa_bound(s, log_z="mc")


@register("misa-dv")
class MISADV(_MISAFamily):
    """MISA-DV: one global log partition over all x and negatives (`misa_dv_bound`); `log_z="mc"` by default."""

    _bound_fn = staticmethod(misa_dv_bound)


@register("misa-f")
class MISAF(_MISAFamily):
    """MISA-f: the NWJ form `mean e^{T-1}` of the partition term (`misa_f_bound`); `log_z="mc"` by default."""

    _bound_fn = staticmethod(misa_f_bound)
