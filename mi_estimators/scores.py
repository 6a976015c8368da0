"""`Scores`: the one input of every bound.

A critic `T(x, y)` evaluated on joint samples gives `positive [N]`; evaluated on contrastive pairs
`(x_i, y'_ik)` (with `y'` from the marginal or from a proposal `q(y|x_i)`) it gives `negative [N, K]`.
Proposal-based bounds (Barber-Agakov, the MISA family) also read `log_proposal [N] = log q(y_i|x_i)` and the
marginal entropy `H(Y)` in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


class NonFiniteScoresError(ValueError):
    """A score field holds a NaN or an infinity (`Scores` validation). A `ValueError`, so code that caught bad
    scores before keeps working; `estimate` catches this one to stop a diverged run and keep its history."""


def _first_bad_index(t: Tensor) -> tuple[int, ...]:
    bad = (~torch.isfinite(t)).nonzero()[0]
    return tuple(int(i) for i in bad)


def _check_float(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"Scores.{name} must be a torch.Tensor; got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"Scores.{name} must have a floating dtype; got {t.dtype} with shape {tuple(t.shape)}"
        )
    return t


def _check_finite(name: str, t: Tensor, allow_neg_inf: bool = False) -> None:
    with torch.no_grad():
        ok = torch.isfinite(t)
        if allow_neg_inf:
            ok = ok | (t == -math.inf)
        if not bool(ok.all()):
            idx = tuple(int(i) for i in (~ok).nonzero()[0])
            raise NonFiniteScoresError(f"Scores.{name} has a non-finite value {t[idx].item()} at index {idx}")


@dataclass(frozen=True, eq=False)
class Scores:
    """Critic scores on positive and contrastive pairs.

    Args:
        positive: `[N]`, `T(x_i, y_i)` on joint samples.
        negative: `[N, K]`, `T(x_i, y'_ik)` on contrastive samples (K >= 1).
        log_proposal: optional `[N]`, `log q(y_i | x_i)` in nats, for proposal-based bounds.
        marginal_entropy: optional `H(Y)` in nats (a float or 0-d tensor, no gradient needed).
        tilted: optional `[N, S]`, `T(x_i, y~_is) + log q(y~_is | x_i)` on S samples `y~` drawn (detached) from the
            tilted law `q(y|x_i) e^T / Z(x_i)` by MCMC; its mean is the surrogate whose gradient is the unbiased
            gradient of `log Z(x_i)` (the `misa` estimator with `log_z="mcmc"`).
        validate: check shapes, dtypes, devices and finiteness (on by default; turn off only in hot loops whose
            inputs were checked before).

    Raises:
        TypeError: a field is not a floating tensor.
        ValueError: wrong rank, N or K of zero, mismatched N, mismatched device or dtype, a NaN/inf entry; the message
            names the field and the shape or index found.
    """

    positive: Tensor
    negative: Tensor
    log_proposal: Tensor | None = None
    marginal_entropy: Tensor | float | None = None
    tilted: Tensor | None = None
    validate: bool = True

    def __post_init__(self) -> None:
        if self.validate:
            self._validate()

    def _validate(self) -> None:
        pos = _check_float("positive", self.positive)
        neg = _check_float("negative", self.negative)
        if pos.dim() != 1:
            raise ValueError(f"Scores.positive must have shape [N]; got shape {tuple(pos.shape)}")
        if neg.dim() != 2:
            raise ValueError(f"Scores.negative must have shape [N, K]; got shape {tuple(neg.shape)}")
        if pos.shape[0] == 0:
            raise ValueError(f"Scores.positive must have N >= 1 rows; got shape {tuple(pos.shape)}")
        if neg.shape[0] != pos.shape[0]:
            raise ValueError(
                f"Scores.negative must have N={pos.shape[0]} rows to match Scores.positive; "
                f"got shape {tuple(neg.shape)}"
            )
        if neg.shape[1] == 0:
            raise ValueError(f"Scores.negative must have K >= 1 columns; got shape {tuple(neg.shape)}")
        fields = [("positive", pos), ("negative", neg)]
        if self.log_proposal is not None:
            lp = _check_float("log_proposal", self.log_proposal)
            if lp.shape != pos.shape:
                raise ValueError(
                    f"Scores.log_proposal must have shape [N] = {tuple(pos.shape)}; got shape {tuple(lp.shape)}"
                )
            fields.append(("log_proposal", lp))
        if self.tilted is not None:
            tl = _check_float("tilted", self.tilted)
            if tl.dim() != 2 or tl.shape[0] != pos.shape[0] or tl.shape[1] == 0:
                raise ValueError(
                    f"Scores.tilted must have shape [N, S] with N={pos.shape[0]}, S >= 1; got shape {tuple(tl.shape)}"
                )
            fields.append(("tilted", tl))
        if self.marginal_entropy is not None:
            h = self.marginal_entropy
            if isinstance(h, Tensor):
                _check_float("marginal_entropy", h)
                if h.numel() != 1:
                    raise ValueError(
                        f"Scores.marginal_entropy must be a number or a 1-element tensor; got shape {tuple(h.shape)}"
                    )
                fields.append(("marginal_entropy", h))
            elif not isinstance(h, (int, float)) or isinstance(h, bool):
                raise TypeError(
                    f"Scores.marginal_entropy must be a float or a tensor; got {type(h).__name__}"
                )
            elif not math.isfinite(h):
                raise NonFiniteScoresError(f"Scores.marginal_entropy must be finite; got {h}")
        for name, t in fields[1:]:
            if t.device != pos.device:
                raise ValueError(f"Scores.{name} is on {t.device} but Scores.positive is on {pos.device}")
            if t.dtype != pos.dtype:
                raise TypeError(
                    f"Scores.{name} has dtype {t.dtype} but Scores.positive has dtype {pos.dtype}"
                )
        for name, t in fields:
            _check_finite(name, t)

    @property
    def n(self) -> int:
        """Number of positive pairs N."""
        return self.positive.shape[0]

    @property
    def k(self) -> int:
        """Number of contrastive samples per row K."""
        return self.negative.shape[1]

    @classmethod
    def from_matrix(
        cls,
        matrix: Tensor,
        log_proposal: Tensor | None = None,
        marginal_entropy: Tensor | float | None = None,
    ) -> Scores:
        """Scores from an `[N, N]` matrix `S[i, j] = T(x_i, y_j)`: diagonal positive `[N]`, off-diagonal negative
        `[N, N-1]` (row i holds `T(x_i, y_j)` for all `j != i`, in order). Needs N >= 2."""
        m = _check_float("matrix", matrix) if isinstance(matrix, Tensor) else _check_float("matrix", matrix)
        if m.dim() != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"Scores.from_matrix needs a square [N, N] matrix; got shape {tuple(m.shape)}")
        n = m.shape[0]
        if n < 2:
            raise ValueError(f"Scores.from_matrix needs N >= 2 to have negatives; got shape {tuple(m.shape)}")
        positive = m.diagonal()
        # Drop the diagonal: the flattened matrix minus its first entry, viewed as [N-1, N+1], has the diagonal in
        # column 0 (a view trick that avoids a boolean mask and its copy of indices).
        negative = m.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)
        return cls(positive, negative, log_proposal=log_proposal, marginal_entropy=marginal_entropy)

    def astype(self, dtype: torch.dtype) -> Scores:
        """The same scores with every tensor field cast to the floating `dtype` (differentiable; not re-validated).
        The bounds use it to compute half-precision scores in float32."""
        if self.positive.dtype == dtype:
            return self

        def cast(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype)

        h = self.marginal_entropy
        return Scores(
            cast(self.positive),  # type: ignore[arg-type]
            cast(self.negative),  # type: ignore[arg-type]
            log_proposal=cast(self.log_proposal),
            marginal_entropy=h.to(dtype) if isinstance(h, Tensor) else h,
            tilted=cast(self.tilted),
            validate=False,
        )

    def rows(self, index: Tensor) -> Scores:
        """The scores of the rows `index` (a bool mask `[N]` or the row numbers): `positive`, `negative`,
        `log_proposal` and `tilted` subset alike, `marginal_entropy` kept (not re-validated). The delete-a-group
        jackknife of `mie.evaluate` reads bounds on such subsets."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return Scores(
            pick(self.positive),  # type: ignore[arg-type]
            pick(self.negative),  # type: ignore[arg-type]
            log_proposal=pick(self.log_proposal),
            marginal_entropy=self.marginal_entropy,
            tilted=pick(self.tilted),
            validate=False,
        )

    def matrix_like(self) -> bool:
        """True when K == N - 1, i.e. the scores could come from an all-pairs matrix."""
        return self.k == self.n - 1

    def all_scores(self) -> Tensor:
        """`[N, K+1]`: the positive in column 0 followed by the negatives (InfoNCE's denominator set)."""
        return torch.cat([self.positive.unsqueeze(1), self.negative], dim=1)

    def entropy_or_raise(self, estimator: str) -> Tensor | float:
        if self.marginal_entropy is None:
            raise ValueError(
                f"estimator {estimator!r} needs Scores.marginal_entropy (H(Y) in nats); it is missing"
            )
        return self.marginal_entropy

    def log_proposal_or_raise(self, estimator: str) -> Tensor:
        if self.log_proposal is None:
            raise ValueError(
                f"estimator {estimator!r} needs Scores.log_proposal (log q(y_i|x_i), shape [N]); it is missing"
            )
        return self.log_proposal
