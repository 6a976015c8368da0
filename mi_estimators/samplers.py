"""MCMC samplers of (tilted) log densities, vectorised as one chain per row.

A sampler draws from an unnormalised density `p(u) ∝ exp(log_density(u))` given as a callable
`log_density(u [*B, d]) -> [*B]` that treats every batch entry as an independent chain (a sum of per-row terms:
no batch norm or cross-row coupling). The chain state is one tensor, `[N, d]` (one chain per x) or `[N, C, d]`
(C chains per x); every step is a handful of batched tensor ops over all chains at once, never a Python loop over
chains. The only Python loop is over time, and it takes no host-device round trips (no `.item()`, no
data-dependent branching): the step count, burn-in and adaptation schedule are Python ints, everything that
depends on the chain is a tensor.

Samplers (`step_size` is `h` throughout, the step of one leapfrog move):

* `ULA`: unadjusted Langevin, `u' = u + (h^2/2) grad log p(u) + h xi`. No accept/reject, so it has an
  O(h^2) discretisation bias (for a Gaussian target of variance s^2 its stationary variance is
  `s^2 / (1 - h^2 / (4 s^2))`; the mean is exact).
* `MALA`: the same proposal with a Metropolis-Hastings correction (exact; MALA(h) is HMC with one leapfrog step).
* `HMC`: `n_leapfrog` leapfrog steps of size `h` with a standard-normal momentum, then MH.
* `PyroHMC`, `PyroNUTS` (optional, need pyro-ppl): pyro's kernels behind the same interface. Pyro runs the whole
  batch as ONE chain on the product density, so its accept/reject and its step size are joint over all rows.

Every proposal whose log density (or gradient, or position) is non-finite is rejected, as the official MISA
sampler does when HMC leaves the tanh box. A non-finite value at the initial state raises `NonFiniteChainError`
naming the chain and step; with `on_nonfinite="raise"`, so does any non-finite proposal (checked once, after the
loop, so the loop stays sync-free). Each sampler returns a `SampleResult` with the samples, the per-chain
acceptance rate and step size, and the per-chain count of rejected non-finite proposals.

Step-size adaptation (per chain by default), during the first `adapt_steps` steps:

* `adapt="simple"`: TFP's `SimpleStepSizeAdaptation` (used by the official MISA code): after each step,
  `h <- h (1 + rate)` if the acceptance probability exceeds `target_accept`, else `h <- h / (1 + rate)`;
  defaults `rate=0.01`, `target_accept=0.75`, `adapt_steps=int(0.8 * burn_in)`.
* `adapt="dual_averaging"`: Nesterov dual averaging of `log h` (Hoffman & Gelman 2014, Alg. 5;
  gamma=0.05, t0=10, kappa=0.75), defaults `adapt_steps=burn_in`; the averaged step is used afterwards.

`sample_tilted(sampler, law, critic, ...)` runs a sampler on the tilted law `q(y|x) e^{T(x,y)} / Z(x)` of a
batched proposal law (`DiagGaussian` / `TanhDiagGaussian` from `proposals.py`): bounded laws run in the
unconstrained space `u = atanh(y)` with the log-Jacobian (`law.log_prob_unconstrained(u) = log q(tanh u) +
log|d tanh/du|`, which for a tanh-Gaussian is the Gaussian density of u), and by default the chain runs in
coordinates whitened by the law's own mean and scale (a diagonal mass matrix), so that `h` is in units of the
proposal's standard deviation. `HMC(jitter=...)` randomises the step per chain and step.

Performance: per gradient evaluation the sampler adds ~15 small tensor ops (proposal, finiteness checks, MH
select); at the RL shapes (256 chains, a 256-256 MLP critic) that is ~10-15% on top of the autograd cost of the
target itself. Hooks for a faster gradient: `value_and_grad=` (of the whole target) on `Sampler.sample`, and
`critic_value_and_grad=` (of the critic only) on `sample_tilted` / `MCMCLogZ`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._math import logmeanexp
from .options import require_int
from .proposals import DiagGaussian, TanhDiagGaussian

LogDensity = Callable[[Tensor], Tensor]
ValueAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]

__all__ = [
    "HMC",
    "MALA",
    "NonFiniteChainError",
    "PyroHMC",
    "PyroNUTS",
    "SampleResult",
    "Sampler",
    "ULA",
    "available_samplers",
    "autograd_value_and_grad",
    "make_sampler",
    "sample_tilted",
]

# Noise is drawn for this many steps at a time: one RNG call per block instead of per step, without holding
# [n_steps, *B, d] at once for long chains.
_NOISE_BLOCK = 32

#: where `sample_tilted` runs a bounded law's chain
SPACES = ("unconstrained", "constrained")


class NonFiniteChainError(RuntimeError):
    """A chain met a non-finite log density or gradient where it may not (its initial state, or any proposal
    under `on_nonfinite="raise"`). `chain` is the chain's index in the batch shape, `step` the step (0 = init)."""

    def __init__(self, message: str, chain: tuple[int, ...], step: int) -> None:
        super().__init__(message)
        self.chain, self.step = chain, step


