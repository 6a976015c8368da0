"""Numerically safe reductions shared by the bounds. All in nats."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def logmeanexp(t: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """`log mean exp(t)` over `dim` (all axes when None), stable for |t| up to float max (log-sum-exp shift)."""
    if dim is None:
        t, dim = t.reshape(-1), 0
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    count = 1
    for d in dims:
        count *= t.shape[d]
    return torch.logsumexp(t, dim=dims) - math.log(count)


def exp_minus_one_mean(t: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """`mean exp(t - 1)` computed as `exp(logmeanexp(t) - 1)`: no overflow of the summands. It is `+inf` only
    when the true value overflows float (then the NWJ bound it enters is honestly -inf)."""
    return torch.exp(logmeanexp(t, dim) - 1.0)
