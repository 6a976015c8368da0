"""Proposals q(y|x): conditional laws that draw contrastive samples and score them.

Two layers, as in torch.distributions:

* batched *distributions* (`DiagGaussian`, `TanhDiagGaussian`) hold per-row parameters `mean, log_std` of shape
  `[N, d]` and answer `sample(k)` -> `[N, K, d]`, `log_prob(y)` for `y` of shape `[N, d]` or `[N, K, d]`;
* conditional *proposals* (`GaussianProposal`, `TanhGaussianProposal`, or any module with the same two methods)
  map `x [N, dx]` to such a distribution, and expose `sample(x, k, generator)` / `log_prob(x, y)`.

Bounded laws (`TanhDiagGaussian`) also expose the unconstrained coordinates `u = atanh(y)` with
`log_prob_unconstrained(u) = log q(tanh u) + log |d tanh(u)/du|` (the Gaussian density of u), which is what MCMC
samplers run on.
All log densities are in nats.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .options import Option, flag, integer, number, require_int, sizes
from .registry import Estimator

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def _check_params(mean: Tensor, log_std: Tensor) -> None:
    if mean.dim() != 2:
        raise ValueError(f"mean must have shape [N, d]; got shape {tuple(mean.shape)}")
    if log_std.shape != mean.shape:
        raise ValueError(
            f"log_std must have the shape of mean {tuple(mean.shape)}; got shape {tuple(log_std.shape)}"
        )


def _check_k(k: int) -> None:
    require_int("k (samples per row)", k, 1)


def _gaussian_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Sum over the last axis of log N(u; mean, exp(log_std)^2); `mean`/`log_std` broadcast against `u`."""
    z = (u - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * _LOG_2PI).sum(-1)


def _align(y: Tensor, mean: Tensor, name: str = "y") -> tuple[Tensor, Tensor | None]:
    """Return `(mean, log_std)`-broadcastable view info: `[N, d]` rows or `[N, K, d]` samples."""
    if y.dim() == 2 and y.shape == mean.shape:
        return y, None
    if y.dim() == 3 and y.shape[0] == mean.shape[0] and y.shape[2] == mean.shape[1]:
        return y, torch.Size([1])
    raise ValueError(
        f"{name} must have shape [N, d] = {tuple(mean.shape)} or [N, K, d] with N={mean.shape[0]}, "
        f"d={mean.shape[1]}; got shape {tuple(y.shape)}"
    )


def tanh_log_abs_det_jacobian(u: Tensor) -> Tensor:
    """`log |d tanh(u)/du| = log(1 - tanh(u)^2)`, summed over the last axis, stable for any |u|. Nats."""
    return (2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))).sum(-1)