@dataclass(frozen=True, eq=False)
class SampleResult:
    """What a sampler returns.

    Attributes:
        samples: `[N, S, d]` retained states in the constrained space (after burn-in and thinning); with `C`
            chains per row (`init` of shape `[N, C, d]`) the chains are pooled, `[N, C*S, d]`, chain-major.
        unconstrained: the same states in the space the chain ran in (equal to `samples` for unbounded laws).
        accept_rate: `[*B]` fraction of retained steps whose proposal was accepted, per chain (`[N]` or `[N, C]`).
        accept_prob: `[*B]` mean MH acceptance probability `min(1, ratio)` over retained steps, per chain.
        step_size: `[*B]` step size `h` per chain at the end of the run (after adaptation).
        n_nonfinite: `[*B]` int64 count of proposals rejected for a non-finite log density, gradient or position
            (over all steps, burn-in included), or None where the backend does not track it (pyro).
        n_grad_evals: gradient evaluations per chain over the whole run (burn-in included).
    """

    samples: Tensor
    unconstrained: Tensor
    accept_rate: Tensor
    accept_prob: Tensor
    step_size: Tensor
    n_nonfinite: Tensor | None
    n_grad_evals: int

    @property
    def mean_accept_rate(self) -> Tensor:
        """Acceptance rate averaged over chains, 0-d tensor."""
        return self.accept_rate.mean()


