"""Partition functions against the linear-Gaussian closed form.

Proposal N(mu, s^2 I), critic T(y) = b.y:  log Z = b.mu + s^2 |b|^2 / 2,  d log Z / db = mu + s^2 b,
d log Z / dmu = b. Tolerances are stated per test as multiples of the estimator's standard error (computed from
the closed form), so a correct estimator fails with probability < 1e-3 at any seed; the seeds are fixed.
"""

from __future__ import annotations

import math

import pytest
import torch

from mi_estimators.partition import (
    LogZEstimate,
    MCMCLogZ,
    MonteCarloLogZ,
    PartitionError,
    make_log_z,
    mcmc_log_z_surrogate,
)
from mi_estimators.proposals import DiagGaussian, TanhDiagGaussian
from mi_estimators.samplers import HMC, MALA, NonFiniteChainError

Z_CRIT = 3.5  # two-sided normal quantile for a false-alarm rate below 5e-4


def _case(n: int, requires_grad: bool = False):
    mu = torch.tensor([0.4, -0.3, 0.2], requires_grad=requires_grad)
    b = torch.tensor([0.6, -0.8, 0.5], requires_grad=requires_grad)
    s = 0.8
    law = DiagGaussian(mu.expand(n, 3), torch.full((n, 3), math.log(s)))
    return mu, b, s, law, (lambda y: (y * b).sum(-1))


def _closed_form(mu, b, s):
    mu, b = mu.detach(), b.detach()
    return float(b @ mu + 0.5 * s**2 * b @ b), mu + s**2 * b, b


def test_monte_carlo_log_z_value():
    """N rows x K draws: mean log-mean-exp within Z_CRIT standard errors of log Z, after adding back the known
    O(1/K) Jensen bias -(e^{s^2|b|^2} - 1)/(2K)."""
    n, k = 200, 2000
    mu, b, s, law, critic = _case(n)
    est = MonteCarloLogZ(k)(law, critic, torch.Generator().manual_seed(0))
    assert isinstance(est, LogZEstimate) and est.log_z.shape == (n,) and est.negative.shape == (n, k)
    log_z, _, _ = _closed_form(mu, b, s)
    v = math.exp(s**2 * float(b @ b)) - 1.0  # relative variance of e^T
    bias, se = -v / (2 * k), math.sqrt(v / k / n)
    assert abs(float(est.log_z.mean()) - bias - log_z) < Z_CRIT * se


@pytest.mark.parametrize("sampler", ["hmc", "mala", "pyro-hmc"])
def test_mcmc_gradient_of_log_z_matches_closed_form(sampler):
    """The surrogate's autograd gradient wrt b is the tilted mean mu + s^2 b, wrt mu it is b; the value is the Monte
    Carlo estimate. Chains start at proposal draws; tolerance: Z_CRIT standard errors of the gradient estimate,
    inflated x3 for the autocorrelation of consecutive chain states, plus 0.02 for burn-in bias."""
    n, s_keep = 100 if sampler == "pyro-hmc" else 400, 20
    mu, b, s, law, critic = _case(n, requires_grad=True)
    opts = {"step_size": 0.7, "adapt": None} if sampler != "pyro-hmc" else {"step_size": 0.5}
    part = MCMCLogZ(sampler, n_samples=s_keep, burn_in=30, k=200, **opts)
    est = part(law, critic, torch.Generator().manual_seed(1))
    assert est.tilted.shape == (n, s_keep) and est.samples.shape == (n, s_keep, 3)
    est.log_z.mean().backward()
    log_z, grad_b, grad_mu = _closed_form(mu, b, s)
    se = 3.0 * s / math.sqrt(n * s_keep)
    torch.testing.assert_close(b.grad, grad_b, atol=Z_CRIT * se + 0.02, rtol=0)
    torch.testing.assert_close(mu.grad, grad_mu, atol=Z_CRIT * se / s**2 + 0.03, rtol=0)
    assert abs(float(est.log_z.detach().mean()) - log_z) < 0.05
    if sampler != "pyro-hmc":
        assert est.result.accept_rate.shape == (n,) and float(est.result.mean_accept_rate) > 0.5


@pytest.mark.parametrize("grad", ["snis", "reparam"])
def test_monte_carlo_gradient_is_consistent(grad):
    """SNIS (score-function term on the negatives) and the reparameterised log-mean-exp both estimate the
    gradient consistently; with K = 500 the O(1/K) bias is below 0.02."""
    n = 200
    mu, b, s, law, critic = _case(n, requires_grad=True)
    est = MonteCarloLogZ(500, grad=grad)(law, critic, torch.Generator().manual_seed(2))
    est.log_z.mean().backward()
    _, grad_b, grad_mu = _closed_form(mu, b, s)
    torch.testing.assert_close(b.grad, grad_b, atol=0.04, rtol=0)
    torch.testing.assert_close(mu.grad, grad_mu, atol=0.06, rtol=0)


