"""Ground-truth tasks: joint laws of `(X, Y)` whose mutual information is known in closed form.

In the style of the `bmi` benchmark (Czyz et al., 2023). A task is an object with

* `task.sample(n, generator=g)` -> `(x [n, dim_x], y [n, dim_y])`, float32 by default, drawn with the seeded
  `torch.Generator` `g` (same seed, same numbers);
* `task.mi`: the true mutual information `I(X; Y)` in nats, a Python float;
* `task.dim_x`, `task.dim_y`, `task.name`;
* `task.log_density_ratio(x, y)` = `log p(x, y) - log p(x) - log p(y)` in nats, the optimal Donsker-Varadhan
  critic. It broadcasts over leading axes: `x [N, dx]` with `y [N, dy]` gives `[N]`, and `x[:, None]` of shape
  `[N, 1, dx]` with `y[None]` of shape `[1, M, dy]` gives the `[N, M]` matrix of optimal pair scores;
* `task.entropy_y`: the differential entropy `H(Y)` in nats where it has a closed form (Barber-Agakov and the
  MISA bounds need it). Where it has none, reading it raises `AttributeError` saying why, so
  `hasattr(task, "entropy_y")` tells whether it exists.

Tasks here:

* `CorrelatedGaussian(dim, mi)`: Poole et al. (2019), componentwise-correlated standard normals.
* `MultivariateNormalTask(covariance, dim_x, mean=None)`: any joint Gaussian.
* `StudentTTask(dim_x, dim_y, df, dispersion=None)`: a joint multivariate Student-t (heavy tails; its MI exceeds
  the Gaussian MI of the same dispersion by a df-dependent term).
* `TransformedTask(base, transform_x, transform_y)`: any task pushed through invertible maps (`"cubic"`,
  `"asinh"`, `"half_cube"`, `"spiral"`), which leave the MI unchanged.
* `staircase(step)` / `staircase_task(step, base=..., transform=...)`: the MI schedule 2, 4, 6, 8, 10 nats of Poole
  et al.'s and f-DIME's benchmark, on a correlated Gaussian, a Student-t (`student_t_with_mi`) or any base task,
  optionally pushed through an invertible transform.

All log densities and entropies are in nats. Internally the arithmetic runs in float64 (except on devices
without float64, such as MPS) and results are cast back to the dtype of the inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from .options import require_generator, require_int, require_number

__all__ = [
    "Task",
    "CorrelatedGaussian",
    "MultivariateNormalTask",
    "StudentTTask",
    "Transform",
    "PowerTransform",
    "Cubic",
    "Asinh",
    "HalfCube",
    "Spiral",
    "TRANSFORMS",
    "make_transform",
    "TransformedTask",
    "staircase",
    "staircase_task",
    "STAIRCASE_BASES",
    "student_t_with_mi",
    "TASKS",
    "make_task",
]

_LOG_2PI = math.log(2.0 * math.pi)
_EULER_GAMMA = 0.5772156649015329
#: E[log |Z|] for Z ~ N(0, 1)
_E_LOG_ABS_STD_NORMAL = -0.5 * (_EULER_GAMMA + math.log(2.0))


# --------------------------------------------------------------------------------------------------------------
# argument checks


def _check_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    return dtype


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _check_tensor(name: str, t: Any, dim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype; got {t.dtype}")
    if t.dim() < 1 or t.shape[-1] != dim:
        raise ValueError(f"{name} must have shape [..., {dim}]; got shape {tuple(t.shape)}")
    return t


def _prepare_pair(x: Any, y: Any, dim_x: int, dim_y: int) -> tuple[Tensor, Tensor, torch.dtype]:
    """Check `x [..., dim_x]`, `y [..., dim_y]` with broadcastable leading shapes; return them in the working
    dtype along with the output dtype."""
    x = _check_tensor("x", x, dim_x)
    y = _check_tensor("y", y, dim_y)
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device; got {x.device} and {y.device}")
    try:
        torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"the leading shapes of x {tuple(x.shape)} and y {tuple(y.shape)} must broadcast "
            "(e.g. x [N, 1, dx] against y [1, M, dy] for all pairs)"
        ) from None
    out = torch.promote_types(x.dtype, y.dtype)
    wd = _work_dtype(x.device)
    return x.to(wd), y.to(wd), out


def _check_matrix(name: str, m: Any, size: int | None = None) -> Tensor:
    """A symmetric positive-definite float64 CPU matrix, or a ValueError that says what is wrong."""
    try:
        m = torch.as_tensor(m, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"{name} must be a square matrix (tensor, array or nested lists); got {type(m).__name__}"
        ) from e
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square matrix [D, D]; got shape {tuple(m.shape)}")
    if size is not None and m.shape[0] != size:
        raise ValueError(f"{name} must have shape [{size}, {size}]; got shape {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} has non-finite entries")
    scale = float(m.abs().max()) if m.numel() else 0.0
    asym = float((m - m.T).abs().max())
    if asym > 1e-8 * max(scale, 1.0):
        raise ValueError(f"{name} must be symmetric; max |{name} - {name}.T| = {asym:.3g}")
    m = 0.5 * (m + m.T)
    _, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh(m)[0])
        raise ValueError(
            f"{name} must be positive definite; its Cholesky factorisation failed at leading minor {int(info)} "
            f"(smallest eigenvalue {smallest:.3g})"
        )
    return m


def _check_mean(mean: Any, size: int) -> Tensor:
    if mean is None:
        return torch.zeros(size, dtype=torch.float64)
    m = torch.as_tensor(mean, dtype=torch.float64).detach().cpu().clone()
    if m.shape != (size,):
        raise ValueError(f"mean must have shape [{size}]; got shape {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise ValueError("mean has non-finite entries")
    return m


def _lower_inverse(lower: Tensor) -> Tensor:
    eye = torch.eye(lower.shape[0], dtype=lower.dtype)
    return torch.linalg.solve_triangular(lower, eye, upper=False)


def _digamma(v: float) -> float:
    return float(torch.special.digamma(torch.tensor(v, dtype=torch.float64)))


# --------------------------------------------------------------------------------------------------------------
# base class


class Task:
    """A joint law of `(X, Y)` with known mutual information. Subclasses implement `_sample` (float64 draws)
    and `_log_density_ratio` (inputs already checked, in the working dtype)."""

    name: str = "task"
    dim_x: int
    dim_y: int
    mi: float

    def __init__(self) -> None:
        self._param_cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    # -- public API ------------------------------------------------------------------------------------------
    def sample(
        self, n: int, generator: torch.Generator | None = None, *, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """Draw `n` joint samples.

        Args:
            n: number of samples (a positive int).
            generator: the `torch.Generator` that all randomness is drawn from (the global RNG when None); the
                samples live on its device.
            dtype: floating dtype of the returned tensors (float32 by default).

        Returns:
            `(x [n, dim_x], y [n, dim_y])`.
        """
        n = require_int("n", n, 1)
        device = require_generator(generator)
        dtype = _check_dtype(dtype)
        x, y = self._sample(n, generator, device)
        return x.to(dtype), y.to(dtype)

    def log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        """`log p(x, y) - log p(x) - log p(y)` in nats: the optimal DV critic, whose mean under the joint is `mi`.

        Args:
            x: `[..., dim_x]`.
            y: `[..., dim_y]`; the leading shapes broadcast against those of `x` (`x [N, 1, dx]` with
                `y [1, M, dy]` gives the `[N, M]` matrix of all pairs).

        Returns:
            `[broadcast(x.shape[:-1], y.shape[:-1])]` in the promoted dtype of `x` and `y`.
        """
        xw, yw, out = _prepare_pair(x, y, self.dim_x, self.dim_y)
        return self._log_density_ratio(xw, yw).to(out)

    @property
    def entropy_y(self) -> float:
        """`H(Y)` in nats (closed form). Raises `AttributeError` with the reason where there is none."""
        raise AttributeError(f"{type(self).__name__} has no closed-form marginal entropy H(Y)")

    # -- helpers ---------------------------------------------------------------------------------------------
    def _sample(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _param(self, name: str, like: Tensor) -> Tensor:
        """The float64 CPU tensor attribute `name`, on `like`'s device and dtype (cached)."""
        cache = self.__dict__.setdefault("_param_cache", {})
        key = (name, like.device, like.dtype)
        t = cache.get(key)
        if t is None:
            t = getattr(self, name).to(device=like.device, dtype=like.dtype)
            cache[key] = t
        return t

    def _y_gaussian_marginal_std(self) -> Tensor | None:
        """Per-coordinate std `[dim_y]` (float64) when Y's marginal is a zero-mean Gaussian, else None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim_x={self.dim_x}, dim_y={self.dim_y}, mi={self.mi:.6g})"


# --------------------------------------------------------------------------------------------------------------
# Gaussians


class CorrelatedGaussian(Task):
    """Poole et al. (2019): `x, y ~ N(0, I_dim)` with `corr(x_i, y_i) = rho` and all other pairs independent.

    `rho = sqrt(1 - exp(-2 mi / dim))`, so that `I(X; Y) = -dim/2 log(1 - rho^2) = mi` nats exactly.
    Sampling: `y = rho x + sqrt(1 - rho^2) eps`, `eps ~ N(0, I)`.

    Args:
        dim: dimension of x and of y (a positive int).
        mi: the mutual information in nats (>= 0).

    Attributes:
        rho: the componentwise correlation (float).
        covariance: the joint covariance `[2 dim, 2 dim]` of `(x, y)` (float64).
        entropy_y: `dim/2 log(2 pi e)` nats.
    """

    def __init__(self, dim: int = 20, mi: float = 4.0) -> None:
        super().__init__()
        self.dim = require_int("dim", dim, 1)
        self.mi = require_number("mi", mi, 0.0)
        self.dim_x = self.dim_y = self.dim
        # 1 - rho^2 computed directly: no cancellation when rho is close to 1
        self.one_minus_rho2 = math.exp(-2.0 * self.mi / self.dim)
        self.rho = math.sqrt(-math.expm1(-2.0 * self.mi / self.dim))
        self.cond_std = math.sqrt(self.one_minus_rho2)
        self.name = f"correlated-gaussian(dim={self.dim}, mi={self.mi:g})"

    @property
    def covariance(self) -> Tensor:
        eye = torch.eye(self.dim, dtype=torch.float64)
        return torch.cat([torch.cat([eye, self.rho * eye], 1), torch.cat([self.rho * eye, eye], 1)], 0)

    @property
    def entropy_y(self) -> float:
        return 0.5 * self.dim * (_LOG_2PI + 1.0)

    def _y_gaussian_marginal_std(self) -> Tensor | None:
        return torch.ones(self.dim, dtype=torch.float64)

    def _sample(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        wd = _work_dtype(device)
        x = torch.randn(n, self.dim, generator=generator, device=device, dtype=wd)
        eps = torch.randn(n, self.dim, generator=generator, device=device, dtype=wd)
        return x, self.rho * x + self.cond_std * eps

    def _log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        # per component: log N(y; rho x, 1 - rho^2) - log N(y; 0, 1)
        r = y - self.rho * x
        per = (y.square() - r.square() / self.one_minus_rho2).sum(-1)
        return 0.5 * per + self.mi

    def conditional(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parameters of `p(y | x) = N(rho x, (1 - rho^2) I)`, the optimal Barber-Agakov proposal.

        Args:
            x: `[..., dim]`.

        Returns:
            `(mean [..., dim], std [..., dim])` in x's dtype.
        """
        x = _check_tensor("x", x, self.dim)
        return self.rho * x, torch.full_like(x, self.cond_std)

    def conditional_log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """`log p(y | x)` in nats, `x [..., dim]`, `y [..., dim]` broadcasting as in `log_density_ratio`."""
        xw, yw, out = _prepare_pair(x, y, self.dim, self.dim)
        r = (yw - self.rho * xw) / self.cond_std
        lp = -0.5 * r.square().sum(-1) - self.dim * (math.log(self.cond_std) + 0.5 * _LOG_2PI)
        return lp.to(out)

    def sample_conditional(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """`k` draws of `y ~ p(y | x_i)` for each row: `x [N, dim]` -> `[N, k, dim]` in x's dtype."""
        x = _check_tensor("x", x, self.dim)
        if x.dim() != 2:
            raise ValueError(f"x must have shape [N, {self.dim}]; got shape {tuple(x.shape)}")
        k = require_int("k", k, 1)
        require_generator(generator)
        wd = _work_dtype(x.device)
        eps = torch.randn(x.shape[0], k, self.dim, generator=generator, device=x.device, dtype=wd)
        return (self.rho * x.to(wd)[:, None, :] + self.cond_std * eps).to(x.dtype)


class _GaussianFactors:
    """Cholesky-based factors of a joint covariance (or dispersion) `S` split at `dim_x`:
    `S_xx = Lx Lx^T`, `S_yy = Ly Ly^T`, `A = S_yx S_xx^-1` and the Schur complement
    `S_{y|x} = S_yy - A S_xy = Lc Lc^T`. Whitening matrices are the inverses of the lower factors."""

    def __init__(self, cov: Tensor, dim_x: int) -> None:
        sxx, sxy, syy = cov[:dim_x, :dim_x], cov[:dim_x, dim_x:], cov[dim_x:, dim_x:]
        lx = torch.linalg.cholesky(sxx)
        ly = torch.linalg.cholesky(syy)
        # A = S_yx S_xx^-1 = (S_xx^-1 S_xy)^T
        a = torch.cholesky_solve(sxy, lx).T
        cond = syy - a @ sxy
        cond = 0.5 * (cond + cond.T)
        lc = torch.linalg.cholesky(cond)
        self.wx, self.wy, self.wc = _lower_inverse(lx), _lower_inverse(ly), _lower_inverse(lc)
        self.a = a
        self.lc = lc
        self.cond = cond
        self.logdet_x = 2.0 * float(torch.log(torch.diagonal(lx)).sum())
        self.logdet_y = 2.0 * float(torch.log(torch.diagonal(ly)).sum())
        self.logdet_c = 2.0 * float(torch.log(torch.diagonal(lc)).sum())


class _JointGaussianLike(Task):
    """Shared machinery of the elliptical tasks: a location `mean [D]`, a matrix `S [D, D]` split at `dim_x`."""

    mean: Tensor
    mean_x: Tensor
    mean_y: Tensor

    def _setup(self, matrix: Tensor, mean: Tensor, dim_x: int) -> None:
        self.dim_x, self.dim_y = dim_x, matrix.shape[0] - dim_x
        self.mean = mean
        self.mean_x, self.mean_y = mean[:dim_x].clone(), mean[dim_x:].clone()
        f = _GaussianFactors(matrix, dim_x)
        self._f = f
        self.wx, self.wy, self.wc, self.cond_a = f.wx, f.wy, f.wc, f.a
        self.cond_scale_tril = f.lc

    def _mahalanobis(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(d_x [...x], d_y [...y], d_{y|x} [broadcast])`: squared Mahalanobis distances of x, of y, and of y
        from its conditional location given x (`d_x + d_{y|x}` is the joint one)."""
        xc = x - self._param("mean_x", x)
        yc = y - self._param("mean_y", y)
        dx = (xc @ self._param("wx", x).T).square().sum(-1)
        dy = (yc @ self._param("wy", y).T).square().sum(-1)
        r = yc - xc @ self._param("cond_a", x).T
        dc = (r @ self._param("wc", x).T).square().sum(-1)
        return dx, dy, dc

    def _check_x2(self, x: Tensor) -> Tensor:
        x = _check_tensor("x", x, self.dim_x)
        return x


class MultivariateNormalTask(_JointGaussianLike):
    """A joint Gaussian `(x, y) ~ N(mean, covariance)` with x the first `dim_x` coordinates.

    `I(X; Y) = 0.5 (logdet S_xx + logdet S_yy - logdet S)` nats.

    Args:
        covariance: `[D, D]` symmetric positive-definite joint covariance (tensor, numpy array or nested lists).
        dim_x: number of leading coordinates that form x (`1 <= dim_x <= D - 1`); y is the rest.
        mean: optional `[D]` joint mean (zeros when None).

    Attributes:
        covariance, mean: float64 CPU tensors.
        entropy_y: `0.5 logdet(2 pi e S_yy)` nats.
    """

    def __init__(self, covariance: Any, dim_x: int, mean: Any = None) -> None:
        super().__init__()
        cov = _check_matrix("covariance", covariance)
        size = cov.shape[0]
        if size < 2:
            raise ValueError(
                f"covariance must be at least 2x2 (x and y each need a coordinate); got {size}x{size}"
            )
        dim_x = require_int("dim_x", dim_x, 1)
        if dim_x >= size:
            raise ValueError(
                f"dim_x must be between 1 and {size - 1} for a {size}x{size} covariance; got {dim_x}"
            )
        self.covariance = cov
        self._setup(cov, _check_mean(mean, size), dim_x)
        self.scale_tril = torch.linalg.cholesky(cov)
        f = self._f
        self.mi = max(0.5 * (f.logdet_y - f.logdet_c), 0.0)
        self.name = f"multivariate-normal(dim_x={self.dim_x}, dim_y={self.dim_y}, mi={self.mi:.4g})"

    @property
    def entropy_y(self) -> float:
        return 0.5 * (self._f.logdet_y + self.dim_y * (_LOG_2PI + 1.0))

    def _y_gaussian_marginal_std(self) -> Tensor | None:
        if bool((self.mean_y != 0).any()):
            return None
        return torch.diagonal(self.covariance)[self.dim_x :].sqrt()

    def _sample(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        wd = _work_dtype(device)
        eps = torch.randn(n, self.dim_x + self.dim_y, generator=generator, device=device, dtype=wd)
        z = eps @ self.scale_tril.to(device, wd).T + self.mean.to(device, wd)
        return z[:, : self.dim_x], z[:, self.dim_x :]

    def _log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        # log N(y; m(x), S_{y|x}) - log N(y; mu_y, S_yy)
        _, dy, dc = self._mahalanobis(x, y)
        return 0.5 * (dy - dc) + self.mi

    def conditional(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parameters of `p(y | x) = N(mu_y + A (x - mu_x), S_yy - A S_xy)`, `A = S_yx S_xx^-1`.

        Args:
            x: `[..., dim_x]`.

        Returns:
            `(mean [..., dim_y], covariance [dim_y, dim_y])` in x's dtype; the Cholesky factor of that covariance
            is `task.cond_scale_tril`.
        """
        x = self._check_x2(x)
        wd = _work_dtype(x.device)
        xw = x.to(wd)
        mean = (
            self.mean_y.to(x.device, wd)
            + (xw - self.mean_x.to(x.device, wd)) @ self.cond_a.to(x.device, wd).T
        )
        return mean.to(x.dtype), self._f.cond.to(x.device, x.dtype)

    def conditional_log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """`log p(y | x)` in nats, `x [..., dim_x]`, `y [..., dim_y]` broadcasting as in `log_density_ratio`."""
        xw, yw, out = _prepare_pair(x, y, self.dim_x, self.dim_y)
        _, _, dc = self._mahalanobis(xw, yw)
        return (-0.5 * (dc + self._f.logdet_c + self.dim_y * _LOG_2PI)).to(out)

    def sample_conditional(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """`k` draws of `y ~ p(y | x_i)` for each row: `x [N, dim_x]` -> `[N, k, dim_y]` in x's dtype."""
        x = self._check_x2(x)
        if x.dim() != 2:
            raise ValueError(f"x must have shape [N, {self.dim_x}]; got shape {tuple(x.shape)}")
        k = require_int("k", k, 1)
        require_generator(generator)
        mean, _ = self.conditional(x.to(_work_dtype(x.device)))
        wd = mean.dtype
        eps = torch.randn(x.shape[0], k, self.dim_y, generator=generator, device=x.device, dtype=wd)
        return (mean[:, None, :] + eps @ self.cond_scale_tril.to(x.device, wd).T).to(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# Student-t


def _sample_gamma(n: int, shape: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """`n` draws of Gamma(shape, 1) by Marsaglia & Tsang (2000), every draw from `generator`. `[n]`, float64
    (float32 on devices without float64). Shapes below 1 use `G(a) = G(a + 1) U^(1/a)`."""
    wd = _work_dtype(device)
    a = shape + 1.0 if shape < 1.0 else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, device=device, dtype=wd)
    filled = 0
    while filled < n:
        m = n - filled
        draw = m + m // 8 + 16  # acceptance is > 95 %: one round almost always suffices
        z = torch.randn(draw, generator=generator, device=device, dtype=wd)
        u = torch.rand(draw, generator=generator, device=device, dtype=wd)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z.square() + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        acc = (d * v)[ok][:m]
        out[filled : filled + acc.shape[0]] = acc
        filled += acc.shape[0]
    if shape < 1.0:
        u = 1.0 - torch.rand(n, generator=generator, device=device, dtype=wd)  # in (0, 1]
        out = out * u.pow(1.0 / shape)
    return out.clamp_min(torch.finfo(wd).tiny)


def _t_entropy_terms(df: float, d: int) -> float:
    """The part of the entropy of a d-dim Student-t that does not depend on the dispersion, minus
    `d/2 log(df pi)`: `lgamma(df/2) - lgamma((df+d)/2) + (df+d)/2 [psi((df+d)/2) - psi(df/2)]`."""
    h = 0.5 * (df + d)
    return math.lgamma(0.5 * df) - math.lgamma(h) + h * (_digamma(h) - _digamma(0.5 * df))


class StudentTTask(_JointGaussianLike):
    """A joint multivariate Student-t: `(x, y) = mean + z / sqrt(w / df)`, `z ~ N(0, dispersion)`,
    `w ~ chi2(df)`, x the first `dim_x` coordinates. Marginals are Student-t with the same df.

    `I(X; Y) = gaussian_mi + correction` nats (Arellano-Valle et al., 2013; as in bmi), where
    `gaussian_mi = 0.5 (logdet S_xx + logdet S_yy - logdet S)` is the MI of the Gaussian with the same
    dispersion and, with `g(d) = lgamma(df/2) - lgamma((df+d)/2) + (df+d)/2 [psi((df+d)/2) - psi(df/2)]`,
    `correction = g(dim_x) + g(dim_y) - g(dim_x + dim_y) > 0`, which vanishes as `df -> inf`. (From
    `H = 0.5 logdet S + d/2 log(df pi) + g(d)` for a d-dim t; the `log(df pi)` terms cancel.)
    With the default identity dispersion all of the MI is the correction: x and y are uncorrelated but dependent.

    Args:
        dim_x: the dimension of x (a positive int).
        dim_y: the dimension of y (a positive int).
        df: degrees of freedom (> 0, real; variances exist only for df > 2 but the MI is finite for any df).
        dispersion: `[D, D]` symmetric positive-definite dispersion (scale) matrix, `D = dim_x + dim_y`;
            identity when None. (The covariance is `df / (df - 2) * dispersion` for df > 2.)
        mean: optional `[D]` location (zeros when None).

    Attributes:
        gaussian_mi, correction: the two parts of `mi` (floats, nats).
        entropy_y: `0.5 logdet S_yy + dim_y/2 log(df pi) + g(dim_y)` nats.
    """

    def __init__(self, dim_x: int, dim_y: int, df: float, dispersion: Any = None, mean: Any = None) -> None:
        super().__init__()
        dim_x = require_int("dim_x", dim_x, 1)
        dim_y = require_int("dim_y", dim_y, 1)
        self.df = require_number("df", df, 0.0, low_open=True)
        size = dim_x + dim_y
        if dispersion is None:
            disp = torch.eye(size, dtype=torch.float64)
        else:
            disp = _check_matrix("dispersion", dispersion, size)
        self.dispersion = disp
        self._setup(disp, _check_mean(mean, size), dim_x)
        self.scale_tril = torch.linalg.cholesky(disp)
        f, v = self._f, self.df
        self.gaussian_mi = max(0.5 * (f.logdet_y - f.logdet_c), 0.0)
        self.correction = _t_entropy_terms(v, dim_x) + _t_entropy_terms(v, dim_y) - _t_entropy_terms(v, size)
        self.mi = self.gaussian_mi + self.correction
        # constant of log p(x,y) - log p(x) - log p(y)
        self._ratio_const = (
            math.lgamma(0.5 * (v + size))
            + math.lgamma(0.5 * v)
            - math.lgamma(0.5 * (v + dim_x))
            - math.lgamma(0.5 * (v + dim_y))
            - 0.5 * (f.logdet_c - f.logdet_y)
        )
        self.name = f"student-t(dim_x={dim_x}, dim_y={dim_y}, df={self.df:g}, mi={self.mi:.4g})"

    @property
    def entropy_y(self) -> float:
        return (
            0.5 * self._f.logdet_y
            + 0.5 * self.dim_y * math.log(self.df * math.pi)
            + _t_entropy_terms(self.df, self.dim_y)
        )

    def _sample(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        wd = _work_dtype(device)
        eps = torch.randn(n, self.dim_x + self.dim_y, generator=generator, device=device, dtype=wd)
        chi2 = 2.0 * _sample_gamma(n, 0.5 * self.df, generator, device)
        z = eps @ self.scale_tril.to(device, wd).T
        t = z * torch.sqrt(self.df / chi2)[:, None] + self.mean.to(device, wd)
        return t[:, : self.dim_x], t[:, self.dim_x :]

    def _log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        v, dx_, dy_ = self.df, self.dim_x, self.dim_y
        dx, dy, dc = self._mahalanobis(x, y)
        joint = torch.log1p((dx + dc) / v)
        return (
            self._ratio_const
            - 0.5 * (v + dx_ + dy_) * joint
            + 0.5 * (v + dx_) * torch.log1p(dx / v)
            + 0.5 * (v + dy_) * torch.log1p(dy / v)
        )


# --------------------------------------------------------------------------------------------------------------
# invertible transforms


class Transform:
    """An invertible map of `[..., d]` tensors. Subclasses define `forward`, `inverse` and
    `log_abs_det_jacobian(t)` = `log |det d forward / dt|` at the input `t`, summed over the last axis (`[...]`)."""

    name: str = "transform"
    #: `log_abs_det_jacobian` is identically 0
    volume_preserving: bool = False

    def forward(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def log_abs_det_jacobian(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def check_dim(self, dim: int, where: str) -> None:
        """Raise ValueError when the transform cannot act on `dim`-dimensional vectors."""

    def __call__(self, t: Tensor) -> Tensor:
        return self.forward(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PowerTransform(Transform):
    """Elementwise `t -> sign(t) |t|^power` (`power > 0`), inverse `sign(u) |u|^(1/power)`;
    `log |J| = sum log(power |t|^(power - 1))`."""

    def __init__(self, power: float) -> None:
        self.power = require_number("power", power, 0.0, low_open=True)
        self.name = f"power({self.power:g})"

    def forward(self, t: Tensor) -> Tensor:
        return torch.sign(t) * t.abs().pow(self.power)

    def inverse(self, u: Tensor) -> Tensor:
        return torch.sign(u) * u.abs().pow(1.0 / self.power)

    def log_abs_det_jacobian(self, t: Tensor) -> Tensor:
        return (math.log(self.power) + (self.power - 1.0) * torch.log(t.abs())).sum(-1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(power={self.power:g})"
            if type(self) is PowerTransform
            else super().__repr__()
        )


class Cubic(PowerTransform):
    """Elementwise `t -> t^3`."""

    def __init__(self) -> None:
        super().__init__(3.0)
        self.name = "cubic"


class HalfCube(PowerTransform):
    """Elementwise `t -> sign(t) |t|^1.5` (bmi's `half_cube`)."""

    def __init__(self) -> None:
        super().__init__(1.5)
        self.name = "half_cube"


class Asinh(Transform):
    """Elementwise `t -> asinh(t)` (compresses tails), inverse `sinh`; `log |J| = -0.5 sum log(1 + t^2)`."""

    name = "asinh"

    def forward(self, t: Tensor) -> Tensor:
        return torch.asinh(t)

    def inverse(self, u: Tensor) -> Tensor:
        return torch.sinh(u)

    def log_abs_det_jacobian(self, t: Tensor) -> Tensor:
        return -0.5 * torch.log1p(t.square()).sum(-1)


class Spiral(Transform):
    """bmi's spiral: `t -> R(speed |t|^2) t`, a rotation in the coordinate plane `plane = (i, j)` by the angle
    `speed * |t|^2` (radians). Rotations keep `|t|`, so the inverse rotates back by the same angle computed
    from the output. The map is volume-preserving (`log |J| = 0`: the Jacobian is `R (I + theta' A t t^T / |t|)`
    with `A` skew-symmetric, whose determinant is `1 + theta' t^T A t / |t| = 1`).

    Args:
        dim: the dimension it acts on (>= 2).
        speed: angle per unit of squared norm (bmi's default 1/3).
        plane: the two coordinates that rotate.
    """

    volume_preserving = True

    def __init__(self, dim: int, speed: float = 1.0 / 3.0, plane: Sequence[int] = (0, 1)) -> None:
        dim = require_int("dim", dim, 1)
        if dim < 2:
            raise ValueError(f"dim must be >= 2 for a spiral (a rotation needs a plane); got {dim}")
        self.dim = dim
        self.speed = require_number("speed", speed)
        plane = tuple(plane)
        if (
            len(plane) != 2
            or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in plane)
            or not all(0 <= p < dim for p in plane)
            or plane[0] == plane[1]
        ):
            raise ValueError(
                f"plane must be two distinct coordinate indices in [0, {dim - 1}]; got {plane!r}"
            )
        self.plane = (int(plane[0]), int(plane[1]))
        self.name = "spiral"

    def check_dim(self, dim: int, where: str) -> None:
        if dim != self.dim:
            raise ValueError(
                f"{where}: the spiral was built for dim={self.dim} but the task's dimension is {dim}"
            )

    def _rotate(self, t: Tensor, sign: float) -> Tensor:
        if t.shape[-1] != self.dim:
            raise ValueError(f"spiral input must have shape [..., {self.dim}]; got shape {tuple(t.shape)}")
        theta = sign * self.speed * t.square().sum(-1)
        c, s = torch.cos(theta), torch.sin(theta)
        i, j = self.plane
        ti, tj = t[..., i], t[..., j]
        out = t.clone()
        out[..., i] = c * ti - s * tj
        out[..., j] = s * ti + c * tj
        return out

    def forward(self, t: Tensor) -> Tensor:
        return self._rotate(t, 1.0)

    def inverse(self, u: Tensor) -> Tensor:
        return self._rotate(u, -1.0)

    def log_abs_det_jacobian(self, t: Tensor) -> Tensor:
        return torch.zeros(t.shape[:-1], dtype=t.dtype, device=t.device)

    def __repr__(self) -> str:
        return f"Spiral(dim={self.dim}, speed={self.speed:g}, plane={self.plane})"


#: transforms by name; `"spiral"` needs the dimension (`make_transform("spiral", dim)`)
TRANSFORMS: dict[str, Callable[..., Transform]] = {
    "cubic": Cubic,
    "asinh": Asinh,
    "half_cube": HalfCube,
    "spiral": Spiral,
}


def make_transform(name: str, dim: int | None = None, **options: Any) -> Transform:
    """A transform by name (`"cubic"`, `"asinh"`, `"half_cube"`, `"spiral"`). `dim` is required by `"spiral"`
    (and ignored by the elementwise ones); `options` go to the constructor (e.g. `speed=` for the spiral)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; available: {sorted(TRANSFORMS)}")
    if name == "spiral":
        if dim is None:
            raise ValueError("the 'spiral' transform needs dim (the dimension it acts on)")
        return Spiral(dim, **options)
    return TRANSFORMS[name](**options)


class TransformedTask(Task):
    """`(f(X), g(Y))` for a base task and invertible maps `f`, `g`: the MI is unchanged.

    `log_density_ratio(x', y') = base.log_density_ratio(f^-1(x'), g^-1(y'))`: the Jacobian factors of the joint
    and of the marginals cancel in the ratio.

    `entropy_y` = `base.entropy_y + E[log |det J_g(Y)|]` is given only where that expectation is exact and cheap:
    no `g` or a volume-preserving one (the spiral), or a power map (`cubic`, `half_cube`) of a zero-mean Gaussian
    marginal (`E log|Y_i| = log s_i - (gamma + log 2) / 2`). Otherwise reading it raises `AttributeError`.

    Args:
        base: any task (`sample`, `log_density_ratio`, `mi`, `dim_x`, `dim_y`).
        transform_x: the map applied to x: a `Transform`, a name from `TRANSFORMS`, or None (identity).
        transform_y: the map applied to y, likewise.
    """

    def __init__(
        self,
        base: Task,
        transform_x: Transform | str | None = None,
        transform_y: Transform | str | None = None,
    ) -> None:
        super().__init__()
        for attr in ("sample", "log_density_ratio", "mi", "dim_x", "dim_y"):
            if not hasattr(base, attr):
                raise TypeError(f"base must be a task with .{attr}; got {type(base).__name__}")
        self.base = base
        self.dim_x, self.dim_y = int(base.dim_x), int(base.dim_y)
        self.mi = float(base.mi)
        self.transform_x = self._resolve("transform_x", transform_x, self.dim_x)
        self.transform_y = self._resolve("transform_y", transform_y, self.dim_y)
        fx = self.transform_x.name if self.transform_x is not None else "id"
        fy = self.transform_y.name if self.transform_y is not None else "id"
        self.name = f"{fx}x{fy}({getattr(base, 'name', type(base).__name__)})"

    @staticmethod
    def _resolve(arg: str, t: Transform | str | None, dim: int) -> Transform | None:
        if t is None:
            return None
        if isinstance(t, str):
            if t not in TRANSFORMS:
                raise ValueError(f"{arg}: unknown transform {t!r}; available: {sorted(TRANSFORMS)}")
            if t == "spiral" and dim < 2:
                raise ValueError(f"{arg}: the 'spiral' transform needs dimension >= 2; the task's is {dim}")
            return make_transform(t, dim)
        if not isinstance(t, Transform):
            raise TypeError(f"{arg} must be a Transform, one of {sorted(TRANSFORMS)}, or None; got {t!r}")
        t.check_dim(dim, arg)
        return t

    def _sample(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        if isinstance(self.base, Task):
            x, y = self.base.sample(n, generator, dtype=_work_dtype(device))
        else:
            x, y = self.base.sample(n, generator=generator)
            x, y = x.to(_work_dtype(x.device)), y.to(_work_dtype(y.device))
        if self.transform_x is not None:
            x = self.transform_x.forward(x)
        if self.transform_y is not None:
            y = self.transform_y.forward(y)
        return x, y

    def inverse(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Map transformed samples back to the base task's: `(f^-1(x), g^-1(y))`, shapes unchanged."""
        x = _check_tensor("x", x, self.dim_x)
        y = _check_tensor("y", y, self.dim_y)
        if self.transform_x is not None:
            x = self.transform_x.inverse(x)
        if self.transform_y is not None:
            y = self.transform_y.inverse(y)
        return x, y

    def _log_density_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        bx, by = self.inverse(x, y)
        return self.base.log_density_ratio(bx, by)

    @property
    def entropy_y(self) -> float:
        g = self.transform_y
        if g is None or g.volume_preserving:
            return self._base_entropy_y()
        if isinstance(g, PowerTransform):
            std = self.base._y_gaussian_marginal_std() if isinstance(self.base, Task) else None
            if std is not None:
                p = g.power
                e_log_abs = float((torch.log(std) + _E_LOG_ABS_STD_NORMAL).sum())
                return self._base_entropy_y() + self.dim_y * math.log(p) + (p - 1.0) * e_log_abs
        raise AttributeError(
            f"TransformedTask has no closed-form entropy_y for transform_y={g!r} on {type(self.base).__name__}: "
            "E[log|det J|] under Y's marginal is not available exactly (it is for no transform, the spiral, or "
            "cubic/half_cube of a zero-mean Gaussian marginal)"
        )

    def _base_entropy_y(self) -> float:
        try:
            return float(self.base.entropy_y)
        except AttributeError as e:
            raise AttributeError(f"TransformedTask has no entropy_y because its base has none: {e}") from None

    def _y_gaussian_marginal_std(self) -> Tensor | None:
        if self.transform_y is None and isinstance(self.base, Task):
            return self.base._y_gaussian_marginal_std()
        return None


# --------------------------------------------------------------------------------------------------------------
# staircase


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(require_number("levels[i]", v, 0.0) for v in levels)
    except TypeError:
        raise ValueError(f"levels must be a sequence of MI values (nats); got {levels!r}") from None
    except ValueError as e:
        raise ValueError(
            f"levels must be non-negative finite MI values (nats); got {levels!r} ({e})"
        ) from None
    if not out:
        raise ValueError("levels must hold at least one MI value; got an empty sequence")
    return out


def staircase(
    step: int, steps_per_level: int = 4000, levels: Sequence[float] = (2.0, 4.0, 6.0, 8.0, 10.0)
) -> float:
    """The true MI (nats) at training `step` of Poole et al.'s staircase benchmark: `levels[0]` for steps
    `[0, steps_per_level)`, `levels[1]` for the next `steps_per_level`, and so on; after the last level it stays
    at `levels[-1]`."""
    step = require_int("step", step, 0)
    steps_per_level = require_int("steps_per_level", steps_per_level, 1)
    lv = _check_levels(levels)
    return lv[min(step // steps_per_level, len(lv) - 1)]


#: base names of `staircase_task` (and their aliases)
STAIRCASE_BASES = ("gaussian", "correlated_gaussian", "student_t")


def student_t_with_mi(dim: int, mi: float, df: float = 3.0) -> StudentTTask:
    """The Student-t task with `dim_x = dim_y = dim`, `df` degrees of freedom and dispersion `[[I, rho I], [rho I, I]]`
    (componentwise correlation `rho`, as `CorrelatedGaussian`) whose MI is `mi` nats.

    Its MI is `-dim/2 log(1 - rho^2) + c(df, dim)`, the Gaussian MI of the dispersion plus the df-dependent
    correction `c > 0` (`StudentTTask`), so `rho = sqrt(1 - exp(-2 (mi - c) / dim))`, in closed form. Levels below
    `c` are out of reach (even `rho = 0` has MI `c`: uncorrelated but dependent) and raise ValueError naming `c`;
    `c` shrinks as df grows (dim 20: 1.45 nats at df=1, 0.79 at df=3, 0.31 at df=10).
    The returned task's `mi` is set to `mi` exactly (the formula reproduces it to ~1e-12).
    """
    dim = require_int("dim", dim, 1)
    mi = require_number("mi", mi, 0.0)
    df = require_number("df", df, 0.0, low_open=True)
    correction = _t_entropy_terms(df, dim) + _t_entropy_terms(df, dim) - _t_entropy_terms(df, 2 * dim)
    gaussian = mi - correction
    if gaussian < -1e-12:
        raise ValueError(
            f"a Student-t task with df={df:g} and dim={dim} has MI >= {correction:.4g} nats (its df correction, at "
            f"zero correlation); mi={mi:g} is below it: raise df or lower dim"
        )
    gaussian = max(gaussian, 0.0)
    rho = math.sqrt(-math.expm1(-2.0 * gaussian / dim))
    eye = torch.eye(dim, dtype=torch.float64)
    dispersion = torch.cat([torch.cat([eye, rho * eye], 1), torch.cat([rho * eye, eye], 1)], 0)
    task = StudentTTask(dim, dim, df, dispersion)
    if abs(task.mi - mi) > 1e-9 * max(1.0, mi):  # pragma: no cover - a broken formula, not a user error
        raise RuntimeError(f"student_t_with_mi: asked for mi={mi}, built {task.mi}")
    task.mi = mi
    task.rho = rho  # type: ignore[attr-defined]
    task.name = f"student-t(dim={dim}, df={df:g}, rho={rho:.4g}, mi={mi:g})"
    return task


def _staircase_transform(transform: Any) -> Any:
    """A hashable form of `staircase_task`'s `transform`: None, a name or Transform (both variables), or a pair."""
    if transform is None or isinstance(transform, (str, Transform)):
        return transform
    if isinstance(transform, (tuple, list)) and len(transform) == 2:
        return tuple(transform)
    raise ValueError(
        f"transform must be None, a name from {sorted(TRANSFORMS)}, a Transform, or a pair (transform_x, "
        f"transform_y) of those; got {transform!r}"
    )


@lru_cache(maxsize=128)
def _cached_staircase_task(base: Any, transform: Any, dim: int, mi: float, df: float) -> Task:
    if callable(base):
        task = base(dim, mi)
        for attr in ("sample", "mi", "dim_x", "dim_y"):
            if not hasattr(task, attr):
                raise TypeError(f"base(dim, mi) must return a task (with .{attr}); got {type(task).__name__}")
        if abs(float(task.mi) - mi) > 1e-9 * max(1.0, mi):
            raise ValueError(f"base(dim={dim}, mi={mi:g}) returned a task with mi={task.mi!r}, not {mi:g}")
    elif base in ("gaussian", "correlated_gaussian"):
        task = CorrelatedGaussian(dim, mi)
    else:  # "student_t"
        task = student_t_with_mi(dim, mi, df)
    if transform is None:
        return task
    tx, ty = transform if isinstance(transform, tuple) else (transform, transform)
    return TransformedTask(task, tx, ty)


def staircase_task(
    step: int,
    dim: int = 20,
    steps_per_level: int = 4000,
    levels: Sequence[float] = (2.0, 4.0, 6.0, 8.0, 10.0),
    *,
    base: str | Callable[[int, float], Any] = "gaussian",
    transform: Any = None,
    df: float = 3.0,
) -> Task:
    """The task of training `step` on an MI staircase: its `.mi` is `staircase(step, steps_per_level, levels)`.

    Args:
        step: the training step (an int >= 0).
        steps_per_level: the steps spent at each level, as `staircase`.
        levels: the MI of each level in nats, as `staircase`.
        dim: the dimension of x and of y.
        base: the task family that hits each level:
            * `"gaussian"` (alias `"correlated_gaussian"`, the default): `CorrelatedGaussian(dim, level)`;
            * `"student_t"`: `student_t_with_mi(dim, level, df)`, a Student-t with `df` degrees of freedom whose
              componentwise correlation is solved (closed form) so that Gaussian part + df correction = level; levels
              below the correction (0.79 nats at dim 20, df 3) raise ValueError;
            * a callable `base(dim, level) -> task` whose task has `.mi == level`.
        transform: None, or an invertible per-variable map applied to the base's samples (`TransformedTask`): a name
            from `TRANSFORMS` (`"cubic"`, `"asinh"`, `"half_cube"`, `"spiral"`) or a `Transform`, applied to both x
            and y, or a pair `(transform_x, transform_y)` (each may be None). The MI is invariant under such maps, so
            the level stays the task's `.mi`.
        df: the Student-t degrees of freedom (> 0), for `base="student_t"` only.

    Tasks are cached by `(base, transform, dim, level, df)`, so calling this at every training step returns the same
    object within a level (cheap). The default call is the f-DIME/Poole staircase `CorrelatedGaussian(dim, level)`.
    """
    dim = require_int("dim", dim, 1)
    level = staircase(step, steps_per_level, levels)
    if not callable(base) and base not in STAIRCASE_BASES:
        raise ValueError(
            f"base must be one of {list(STAIRCASE_BASES)} or a callable (dim, mi) -> task; got {base!r}"
        )
    df = require_number("df", df, 0.0, low_open=True)
    if base != "student_t":
        df = 0.0  # not used: one cache entry per (base, transform, dim, level)
    return _cached_staircase_task(base, _staircase_transform(transform), dim, level, df)


# --------------------------------------------------------------------------------------------------------------
# registry

#: task constructors by name
TASKS: dict[str, Callable[..., Task]] = {
    "correlated_gaussian": CorrelatedGaussian,
    "multivariate_normal": MultivariateNormalTask,
    "student_t": StudentTTask,
    "transformed": TransformedTask,
}


def make_task(name: str, **options: Any) -> Task:
    """A task by name from `TASKS` (e.g. `make_task("correlated_gaussian", dim=20, mi=4.0)`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    return TASKS[name](**options)
