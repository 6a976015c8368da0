"""Bounds and estimators: closed forms with the analytic optimal critic, properties on raw scores (hypothesis),
float32 survival at +-1e4, gradients (gradcheck in float64), MINE's moving average, JS, TUBA's baseline."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import mi_estimators as mie
from mi_estimators import Scores
from mi_estimators.bounds import (
    ba_bound,
    club_bound,
    dv_bound,
    infonce_bound,
    interpolated_bound,
    js_objective,
    nwj_bound,
    smile_bound,
    tuba_bound,
)

F64 = torch.float64
#: log of the largest float32: exp(t) overflows to inf above this
LOG_FLOAT32_MAX = math.log(torch.finfo(torch.float32).max)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ============================================================================================================
# The analytic optimal critic on CorrelatedGaussian(dim=5, mi=2)
#
# With T = log p(x,y)/(p(x)p(y)) (the task's log_density_ratio):
#   * E_p[T] = mi, and the sample mean over N positives has sd sqrt(Var_p(T) / N) with Var_p(T) = dim * rho^2
#     (per coordinate T = (y^2 - eps^2)/2 + const, where eps = (y - rho x)/sqrt(1 - rho^2) and corr(y, eps)^2 =
#     1 - rho^2, so the variance is rho^2);
#   * E_{p(x)p(y)}[e^T] = 1, and log of the sample mean over M negatives has sd ~ sqrt(Var_q(e^T) / M) with
#     Var_q(e^T) = E_p[e^T] - 1 = (1 - rho^2)^-dim - 1 = e^{2 mi} - 1. For an all-pairs matrix the M = N(N-1)
#     off-diagonal terms are dependent, but the first-order (Hoeffding) term of this U-statistic vanishes since
#     E_y e^{T(x, y)} = 1 for every x, so M = N(N-1) is the right count (checked: over 20 seeds at N=2000 the sd of
#     DV was 0.035 against the 0.041 this predicts).
# The tolerance is 5 of these standard deviations (the seeds are fixed, so the tests are deterministic).
# ============================================================================================================

DIM, MI = 5, 2.0
N_ALL_PAIRS = 2000
N_EXPLICIT, K_EXPLICIT = 1000, 500


def optimal_critic_tolerance(n_pos: int, n_neg: int, dim: int = DIM, mi: float = MI) -> float:
    rho2 = -math.expm1(-2.0 * mi / dim)
    return 5.0 * (math.sqrt(dim * rho2 / n_pos) + math.sqrt(math.expm1(2.0 * mi) / n_neg))


def infonce_bias_bound(n: int, mi: float = MI) -> float:
    """InfoNCE with the optimal critic sits below the truth by E log((r_ii + sum_{j != i} r_ij) / N) <=
    log(1 + (E_p[r] - 1) / N) (Jensen), with E_p[r] = e^{2 mi} for this task."""
    return math.log1p(math.expm1(2.0 * mi) / n)


@pytest.fixture(scope="module")
def task():
    return mie.tasks.CorrelatedGaussian(dim=DIM, mi=MI)


@pytest.fixture(scope="module")
def optimal_all_pairs(task) -> Scores:
    """The optimal critic on all pairs of N=2000 joint samples (float64)."""
    x, y = task.sample(N_ALL_PAIRS, generator=gen(0), dtype=F64)
    return Scores.from_matrix(task.log_density_ratio(x[:, None], y[None]))


@pytest.fixture(scope="module")
def optimal_explicit(task) -> Scores:
    """The optimal critic on N=1000 joint pairs and, per x, K=500 independent y' ~ p(y) = N(0, I)."""
    g = gen(1)
    x, y = task.sample(N_EXPLICIT, generator=g, dtype=F64)
    y_neg = torch.randn(N_EXPLICIT, K_EXPLICIT, DIM, generator=g, dtype=F64)
    return mie.contrastive_scores(task.log_density_ratio, x, y, y_neg)


def shifted(s: Scores, c: float) -> Scores:
    return Scores(s.positive + c, s.negative + c)


