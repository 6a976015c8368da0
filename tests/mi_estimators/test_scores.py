"""`Scores`: validation of every bad input (field, shape and index named in the message) and `from_matrix`."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mi_estimators as mie
from mi_estimators import Scores

N, K = 3, 2


def pos(n: int = N, **kw) -> torch.Tensor:
    return torch.zeros(n, **kw)


def neg(n: int = N, k: int = K, **kw) -> torch.Tensor:
    return torch.zeros(n, k, **kw)


def with_value(t: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


# ------------------------------------------------------------------------------------------------------------
# valid input


def test_valid_scores_expose_fields_and_sizes():
    g = torch.Generator().manual_seed(0)
    p, n = torch.randn(4, generator=g), torch.randn(4, 2, generator=g)
    s = Scores(p, n, log_proposal=torch.zeros(4), marginal_entropy=1.5, tilted=torch.zeros(4, 5))
    assert s.n == 4 and s.k == 2
    assert s.positive is p and s.negative is n
    assert not s.matrix_like()
    assert Scores(p, torch.zeros(4, 3)).matrix_like()
    all_scores = s.all_scores()
    assert all_scores.shape == (4, 3)
    torch.testing.assert_close(all_scores[:, 0], p)
    torch.testing.assert_close(all_scores[:, 1:], n)


def test_neg_inf_log_proposal_is_rejected_but_float64_and_k1_are_fine():
    s = Scores(torch.zeros(1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    assert s.n == 1 and s.k == 1
    with pytest.raises(ValueError, match=r"Scores\.log_proposal has a non-finite value -inf at index \(1,\)"):
        Scores(pos(), neg(), log_proposal=torch.tensor([0.0, -math.inf, 0.0]))


def test_validate_false_skips_the_checks():
    s = Scores(torch.zeros(3, dtype=torch.int64), torch.zeros(2), validate=False)
    assert s.positive.dtype == torch.int64


def test_missing_optional_fields_are_named_by_the_estimator():
    s = Scores(pos(), neg())
    with pytest.raises(ValueError, match=r"'ba' needs Scores\.log_proposal .*shape \[N\]"):
        mie.make("ba").bound(s)
    s = Scores(pos(), neg(), log_proposal=pos())
    with pytest.raises(ValueError, match=r"'ba' needs Scores\.marginal_entropy"):
        mie.make("ba").bound(s)


# ------------------------------------------------------------------------------------------------------------
# every bad input of issue 3, item 2: the exception type, the field, and the shape or index found

BAD_INPUTS = [
    # wrong rank
    (
        "positive rank 2",
        lambda: Scores(torch.zeros(3, 1), neg()),
        ValueError,
        r"Scores\.positive .*\[N\].*\(3, 1\)",
    ),
    (
        "positive rank 0",
        lambda: Scores(torch.tensor(0.0), neg()),
        ValueError,
        r"Scores\.positive .*shape \(\)",
    ),
    (
        "negative rank 1",
        lambda: Scores(pos(), torch.zeros(3)),
        ValueError,
        r"Scores\.negative .*\[N, K\].*\(3,\)",
    ),
    (
        "negative rank 3",
        lambda: Scores(pos(), torch.zeros(3, 2, 1)),
        ValueError,
        r"Scores\.negative .*\(3, 2, 1\)",
    ),
    # sizes
    ("mismatched N", lambda: Scores(pos(3), neg(4)), ValueError, r"Scores\.negative .*N=3.*\(4, 2\)"),
    ("N = 0", lambda: Scores(pos(0), neg(0)), ValueError, r"Scores\.positive .*N >= 1.*\(0,\)"),
    ("K = 0", lambda: Scores(pos(), neg(k=0)), ValueError, r"Scores\.negative .*K >= 1.*\(3, 0\)"),
    # non-float dtypes
    (
        "int positive",
        lambda: Scores(pos(dtype=torch.int64), neg()),
        TypeError,
        r"Scores\.positive .*floating.*int64",
    ),
    (
        "bool negative",
        lambda: Scores(pos(), neg(dtype=torch.bool)),
        TypeError,
        r"Scores\.negative .*floating.*bool",
    ),
    (
        "int negative",
        lambda: Scores(pos(), neg(dtype=torch.int32)),
        TypeError,
        r"Scores\.negative .*int32.*\(3, 2\)",
    ),
    (
        "list positive",
        lambda: Scores([0.0, 0.0, 0.0], neg()),
        TypeError,
        r"Scores\.positive must be a torch\.Tensor",
    ),
    (
        "int log_proposal",
        lambda: Scores(pos(), neg(), log_proposal=pos(dtype=torch.int64)),
        TypeError,
        r"Scores\.log_proposal .*floating.*int64",
    ),
    (
        "int tilted",
        lambda: Scores(pos(), neg(), tilted=neg(dtype=torch.int64)),
        TypeError,
        r"Scores\.tilted .*floating.*int64",
    ),
    # mixed float dtypes
    (
        "float64 negative with float32 positive",
        lambda: Scores(pos(), neg(dtype=torch.float64)),
        TypeError,
        r"Scores\.negative .*float64.*Scores\.positive .*float32",
    ),
    # NaN / inf in each field, index named
    (
        "NaN positive",
        lambda: Scores(with_value(pos(), (2,), math.nan), neg()),
        ValueError,
        r"Scores\.positive .*nan.*index \(2,\)",
    ),
    (
        "inf positive",
        lambda: Scores(with_value(pos(), (0,), math.inf), neg()),
        ValueError,
        r"Scores\.positive .*inf.*index \(0,\)",
    ),
    (
        "NaN negative",
        lambda: Scores(pos(), with_value(neg(), (1, 1), math.nan)),
        ValueError,
        r"Scores\.negative .*nan.*index \(1, 1\)",
    ),
    (
        "-inf negative",
        lambda: Scores(pos(), with_value(neg(), (2, 0), -math.inf)),
        ValueError,
        r"Scores\.negative .*-inf.*index \(2, 0\)",
    ),
    (
        "NaN log_proposal",
        lambda: Scores(pos(), neg(), log_proposal=with_value(pos(), (1,), math.nan)),
        ValueError,
        r"Scores\.log_proposal .*nan.*index \(1,\)",
    ),
    (
        "inf tilted",
        lambda: Scores(pos(), neg(), tilted=with_value(neg(), (0, 1), math.inf)),
        ValueError,
        r"Scores\.tilted .*inf.*index \(0, 1\)",
    ),
    (
        "NaN marginal_entropy tensor",
        lambda: Scores(pos(), neg(), marginal_entropy=torch.tensor(math.nan)),
        ValueError,
        r"Scores\.marginal_entropy .*nan",
    ),
    (
        "inf marginal_entropy float",
        lambda: Scores(pos(), neg(), marginal_entropy=math.inf),
        ValueError,
        r"Scores\.marginal_entropy must be finite; got inf",
    ),
    (
        "NaN marginal_entropy float",
        lambda: Scores(pos(), neg(), marginal_entropy=math.nan),
        ValueError,
        r"Scores\.marginal_entropy must be finite; got nan",
    ),
    (
        "marginal_entropy of 2 elements",
        lambda: Scores(pos(), neg(), marginal_entropy=torch.zeros(2)),
        ValueError,
        r"Scores\.marginal_entropy .*1-element.*\(2,\)",
    ),
    (
        "bool marginal_entropy",
        lambda: Scores(pos(), neg(), marginal_entropy=True),
        TypeError,
        r"marginal_entropy.*bool",
    ),
    (
        "str marginal_entropy",
        lambda: Scores(pos(), neg(), marginal_entropy="1"),
        TypeError,
        r"marginal_entropy.*str",
    ),
    # optional fields of the wrong shape
    (
        "log_proposal [N, 1]",
        lambda: Scores(pos(), neg(), log_proposal=torch.zeros(3, 1)),
        ValueError,
        r"Scores\.log_proposal .*\(3,\).*\(3, 1\)",
    ),
    (
        "log_proposal wrong N",
        lambda: Scores(pos(), neg(), log_proposal=torch.zeros(4)),
        ValueError,
        r"Scores\.log_proposal .*\(3,\).*\(4,\)",
    ),
    (
        "tilted rank 1",
        lambda: Scores(pos(), neg(), tilted=torch.zeros(3)),
        ValueError,
        r"Scores\.tilted .*N=3.*\(3,\)",
    ),
    (
        "tilted wrong N",
        lambda: Scores(pos(), neg(), tilted=torch.zeros(2, 4)),
        ValueError,
        r"Scores\.tilted .*\(2, 4\)",
    ),
    (
        "tilted S = 0",
        lambda: Scores(pos(), neg(), tilted=torch.zeros(3, 0)),
        ValueError,
        r"Scores\.tilted .*\(3, 0\)",
    ),
    # mismatched devices (the meta device stands in for an accelerator)
    (
        "negative on another device",
        lambda: Scores(pos(), neg(device="meta")),
        ValueError,
        r"Scores\.negative is on meta but Scores\.positive is on cpu",
    ),
    (
        "log_proposal on another device",
        lambda: Scores(pos(), neg(), log_proposal=pos(device="meta")),
        ValueError,
        r"Scores\.log_proposal is on meta",
    ),
    (
        "tilted on another device",
        lambda: Scores(pos(), neg(), tilted=neg(device="meta")),
        ValueError,
        r"Scores\.tilted is on meta",
    ),
    (
        "marginal_entropy on another device",
        lambda: Scores(pos(), neg(), marginal_entropy=torch.tensor(1.0, device="meta")),
        ValueError,
        r"Scores\.marginal_entropy is on meta",
    ),
]


@pytest.mark.parametrize(
    "make_bad, exc, pattern", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_raises_naming_field_and_shape_or_index(make_bad, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make_bad()


@pytest.mark.parametrize(
    "matrix, exc, pattern",
    [
        (torch.zeros(2, 3), ValueError, r"square \[N, N\].*\(2, 3\)"),
        (torch.zeros(3), ValueError, r"square \[N, N\].*\(3,\)"),
        (torch.zeros(2, 2, 2), ValueError, r"square \[N, N\].*\(2, 2, 2\)"),
        (torch.zeros(1, 1), ValueError, r"N >= 2.*\(1, 1\)"),
        (torch.zeros(0, 0), ValueError, r"N >= 2.*\(0, 0\)"),
        (torch.zeros(3, 3, dtype=torch.int64), TypeError, r"matrix .*floating.*int64"),
        ([[0.0, 1.0], [1.0, 0.0]], TypeError, r"matrix must be a torch\.Tensor"),
        (
            with_value(torch.zeros(3, 3), (0, 2), math.nan),
            ValueError,
            r"Scores\.negative .*nan.*index \(0, 1\)",
        ),
        (
            with_value(torch.zeros(3, 3), (1, 1), math.inf),
            ValueError,
            r"Scores\.positive .*inf.*index \(1,\)",
        ),
    ],
)
def test_from_matrix_bad_input(matrix, exc, pattern):
    with pytest.raises(exc, match=pattern):
        Scores.from_matrix(matrix)


# ------------------------------------------------------------------------------------------------------------
# from_matrix: positive = diagonal, negative = the off-diagonal row by row, in order


def masked_reference(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = m.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    return m[eye], m[~eye].reshape(n, n - 1)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 9), seed=st.integers(0, 2**31 - 1), transpose=st.booleans())
def test_from_matrix_matches_masked_reference(n, seed, transpose):
    m = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if transpose:  # a non-contiguous input
        m = m.T
    s = Scores.from_matrix(m)
    p_ref, n_ref = masked_reference(m)
    assert s.positive.shape == (n,) and s.negative.shape == (n, n - 1)
    assert torch.equal(s.positive, p_ref)
    assert torch.equal(s.negative, n_ref)
    assert s.matrix_like()


def test_from_matrix_row_order_explicitly():
    m = torch.arange(16.0).reshape(4, 4)
    s = Scores.from_matrix(m)
    assert s.positive.tolist() == [0.0, 5.0, 10.0, 15.0]
    assert s.negative.tolist() == [[1, 2, 3], [4, 6, 7], [8, 9, 11], [12, 13, 14]]


def test_from_matrix_passes_gradients_to_the_right_entries_and_keeps_fields():
    m = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    lp = torch.randn(5, dtype=torch.float64)
    s = Scores.from_matrix(m, log_proposal=lp, marginal_entropy=2.0)
    assert s.log_proposal is lp and s.marginal_entropy == 2.0
    w_pos = torch.randn(5, dtype=torch.float64)
    w_neg = torch.randn(5, 4, dtype=torch.float64)
    ((s.positive * w_pos).sum() + (s.negative * w_neg).sum()).backward()
    expected = torch.zeros(5, 5, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.bool)
    expected[eye] = w_pos
    expected[~eye] = w_neg.reshape(-1)
    torch.testing.assert_close(m.grad, expected)
    with pytest.raises(ValueError, match=r"Scores\.log_proposal .*\(5,\).*\(4,\)"):
        Scores.from_matrix(m.detach(), log_proposal=torch.zeros(4, dtype=torch.float64))