def autograd_value_and_grad(log_density: LogDensity) -> ValueAndGrad:
    """`u -> (log_density(u), d log_density / du)`, both detached.

    The gradient is taken wrt the input only (`torch.autograd.grad` with `inputs=u`): nothing accumulates into
    network weights and no graph is kept (`create_graph=False`). Works under an outer `torch.no_grad()`.
    """

    def value_and_grad(u: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            lp = log_density(u)
            if not lp.requires_grad:  # constant in u (e.g. a flat target): zero gradient
                return lp.detach(), torch.zeros_like(u)
            (g,) = torch.autograd.grad(lp.sum(), inputs=u, allow_unused=True)
        return lp.detach(), torch.zeros_like(u) if g is None else g

    return value_and_grad


def _all_or_vmapped(mask: Tensor) -> bool:
    """`bool(mask.all())`; True under `torch.func.vmap`, where a tensor cannot steer Python (a vmapped caller, such as
    the stacked seeds of `rl.seeds`, checks the finiteness of what it gets back)."""
    try:
        return bool(mask.all())
    except RuntimeError as err:
        if "data-dependent control flow" in str(err):
            return True
        raise


def _first_index(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


class Sampler:
    """Base class: the time loop, burn-in, thinning, adaptation and non-finite handling shared by the samplers.

    Subclasses implement `_propose` (one transition's proposal and its log MH ratio).

    Args:
        step_size: initial `h` (> 0), a float or a `[*B]` tensor of per-chain values.
        burn_in: default number of discarded initial steps (`sample(..., burn_in=)` overrides).
        thin: default thinning: keep every `thin`-th state after burn-in.
        adapt: `"simple"`, `"dual_averaging"` or None (fixed step size).
        target_accept: target acceptance probability of the adaptation, in (0, 1).
        adapt_rate: multiplicative rate of the simple rule.
        adapt_steps: number of initial steps that adapt; None = `int(0.8 * burn_in)` for "simple" (as the official
            MISA code), `burn_in` for "dual_averaging".
        per_chain: adapt each chain's step size from its own acceptance; False averages the acceptance probability
            over all chains (TFP's behaviour with a scalar step size) and keeps one shared step size.
        on_nonfinite: "reject" (default: a non-finite proposal is a rejection, counted in `n_nonfinite`) or
            "raise" (after the run, raise `NonFiniteChainError` at the first chain/step that proposed one).
    """

    name = "sampler"
    #: gradient evaluations per step
    grads_per_step = 1
    #: whether the sampler has an MH correction (and so acceptance to adapt on)
    metropolis = True
    #: relative step-size jitter: each step uses h * U(1 - jitter, 1 + jitter) per chain (0 = fixed h)
    jitter = 0.0
    #: whether `sample` takes an explicit `value_and_grad` (a hand-written or compiled gradient of the target)
    takes_value_and_grad = True
    #: whether `sample` may run in a worker thread beside other torch work (it draws from its `generator` only)
    thread_safe = True

    def __init__(
        self,
        step_size: float | Tensor = 1.0,
        burn_in: int = 5,
        thin: int = 1,
        adapt: str | None = "simple",
        target_accept: float = 0.75,
        adapt_rate: float = 0.01,
        adapt_steps: int | None = None,
        per_chain: bool = True,
        on_nonfinite: str = "reject",
    ) -> None:
        if isinstance(step_size, Tensor):
            if not bool((step_size > 0).all()):
                raise ValueError("step_size must be > 0 for every chain")
        elif not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive finite number or tensor; got {step_size!r}")
        if adapt == "none":
            adapt = None
        if adapt not in (None, "simple", "dual_averaging"):
            raise ValueError(f"adapt must be 'simple', 'dual_averaging' or None ('none'); got {adapt!r}")
        if adapt is not None and not self.metropolis:
            raise ValueError(
                f"{type(self).__name__} has no accept/reject step, so it cannot adapt; pass adapt=None"
            )
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1); got {target_accept!r}")
        if not adapt_rate > 0.0:
            raise ValueError(f"adapt_rate must be > 0; got {adapt_rate!r}")
        if on_nonfinite not in ("reject", "raise"):
            raise ValueError(f"on_nonfinite must be 'reject' or 'raise'; got {on_nonfinite!r}")
        self.step_size = step_size
        self.burn_in = require_int("burn_in", burn_in, 0)
        self.thin = require_int("thin", thin, 1)
        self.adapt, self.target_accept, self.adapt_rate = adapt, float(target_accept), float(adapt_rate)
        self.adapt_steps = None if adapt_steps is None else require_int("adapt_steps", adapt_steps, 0)
        self.per_chain, self.on_nonfinite = per_chain, on_nonfinite

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(step_size={self.step_size}, burn_in={self.burn_in}, thin={self.thin}, "
            f"adapt={self.adapt!r}, target_accept={self.target_accept})"
        )

    def _n_adapt(self, burn_in: int) -> int:
        if self.adapt is None:
            return 0
        if self.adapt_steps is not None:
            return self.adapt_steps
        return int(0.8 * burn_in) if self.adapt == "simple" else burn_in

    # -- one transition: subclasses -------------------------------------------------------------------------
    def _propose(
        self, u: Tensor, lp: Tensor, g: Tensor, h: Tensor, noise: Tensor, vg: ValueAndGrad
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """From state `u [*B, d]` with log density `lp [*B]` and gradient `g`, step `h [*B, 1]` and standard
        normal `noise [*B, d]`: return `(u', lp', g', log MH ratio [*B])` (the ratio may be NaN/inf where the
        proposal is non-finite; the caller rejects those)."""
        raise NotImplementedError

    # -- the loop --------------------------------------------------------------------------------------------
    def sample(
        self,
        log_density: LogDensity | None,
        init: Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        *,
        burn_in: int | None = None,
        thin: int | None = None,
        step_size: float | Tensor | None = None,
        value_and_grad: ValueAndGrad | None = None,
        to_constrained: Callable[[Tensor], Tensor] | None = None,
    ) -> SampleResult:
        """Run one chain per batch entry of `init` and return the retained states.

        Args:
            log_density: `u [*B, d] -> [*B]`, unnormalised log density in nats, independent across batch entries.
                May be None when `value_and_grad` is given.
            init: `[N, d]` or `[N, C, d]` initial states (detached; one chain per row, or C per row).
            n_samples: retained states per chain S (>= 1).
            generator: the source of every random draw (momenta, proposals, uniforms).
            burn_in: overrides the constructor's burn-in for this call.
            thin: overrides the constructor's thinning for this call.
            step_size: overrides the constructor's step size for this call.
            value_and_grad: optional `u -> (log p(u) [*B], grad [*B, d])` replacing autograd of `log_density`
                (e.g. a compiled or hand-written input gradient).
            to_constrained: optional map applied to the retained states for `SampleResult.samples`.

        Raises:
            ValueError: bad shapes or counts (named).
            NonFiniteChainError: a non-finite log density/gradient at the initial state (step 0), or, with
                `on_nonfinite="raise"`, at any proposal.
        """
        if not isinstance(init, Tensor) or not init.is_floating_point():
            raise TypeError(f"init must be a floating tensor; got {type(init).__name__}")
        if init.dim() not in (2, 3) or init.shape[-1] == 0 or init.numel() == 0:
            raise ValueError(
                f"init must have shape [N, d] or [N, C, d] with N, C, d >= 1; got {tuple(init.shape)}"
            )
        n_samples = require_int("n_samples", n_samples, 1)
        burn_in = self.burn_in if burn_in is None else require_int("burn_in", burn_in, 0)
        thin = self.thin if thin is None else require_int("thin", thin, 1)
        if value_and_grad is None:
            if log_density is None:
                raise ValueError("sample needs log_density (or value_and_grad)")
            value_and_grad = autograd_value_and_grad(log_density)
        batch = init.shape[:-1]
        u = init.detach().clone()
        lp, g = value_and_grad(u)
        if lp.shape != batch:
            raise ValueError(
                f"log_density must map states {tuple(init.shape)} to shape {tuple(batch)} (one value per chain); "
                f"got {tuple(lp.shape)}"
            )
        if g.shape != u.shape:
            raise ValueError(
                f"the gradient must have the state's shape {tuple(u.shape)}; got {tuple(g.shape)}"
            )
        ok0 = torch.isfinite(lp) & torch.isfinite(g).all(-1) & torch.isfinite(u).all(-1)
        if not _all_or_vmapped(ok0):  # one sync, before the loop
            idx = _first_index(~ok0)
            raise NonFiniteChainError(
                f"{type(self).__name__}: chain {idx} has a non-finite log density or gradient at its initial state "
                f"(step 0): log_density={lp[idx].item()}; start the chain inside the support",
                chain=idx,
                step=0,
            )

        h = self._initial_step(step_size, batch, u)  # [*B, 1]
        n_adapt = self._n_adapt(burn_in)
        n_steps = burn_in + n_samples * thin
        target = self.target_accept
        if self.adapt == "dual_averaging":
            mu = torch.log(10.0 * h)
            h_bar = torch.zeros_like(h)
            log_h_avg = torch.zeros_like(h)

        n_accept = torch.zeros(batch, dtype=u.dtype, device=u.device)
        sum_accept_prob = torch.zeros_like(n_accept)
        n_nonfinite = torch.zeros(batch, dtype=torch.int64, device=u.device)
        first_bad = torch.full(batch, -1, dtype=torch.int64, device=u.device)
        neg_inf = torch.tensor(-math.inf, dtype=u.dtype, device=u.device)
        kept: list[Tensor] = []
        for i in range(n_steps):
            j = i % _NOISE_BLOCK
            if j == 0:
                m = min(_NOISE_BLOCK, n_steps - i)
                noise_block = torch.randn((m, *u.shape), generator=generator, dtype=u.dtype, device=u.device)
                if self.metropolis:
                    unif_block = torch.rand((m, *batch), generator=generator, dtype=u.dtype, device=u.device)
                if self.jitter > 0.0:
                    jit_block = torch.rand(
                        (m, *batch, 1), generator=generator, dtype=u.dtype, device=u.device
                    )
                    jit_block = 1.0 + self.jitter * (2.0 * jit_block - 1.0)
            h_step = h * jit_block[j] if self.jitter > 0.0 else h
            u_new, lp_new, g_new, log_ratio = self._propose(u, lp, g, h_step, noise_block[j], value_and_grad)
            ok = torch.isfinite(lp_new) & torch.isfinite(g_new).all(-1) & torch.isfinite(u_new).all(-1)
            if self.metropolis:
                # NaN-safe: a non-finite proposal has log ratio -inf (probability 0), whatever its arithmetic gave.
                log_accept = torch.where(ok & ~torch.isnan(log_ratio), log_ratio.clamp(max=0.0), neg_inf)
                accept = torch.log(unif_block[j]) < log_accept
            else:
                log_accept = torch.zeros_like(lp)
                accept = ok
            acc = accept.unsqueeze(-1)
            u = torch.where(acc, u_new, u)
            g = torch.where(acc, g_new, g)
            lp = torch.where(accept, lp_new, lp)
            bad = ~ok
            n_nonfinite = n_nonfinite + bad  # out of place, here and below: the state may be vmapped
            if self.on_nonfinite == "raise":
                first_bad = torch.where(bad & (first_bad < 0), i + 1, first_bad)

            if i < n_adapt:
                accept_prob = torch.exp(log_accept)
                if not self.per_chain:
                    # TFP with a scalar step size: average the acceptance probability over chains (in log space).
                    accept_prob = torch.exp(logmeanexp(log_accept)).expand_as(accept_prob)
                if self.adapt == "simple":
                    up = (accept_prob > target).unsqueeze(-1)
                    h = torch.where(up, h * (1.0 + self.adapt_rate), h / (1.0 + self.adapt_rate))
                else:  # dual averaging, step m = i + 1
                    m_ = i + 1
                    w = 1.0 / (m_ + 10.0)
                    h_bar = (1.0 - w) * h_bar + w * (target - accept_prob.unsqueeze(-1))
                    log_h = mu - math.sqrt(m_) / 0.05 * h_bar
                    eta = m_**-0.75
                    log_h_avg = eta * log_h + (1.0 - eta) * log_h_avg
                    h = torch.exp(log_h_avg) if i == n_adapt - 1 else torch.exp(log_h)

            if i >= burn_in:
                n_accept = n_accept + accept
                sum_accept_prob = sum_accept_prob + torch.exp(log_accept)
                if (i - burn_in + 1) % thin == 0:
                    kept.append(u)

        if self.on_nonfinite == "raise":
            flagged = first_bad >= 0
            if not _all_or_vmapped(~flagged):  # one sync, after the loop
                idx = _first_index(flagged)
                raise NonFiniteChainError(
                    f"{type(self).__name__}: chain {idx} proposed a non-finite log density, gradient or position at "
                    f"step {int(first_bad[idx])} (of {n_steps}); {int(flagged.sum())} chain(s) did so in total",
                    chain=idx,
                    step=int(first_bad[idx]),
                )

        n_ret = float(n_steps - burn_in)
        states = torch.stack(kept).movedim(0, -2)  # [*B, S, d]
        if states.dim() == 4:
            states = states.reshape(states.shape[0], -1, states.shape[-1])  # pool C chains: [N, C*S, d]
        samples = states if to_constrained is None else to_constrained(states)
        return SampleResult(
            samples=samples,
            unconstrained=states,
            accept_rate=n_accept / n_ret,
            accept_prob=sum_accept_prob / n_ret,
            step_size=h.squeeze(-1),
            n_nonfinite=n_nonfinite,
            n_grad_evals=1 + n_steps * self.grads_per_step,
        )

    def _initial_step(self, step_size: float | Tensor | None, batch: torch.Size, u: Tensor) -> Tensor:
        s = self.step_size if step_size is None else step_size
        if isinstance(s, Tensor):
            s = s.to(dtype=u.dtype, device=u.device)
            if s.dim() > 0 and s.shape != batch:
                raise ValueError(
                    f"a per-chain step_size must have shape {tuple(batch)}; got {tuple(s.shape)}"
                )
            if not bool((s > 0).all()):
                raise ValueError("step_size must be > 0 for every chain")
            return s.expand(batch).unsqueeze(-1).clone()
        if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
            raise ValueError(f"step_size must be a positive finite number; got {s!r}")
        return torch.full((*batch, 1), float(s), dtype=u.dtype, device=u.device)


class ULA(Sampler):
    """Unadjusted Langevin: `u' = u + (h^2/2) grad log p(u) + h xi`, every finite proposal accepted.

    Biased by O(h^2) (no MH correction): on a Gaussian target N(m, s^2 I) the chain's stationary law is
    N(m, s^2 / (1 - h^2/(4 s^2)) I). Cheapest per step (one gradient); no step-size adaptation (`adapt=None`).
    """

    name = "ula"
    metropolis = False

    def __init__(
        self,
        step_size: float | Tensor = 0.1,
        burn_in: int = 5,
        thin: int = 1,
        adapt: str | None = None,
        target_accept: float = 0.75,
        adapt_rate: float = 0.01,
        adapt_steps: int | None = None,
        per_chain: bool = True,
        on_nonfinite: str = "reject",
    ) -> None:
        super().__init__(
            step_size, burn_in, thin, adapt, target_accept, adapt_rate, adapt_steps, per_chain, on_nonfinite
        )

    def _propose(self, u, lp, g, h, noise, vg):  # type: ignore[override]
        u_new = u + 0.5 * h.square() * g + h * noise
        lp_new, g_new = vg(u_new)
        return u_new, lp_new, g_new, torch.zeros_like(lp)


class MALA(Sampler):
    """Metropolis-adjusted Langevin: the ULA proposal `u' = u + (h^2/2) grad + h xi` with an MH correction.

    Written in momentum form (`xi` is the momentum of one leapfrog step), which makes it exactly HMC with
    `n_leapfrog=1`; the log MH ratio is `lp' - lp - |p'|^2/2 + |xi|^2/2` with `p' = xi + (h/2)(g + g')`.
    Default target acceptance 0.574 (optimal for MALA, Roberts & Rosenthal 1998).
    """

    name = "mala"

    def __init__(
        self,
        step_size: float | Tensor = 0.5,
        burn_in: int = 5,
        thin: int = 1,
        adapt: str | None = "simple",
        target_accept: float = 0.574,
        adapt_rate: float = 0.01,
        adapt_steps: int | None = None,
        per_chain: bool = True,
        on_nonfinite: str = "reject",
    ) -> None:
        super().__init__(
            step_size, burn_in, thin, adapt, target_accept, adapt_rate, adapt_steps, per_chain, on_nonfinite
        )

    def _propose(self, u, lp, g, h, noise, vg):  # type: ignore[override]
        p_half = noise + 0.5 * h * g
        u_new = u + h * p_half
        lp_new, g_new = vg(u_new)
        p_new = p_half + 0.5 * h * g_new
        log_ratio = lp_new - lp - 0.5 * (p_new.square() - noise.square()).sum(-1)
        return u_new, lp_new, g_new, log_ratio


class HMC(Sampler):
    """Hamiltonian Monte Carlo with `n_leapfrog` leapfrog steps of size `h` and identity mass.

    Defaults follow the official MISA code: 2 leapfrog steps, `h = 1`, simple adaptation towards 0.75 acceptance
    at rate 0.01 over `int(0.8 * burn_in)` steps. The gradient at the current state is cached, so one step costs
    `n_leapfrog` gradient evaluations.

    `jitter > 0` draws each step's size from `h * U(1 - jitter, 1 + jitter)`, per chain (Neal 2011, sec. 5.4.2.2):
    with a fixed short trajectory, a near-Gaussian target whose scale puts the trajectory near half a period makes
    HMC flip the chain's deviation from the mean instead of forgetting it, which slows the burn-in of second
    moments; jitter breaks that resonance at no cost per step.
    """

    name = "hmc"

    def __init__(
        self,
        n_leapfrog: int = 2,
        step_size: float | Tensor = 1.0,
        burn_in: int = 5,
        thin: int = 1,
        adapt: str | None = "simple",
        target_accept: float = 0.75,
        adapt_rate: float = 0.01,
        adapt_steps: int | None = None,
        per_chain: bool = True,
        on_nonfinite: str = "reject",
        jitter: float = 0.0,
    ) -> None:
        super().__init__(
            step_size, burn_in, thin, adapt, target_accept, adapt_rate, adapt_steps, per_chain, on_nonfinite
        )
        self.n_leapfrog = require_int("n_leapfrog", n_leapfrog, 1)
        self.grads_per_step = self.n_leapfrog
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1); got {jitter!r}")
        self.jitter = float(jitter)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", n_leapfrog={self.n_leapfrog})"

    def _propose(self, u, lp, g, h, noise, vg):  # type: ignore[override]
        p = noise + 0.5 * h * g
        u_new = u + h * p
        lp_new, g_new = vg(u_new)
        for _ in range(self.n_leapfrog - 1):
            p = p + h * g_new
            u_new = u_new + h * p
            lp_new, g_new = vg(u_new)
        p = p + 0.5 * h * g_new
        log_ratio = lp_new - lp - 0.5 * (p.square() - noise.square()).sum(-1)
        return u_new, lp_new, g_new, log_ratio


class _PyroSampler(Sampler):
    """pyro-ppl kernels behind the `Sampler` interface (import-guarded: pyro is optional).

    Pyro's HMC/NUTS run ONE chain; the whole batch `[*B, d]` is its state and the target is the sum of the
    per-row log densities, so accept/reject and the (dual-averaging) step size are joint over all rows: with many
    rows a joint move is accepted less often than independent per-row moves, and the step size is set by the
    hardest row. Randomness comes from the torch global RNG, which we fork and seed from `generator` (so it must
    not run beside other work in another thread: `thread_safe = False`); pyro differentiates the density itself
    (`takes_value_and_grad = False`).
    """

    name = "pyro"
    metropolis = True
    takes_value_and_grad = False
    thread_safe = False
    #: pyro's accept/reject and step size are joint over the whole batch
    per_chain = False

    def __init__(
        self,
        step_size: float = 1.0,
        burn_in: int = 5,
        thin: int = 1,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = False,
        target_accept: float = 0.8,
        jit_compile: bool = False,
    ) -> None:
        try:
            import pyro  # noqa: F401
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{type(self).__name__} needs pyro-ppl: pip install 'misa-toolkit[pyro]'"
            ) from e
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive finite number; got {step_size!r}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1); got {target_accept!r}")
        self.step_size, self.burn_in, self.thin = float(step_size), require_int("burn_in", burn_in, 0), thin
        require_int("thin", thin, 1)
        self.on_nonfinite = "reject"
        self.adapt_step_size, self.adapt_mass_matrix = adapt_step_size, adapt_mass_matrix
        self.target_accept, self.jit_compile = target_accept, jit_compile

    def _kernel(self, potential_fn: Callable[[dict[str, Tensor]], Tensor], step_size: float) -> Any:
        raise NotImplementedError

    def _grads_per_step(self, kernel: Any) -> int:
        return 0  # unknown for NUTS (varies); reported as 0

    def sample(
        self,
        log_density: LogDensity | None,
        init: Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        *,
        burn_in: int | None = None,
        thin: int | None = None,
        step_size: float | None = None,
        value_and_grad: ValueAndGrad | None = None,
        to_constrained: Callable[[Tensor], Tensor] | None = None,
    ) -> SampleResult:
        """Same contract as `Sampler.sample`; `value_and_grad` is not supported (pyro differentiates itself) and
        `step_size` must be a float (pyro has one step size)."""
        if log_density is None or value_and_grad is not None:
            raise ValueError(f"{type(self).__name__} needs log_density and does not take value_and_grad")
        with torch.enable_grad():  # pyro differentiates the density itself, also under a caller's no_grad
            return self._sample(
                log_density, init, n_samples, generator, burn_in, thin, step_size, to_constrained
            )

    def _sample(
        self,
        log_density: LogDensity,
        init: Tensor,
        n_samples: int,
        generator: torch.Generator | None,
        burn_in: int | None,
        thin: int | None,
        step_size: float | None,
        to_constrained: Callable[[Tensor], Tensor] | None,
    ) -> SampleResult:
        import pyro

        if not isinstance(init, Tensor) or not init.is_floating_point():
            raise TypeError(f"init must be a floating tensor; got {type(init).__name__}")
        if init.dim() not in (2, 3) or init.numel() == 0:
            raise ValueError(
                f"init must have shape [N, d] or [N, C, d] with N, C, d >= 1; got {tuple(init.shape)}"
            )
        n_samples = require_int("n_samples", n_samples, 1)
        burn_in = self.burn_in if burn_in is None else require_int("burn_in", burn_in, 0)
        thin = self.thin if thin is None else require_int("thin", thin, 1)
        if isinstance(step_size, Tensor):
            raise ValueError(f"{type(self).__name__} has one joint step size; pass a float")
        batch = init.shape[:-1]
        u0 = init.detach().clone()
        lp0, g0 = autograd_value_and_grad(log_density)(u0)
        if lp0.shape != batch:
            raise ValueError(
                f"log_density must map states {tuple(init.shape)} to shape {tuple(batch)}; got {tuple(lp0.shape)}"
            )
        ok0 = torch.isfinite(lp0) & torch.isfinite(g0).all(-1)
        if not bool(ok0.all()):
            idx = _first_index(~ok0)
            raise NonFiniteChainError(
                f"{type(self).__name__}: chain {idx} has a non-finite log density or gradient at its initial state "
                f"(step 0): log_density={lp0[idx].item()}",
                chain=idx,
                step=0,
            )

        def potential_fn(params: dict[str, Tensor]) -> Tensor:
            return -log_density(params["u"]).sum()

        kernel = self._kernel(potential_fn, float(self.step_size if step_size is None else step_size))
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        n_steps = n_samples * thin
        out = []
        devices = [u0.device] if u0.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
            torch.manual_seed(seed)  # not pyro.set_rng_seed: leave numpy's and random's state alone
            kernel.initial_params = {"u": u0}
            kernel.setup(burn_in)
            params = {"u": u0}
            for _ in range(burn_in):
                params = kernel.sample(params)
            for i in range(n_steps):
                params = kernel.sample(params)
                if (i + 1) % thin == 0:
                    out.append(params["u"].detach())
            diag = kernel.diagnostics()
            final_step = float(kernel.step_size)
            kernel.cleanup()
        states = torch.stack(out, dim=-2)  # [*B, S, d]
        if states.dim() == 4:
            states = states.reshape(states.shape[0], -1, states.shape[-1])
        rate = torch.full(batch, float(diag["acceptance rate"]), dtype=u0.dtype, device=u0.device)
        return SampleResult(
            samples=states if to_constrained is None else to_constrained(states),
            unconstrained=states,
            accept_rate=rate,
            accept_prob=rate,
            step_size=torch.full(batch, final_step, dtype=u0.dtype, device=u0.device),
            n_nonfinite=None,
            n_grad_evals=(burn_in + n_steps) * self._grads_per_step(kernel),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(step_size={self.step_size}, burn_in={self.burn_in}, thin={self.thin})"


class PyroHMC(_PyroSampler):
    """pyro's `pyro.infer.mcmc.HMC` kernel (`n_leapfrog` steps, dual-averaging step size during burn-in)."""

    name = "pyro-hmc"

    def __init__(
        self,
        n_leapfrog: int = 2,
        step_size: float = 1.0,
        burn_in: int = 5,
        thin: int = 1,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = False,
        target_accept: float = 0.8,
        jit_compile: bool = False,
    ) -> None:
        super().__init__(
            step_size, burn_in, thin, adapt_step_size, adapt_mass_matrix, target_accept, jit_compile
        )
        self.n_leapfrog = require_int("n_leapfrog", n_leapfrog, 1)

    def _kernel(self, potential_fn, step_size):  # type: ignore[override]
        from pyro.infer.mcmc import HMC as _HMC

        return _HMC(
            potential_fn=potential_fn,
            step_size=step_size,
            num_steps=self.n_leapfrog,
            adapt_step_size=self.adapt_step_size,
            adapt_mass_matrix=self.adapt_mass_matrix,
            target_accept_prob=self.target_accept,
            jit_compile=self.jit_compile,
            ignore_jit_warnings=True,
        )

    def _grads_per_step(self, kernel: Any) -> int:
        return self.n_leapfrog


class PyroNUTS(_PyroSampler):
    """pyro's `pyro.infer.mcmc.NUTS` kernel (adaptive path length up to `2**max_tree_depth` leapfrog steps)."""

    name = "pyro-nuts"

    def __init__(
        self,
        step_size: float = 1.0,
        burn_in: int = 5,
        thin: int = 1,
        max_tree_depth: int = 10,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = False,
        target_accept: float = 0.8,
        jit_compile: bool = False,
    ) -> None:
        super().__init__(
            step_size, burn_in, thin, adapt_step_size, adapt_mass_matrix, target_accept, jit_compile
        )
        self.max_tree_depth = require_int("max_tree_depth", max_tree_depth, 1)

    def _kernel(self, potential_fn, step_size):  # type: ignore[override]
        from pyro.infer.mcmc import NUTS as _NUTS

        return _NUTS(
            potential_fn=potential_fn,
            step_size=step_size,
            adapt_step_size=self.adapt_step_size,
            adapt_mass_matrix=self.adapt_mass_matrix,
            target_accept_prob=self.target_accept,
            max_tree_depth=self.max_tree_depth,
            jit_compile=self.jit_compile,
            ignore_jit_warnings=True,
        )


_SAMPLERS: dict[str, type] = {
    "ula": ULA,
    "mala": MALA,
    "hmc": HMC,
    "pyro-hmc": PyroHMC,
    "pyro-nuts": PyroNUTS,
}


def available_samplers() -> list[str]:
    """Names accepted by `make_sampler`."""
    return sorted(_SAMPLERS)


def make_sampler(name: str | Sampler, **options: Any) -> Sampler:
    """A sampler by name (`"hmc"`, `"mala"`, `"ula"`, `"pyro-hmc"`, `"pyro-nuts"`) with keyword options; options
    that are None are dropped (the class default applies). A sampler instance is returned as is (then `options`
    must be empty or all None).

    Raises:
        ValueError: unknown name (lists the names), or an option the sampler does not take.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if not isinstance(name, str):
        if options:
            raise ValueError(f"options {sorted(options)} cannot be applied to the sampler instance {name!r}")
        return name
    key = name.lower()
    if key not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available_samplers())}")
    cls = _SAMPLERS[key]
    import inspect

    accepted = set(list(inspect.signature(cls.__init__).parameters)[1:])
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"sampler {name!r} got unknown option(s) {unknown}; it takes: {sorted(accepted)}")
    return cls(**options)


def _detached_law(law: Any) -> Any:
    """The same law with detached parameters: the chain needs no graph into the proposal's weights."""
    mean, log_std = getattr(law, "mean", None), getattr(law, "log_std", None)
    if isinstance(mean, Tensor) and isinstance(log_std, Tensor):
        return type(law)(mean.detach(), log_std.detach())
    return law


def sample_tilted(
    sampler: Sampler,
    law: Any,
    critic: Callable[[Tensor], Tensor],
    n_samples: int,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    chains: int = 1,
    precondition: bool = True,
    critic_value_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    space: str = "unconstrained",
    **options: Any,
) -> SampleResult:
    """Sample the tilted law `q(y|x_i) e^{T(x_i, y)} / Z(x_i)`, one (or `chains`) chain(s) per row i.

    Args:
        sampler: a `Sampler` (or pyro sampler).
        law: a batched proposal law for the N rows (`DiagGaussian` or `TanhDiagGaussian`: `mean`/`log_std` `[N, d]`,
            `log_prob_unconstrained`, `to_constrained`, `to_unconstrained`, `bounded`). Its parameters are detached
            for the chain.
        critic: `y [N, C, d] -> [N, C]`, the critic `T(x_i, y)` with x closed over, in nats.
        n_samples: retained samples per chain S.
        init: `[N, d]` or `[N, C, d]` starting points in the constrained space (the data y, or the dataset action in
            RL); None starts at draws from `law`. Bounded laws clamp the start strictly inside the box first.
        generator: the source of every random draw.
        chains: chains per row C when `init` is `[N, d]` or None.
        precondition: run the chain in whitened coordinates `z = (u - mean) / std` of the law (a diagonal mass
            matrix), so that `step_size` is in units of the proposal's scale; False runs on `u` directly (as the
            official MISA code runs on the action).
        critic_value_and_grad: optional `y [N, C, d] -> (T [N, C], dT/dy [N, C, d])` replacing autograd through
            the critic (e.g. a compiled or hand-written input gradient of a Q network); the sampler composes it with
            the law's own (closed-form) terms. Only for `DiagGaussian`/`TanhDiagGaussian` laws and our samplers.
        space: where a bounded law's chain runs: "unconstrained" (on `u = atanh(y)` with the log-Jacobian, the
            default) or "constrained" (on `y` itself, as the official MISA code runs HMC on the action: a proposal
            outside the box has a non-finite log density and is rejected; `precondition` does not apply). Laws on
            all of R^d run on `y` either way.
        **options: passed to `sampler.sample` (`burn_in`, `thin`, `step_size`).

    Returns:
        `SampleResult` with `samples [N, C*S, d]` in the constrained space and `unconstrained` (the atanh of the
        samples for bounded laws; equal to `samples` otherwise).
    """
    require_int("chains", chains, 1)
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}; got {space!r}")
    q = _detached_law(law)
    mean, log_std = q.mean, q.log_std
    n, d = mean.shape
    single_chain = chains == 1 and (init is None or init.dim() == 2)
    y0: Tensor | None = None
    if init is None:
        u0 = q.rsample_unconstrained(chains, generator) if hasattr(q, "rsample_unconstrained") else None
        if u0 is None:
            u0 = q.to_unconstrained(q.sample(chains, generator))
    else:
        if init.dim() == 2:
            init = init.unsqueeze(1).expand(n, chains, d) if chains > 1 else init.unsqueeze(1)
        if init.dim() != 3 or init.shape[0] != n or init.shape[2] != d:
            raise ValueError(
                f"init must have shape [N, d] or [N, C, d] with N={n}, d={d}; got {tuple(init.shape)}"
            )
        y0 = init.detach().to(mean.dtype)
        if getattr(q, "bounded", False):
            edge = 1.0 - torch.finfo(y0.dtype).eps
            y0 = y0.clamp(-edge, edge)
        u0 = q.to_unconstrained(y0)
    if critic_value_and_grad is not None:
        if type(q) not in (DiagGaussian, TanhDiagGaussian) or not sampler.takes_value_and_grad:
            raise ValueError(
                "critic_value_and_grad needs a DiagGaussian/TanhDiagGaussian law and one of our samplers "
                f"(got {type(q).__name__}, {type(sampler).__name__})"
            )
        bounded = bool(q.bounded)

        def _critic_terms(_: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
            """T at y = to_constrained(u) and dT/du (chain rule through tanh: dy/du = 1 - y^2)."""
            y = q.to_constrained(u)
            t, g_y = critic_value_and_grad(y)
            return t, g_y * (1.0 - y.square()) if bounded else g_y

    def log_density_u(u: Tensor) -> Tensor:
        return q.log_prob_unconstrained(u) + critic(q.to_constrained(u))

    m, s = mean.unsqueeze(1), torch.exp(log_std).unsqueeze(1)  # [N, 1, d], broadcast over chains
    if space == "constrained" and q.bounded:
        vg = None
        if critic_value_and_grad is not None:

            def vg(y: Tensor) -> tuple[Tensor, Tensor]:
                log_q, g_q = q.log_prob_and_grad(y)
                t, g_t = critic_value_and_grad(y)
                return log_q + t, g_q + g_t

        def log_density_y(y: Tensor) -> Tensor:
            return q.log_prob(y) + critic(y)

        start = q.to_constrained(u0) if y0 is None else y0
        res = sampler.sample(log_density_y, start, n_samples, generator, value_and_grad=vg, **options)
        u_samples = q.to_unconstrained(res.samples)  # accepted states lie strictly inside the box
    elif precondition:
        # u = m + s z. In u the law is N(m, s^2) for Gaussian and tanh-Gaussian laws alike (the tanh Jacobian
        # cancels: q_u(u) = q(tanh u) |d tanh/du|). The Jacobian |s| of z -> u is constant, so the unnormalised
        # whitened density is -|z|^2/2 + T: no division by s, no normalising constants in the hot loop.
        if type(q) in (DiagGaussian, TanhDiagGaussian):

            def log_density(z: Tensor) -> Tensor:
                return -0.5 * z.square().sum(-1) + critic(q.to_constrained(m + s * z))

        else:

            def log_density(z: Tensor) -> Tensor:
                return log_density_u(m + s * z)

        vg = None
        if critic_value_and_grad is not None:

            def vg(z: Tensor) -> tuple[Tensor, Tensor]:
                t, g_u = _critic_terms(z, m + s * z)
                return -0.5 * z.square().sum(-1) + t, s * g_u - z

        res = sampler.sample(log_density, (u0 - m) / s, n_samples, generator, value_and_grad=vg, **options)
        u_samples = m + s * res.unconstrained
    else:
        vg = None
        if critic_value_and_grad is not None:
            inv_var = torch.exp(-2.0 * log_std).unsqueeze(1)

            def vg(u: Tensor) -> tuple[Tensor, Tensor]:
                t, g_u = _critic_terms(u, u)
                return q.log_prob_unconstrained(u) + t, g_u - (u - m) * inv_var

        res = sampler.sample(log_density_u, u0, n_samples, generator, value_and_grad=vg, **options)
        u_samples = res.unconstrained
    squeeze = single_chain and res.accept_rate.dim() == 2

    def per_row(t: Tensor | None) -> Tensor | None:
        return t.squeeze(1) if squeeze and t is not None else t

    return SampleResult(
        samples=q.to_constrained(u_samples),
        unconstrained=u_samples,
        accept_rate=per_row(res.accept_rate),  # type: ignore[arg-type]
        accept_prob=per_row(res.accept_prob),  # type: ignore[arg-type]
        step_size=per_row(res.step_size),  # type: ignore[arg-type]
        n_nonfinite=per_row(res.n_nonfinite),
        n_grad_evals=res.n_grad_evals,
    )
