"""Numerics of every registered estimator in float32, bfloat16 and float16 (docs/estimators-numerics.md).

Each estimator's value and gradient wrt the scores, on scores of magnitude up to 1e4 (float32, bfloat16) or up to
the float16 range, against the same estimator in float64 on the same (rounded) scores: finite and close where the
float64 value is within the dtype's range, exactly +-inf with the right sign where it is beyond, NaN never. The
NWJ-type bounds are -inf exactly past `log mean e^T = shift + log(max float)`.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mi_estimators as mie
from mi_estimators import Scores

F64 = torch.float64
EPS32 = torch.finfo(torch.float32).eps

#: every registered estimator with its default options, and the option values that change its numerics
CASES: list[tuple[str, dict]] = [
    ("ba", {}),
    ("club", {}),
    ("dv", {}),
    ("gan-dime", {}),
    ("hd-dime", {}),
    ("infonce", {}),
    ("interpolated", {}),
    ("interpolated", {"alpha": 0.0}),
    ("interpolated", {"alpha": 1.0}),
    ("js", {}),
    ("kl-dime", {}),
    ("mine", {}),
    ("misa", {}),  # log_z="mcmc": the partition gradient comes from Scores.tilted
    ("misa-biased", {}),
    ("misa-dv", {}),
    ("misa-dv", {"log_z": "mcmc"}),
    ("misa-f", {}),
    ("misa-f", {"log_z": "mcmc"}),
    ("nwj", {}),
    ("smile", {}),
    ("smile", {"tau": math.inf}),
    ("tuba", {}),
    ("tuba", {"learned_baseline": True}),
]

#: score magnitudes per dtype: +-1e4 in float32 and bfloat16 (whose range is float32's), up to 6e4 in float16
#: (max 65504), where differences of scores (DV, InfoNCE, ...) can honestly overflow
SCALES = {
    torch.float32: [1.0, 30.0, 1e3, 1e4],
    torch.bfloat16: [1.0, 30.0, 1e3, 1e4],
    torch.float16: [1.0, 10.0, 1e3, 3e4, 6e4],
}
PATTERNS = ["uniform", "equal-high", "equal-low", "positive-high", "negative-high", "one-dominant"]


def test_every_registered_estimator_is_covered():
    assert {name for name, _ in CASES} == set(mie.available())


def make_scores(dtype, scale, pattern, n, k, seed, requires_grad=True):
    """Scores in `dtype` (every field of magnitude <= scale) and the same rounded values in float64."""
    g = torch.Generator().manual_seed(seed)

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=F64) * 2 - 1) * scale

    p, q, lq, tl = uniform(n), uniform(n, k), uniform(n), uniform(n, 3)
    if pattern == "equal-high":
        p, q = torch.full_like(p, scale), torch.full_like(q, scale)
    elif pattern == "equal-low":
        p, q = torch.full_like(p, -scale), torch.full_like(q, -scale)
    elif pattern == "positive-high":
        p, q = torch.full_like(p, scale), torch.full_like(q, -scale)
    elif pattern == "negative-high":
        p, q = torch.full_like(p, -scale), torch.full_like(q, scale)
    elif pattern == "one-dominant":
        q = torch.full_like(q, -scale)
        q[0, 0] = scale
    low = [t.to(dtype) for t in (p, q, lq, tl)]
    ref = [t.to(F64) for t in low]
    if requires_grad:
        low = [t.requires_grad_() for t in low]
        ref = [t.requires_grad_() for t in ref]

    def build(ts):
        return Scores(ts[0], ts[1], log_proposal=ts[2], marginal_entropy=1.0, tilted=ts[3])

    return build(low), low, build(ref), ref


def value_and_grads(name, opts, method, s, leaves):
    """The estimator keeps its own state (MINE's moving average, TUBA's baseline) in float32, as recommended, or
    in float64 for the float64 reference."""
    est = mie.make(name, **opts)
    if s.positive.dtype == F64:
        est = est.double()
    out = getattr(est, method)(s)
    assert out.dtype == s.positive.dtype and out.shape == ()
    grads = torch.autograd.grad(out, leaves, allow_unused=True)
    return float(out.detach()), grads


def check_against_float64(dtype, scale, pattern, n, k, seed):
    s, leaves, s64, leaves64 = make_scores(dtype, scale, pattern, n, k, seed)
    fmax = torch.finfo(dtype).max
    eps = torch.finfo(dtype).eps
    band = 0.01 + 8 * eps  # log-space band around the overflow threshold where rounding may decide either way
    for name, opts in CASES:
        for method in ("bound", "loss"):
            where = f"{name} {opts} {method} {dtype} scale={scale} {pattern}"
            v, grads = value_and_grads(name, opts, method, s, leaves)
            v64, grads64 = value_and_grads(name, opts, method, s64, leaves64)
            assert not math.isnan(v), where
            for g in grads:
                assert g is None or not bool(torch.isnan(g).any()), where
            if math.isfinite(v64) and abs(v64) <= fmax * math.exp(-band):
                # in range: finite and close (rounding of the result, float32 arithmetic at the scale of the scores)
                tol = 8 * eps * abs(v64) + 64 * EPS32 * (1 + scale) * (1 + abs(v64))
                assert math.isfinite(v) and abs(v - v64) <= tol, (where, v, v64)
                for g, g64 in zip(grads, grads64):
                    if g is None:
                        continue
                    g, g64 = g.double(), g64.double()
                    assert bool(torch.isfinite(g).all()), (where, g)
                    gtol = 8 * eps * g64.abs() + 64 * EPS32 * (1 + scale) * (1 + g64.abs())
                    assert bool(((g - g64).abs() <= gtol).all()), (where, g, g64)
            elif abs(v64) >= fmax * math.exp(band):
                # the true value is beyond the dtype's range: exactly +-inf, with the true sign
                assert v == math.copysign(math.inf, v64), (where, v, v64)


@pytest.mark.parametrize("dtype", list(SCALES), ids=str)
def test_values_and_gradients_match_float64_in_range_and_are_honest_infinities_beyond(dtype):
    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        scale=st.sampled_from(SCALES[dtype]),
        pattern=st.sampled_from(PATTERNS),
        n=st.integers(1, 4),
        k=st.integers(2, 4),
        seed=st.integers(0, 2**31 - 1),
    )
    def check(scale, pattern, n, k, seed):
        check_against_float64(dtype, scale, pattern, n, k, seed)

    check()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name, opts", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_half_precision_is_the_float32_computation_rounded_once(dtype, name, opts):
    s, *_ = make_scores(dtype, 20.0, "uniform", 3, 4, seed=1, requires_grad=False)
    s32 = s.astype(torch.float32)
    for method in ("bound", "loss"):
        half = getattr(mie.make(name, **opts), method)(s)
        full = getattr(mie.make(name, **opts), method)(s32)
        assert half.dtype == dtype
        assert torch.equal(half, full.to(dtype)), (name, method, half, full)


# ------------------------------------------------------------------------------------------------------------
# The NWJ-type bounds: -inf exactly where E e^{T - shift} exceeds the dtype's range (the true value is below it)

#: estimator, options, shift: the bound holds `-mean e^{T - shift}` of the negative scores (plus O(1) terms)
OVERFLOWING = [
    ("nwj", {}, 1.0),
    ("tuba", {}, 0.0),
    ("js", {}, 0.0),
    ("interpolated", {"alpha": 0.0}, 0.0),
    ("misa-f", {}, 1.0),
    ("misa-f", {"log_z": "mcmc"}, 1.0),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _scores(negative, dtype):
    n = negative.shape[0]
    p = torch.zeros(n, dtype=dtype, requires_grad=True)
    q = negative.to(dtype).requires_grad_()
    t = torch.zeros(n, 2, dtype=dtype, requires_grad=True)
    s = Scores(p, q, log_proposal=torch.zeros(n, dtype=dtype), marginal_entropy=0.0, tilted=t)
    return s, (p, q, t)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name, opts, shift", OVERFLOWING, ids=[f"{n}-{o}" for n, o, _ in OVERFLOWING])
def test_nwj_type_bounds_are_minus_inf_exactly_past_the_dtype_range(dtype, name, opts, shift):
    threshold = shift + math.log(torch.finfo(dtype).max)
    for offset in (-0.3, -0.1, 0.1, 0.3):
        c = torch.tensor(threshold + offset, dtype=dtype)  # a score the dtype represents
        side = float(c) - threshold
        s, leaves = _scores(torch.full((2, 3), float(c)), dtype)
        value = mie.make(name, **opts).bound(s)
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
        for g in grads:
            assert g is None or not bool(torch.isnan(g).any()), (name, dtype, float(c))
        if side < -0.05:
            assert torch.isfinite(value), (name, dtype, float(c), value)
            assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        elif side > 0.05:
            assert value == -math.inf, (name, dtype, float(c), value)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name, opts, shift", OVERFLOWING, ids=[f"{n}-{o}" for n, o, _ in OVERFLOWING])
def test_an_overflowing_score_leaves_the_others_gradients_finite(dtype, name, opts, shift):
    """One score far past the overflow among ordinary ones: the value is -inf, that score's gradient -inf, every
    other gradient finite (the entrywise `exp(T - shift) / count`), never NaN (no `inf * 0`)."""
    big = math.log(torch.finfo(dtype).max) + shift + 5.0
    q = torch.tensor([[big, -3.0, 0.5], [-10.0, 1.0, 2.0]])
    s, (p, q, t) = _scores(q, dtype)
    est = mie.make(name, **opts)
    value = est.bound(s)
    assert value == -math.inf
    gp, gq = torch.autograd.grad(value, (p, q), allow_unused=True)
    if gp is not None:
        assert bool(torch.isfinite(gp).all())
    if gq is not None:  # misa-f with log_z="mcmc" routes the partition gradient through `tilted` only
        assert not bool(torch.isnan(gq).any())
        assert gq[0, 0] == -math.inf
        others = gq.flatten()[1:]
        assert bool(torch.isfinite(others).all()) and bool((others <= 0).all())
        expected = -torch.exp(q.detach().double().flatten()[1:] - shift) / 6
        torch.testing.assert_close(others.double(), expected, rtol=8 * torch.finfo(dtype).eps, atol=0.0)


# ------------------------------------------------------------------------------------------------------------
# interpolated: large equal scores in half precision (the NaN gradients of the leave-one-out log-sum-exp)


@pytest.mark.parametrize(
    "dtype, scale", [(torch.float32, 1e4), (torch.bfloat16, 1e4), (torch.float16, 3e4)], ids=str
)
@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_interpolated_large_equal_scores_finite_value_and_gradient(dtype, scale, alpha, sign):
    p = torch.full((4,), sign * scale, dtype=dtype, requires_grad=True)
    q = torch.full((4, 3), sign * scale, dtype=dtype, requires_grad=True)
    est = mie.make("interpolated", alpha=alpha, learned_baseline=False)
    value = est.bound(Scores(p, q))
    gp, gq = torch.autograd.grad(value, (p, q))
    assert torch.isfinite(value) and bool(torch.isfinite(gp).all()) and bool(torch.isfinite(gq).all())
    # all scores equal: the joint and marginal means of e^T coincide with e^T itself
    ref = est.double().bound(Scores(p.detach().double(), q.detach().double()))
    assert abs(float(value.detach()) - float(ref)) <= 1e-2 + 8 * torch.finfo(dtype).eps * abs(float(ref))
