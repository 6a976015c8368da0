"""The MISA family: bounds as pure functions of Scores, the registered estimators, and a short training."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mi_estimators.misa  # noqa: F401  (registers the estimators)
from mi_estimators.critics import BilinearCritic
from mi_estimators.estimate import estimate
from mi_estimators.misa import MISA, misa_bound, misa_dv_bound, misa_f_bound
from mi_estimators.partition import MCMCLogZ, MonteCarloLogZ, PartitionError
from mi_estimators.proposals import GaussianProposal
from mi_estimators.registry import available, make
from mi_estimators.scores import Scores
from mi_estimators.tasks import CorrelatedGaussian


def _scores(pos, neg, lq, h=1.5, tilted=None, dtype=torch.float64):
    t = lambda v: None if v is None else torch.tensor(v, dtype=dtype)  # noqa: E731
    return Scores(t(pos), t(neg), log_proposal=t(lq), marginal_entropy=h, tilted=t(tilted))


def test_registered():
    assert {"misa", "misa-biased", "misa-dv", "misa-f"} <= set(available())
    for name in ("misa", "misa-biased", "misa-dv", "misa-f"):
        assert make(name).needs_proposal


def test_bounds_by_hand():
    s = _scores([1.0, 2.0], [[0.0, math.log(3.0)], [1.0, 1.0]], [-1.0, -0.5])
    data = (-1.0 + 1.0 - 0.5 + 2.0) / 2 + 1.5
    misa = data - (math.log(2.0) + 1.0) / 2  # per-x log mean exp: log 2, 1
    dv = data - math.log((1 + 3 + 2 * math.e) / 4)
    f = data - (1 + 3 + 2 * math.e) / 4 / math.e
    assert float(misa_bound(s)) == pytest.approx(misa)
    assert float(misa_dv_bound(s)) == pytest.approx(dv)
    assert float(misa_f_bound(s)) == pytest.approx(f)


scores_strategy = st.integers(1, 6).flatmap(
    lambda n: st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.lists(st.floats(-50, 50), min_size=n, max_size=n),
            st.lists(st.lists(st.floats(-50, 50), min_size=k, max_size=k), min_size=n, max_size=n),
            st.lists(st.floats(-20, 5), min_size=n, max_size=n),
        )
    )
)


@settings(max_examples=150, deadline=None)
@given(scores_strategy)
def test_ordering_misa_ge_dv_ge_f(raw):
    """misa >= misa-dv (Jensen across x) >= misa-f (log z <= z/e), on any raw scores, in float64 and float32."""
    pos, neg, lq = raw
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        s = _scores(pos, neg, lq, dtype=dtype)
        a, b, c = float(misa_bound(s)), float(misa_dv_bound(s)), float(misa_f_bound(s))
        scale = 1.0 + max(abs(v) for row in neg for v in row)
        assert a >= b - tol * scale and b >= c - tol * scale, (a, b, c)


def test_float32_extreme_scores():
    """Scores of +-1e4 in float32: misa and misa-dv stay finite (log-sum-exp); misa-f is -inf, the honest value of
    `-mean e^{T-1}` when it overflows."""
    s = _scores([1e4, -1e4], [[1e4, -1e4], [-1e4, 0.0]], [0.0, 0.0], dtype=torch.float32)
    assert math.isfinite(float(misa_bound(s))) and math.isfinite(float(misa_dv_bound(s)))
    assert float(misa_f_bound(s)) == -math.inf
    low = _scores([-1e4, -1e4], [[-1e4, -1e4], [-1e4, -1e4]], [0.0, 0.0], dtype=torch.float32)
    assert math.isfinite(float(misa_f_bound(low)))


@pytest.mark.parametrize("fn", [misa_bound, misa_dv_bound, misa_f_bound])
def test_mcmc_mode_keeps_value_and_routes_gradient(fn):
    """With `tilted`, the value is the Monte Carlo one; the partition gradient flows only into `tilted`."""
    neg = torch.tensor([[0.1, 0.5], [1.0, -1.0], [0.0, 0.3]], dtype=torch.float64, requires_grad=True)
    tilted = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    pos, lq = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    s_mc = Scores(pos, neg, log_proposal=lq, marginal_entropy=0.0)
    s_mcmc = Scores(pos, neg, log_proposal=lq, marginal_entropy=0.0, tilted=tilted)
    torch.testing.assert_close(fn(s_mcmc, log_z="mcmc"), fn(s_mc, log_z="mc"))
    fn(s_mcmc, log_z="auto").backward()
    assert neg.grad is None or bool((neg.grad == 0).all())
    assert tilted.grad is not None and bool((tilted.grad < 0).all())  # the partition term enters with a minus
    if fn is misa_bound:
        torch.testing.assert_close(tilted.grad, torch.full((3, 4), -1 / 12, dtype=torch.float64))


def test_missing_fields_named_errors():
    s = Scores(torch.zeros(2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="log_proposal"):
        misa_bound(s)
    s = Scores(torch.zeros(2), torch.zeros(2, 3), log_proposal=torch.zeros(2))
    with pytest.raises(ValueError, match="marginal_entropy"):
        misa_dv_bound(s)
    s = Scores(torch.zeros(2), torch.zeros(2, 3), log_proposal=torch.zeros(2), marginal_entropy=1.0)
    with pytest.raises(ValueError, match="needs Scores.tilted"):
        misa_bound(s, log_z="mcmc")
    with pytest.raises(ValueError, match="log_z must be one of"):
        misa_f_bound(s, log_z="exact")


def test_options_and_errors():
    est = make("misa", log_z="mcmc", sampler="hmc", n_samples=20, burn_in=5, n_leapfrog=3, x_dim=2, y_dim=2)
    assert isinstance(est.partition, MCMCLogZ) and est.partition.sampler.n_leapfrog == 3
    assert est.partition.n_samples == 20 and est.partition.sampler.burn_in == 5
    assert isinstance(make("misa", log_z="mc").partition, MonteCarloLogZ)
    assert make("misa", sampler="mala", adapt="none").partition.sampler.adapt is None
    assert make("misa", sampler="ula").partition.sampler.adapt is None
    assert make("misa-biased", k=7).partition.grad == "reparam"
    assert isinstance(make("misa-dv").partition, MonteCarloLogZ)
    assert isinstance(make("misa-f", log_z="mcmc", sampler="mala").partition, MCMCLogZ)
    with pytest.raises(ValueError, match="unknown option"):
        make("misa", temperature=2.0)
    with pytest.raises(PartitionError, match="misa-biased"):
        make("misa-biased", log_z="mcmc")
    with pytest.raises(ValueError, match="estimator 'misa' option k must be an int >= 1 or None; got 0"):
        make("misa", k=0)
    with pytest.raises(ValueError, match="unknown option"):
        make("misa", sampler="mala", n_leapfrog=2)
    with pytest.raises(ValueError, match="has no proposal"):
        make("misa").scores(torch.zeros(4, 2), torch.zeros(4, 2), BilinearCritic(2, 2))


@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("misa-dv", {"n_samples": 10}, "n_samples"),  # misa-dv's default log_z is "mc": no chain to size
        ("misa-f", {"sampler": "mala"}, "sampler"),
        ("misa", {"log_z": "mc", "burn_in": 3}, "burn_in"),
        ("misa", {"log_z": "mc", "precondition": False}, "precondition"),
        ("misa-biased", {"step_size": 0.5}, "step_size"),
        ("misa-dv", {"log_z": MonteCarloLogZ(8), "chains": 2}, "chains"),
    ],
)
def test_a_chain_option_without_a_chain_is_refused_by_name(name, options, option):
    with pytest.raises(
        ValueError, match=rf"^{name}: option '{option}' configures the MCMC chain, which log_z="
    ):
        make(name, **options)


def test_options_a_given_partition_function_would_ignore_are_refused():
    with pytest.raises(ValueError, match=r"option 'k' sizes a partition function built by name.*\(k=8\)"):
        make("misa-dv", log_z=MonteCarloLogZ(8), k=16)
    with pytest.raises(ValueError, match="the MCMCLogZ instance given as log_z brings its own chain"):
        make("misa", log_z=MCMCLogZ("hmc", n_samples=4), n_samples=8)
    with pytest.raises(ValueError, match="^misa-dv: option 'init' is where the MCMC chain starts"):
        make("misa-dv", init="proposal")
    # what a chain does read is accepted: its start with an MCMCLogZ instance, and every option with log_z="mcmc"
    assert make("misa", log_z=MCMCLogZ("hmc", n_samples=4), init="proposal").init == "proposal"
    est = make("misa-dv", log_z="mcmc", n_samples=7, chains=2, precondition=False)
    assert (est.partition.n_samples, est.partition.chains, est.partition.precondition) == (7, 2, False)
    # the defaults are the official code's: HMC, 50 samples after 5 burn-in steps, one chain, start at the data
    d = make("misa")
    assert (d.partition.n_samples, d.partition.sampler.burn_in, d.partition.chains, d.init) == (
        50,
        5,
        1,
        "data",
    )
    assert d.partition.k == 50 and make("misa-dv").partition.k == 50


@pytest.mark.parametrize("name", ["misa", "misa-biased", "misa-dv", "misa-f"])
def test_scores_shapes_and_gradients(name):
    """`scores` builds [N] positive/log_proposal, [N, K] negatives (and [N, S] tilted for MCMC); the bound's
    gradient reaches both the critic and the proposal."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    chain = {"n_samples": 6} if name == "misa" else {}  # the others run no chain: n_samples would be refused
    est = make(name, x_dim=2, y_dim=2, k=8, marginal_entropy=2.0, **chain)
    critic = BilinearCritic(2, 2)
    with torch.no_grad():
        critic.weight.normal_(generator=g)
    s = est.scores(x, y, critic, generator=g)
    assert s.positive.shape == (16,) and s.negative.shape == (16, 8) and s.log_proposal.shape == (16,)
    assert (s.tilted is not None) == (name == "misa")
    if s.tilted is not None:
        assert s.tilted.shape == (16, 6) and est.last_log_z.result.accept_rate.shape == (16,)
    est.loss(s).backward()
    assert critic.weight.grad is not None and float(critic.weight.grad.abs().sum()) > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in est.proposal.parameters())


