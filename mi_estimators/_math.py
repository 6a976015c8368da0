"""Numerically safe reductions shared by the bounds, and the float32 promotion of half-precision scores. Nats."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .scores import Scores

#: score dtypes whose bounds are computed in float32 (see `computed_in_float32`)
HALF_DTYPES = (torch.float16, torch.bfloat16)

F = TypeVar("F", bound=Callable[..., Tensor])


def logmeanexp(t: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """`log mean exp(t)` over `dim` (all axes when None), stable for |t| up to float max (log-sum-exp shift)."""
    if dim is None:
        t, dim = t.reshape(-1), 0
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return torch.logsumexp(t, dim=dims) - math.log(_count(t, dims))


def _count(t: Tensor, dims: tuple[int, ...]) -> int:
    count = 1
    for d in dims:
        count *= t.shape[d]
    return count


def meanexp(t: Tensor, dim: int | tuple[int, ...] | None = None, shift: float = 0.0) -> Tensor:
    """`mean exp(t - shift)` over `dim` (all axes when None), summed as `sum exp(t - shift - log count)`.

    A summand overflows only when the mean itself does (it is at most the mean), so the result is `+inf` exactly
    when the true mean exceeds float range, never NaN; its gradient `exp(t - shift) / count` is computed entry by
    entry, so it is finite wherever that entry's true gradient is representable (no `inf * 0` from a softmax)."""
    if dim is None:
        t, dim = t.reshape(-1), 0
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return torch.exp(t - (shift + math.log(_count(t, dims)))).sum(dim=dims)


def exp_minus_one_mean(t: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """`mean exp(t - 1)` (see `meanexp`): `+inf` only when the true value overflows float (then the NWJ bound it
    enters is honestly -inf)."""
    return meanexp(t, dim, shift=1.0)


def computed_in_float32(fn: F) -> F:
    """Decorator for a pure bound `fn(scores, ...) -> Tensor`: float16/bfloat16 scores are computed in float32 and
    the result is rounded once to the scores' dtype (autograd casts the gradient back the same way), so a
    half-precision result is finite wherever the float32 value fits the dtype. Other dtypes pass through."""

    @functools.wraps(fn)
    def wrapper(s: Scores, *args: Any, **kwargs: Any) -> Tensor:
        dtype = s.positive.dtype
        if dtype not in HALF_DTYPES:
            return fn(s, *args, **kwargs)
        return fn(s.astype(torch.float32), *args, **kwargs).to(dtype)

    return wrapper  # type: ignore[return-value]