class DiagGaussian:
    """Batch of diagonal Gaussians N(mean_i, diag(exp(2 log_std_i))), parameters `[N, d]`."""

    bounded = False

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        _check_params(mean, log_std)
        self.mean, self.log_std = mean, log_std

    @property
    def event_dim(self) -> int:
        return self.mean.shape[1]

    def _noise(self, k: int, generator: torch.Generator | None) -> Tensor:
        _check_k(k)
        n, d = self.mean.shape
        return torch.randn(n, k, d, generator=generator, device=self.mean.device, dtype=self.mean.dtype)

    def rsample_unconstrained(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draws in the unconstrained space, `[N, K, d]`."""
        eps = self._noise(k, generator)
        return self.mean.unsqueeze(1) + torch.exp(self.log_std).unsqueeze(1) * eps

    def rsample(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draws `[N, K, d]` (differentiable wrt mean and log_std)."""
        return self.to_constrained(self.rsample_unconstrained(k, generator))

    def sample(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws `[N, K, d]`, detached."""
        with torch.no_grad():
            return self.rsample(k, generator)

    def to_constrained(self, u: Tensor) -> Tensor:
        return u

    def to_unconstrained(self, y: Tensor) -> Tensor:
        return y

    def _params_like(self, y: Tensor) -> tuple[Tensor, Tensor]:
        _, extra = _align(y, self.mean)
        if extra is None:
            return self.mean, self.log_std
        return self.mean.unsqueeze(1), self.log_std.unsqueeze(1)

    def log_prob_unconstrained(self, u: Tensor) -> Tensor:
        """Log density of the unconstrained variable, `[N]` or `[N, K]`, nats."""
        mean, log_std = self._params_like(u)
        return _gaussian_log_prob(u, mean, log_std)

    def log_prob(self, y: Tensor) -> Tensor:
        """`log q(y)` for `y` of shape `[N, d]` -> `[N]`, or `[N, K, d]` -> `[N, K]`. Nats."""
        return self.log_prob_unconstrained(y)

    def entropy(self) -> Tensor:
        """Differential entropy per row, `[N]`, nats."""
        return (self.log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)


class TanhDiagGaussian(DiagGaussian):
    """Batch of tanh-squashed diagonal Gaussians: `y = tanh(u)`, `u ~ N(mean, diag(std^2))`; support (-1, 1)^d.

    `log_prob(y)` includes the log-Jacobian of the squashing; it is `-inf` outside the open box (the honest value,
    which MCMC treats as a rejection) and finite, without cancellation, up to |y| = 1 - 1e-6 in float32.
    Samples are clamped strictly inside the box so that a float32 `tanh` never returns exactly +-1.
    """

    bounded = True

    def to_constrained(self, u: Tensor) -> Tensor:
        y = torch.tanh(u)
        edge = 1.0 - torch.finfo(y.dtype).eps
        return y.clamp(-edge, edge)

    def to_unconstrained(self, y: Tensor) -> Tensor:
        # atanh(y) = (log(1+y) - log(1-y)) / 2; 1 - y is exact near 1 (Sterbenz), so no cancellation.
        return 0.5 * (torch.log1p(y) - torch.log1p(-y))

    # log_prob_unconstrained is inherited: the density of u = atanh(y) is the Gaussian itself,
    # log q(tanh u) + log|d tanh u / du| = log N(u; mean, std^2).

    def log_prob_of_squashed(self, u: Tensor) -> Tensor:
        """`log q(tanh u)` from the pre-squash value `u` `[N(, K), d]` -> `[N(, K)]`, nats: exact where `tanh(u)`
        rounds to +-1 (no round trip through `atanh`)."""
        return self.log_prob_unconstrained(u) - tanh_log_abs_det_jacobian(u)

    def log_prob_and_grad(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """`(log q(y), d log q / dy)` in closed form for `y [N(, C), d]` -> `[N(, C)]`, `[N(, C), d]` (nats), no
        autograd: what an MCMC chain on `y` itself evaluates every step. Non-finite outside the open box (`log1p`
        of a value below -1 is NaN), which the samplers treat as a rejection. First derivatives only; the
        parameters are read as constants."""
        mean, log_std = self.mean, self.log_std
        inv_std = torch.exp(-log_std)
        log_norm = (-log_std - 0.5 * _LOG_2PI).sum(-1)
        if y.dim() == 3:
            mean, inv_std, log_norm = mean.unsqueeze(1), inv_std.unsqueeze(1), log_norm.unsqueeze(1)
        l1p, l1m = torch.log1p(y), torch.log1p(-y)
        z = (0.5 * (l1p - l1m) - mean) * inv_std  # u = atanh(y), whitened
        # log q(y) = log N(atanh y; mean, std) - sum log(1 - y^2); d/dy = (-(u - mean)/std^2 + 2y) / (1 - y^2)
        log_q = (-0.5 * z.square() - l1p - l1m).sum(-1) + log_norm
        return log_q, (2.0 * y - z * inv_std) / (1.0 - y.square())

    def log_prob(self, y: Tensor) -> Tensor:
        mean, log_std = self._params_like(y)
        inside = (y.abs() < 1.0).all(-1)
        y_in = torch.where(inside.unsqueeze(-1), y, torch.zeros_like(y))
        log1p_y, log1m_y = torch.log1p(y_in), torch.log1p(-y_in)
        u = 0.5 * (log1p_y - log1m_y)
        lp = _gaussian_log_prob(u, mean, log_std) - (log1p_y + log1m_y).sum(-1)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def entropy(self) -> Tensor:
        raise NotImplementedError(
            "a tanh-Gaussian has no closed-form entropy; estimate it with -log_prob(samples)"
        )


@runtime_checkable
class Proposal(Protocol):
    """What a conditional proposal offers: draws `[N, K, dy]` and log densities, given `x [N, dx]`."""

    def sample(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor: ...

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor: ...


def _mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class GaussianProposal(nn.Module):
    """Learned conditional diagonal Gaussian q(y|x) = N(mu(x), diag(sigma(x)^2)).

    `hidden=()` gives a linear-Gaussian proposal (mean affine in x, one learned log-std per dimension), which holds
    the exact conditional of any jointly Gaussian task. Otherwise an MLP outputs mean and log-std.
    """

    squashed = False

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden: tuple[int, ...] = (),
        log_std_bounds: tuple[float, float] = (-10.0, 4.0),
    ) -> None:
        super().__init__()
        if x_dim < 1 or y_dim < 1:
            raise ValueError(f"x_dim and y_dim must be >= 1; got x_dim={x_dim}, y_dim={y_dim}")
        self.x_dim, self.y_dim, self.log_std_bounds = x_dim, y_dim, log_std_bounds
        if hidden:
            self.net = _mlp([x_dim, *hidden, 2 * y_dim])
            self.log_std = None
        else:
            self.net = nn.Linear(x_dim, y_dim)
            self.log_std = nn.Parameter(torch.zeros(y_dim))

    def forward(self, x: Tensor) -> DiagGaussian:
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must have shape [N, {self.x_dim}]; got shape {tuple(x.shape)}")
        out = self.net(x)
        if self.log_std is None:
            mean, log_std = out.chunk(2, dim=-1)
        else:
            mean, log_std = out, self.log_std.expand_as(out)
        log_std = log_std.clamp(*self.log_std_bounds)
        cls = TanhDiagGaussian if self.squashed else DiagGaussian
        return cls(mean, log_std)

    def sample(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """`k` draws per row of `x`, `[N, K, dy]`, detached."""
        return self(x).sample(k, generator)

    def rsample(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """`k` reparameterised draws per row, `[N, K, dy]`."""
        return self(x).rsample(k, generator)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """`log q(y|x)`: `y [N, dy]` -> `[N]`, `y [N, K, dy]` -> `[N, K]`. Nats."""
        return self(x).log_prob(y)


class TanhGaussianProposal(GaussianProposal):
    """Learned conditional tanh-squashed Gaussian on (-1, 1)^dy: a policy's shape."""

    squashed = True


class ProposalEstimator(Estimator):
    """Base of the estimators that own a learned proposal `q(y|x)` (Barber-Agakov, the MISA family).

    The proposal is given (`proposal=`, any module mapping `x [N, dx]` to a batched law, e.g. an RL policy) or built
    from `x_dim`, `y_dim` (`GaussianProposal`, or `TanhGaussianProposal` when `squashed`), possibly later through
    `ensure_proposal` once the data's dimensions are known. Subclasses implement `scores(x, y, critic, generator,
    marginal_entropy) -> Scores`.
    """

    needs_proposal = True
    options = {
        "proposal": Option(
            "a module mapping x [N, dx] to a batched law, or None", lambda v: v is None or callable(v)
        ),
        "x_dim": integer(1, optional=True),
        "y_dim": integer(1, optional=True),
        "hidden": sizes(),
        "squashed": flag(),
        "marginal_entropy": number(what="a finite number (H(Y) in nats)", optional=True),
    }

    def __init__(
        self,
        proposal: nn.Module | None = None,
        x_dim: int | None = None,
        y_dim: int | None = None,
        hidden: tuple[int, ...] = (),
        squashed: bool = False,
        marginal_entropy: float | None = None,
    ) -> None:
        super().__init__()
        self.hidden, self.squashed, self.marginal_entropy = tuple(hidden), squashed, marginal_entropy
        self.proposal = proposal
        if proposal is None and (x_dim is not None or y_dim is not None):
            if x_dim is None or y_dim is None:
                raise ValueError(
                    f"{self.name}: give both x_dim and y_dim to build the proposal; got {x_dim}, {y_dim}"
                )
            self.ensure_proposal(x_dim, y_dim)

    def ensure_proposal(self, x_dim: int, y_dim: int) -> nn.Module:
        """Build the learned Gaussian proposal `q(y|x)` for `x [N, x_dim]`, `y [N, y_dim]` if there is none yet (call
        before creating the optimizer, so its parameters are trained). Returns the proposal."""
        if self.proposal is None:
            cls = TanhGaussianProposal if self.squashed else GaussianProposal
            self.proposal = cls(x_dim, y_dim, hidden=self.hidden)
        return self.proposal

    def _law(self, x: Tensor, y: Tensor) -> DiagGaussian:
        """The proposal's law at `x`, after checking the joint batch `x [N, dx]`, `y [N, dy]`."""
        if self.proposal is None:
            raise ValueError(
                f"estimator {self.name!r} has no proposal: pass proposal=..., or x_dim/y_dim, or call "
                "ensure_proposal(x_dim, y_dim) before building the optimizer"
            )
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must be [N, dx] and [N, dy] with the same N; got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        return self.proposal(x)

    def _entropy(self, marginal_entropy: float | Tensor | None) -> float | Tensor | None:
        return self.marginal_entropy if marginal_entropy is None else marginal_entropy