def test_misa_biased_gradient_differs_from_unbiased():
    """misa-biased backpropagates through reparameterised negatives; misa (mc) uses SNIS: same value at the same
    draws, different proposal gradients."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g)
    critic = BilinearCritic(2, 2)
    with torch.no_grad():
        critic.weight.copy_(torch.eye(2))
    grads, values = [], []
    for name in ("misa-biased", "misa"):
        est = make(name, log_z="mc", proposal=GaussianProposal(2, 2), k=16, marginal_entropy=0.0)
        torch.manual_seed(0)
        est.proposal = GaussianProposal(2, 2)
        s = est.scores(x, y, critic, generator=torch.Generator().manual_seed(2))
        values.append(float(est.bound(s).detach()))
        est.loss(s).backward()
        grads.append(est.proposal.net.weight.grad.clone())
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert not torch.allclose(grads[0], grads[1])


def test_misa_trains_on_correlated_gaussian():
    """CorrelatedGaussian(dim=5, mi=2) with a learned linear-Gaussian proposal, a bilinear critic, HMC gradient of
    log Z (20 samples after 5 burn-in, chains at the data): the mean estimate over the last 50 of 150 steps is within
    0.25 nats of the truth (the proposal can hold p(y|x) exactly, so the bound is tight at the optimum)."""
    task = CorrelatedGaussian(dim=5, mi=2.0)
    est = MISA(n_samples=20, burn_in=5, k=20)
    hist = estimate(est, task, steps=150, batch_size=128, lr=2e-2, critic="bilinear", seed=0)
    assert abs(hist.final(50) - 2.0) < 0.25, hist.final(50)
    assert float(est.last_log_z.result.mean_accept_rate) > 0.3


def test_misa_per_chain_option_reaches_the_sampler():
    """`per_chain=False`: one step size for all chains (TFP's adaptation with a scalar step, the official code's)."""
    assert make("misa", per_chain=False).partition.sampler.per_chain is False
    assert make("misa").partition.sampler.per_chain is True


# ------------------------------------------------------------------------------------------------------------
# the bound from the negatives alone: the tilted (MCMC) samples serve the loss only


@pytest.mark.parametrize(
    "name, options, fn",
    [
        ("misa", {}, misa_bound),  # log_z="mcmc" by default
        ("misa-dv", {"log_z": "mcmc"}, misa_dv_bound),
        ("misa-f", {"log_z": "mcmc"}, misa_f_bound),
    ],
)
def test_mcmc_mode_bound_needs_no_tilted_samples_but_the_loss_does(name, options, fn):
    est = make(name, **options)
    assert est.log_z_mode == "mcmc"
    neg = torch.tensor([[0.1, 0.5], [1.0, -1.0], [0.0, 0.3]], dtype=torch.float64, requires_grad=True)
    lq = torch.tensor([-1.0, -0.5, 0.2], dtype=torch.float64)
    s = Scores(
        torch.tensor([0.3, 1.0, -0.2], dtype=torch.float64), neg, log_proposal=lq, marginal_entropy=1.5
    )
    value = est.bound(s)
    # the Monte Carlo value over the proposal negatives, differentiable through them
    torch.testing.assert_close(value, fn(s, log_z="mc"))
    (grad,) = torch.autograd.grad(value, neg)
    assert bool((grad < 0).all())
    with pytest.raises(ValueError, match=rf"'{name}' with log_z='mcmc' needs Scores\.tilted .*for its loss"):
        est.loss(s)
    # with tilted samples: the same value, and the loss trains through them
    tilted = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    s_t = Scores(s.positive, neg, log_proposal=lq, marginal_entropy=1.5, tilted=tilted)
    torch.testing.assert_close(est.bound(s_t), value)
    (g_tilted,) = torch.autograd.grad(est.loss(s_t), tilted)
    assert bool((g_tilted > 0).all())


def test_scores_without_chains_for_evaluation():
    task = CorrelatedGaussian(dim=2, mi=1.0)
    est = make("misa", x_dim=2, y_dim=2, n_samples=3, k=6)
    x, y = task.sample(8, generator=torch.Generator().manual_seed(0))
    s = est.scores(
        x,
        y,
        BilinearCritic(2, 2),
        torch.Generator().manual_seed(1),
        marginal_entropy=task.entropy_y,
        tilted=False,
    )
    assert s.tilted is None and s.negative.shape == (8, 6)
    assert math.isfinite(float(est.bound(s).detach()))
    s = est.scores(x, y, BilinearCritic(2, 2), generator=torch.Generator().manual_seed(1))
    assert s.tilted is not None and s.tilted.shape == (8, 3)