@pytest.mark.parametrize("which", ["all_pairs", "explicit"])
def test_dv_and_nwj_reach_the_true_mi_with_the_optimal_critic(which, optimal_all_pairs, optimal_explicit):
    s = optimal_all_pairs if which == "all_pairs" else optimal_explicit
    m = s.n * s.k
    tol = optimal_critic_tolerance(s.n, m)  # 0.20 nats for all pairs, 0.29 for the explicit negatives
    dv = float(mie.make("dv").bound(s))
    assert abs(dv - MI) < tol, (dv, MI, tol)
    # NWJ's optimal critic is 1 + log r; the log-ratio itself loses exactly E_q[e^(T-1)] = 1/e
    nwj_opt = float(mie.make("nwj").bound(shifted(s, 1.0)))
    assert abs(nwj_opt - MI) < tol, (nwj_opt, MI, tol)
    nwj_raw = float(nwj_bound(s))
    assert abs(nwj_raw - (MI - 1.0 / math.e)) < tol, nwj_raw
    assert nwj_raw < dv
    # the partition term itself: log E_q e^T = 0 to within its own (much smaller) error
    lme = float(mie.logmeanexp(s.negative))
    assert abs(lme) < 5.0 * math.sqrt(math.expm1(2.0 * MI) / m), lme


def test_infonce_with_the_optimal_critic_is_close_to_the_truth_when_mi_is_far_below_log_n(optimal_all_pairs):
    s = optimal_all_pairs
    n = s.n
    value = float(mie.make("infonce").bound(s))
    assert value <= math.log(n)
    tol = optimal_critic_tolerance(n, n * (n - 1))
    # below the truth by at most the Jensen bias (0.027 nats here) plus noise, above it by noise only
    assert MI - infonce_bias_bound(n) - tol < value < MI + tol, value


def test_infonce_saturates_at_log_n_when_mi_is_far_above_it():
    """MI = 10 nats, N = 200 (log N = 5.30): with the optimal critic the positive dominates each row, so the bound
    sits just under log N (empirically within 0.05 over seeds; 0.1 allowed), while DV still sees ~10 nats."""
    task = mie.tasks.CorrelatedGaussian(dim=5, mi=10.0)
    x, y = task.sample(200, generator=gen(2), dtype=F64)
    s = Scores.from_matrix(task.log_density_ratio(x[:, None], y[None]))
    value = float(infonce_bound(s))
    assert math.log(200) - 0.1 < value <= math.log(200)
    assert float(dv_bound(s)) > 8.0


def test_smile_with_infinite_tau_is_dv_and_finite_tau_differs(optimal_all_pairs):
    s = optimal_all_pairs
    assert torch.equal(mie.make("smile", tau=math.inf).bound(s), mie.make("dv").bound(s))
    assert torch.equal(smile_bound(s, math.inf), dv_bound(s))
    # the optimal critic's scores on independent pairs reach well below -1: clipping at tau=1 must change DV
    assert float(s.negative.min()) < -1.0
    assert not torch.allclose(smile_bound(s, 1.0), dv_bound(s))


def test_tuba_baselines_give_nwj_and_dv(optimal_all_pairs, optimal_explicit):
    for s in (optimal_all_pairs, optimal_explicit):
        torch.testing.assert_close(mie.make("tuba", log_baseline=1.0).bound(s), nwj_bound(s))
        torch.testing.assert_close(tuba_bound(s, 1.0), nwj_bound(s))
        log_z = float(mie.logmeanexp(s.negative))
        torch.testing.assert_close(mie.make("tuba", log_baseline=log_z).bound(s), dv_bound(s))
        # any other constant baseline is lower (e^u >= 1 + u)
        assert float(tuba_bound(s, log_z + 0.5)) < float(dv_bound(s))
        assert float(tuba_bound(s, log_z - 0.5)) < float(dv_bound(s))


def test_interpolated_endpoints_with_the_optimal_critic(optimal_all_pairs):
    s = optimal_all_pairs
    torch.testing.assert_close(
        mie.make("interpolated", alpha=0.0, log_baseline=1.0, learned_baseline=False).bound(s), nwj_bound(s)
    )
    value = float(mie.make("interpolated", alpha=1.0).bound(s))
    k = s.k
    assert value <= math.log(k)
    tol = optimal_critic_tolerance(s.n, s.n * k)
    assert MI - infonce_bias_bound(k) - tol < value < MI + tol, value


