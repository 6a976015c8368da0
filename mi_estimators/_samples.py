"""Fixed samples as users hold them: conversion to `[M, d]` tensors, the train / validation / test split, and
minibatches drawn without replacement."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor


def as_samples(name: str, value: Any) -> Any:
    """`value` as a tensor of samples: a tensor stays itself, a numpy array or array-like (a pandas DataFrame or
    Series, nested lists) of a floating dtype becomes a tensor of that dtype; one-dimensional `[M]` becomes
    `[M, 1]`. Anything else is returned unchanged, for `check_samples` to name what is wrong with it.

    Raises:
        TypeError: an array of a non-floating dtype (integers, strings, objects); the message names `name`, the dtype
            and how to cast.
    """
    if not isinstance(value, Tensor) and not isinstance(value, (str, bytes, numbers.Number)):
        is_array_like = isinstance(value, (np.ndarray, list, tuple)) or hasattr(value, "__array__")
        if is_array_like:
            try:
                array = np.asarray(value)
            except (TypeError, ValueError) as e:  # ragged lists
                raise TypeError(f"{name} could not be read as an array of samples [M, d{name}]: {e}") from e
            if not np.issubdtype(array.dtype, np.floating):
                raise TypeError(
                    f"{name} must have a floating dtype (e.g. {name}.astype('float32')); got a "
                    f"{type(value).__name__} of dtype {array.dtype} with shape {array.shape}"
                )
            value = torch.tensor(array)  # a copy: pandas hands out read-only views
    if isinstance(value, Tensor) and value.dim() == 1:
        value = value.unsqueeze(1)
    return value


def warn_constant_columns(x: Tensor, y: Tensor, stacklevel: int = 3) -> None:
    """A `UserWarning` for each of x and y that has a column whose every sample is the same value (it carries no
    information about the other variable: its MI contribution is 0)."""
    for name, t in (("x", x), ("y", y)):
        constant = (t == t[:1]).all(0)
        if bool(constant.any()):
            cols = constant.nonzero().squeeze(1).tolist()
            shown = ", ".join(str(c) for c in cols[:10]) + (", ..." if len(cols) > 10 else "")
            warnings.warn(
                f"{name} has {len(cols)} constant column(s) (index {shown}; e.g. column {cols[0]} is "
                f"{t[0, cols[0]].item()!r} in every sample): a constant carries no information",
                UserWarning,
                stacklevel=stacklevel,
            )


def check_samples(x: Any, y: Any) -> None:
    """Fixed samples: floating tensors `x [M, dx]`, `y [M, dy]`, same M >= 2, dx, dy >= 1, every entry finite."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, a numpy array or an array-like of shape [M, d{name}] (or [M]); "
                f"got {type(t).__name__}"
            )
        if not t.is_floating_point():
            raise TypeError(
                f"{name} must have a floating dtype (e.g. {name}.float()); got {t.dtype} with shape "
                f"{tuple(t.shape)}"
            )
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must be [M, dx] and [M, dy] (or [M]) with the same M; got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    for name, t in (("x", x), ("y", y)):
        if t.shape[0] < 2 or t.shape[1] < 1:
            raise ValueError(
                f"{name} must have at least 2 samples (negatives come from the other samples) and at least one "
                f"feature; got shape {tuple(t.shape)}"
            )
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            idx = tuple(int(i) for i in (~finite).nonzero()[0])
            raise ValueError(f"{name} has a non-finite value {t[idx].item()} at index {idx}")


def split_sizes(m: int, valid_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, validation, test) sizes of M samples: each held-out part round(fraction * M), at least 2 when its
    fraction is positive (a batch needs 2), the rest for training (at least 2)."""
    n_valid = max(2, round(valid_fraction * m)) if valid_fraction > 0 else 0
    n_test = max(2, round(test_fraction * m)) if test_fraction > 0 else 0
    n_train = m - n_valid - n_test
    if n_train < 2:
        raise ValueError(
            f"x and y hold M={m} samples: too few to split off a validation part ({n_valid} samples, "
            f"valid_fraction={valid_fraction}) and a test part ({n_test}, test_fraction={test_fraction}) and keep "
            "2 for training; pass more samples or smaller fractions"
        )
    return n_train, n_valid, n_test


class EpochBatches:
    """Minibatch indices into `n` samples without replacement: a fresh permutation of the samples (drawn from
    `generator`) is cut into consecutive batches of `batch_size`, the incomplete last one dropped, as a shuffling
    DataLoader with `drop_last=True` does; no sample appears twice in a batch."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} exceeds the {n} samples")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.per_epoch = n // batch_size
        self._order: Tensor | None = None
        self._next = 0

    def __next__(self) -> Tensor:
        if self._order is None or self._next == self.per_epoch:
            self._order = torch.randperm(self.n, generator=self.generator)
            self._next = 0
        start = self._next * self.batch_size
        self._next += 1
        return self._order[start : start + self.batch_size]


def standard_error(variances: list[float]) -> float:
    """The standard error of the mean of independent batch estimates with these variances."""
    return math.sqrt(sum(variances)) / len(variances) if variances else math.nan