def test_mcmc_surrogate_on_tanh_law_matches_grid():
    """Bounded law: the chain runs on atanh(y); d log Z / d mean equals E_tilted[d log q / d mean] computed on a grid
    of (-1, 1) in 1-D."""
    n, m0, s0, b = 1000, 0.3, 0.8, 1.5
    mean = torch.full((n, 1), m0, requires_grad=True)
    law = TanhDiagGaussian(mean, torch.full((n, 1), math.log(s0)))
    est = MCMCLogZ(HMC(step_size=0.8, adapt=None), n_samples=10, burn_in=30)(
        law, lambda y: b * y[..., 0], torch.Generator().manual_seed(3)
    )
    assert bool((est.samples.abs() < 1).all())
    est.log_z.sum().backward()
    grid = torch.linspace(-1 + 1e-6, 1 - 1e-6, 100001, dtype=torch.float64)
    u = torch.atanh(grid)
    q = TanhDiagGaussian(
        torch.tensor([[m0]], dtype=torch.float64), torch.tensor([[math.log(s0)]], dtype=torch.float64)
    )
    dens = torch.exp(q.log_prob(grid.view(1, -1, 1))[0] + b * grid)
    w = dens / torch.trapezoid(dens, grid)
    expected = float(torch.trapezoid(w * (u - m0) / s0**2, grid))  # E_tilted[d log N(u; m, s) / dm]
    got = float(mean.grad.mean())
    assert abs(got - expected) < 0.1, (got, expected)


def test_surrogate_value_and_gradient_routing():
    """Value = logmeanexp(negative); gradient only through tilted (1/S per entry), none through negative."""
    neg = torch.randn(4, 6, requires_grad=True)
    tilted = torch.randn(4, 5, requires_grad=True)
    out = mcmc_log_z_surrogate(neg, tilted)
    torch.testing.assert_close(out, torch.logsumexp(neg, 1) - math.log(6))
    out.sum().backward()
    assert neg.grad is None or bool((neg.grad == 0).all())
    torch.testing.assert_close(tilted.grad, torch.full((4, 5), 1 / 5))


def test_float32_extreme_scores_are_finite():
    neg = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    out = MonteCarloLogZ.from_scores(neg)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, torch.tensor([1e4 - math.log(3), -1e4]))


def test_bad_input_named_errors():
    law = DiagGaussian(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(PartitionError, match="k must be an int >= 1"):
        MonteCarloLogZ(0)
    with pytest.raises(PartitionError, match="n_samples must be an int >= 1"):
        MCMCLogZ("hmc", n_samples=0)
    with pytest.raises(PartitionError, match="burn_in"):
        MCMCLogZ("hmc", burn_in=-1)
    with pytest.raises(PartitionError, match="critic must map proposal draws"):
        MonteCarloLogZ(3)(law, lambda y: y.sum())
    with pytest.raises(PartitionError, match="law must be a batched proposal law"):
        MonteCarloLogZ(3)(object(), lambda y: y.sum(-1))
    with pytest.raises(PartitionError, match=r"negative must have shape \[N, K\]"):
        MonteCarloLogZ.from_scores(torch.zeros(3))
    with pytest.raises(PartitionError, match="same N"):
        mcmc_log_z_surrogate(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(PartitionError, match="log_z must be"):
        make_log_z("exact")
    with pytest.raises(ValueError, match="unknown sampler"):
        MCMCLogZ("gibbs")
    assert isinstance(make_log_z("mcmc", k=7, sampler=MALA()), MCMCLogZ)


def test_nonfinite_critic_at_chain_start_is_reported():
    """A critic that is NaN at the data point where a chain starts: named error with the chain index."""
    law = DiagGaussian(torch.zeros(5, 2), torch.zeros(5, 2))
    init = torch.zeros(5, 2)
    init[2] = 3.0

    def critic(y):
        return torch.where(y[..., 0] > 2.0, torch.full_like(y[..., 0], math.nan), y.sum(-1))

    with pytest.raises(NonFiniteChainError, match=r"chain \(2, 0\)"):
        MCMCLogZ("hmc", n_samples=3)(law, critic, torch.Generator().manual_seed(0), init=init)