def test_ba_and_club_with_the_true_conditional(task):
    """With q(y|x) = p(y|x): BA = E_p log p(y|x) + H(Y) = mi; CLUB with critic log p(y|x) is an upper bound: for
    this Gaussian it is dim/2 [(1 + rho^2)/(1 - rho^2) - 1] = dim rho^2 / (1 - rho^2) = 6.13 nats >= mi = 2."""
    g = gen(3)
    x, y = task.sample(N_EXPLICIT, generator=g, dtype=F64)
    lp = task.conditional_log_prob(x, y)
    y_neg = torch.randn(N_EXPLICIT, 50, DIM, generator=g, dtype=F64)
    s = mie.contrastive_scores(
        task.conditional_log_prob, x, y, y_neg, log_proposal=lp, marginal_entropy=task.entropy_y
    )
    ba = float(mie.make("ba").bound(s))
    # Var_p log p(y|x) = dim/2 (a chi^2_dim / 2): sd of the mean sqrt(dim / 2 / N); 5 sd
    assert abs(ba - MI) < 5.0 * math.sqrt(DIM / 2 / N_EXPLICIT), ba
    club = float(mie.make("club").bound(s))
    rho2 = task.rho**2
    # the negatives' term dominates the noise: Var_{p(x)p(y)} log p(y|x) = dim (1 + rho^2)^2 / (2 (1 - rho^2)^2) = 30,
    # with N = 1000 independent x (the K y' of one x share it): sd <= 0.17; 5 sd plus BA's 5 sd
    assert abs(club - DIM * rho2 / (1 - rho2)) < 5 * (0.17 + math.sqrt(DIM / 2 / N_EXPLICIT)), club
    assert club > MI
    assert float(mie.make("club").bound(s)) == pytest.approx(float(s.positive.mean() - s.negative.mean()))


# ============================================================================================================
# Properties on raw score tensors (hypothesis): float32 and float64, moderate and huge magnitudes
# ============================================================================================================

DTYPES = [torch.float32, torch.float64]


@st.composite
def raw_scores(draw, max_abs=None, min_k: int = 1, max_n: int = 6, max_k: int = 6, dtype=None):
    """`(positive [N], negative [N, K])` with entries in [-max_abs, max_abs] (max_abs drawn from 50 and 1e4 when
    not given), dtype drawn from float32/float64 when not given."""
    dtype = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    bound = draw(st.sampled_from([50.0, 1e4])) if max_abs is None else max_abs
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(min_k, max_k))
    width = 32 if dtype == torch.float32 else 64
    el = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=width)
    p = draw(st.lists(el, min_size=n, max_size=n))
    q = draw(st.lists(el, min_size=n * k, max_size=n * k))
    return torch.tensor(p, dtype=dtype), torch.tensor(q, dtype=dtype).reshape(n, k)


def tol(*ts: torch.Tensor, extra: float = 0.0) -> float:
    """Rounding allowance: 32 ulps of the largest magnitude involved (scores and any shift)."""
    eps = torch.finfo(ts[0].dtype).eps
    scale = max(float(t.abs().max()) for t in ts) + abs(extra)
    return 32.0 * eps * (1.0 + scale)


PROPS = settings(max_examples=100, deadline=None)


@PROPS
@given(raw_scores())
def test_infonce_at_most_log_k_plus_1(pn):
    p, n = pn
    value = float(infonce_bound(Scores(p, n)))
    assert value <= math.log(n.shape[1] + 1) + tol(p, n)


@PROPS
@given(st.integers(2, 8), st.sampled_from(DTYPES), st.sampled_from([50.0, 1e4]), st.integers(0, 2**31 - 1))
def test_infonce_from_matrix_at_most_log_n(n, dtype, scale, seed):
    m = ((torch.rand(n, n, generator=gen(seed), dtype=F64) * 2 - 1) * scale).to(dtype)
    m[0, 0] = scale  # a dominant positive: the bound is then close to its cap
    value = float(infonce_bound(Scores.from_matrix(m)))
    assert value <= math.log(n) + tol(m)


@PROPS
@given(raw_scores())
def test_nwj_at_most_dv(pn):
    p, n = pn
    s = Scores(p, n)
    assert float(nwj_bound(s)) <= float(dv_bound(s)) + tol(p, n)


@PROPS
@given(raw_scores(), st.floats(-1e4, 1e4, allow_nan=False))
def test_dv_invariant_to_a_constant_shift(pn, c):
    p, n = pn
    c = float(torch.tensor(c, dtype=p.dtype))
    a = float(dv_bound(Scores(p, n)))
    b = float(dv_bound(Scores(p + c, n + c)))
    assert abs(a - b) <= 4.0 * tol(p, n, extra=c), (a, b, c)


