"""Non-neural MI baselines on samples (no critic): the Kraskov-Stoegbauer-Grassberger estimator."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._samples import as_samples, check_samples, warn_constant_columns


def ksg(x: Any, y: Any, k: int = 3, chunk: int = 1024) -> Tensor:
    """KSG estimator 1 (Kraskov et al. 2004) of I(X; Y) in nats from joint samples `x [N, dx]`, `y [N, dy]`.

    `psi(k) + psi(N) - mean_i[psi(n_x(i) + 1) + psi(n_y(i) + 1)]`, where `eps_i` is the max-norm distance from
    sample i to its k-th nearest neighbour in the joint space and `n_x(i)` counts the other samples strictly
    within `eps_i` of `x_i` (likewise y). Exact O(N^2) distances, computed `chunk` rows at a time to bound memory.
    Consistent but biased low at high MI (it needs exponentially many samples), a classical reference point.

    `x`, `y` are tensors, numpy arrays or array-likes (a pandas DataFrame) of a floating dtype, with finite entries;
    `[N]` is `[N, 1]`; a constant column warns (ties make the neighbour counts degenerate).

    Raises:
        TypeError / ValueError: as `estimate` for fixed samples (the argument, its dtype or shape, the index of a
            non-finite entry); `k` outside [1, N-1].
    """
    x, y = as_samples("x", x), as_samples("y", y)
    check_samples(x, y)
    warn_constant_columns(x, y)
    n = x.shape[0]
    if not isinstance(k, int) or k < 1 or k >= n:
        raise ValueError(f"k must be an int in [1, N-1] = [1, {n - 1}]; got {k!r}")
    x, y = x.double(), y.double()
    counts = torch.empty(n, 2, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        dx = torch.cdist(x[rows], x, p=float("inf"))
        dy = torch.cdist(y[rows], y, p=float("inf"))
        joint = torch.maximum(dx, dy)
        idx = torch.arange(rows.start, rows.stop, device=x.device)
        joint[idx - start, idx] = float("inf")  # a point is not its own neighbour
        eps = joint.kthvalue(k, dim=1, keepdim=True).values
        # strictly closer than eps, excluding the point itself (its distance 0 is always < eps)
        counts[rows, 0] = (dx < eps).sum(1).double() - 1
        counts[rows, 1] = (dy < eps).sum(1).double() - 1
    digamma = torch.special.digamma
    k_t = torch.tensor(float(k), dtype=torch.float64)
    n_t = torch.tensor(float(n), dtype=torch.float64)
    return digamma(k_t) + digamma(n_t) - (digamma(counts[:, 0] + 1) + digamma(counts[:, 1] + 1)).mean()