@PROPS
@given(raw_scores(), st.floats(-100.0, 100.0, allow_nan=False))
def test_tuba_below_dv_and_equal_at_the_optimal_baseline(pn, a):
    p, n = pn
    s = Scores(p, n)
    dv = float(dv_bound(s))
    assert float(tuba_bound(s, a)) <= dv + tol(p, n, extra=a)
    log_z = mie.logmeanexp(n)
    assert abs(float(tuba_bound(s, log_z)) - dv) <= 4.0 * tol(p, n)
    nwj, tuba1 = float(nwj_bound(s)), float(tuba_bound(s, 1.0))
    if (
        float(log_z) - 1.0 < LOG_FLOAT32_MAX - 1.0
    ):  # away from float32 overflow, where rounding picks the side
        assert abs(nwj - tuba1) <= 4.0 * tol(p, n) * max(1.0, abs(nwj))


@PROPS
@given(raw_scores(), st.floats(1e-3, 2e4, allow_nan=False))
def test_smile_clipping_properties(pn, tau):
    p, n = pn
    s = Scores(p, n)
    value, dv = float(smile_bound(s, tau)), float(dv_bound(s))
    assert torch.equal(smile_bound(s, math.inf), dv_bound(s))
    mean_p = float(p.mean())
    # the clipped partition term lies in [-tau, tau]
    assert mean_p - tau - tol(p, n, extra=tau) <= value <= mean_p + tau + tol(p, n, extra=tau)
    if tau >= float(n.abs().max()):
        assert value == dv
    # clipping only lowers scores that are all >= 0 (so the bound rises, falling as tau grows) and only raises
    # scores that are all <= 0 (so it falls, rising as tau grows)
    wider = float(smile_bound(s, 2.0 * tau))
    if bool((n >= 0).all()):
        assert value >= dv - tol(p, n) and wider <= value + tol(p, n, extra=tau)
    if bool((n <= 0).all()):
        assert value <= dv + tol(p, n) and wider >= value - tol(p, n, extra=tau)


@PROPS
@given(raw_scores(min_k=2), st.floats(1e-3, 1.0), st.floats(-20.0, 20.0))
def test_interpolated_bound_limits(pn, alpha, a):
    p, n = pn
    s = Scores(p, n)
    k = n.shape[1]
    t = tol(p, n, extra=a)
    # alpha = 1: an InfoNCE with K contrastive terms, at most log K
    assert float(interpolated_bound(s, 1.0, a)) <= math.log(k) + t
    # any alpha in (0, 1]: the joint term is at most log(K / alpha), the marginal term is >= 0
    assert float(interpolated_bound(s, alpha, a)) <= 1.0 + math.log(k / alpha) + t
    # alpha = 0: TUBA with the same baseline; with baseline 1: NWJ
    log_z = float(mie.logmeanexp(n))
    i0, tb = float(interpolated_bound(s, 0.0, a)), float(tuba_bound(s, a))
    if log_z - a < LOG_FLOAT32_MAX - 1.0:  # away from float32 overflow, where rounding picks the side
        assert abs(i0 - tb) <= 4.0 * t * max(1.0, abs(tb))
    i01, nwj = float(interpolated_bound(s, 0.0, 1.0)), float(nwj_bound(s))
    if log_z - 1.0 < LOG_FLOAT32_MAX - 1.0:
        assert abs(i01 - nwj) <= 4.0 * t * max(1.0, abs(nwj))


def _lme(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values) / len(values))


@settings(max_examples=100, deadline=None)
@given(
    raw_scores(max_abs=20.0, min_k=2, dtype=F64),
    st.floats(0.0, 1.0),
    st.floats(-5.0, 5.0),
    st.floats(0.1, 30.0),
)
def test_bounds_match_naive_float64_references(pn, alpha, a, tau):
    """Each pure bound against a direct transcription of its formula (scalar loops, Python floats)."""
    p, n = pn
    s = Scores(p, n)
    P, Q = p.tolist(), n.tolist()
    N, K = len(P), len(Q[0])
    mean_p = sum(P) / N
    flat = [v for row in Q for v in row]
    mean_e = sum(math.exp(v) for v in flat) / len(flat)

    def close(got, want):
        assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-9)

    close(dv_bound(s), mean_p - math.log(mean_e))
    close(nwj_bound(s), mean_p - mean_e / math.e)
    close(infonce_bound(s), sum(P[i] - _lme([P[i], *Q[i]]) for i in range(N)) / N)
    close(tuba_bound(s, a), 1 + mean_p - a - mean_e * math.exp(-a))
    close(smile_bound(s, tau), mean_p - _lme([min(max(v, -tau), tau) for v in flat]))
    softplus = lambda v: max(v, 0.0) + math.log1p(math.exp(-abs(v)))  # noqa: E731
    close(js_objective(s), -sum(softplus(-v) for v in P) / N - sum(softplus(v) for v in flat) / len(flat))
    close(club_bound(s), mean_p - sum(flat) / len(flat))
    # per-x baselines [N]
    b = [a + 0.1 * i for i in range(N)]
    close(
        tuba_bound(s, torch.tensor(b, dtype=F64)),
        1
        + sum(P[i] - b[i] for i in range(N)) / N
        - sum(math.exp(Q[i][k] - b[i]) for i in range(N) for k in range(K)) / (N * K),
    )
    # the alpha-interpolated bound as its docstring states it
    ea = math.exp(a)
    joint = marg = 0.0
    for i in range(N):
        m_marg = sum(math.exp(v) for v in Q[i]) / K
        for k in range(K):
            m_joint = (math.exp(P[i]) + sum(math.exp(Q[i][j]) for j in range(K) if j != k)) / K
            joint += P[i] - math.log(alpha * m_joint + (1 - alpha) * ea)
            marg += math.exp(Q[i][k]) / (alpha * m_marg + (1 - alpha) * ea)
    close(interpolated_bound(s, alpha, a), 1 + joint / (N * K) - marg / (N * K))


# ------------------------------------------------------------------------------------------------------------
# float32 at +-1e4: no NaN anywhere; -inf only where the exponential mean itself overflows float32

#: estimators (with options) whose bound holds `exp(logmeanexp(negative) - shift)`: `-inf` is honest exactly
#: when that exponent exceeds log(float32 max)
OVERFLOWING = {
    "nwj": ({}, 1.0),
    "js": ({}, 0.0),
    "tuba": ({}, 0.0),
    "interpolated-0": ({"alpha": 0.0}, 0.0),
}
ALWAYS_FINITE = {
    "dv": {},
    "mine": {},
    "infonce": {},
    "smile": {},
    "smile-inf": {"tau": math.inf},
    "interpolated": {},
    "interpolated-1": {"alpha": 1.0},
    "club": {},
    "ba": {},
}


def _build(key: str, opts: dict):
    return mie.make(key.split("-")[0], **opts)


@settings(max_examples=80, deadline=None)
@given(raw_scores(max_abs=1e4, min_k=2, dtype=torch.float32))
def test_float32_huge_scores_give_no_nan(pn):
    p, n = pn
    p = p.clone().requires_grad_()
    n = n.clone().requires_grad_()
    s = Scores(p, n, log_proposal=p * 0.5, marginal_entropy=3.0)
    exponent = float(torch.logsumexp(n.detach().double().flatten(), 0)) - math.log(n.numel())
    for key, opts in ALWAYS_FINITE.items():
        est = _build(key, opts)
        bound, loss = est.bound(s), est.loss(s)
        assert torch.isfinite(bound) and torch.isfinite(loss), (key, bound, loss)
        gp, gn = torch.autograd.grad(loss, (p, n), allow_unused=True)
        for g in (gp, gn):
            assert g is None or bool(torch.isfinite(g).all()), key
    for key, (opts, shift) in OVERFLOWING.items():
        bound = _build(key, opts).bound(s)
        assert not torch.isnan(bound), key
        over = exponent - shift - LOG_FLOAT32_MAX
        if over > 0.05:
            assert bound == -math.inf, (key, bound, exponent)
        elif over < -0.05:
            assert torch.isfinite(bound), (key, bound, exponent)
    # JS trains with softplus: its loss is finite whatever the scores
    assert torch.isfinite(mie.make("js").loss(s))


def test_nwj_is_minus_inf_exactly_past_the_float32_overflow():
    p = torch.zeros(2)
    below = torch.full((2, 3), LOG_FLOAT32_MAX + 1.0 - 0.01)
    above = torch.full((2, 3), LOG_FLOAT32_MAX + 1.0 + 0.01)
    assert torch.isfinite(nwj_bound(Scores(p, below)))
    assert nwj_bound(Scores(p, above)) == -math.inf
    # the summands never overflow on their own: one huge score among very negative ones stays finite
    n = torch.full((2, 3), -1e4)
    n[0, 0] = 80.0
    value = nwj_bound(Scores(p, n))
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(-math.exp(80.0 - 1.0 - math.log(6.0)), rel=1e-4)


# ============================================================================================================
# Gradients: gradcheck in float64 of every estimator's bound and loss wrt positive and negative scores
# ============================================================================================================

GRAD_CASES = [
    ("dv", {}),
    ("mine", {"ema_rate": 1.0}),  # the EMA is the batch itself: a pure function of the scores
    ("nwj", {}),
    ("infonce", {}),
    ("js", {}),
    ("tuba", {"log_baseline": 0.3}),
    ("tuba", {"log_baseline": -0.2, "learned_baseline": True}),
    ("smile", {"tau": 0.7}),
    ("smile", {"tau": math.inf}),
    ("interpolated", {"alpha": 0.0, "log_baseline": 0.4}),
    ("interpolated", {"alpha": 0.5}),
    ("interpolated", {"alpha": 1.0}),
    ("club", {}),
    ("kl-dime", {}),
    ("gan-dime", {}),
    ("hd-dime", {}),
]


@pytest.mark.parametrize("name, opts", GRAD_CASES, ids=[f"{n}-{o}" for n, o in GRAD_CASES])
@pytest.mark.parametrize("method", ["bound", "loss"])
def test_gradcheck_wrt_scores(name, opts, method):
    g = gen(4)
    p = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    n = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    est = mie.make(name, **opts).double()
    fn = getattr(est, method)
    assert gradcheck(lambda a, b: fn(Scores(a, b)), (p, n))
    # and the gradient is not trivially zero wrt the scores the method reads
    gp, gn = torch.autograd.grad(fn(Scores(p, n)), (p, n), allow_unused=True)
    assert gp is not None and float(gp.abs().sum()) > 0
    # CLUB's loss is the positives' likelihood; the f-DIME readout E_p[T] reads no negatives
    if not (name == "club" and method == "loss") and not (name.endswith("-dime") and method == "bound"):
        assert gn is not None and float(gn.abs().sum()) > 0


def test_gradcheck_ba_wrt_log_proposal():
    lp = torch.randn(5, generator=gen(5), dtype=F64, requires_grad=True)
    p, n = torch.zeros(5, dtype=F64), torch.zeros(5, 2, dtype=F64)
    est = mie.make("ba")
    assert gradcheck(lambda t: est.loss(Scores(p, n, log_proposal=t, marginal_entropy=1.0)), (lp,))
    value = est.bound(Scores(p, n, log_proposal=lp, marginal_entropy=1.25))
    assert float(value.detach()) == pytest.approx(float(lp.detach().mean()) + 1.25)
    torch.testing.assert_close(ba_bound(Scores(p, n, log_proposal=lp, marginal_entropy=1.25)), value)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gradcheck_wrt_log_baselines(alpha):
    g = gen(6)
    p = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    n = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    a = torch.tensor(0.2, dtype=F64, requires_grad=True)
    a_vec = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    assert gradcheck(lambda x, y, b: interpolated_bound(Scores(x, y), alpha, b), (p, n, a))
    assert gradcheck(lambda x, y, b: interpolated_bound(Scores(x, y), alpha, b), (p, n, a_vec))
    assert gradcheck(lambda x, y, b: tuba_bound(Scores(x, y), b), (p, n, a))
    assert gradcheck(lambda x, y, b: tuba_bound(Scores(x, y), b), (p, n, a_vec))


def test_tuba_learned_baseline_gradient_closed_form_and_optimum():
    g = gen(7)
    p, n = torch.randn(4, generator=g, dtype=F64), torch.randn(4, 5, generator=g, dtype=F64)
    s = Scores(p, n)
    est = mie.make("tuba", log_baseline=0.3, learned_baseline=True).double()
    assert isinstance(est.log_baseline, torch.nn.Parameter)
    (grad,) = torch.autograd.grad(est.loss(s), (est.log_baseline,))
    # loss = -(1 + E[T - a] - E[e^(T - a)]): d/da = 1 - E e^(T - a)
    a = float(est.log_baseline.detach())  # 0.3 as stored (float32, then cast)
    assert float(grad) == pytest.approx(1.0 - float(torch.exp(n - a).mean()), rel=1e-12)
    # at the optimum a = log E e^T the gradient vanishes and TUBA equals DV
    with torch.no_grad():
        est.log_baseline.fill_(float(mie.logmeanexp(n)))
    (grad,) = torch.autograd.grad(est.loss(s), (est.log_baseline,))
    assert abs(float(grad)) < 1e-12
    torch.testing.assert_close(est.bound(s), dv_bound(s))
    # fixed baseline: a buffer, no parameter to train
    fixed = mie.make("tuba", log_baseline=0.3)
    assert list(fixed.parameters()) == [] and "log_baseline" in fixed.state_dict()


def test_club_loss_is_the_likelihood_of_the_positives():
    p = torch.tensor([0.5, -1.0, 2.0], dtype=F64, requires_grad=True)
    n = torch.randn(3, 4, generator=gen(8), dtype=F64, requires_grad=True)
    est = mie.make("club")
    assert est.lower_bound is False
    loss = est.loss(Scores(p, n))
    assert float(loss.detach()) == pytest.approx(-0.5)
    gp, gn = torch.autograd.grad(loss, (p, n), allow_unused=True)
    torch.testing.assert_close(gp, torch.full((3,), -1.0 / 3, dtype=F64))
    assert gn is None or float(gn.abs().max()) == 0.0


# ============================================================================================================
# MINE: the moving average lives in the estimator
# ============================================================================================================


def test_mine_ema_and_gradient_match_the_closed_form():
    rate = 0.25
    est = mie.make("mine", ema_rate=rate).double()
    g = gen(9)
    batches = [
        (torch.randn(4, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64) + c)
        for c in (0.0, 1.5, -0.7)
    ]
    ema = None
    for p, n in batches:
        p = p.requires_grad_()
        n = n.requires_grad_()
        s = Scores(p, n)
        z = float(torch.exp(n.detach()).mean())
        ema = (
            z if ema is None else (1 - rate) * ema + rate * z
        )  # MINE's moving average of E e^T, linear space
        loss = est.loss(s)
        assert float(est.ema_log_z) == pytest.approx(math.log(ema), rel=1e-12)
        ratio = z / ema
        assert float(loss.detach()) == pytest.approx(
            -(float(p.detach().mean()) - ratio * math.log(z)), rel=1e-12
        )
        gp, gn = torch.autograd.grad(loss, (p, n))
        torch.testing.assert_close(gp, torch.full((4,), -0.25, dtype=F64))
        # grad of the partition term: grad E e^T / ema = (e^T_ik / sum e^T) * (E e^T / ema)
        expected = torch.exp(n.detach()) / torch.exp(n.detach()).sum() * ratio
        torch.testing.assert_close(gn, expected, rtol=1e-12, atol=1e-15)
        # the reported value is plain DV, untouched by the EMA
        torch.testing.assert_close(est.bound(s), dv_bound(s))


def test_mine_ratio_is_capped_by_the_rate_after_a_jump_float32():
    rate = 0.1
    est = mie.make("mine", ema_rate=rate)
    est.loss(Scores(torch.zeros(3), torch.full((3, 2), -1e4)))
    n = torch.full((3, 2), 1e4, requires_grad=True)
    loss = est.loss(Scores(torch.zeros(3), n))
    assert torch.isfinite(loss)
    (gn,) = torch.autograd.grad(loss, (n,))
    ratio = float(gn.sum())  # the softmax weights sum to one
    assert 0 < ratio <= 1.0 / rate * (1 + 1e-5)


def test_mine_state_dict_round_trip_restores_the_ema():
    g = gen(10)
    est = mie.make("mine", ema_rate=0.05)
    for c in (0.0, 2.0, 4.0):
        est.loss(Scores(torch.randn(6, generator=g), torch.randn(6, 5, generator=g) + c))
    state = est.state_dict()
    assert "ema_log_z" in state and torch.isfinite(state["ema_log_z"])
    p_next, n_next = torch.randn(6, generator=g), torch.randn(6, 5, generator=g) + 5.0

    def next_loss_and_grad(e):
        n = n_next.clone().requires_grad_()
        loss = e.loss(Scores(p_next, n))
        (gn,) = torch.autograd.grad(loss, (n,))
        return loss.detach(), gn, e.ema_log_z.clone()

    restored = mie.make("mine", ema_rate=0.05)
    restored.load_state_dict(state)
    ref = next_loss_and_grad(est)
    got = next_loss_and_grad(restored)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    # without the state a fresh estimator starts its EMA at the batch: a different loss and gradient
    fresh = next_loss_and_grad(mie.make("mine", ema_rate=0.05))
    assert not torch.allclose(fresh[0], ref[0]) and not torch.allclose(fresh[1], ref[1])


def test_mine_rejects_bad_rates():
    for rate in (0.0, -0.1, 1.5, math.nan, "0.1", True):
        with pytest.raises(
            ValueError, match=r"estimator 'mine' option ema_rate must be a number in \(0, 1\]"
        ):
            mie.make("mine", ema_rate=rate)


# ============================================================================================================
# JS: trained with the JS objective, reported through NWJ of T + 1
# ============================================================================================================


def test_js_bound_and_loss_on_a_tiny_batch_by_hand():
    p = torch.tensor([0.5, -1.0])
    n = torch.tensor([[0.0, 1.0], [2.0, -3.0]])
    s = Scores(p, n)
    est = mie.make("js")
    # NWJ of T + 1 = mean(T) + 1 - mean(e^T)
    expected_bound = (0.5 - 1.0) / 2 + 1.0 - (1.0 + math.e + math.exp(2.0) + math.exp(-3.0)) / 4
    assert float(est.bound(s)) == pytest.approx(expected_bound, rel=1e-6)
    torch.testing.assert_close(est.bound(s), nwj_bound(Scores(p + 1.0, n + 1.0)))

    def sp(v):
        return math.log1p(math.exp(v))

    objective = -(sp(-0.5) + sp(1.0)) / 2 - (sp(0.0) + sp(1.0) + sp(2.0) + sp(-3.0)) / 4
    assert float(js_objective(s)) == pytest.approx(objective, rel=1e-6)
    assert float(est.loss(s)) == pytest.approx(-objective, rel=1e-6)
    # SMILE trains with the same objective
    assert float(mie.make("smile").loss(s)) == pytest.approx(-objective, rel=1e-6)


def test_js_optimal_critic_is_the_log_ratio_and_its_report_is_the_mi(optimal_all_pairs):
    """The JS objective's maximiser is T* = log r: shifting the optimal critic lowers the objective, and JS's
    report (NWJ of T* + 1) is then the MI within the optimal-critic tolerance."""
    s = optimal_all_pairs
    at = float(js_objective(s))
    for c in (-0.5, 0.5):
        assert float(js_objective(shifted(s, c))) < at
    value = float(mie.make("js").bound(s))
    assert abs(value - MI) < optimal_critic_tolerance(s.n, s.n * s.k)


# ============================================================================================================
# Options and their checks
# ============================================================================================================


def test_bad_options_raise():
    with pytest.raises(ValueError, match=r"option tau must be a positive number; got 0.0"):
        mie.make("smile", tau=0.0)
    with pytest.raises(ValueError, match=r"option alpha must be a number in \[0, 1\]; got 1.5"):
        mie.make("interpolated", alpha=1.5)
    s1 = Scores(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"alpha > 0 needs K >= 2.*K=1"):
        interpolated_bound(s1, 0.5)
    assert torch.isfinite(interpolated_bound(s1, 0.0))
    with pytest.raises(ValueError, match=r"option alpha must be a number in \[0, 1\]; got -0.1"):
        interpolated_bound(Scores(torch.zeros(3), torch.zeros(3, 2)), -0.1)
    # the pure bounds check their options as the estimators do (no bare TypeError from a comparison)
    with pytest.raises(ValueError, match=r"option alpha must be a number in \[0, 1\]; got 'abc'"):
        interpolated_bound(Scores(torch.zeros(3), torch.zeros(3, 2)), "abc")
    with pytest.raises(ValueError, match=r"option tau must be a positive number; got 'abc'"):
        smile_bound(Scores(torch.zeros(3), torch.zeros(3, 2)), "abc")
    s = Scores(torch.zeros(3), torch.zeros(3, 2))
    for bound in (tuba_bound, lambda s, b: interpolated_bound(s, 0.5, b)):
        with pytest.raises(ValueError, match=r"log_baseline .*\[N\] = \[3\].*\(2,\)"):
            bound(s, torch.zeros(2))
        # an [N, 1] baseline would broadcast the positives to [N, N] silently
        with pytest.raises(ValueError, match=r"log_baseline .*\[N\] = \[3\].*\(3, 1\)"):
            bound(s, torch.zeros(3, 1))
