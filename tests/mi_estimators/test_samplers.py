"""Samplers of tilted laws: analytic Gaussian checks, adaptation, bookkeeping and errors.

Statistical tests: each uses a fixed seed and a two-sided false-alarm rate ALPHA = 1e-3 per test (z-test for the
mean per dimension, chi-square test for the variance), on the LAST state of many independent chains (chains are
independent, states within a chain are not), so the tests' nominal false-alarm rate is exact for a sampler whose
chains have converged.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mi_estimators.proposals import DiagGaussian, TanhDiagGaussian
from mi_estimators.samplers import (
    HMC,
    MALA,
    ULA,
    NonFiniteChainError,
    PyroHMC,
    PyroNUTS,
    SampleResult,
    available_samplers,
    make_sampler,
    sample_tilted,
)

ALPHA = 1e-3


def _check_gaussian(z: torch.Tensor, mean: torch.Tensor, var: float, alpha: float = ALPHA) -> None:
    """`z [M, d]` independent draws: each dimension's mean matches `mean` (z-test) and the pooled variance
    matches `var` (chi-square on M*d degrees of freedom), each at two-sided level `alpha` (Bonferroni over dims)."""
    m, d = z.shape
    r = (z - mean) / math.sqrt(var)
    zstat = r.mean(0) * math.sqrt(m)
    crit = stats.norm.ppf(1 - alpha / (2 * d))
    assert bool((zstat.abs() < crit).all()), f"mean off: z-statistics {zstat.tolist()} vs +-{crit:.2f}"
    chi2 = float(r.square().sum())
    lo, hi = stats.chi2.ppf(alpha / 2, m * d), stats.chi2.ppf(1 - alpha / 2, m * d)
    assert lo < chi2 < hi, f"variance off: chi2={chi2:.1f} outside ({lo:.1f}, {hi:.1f}) for dof {m * d}"


def _linear_case(n: int = 400, d: int = 3, s: float = 0.7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g)
    b = torch.tensor([0.8, -1.2, 0.4])[:d]
    law = DiagGaussian(mu, torch.full((n, d), math.log(s)))
    return g, mu, b, s, law


SAMPLERS = {
    "ula": lambda: ULA(step_size=0.5),
    "mala": lambda: MALA(step_size=0.8, adapt=None),
    "hmc": lambda: HMC(step_size=0.8, adapt=None),
    "hmc-default": lambda: HMC(),
    "pyro-hmc": lambda: PyroHMC(step_size=0.5),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_linear_tilt_matches_closed_form(name):
    """N(mu, s^2 I) tilted by e^{b.y} is N(mu + s^2 b, s^2 I). ULA (h = 0.5 in proposal-std units) has the known
    stationary variance s^2 / (1 - h^2/4) (O(h^2) discretisation bias, +6.7% here); the others are exact."""
    n = 150 if name == "pyro-hmc" else 400  # pyro moves all rows jointly: fewer rows keep its acceptance up
    g, mu, b, s, law = _linear_case(n=n)
    sampler = SAMPLERS[name]()
    res = sample_tilted(
        sampler, law, lambda y: (y * b).sum(-1), n_samples=1, init=mu, generator=g, burn_in=60
    )
    assert res.samples.shape == (n, 1, 3)
    last = res.samples[:, -1]
    var = s**2 / (1 - 0.5**2 / 4) if name == "ula" else s**2
    _check_gaussian(last - mu, s**2 * b, var)


def test_linear_tilt_without_preconditioning_and_several_chains():
    """Raw coordinates (as the official MISA code) and C=4 chains per row pooled into `[N, C*S, d]`."""
    g, mu, b, s, law = _linear_case(n=200)
    res = sample_tilted(
        HMC(step_size=0.5, adapt=None),
        law,
        lambda y: (y * b).sum(-1),
        2,
        generator=g,
        chains=4,
        precondition=False,
        burn_in=60,
    )
    assert res.samples.shape == (200, 8, 3) and res.accept_rate.shape == (200, 4)
    last = res.samples.view(200, 4, 2, 3)[:, :, -1].reshape(-1, 3)  # last state of each of the 800 chains
    _check_gaussian(last - mu.repeat_interleave(4, 0), s**2 * b, s**2)


@pytest.mark.parametrize("name", ["mala", "hmc", "pyro-nuts"])
def test_quadratic_tilt_matches_closed_form(name):
    """T(y) = -a/2 |y - c|^2 on N(mu, s^2 I): the tilted law is N((mu/s^2 + a c)/(1/s^2 + a), 1/(1/s^2 + a))."""
    n = 100 if name == "pyro-nuts" else 400
    g, mu, _, s, law = _linear_case(n=n, d=2, seed=1)
    a, c = 3.0, torch.tensor([0.5, -0.5])
    sampler = {
        "mala": MALA(adapt=None),
        "hmc": HMC(step_size=0.7, adapt=None),
        "pyro-nuts": PyroNUTS(step_size=0.5),
    }
    res = sample_tilted(
        sampler[name],
        law,
        lambda y: -0.5 * a * (y - c).square().sum(-1),
        1,
        generator=g,
        burn_in=60 if n > 100 else 30,
    )
    prec = 1 / s**2 + a
    mean = (mu / s**2 + a * c) / prec
    _check_gaussian(res.samples[:, -1] - mean, torch.zeros(2), 1 / prec)


def test_tanh_tilt_matches_grid():
    """1-D tanh-Gaussian tilted by e^{b y}: chain runs on atanh(y) with the log-Jacobian; its samples' mean and
    variance match the density computed on a fine grid of (-1, 1) (z-test and chi-square at ALPHA)."""
    g = torch.Generator().manual_seed(3)
    n, m0, s0, b = 2000, 0.3, 0.8, 1.5
    law = TanhDiagGaussian(torch.full((n, 1), m0), torch.full((n, 1), math.log(s0)))
    res = sample_tilted(
        HMC(step_size=0.8, adapt=None), law, lambda y: b * y[..., 0], 1, generator=g, burn_in=60
    )
    y = res.samples[:, -1, 0].double()
    assert bool((y.abs() < 1).all())
    grid = torch.linspace(-1 + 1e-6, 1 - 1e-6, 200001, dtype=torch.float64)
    q = TanhDiagGaussian(
        torch.full((1, 1), m0, dtype=torch.float64), torch.full((1, 1), math.log(s0), dtype=torch.float64)
    )
    dens = torch.exp(q.log_prob(grid.view(1, -1, 1))[0] + b * grid)
    w = dens / torch.trapezoid(dens, grid)
    mean = float(torch.trapezoid(w * grid, grid))
    var = float(torch.trapezoid(w * (grid - mean) ** 2, grid))
    _check_gaussian(y.view(-1, 1), torch.tensor([mean], dtype=torch.float64), var)


def test_tanh_log_prob_integrates_to_one():
    """The squashed proposal's density (with its log-Jacobian) integrates to 1 on a 1-D grid, also when mass sits
    near the edges (|mean| large)."""
    grid = torch.linspace(-1 + 1e-9, 1 - 1e-9, 400001, dtype=torch.float64).view(1, -1, 1)
    for mean, std in [(0.0, 1.0), (1.5, 0.5), (-2.0, 0.3), (0.2, 2.0)]:
        law = TanhDiagGaussian(
            torch.tensor([[mean]], dtype=torch.float64), torch.tensor([[math.log(std)]], dtype=torch.float64)
        )
        total = float(torch.trapezoid(law.log_prob(grid)[0].exp(), grid[0, :, 0]))
        assert abs(total - 1.0) < 2e-3, (mean, std, total)


@pytest.mark.parametrize("sampler_cls", [HMC, MALA])
@pytest.mark.parametrize(
    ("adapt", "per_chain", "tol"),
    [
        ("dual_averaging", False, 0.05),
        ("simple", False, 0.05),
        ("dual_averaging", True, 0.1),
        ("simple", True, 0.1),
    ],
)
def test_step_size_adaptation_reaches_target(sampler_cls, adapt, per_chain, tol):
    """Starting far from a good step (h = 3 on a 10-d Gaussian with scales 0.37..1.6: acceptance near 0),
    300 adaptation steps bring the post-burn-in mean acceptance probability to 0.75 within `tol`: 0.05 with one
    step size shared by all chains (TFP's behaviour with a scalar step, the official MISA set-up; the statistic
    is averaged over 200 chains), 0.1 per chain (a noisy one-sample statistic: dual averaging's averaged step
    ends conservative, and the simple rule targets the per-chain median, not the mean, of the acceptance).
    The scales are spread (no preconditioning) because on an isotropic Gaussian HMC's acceptance is not monotone
    in the step (leapfrog resonance), which no adaptation rule can track."""
    g = torch.Generator().manual_seed(4)
    n, d = 200, 10
    law = DiagGaussian(torch.zeros(n, d), torch.linspace(-1.0, 0.5, d).expand(n, d))
    sampler = sampler_cls(
        step_size=3.0, adapt=adapt, target_accept=0.75, adapt_rate=0.02, adapt_steps=300, per_chain=per_chain
    )
    res = sample_tilted(
        sampler, law, lambda y: 0.3 * y.sum(-1), 100, generator=g, burn_in=300, precondition=False
    )
    assert abs(float(res.accept_prob.mean()) - 0.75) < tol, float(res.accept_prob.mean())
    assert float(res.step_size.mean()) < 3.0


def test_misa_default_schedule_adapts_four_steps():
    """Official MISA: h = 1, rate 0.01, int(0.8 * 5) = 4 adaptation steps: every chain's final step is
    1.01^j for j in {-4, -2, 0, 2, 4}."""
    g = torch.Generator().manual_seed(5)
    law = DiagGaussian(torch.zeros(64, 2), torch.zeros(64, 2))
    res = sample_tilted(HMC(), law, lambda y: y.sum(-1), 10, generator=g)
    j = torch.log(res.step_size) / math.log(1.01)
    assert torch.allclose(j, j.round(), atol=1e-3)
    assert set(j.round().int().tolist()) <= {-4, -2, 0, 2, 4}


def test_shared_step_size_averages_acceptance():
    g = torch.Generator().manual_seed(6)
    law = DiagGaussian(torch.zeros(32, 2), torch.zeros(32, 2))
    res = sample_tilted(
        HMC(per_chain=False, adapt_steps=20), law, lambda y: y.sum(-1), 5, generator=g, burn_in=20
    )
    assert torch.all(res.step_size == res.step_size[0])


def test_per_chain_step_sizes_and_thinning():
    """A per-chain step tensor: chains with a huge step almost never accept; thinning keeps S states."""
    g = torch.Generator().manual_seed(7)
    n, d = 100, 4
    h = torch.where(torch.arange(n) < 50, torch.tensor(0.3), torch.tensor(8.0))
    res = MALA(adapt=None).sample(
        lambda u: -0.5 * u.square().sum(-1), torch.zeros(n, d), 20, g, step_size=h, thin=3
    )
    assert res.samples.shape == (n, 20, d)
    assert res.n_grad_evals == 1 + 5 + 60
    assert float(res.accept_rate[:50].mean()) > 0.9 and float(res.accept_rate[50:].mean()) < 0.05
    assert torch.equal(res.step_size, h)


def test_same_seed_same_chain_and_value_and_grad_hook():
    """Reproducible from the generator; an explicit (analytic) value_and_grad gives the autograd chain's numbers."""
    law_lp = lambda u: -0.5 * (u - 1.0).square().sum(-1)  # noqa: E731
    init = torch.zeros(16, 3)
    a = HMC().sample(law_lp, init, 30, torch.Generator().manual_seed(8))
    b = HMC().sample(law_lp, init, 30, torch.Generator().manual_seed(8))
    c = HMC().sample(
        None, init, 30, torch.Generator().manual_seed(8), value_and_grad=lambda u: (law_lp(u), 1.0 - u)
    )
    assert torch.equal(a.samples, b.samples)
    torch.testing.assert_close(a.samples, c.samples)
    assert isinstance(a, SampleResult) and a.mean_accept_rate.dim() == 0


def test_nonfinite_proposals_are_rejected_and_counted():
    """A log density that is NaN beyond u > 0.5 (a critic blowing up): those proposals are rejected, counted
    per chain, and never enter the samples."""

    def lp(u):
        v = -0.5 * u.square().sum(-1)
        return torch.where(u[..., 0] > 0.5, torch.full_like(v, math.nan), v)

    g = torch.Generator().manual_seed(9)
    res = HMC(step_size=1.0, adapt=None).sample(lp, torch.zeros(200, 2), 50, g)
    assert bool(torch.isfinite(res.samples).all()) and bool((res.samples[..., 0] <= 0.5).all())
    assert int(res.n_nonfinite.sum()) > 0 and res.n_nonfinite.shape == (200,)


def test_nonfinite_raise_mode_names_chain_and_step():
    def lp(u):
        v = -0.5 * u.square().sum(-1)
        return torch.where(u[..., 0] > 0.5, torch.full_like(v, -math.inf), v)

    with pytest.raises(NonFiniteChainError, match=r"chain \(\d+,\) proposed a non-finite") as e:
        HMC(on_nonfinite="raise").sample(lp, torch.zeros(50, 2), 20, torch.Generator().manual_seed(10))
    assert e.value.step >= 1


def test_nonfinite_initial_state_raises():
    init = torch.zeros(10, 2)
    init[3, 1] = 5.0

    def lp(u):
        return torch.where(u[..., 1] > 1.0, torch.full_like(u[..., 0], math.nan), -u.square().sum(-1))

    for sampler in (HMC(), MALA(), ULA(), PyroHMC()):
        with pytest.raises(NonFiniteChainError, match=r"chain \(3,\).*step 0") as e:
            sampler.sample(lp, init, 5, torch.Generator().manual_seed(0))
        assert e.value.chain == (3,) and e.value.step == 0


def test_bad_input_named_errors():
    lp = lambda u: -u.square().sum(-1)  # noqa: E731
    with pytest.raises(ValueError, match="init must have shape"):
        HMC().sample(lp, torch.zeros(5), 3)
    with pytest.raises(ValueError, match="n_samples"):
        HMC().sample(lp, torch.zeros(5, 2), 0)
    with pytest.raises(ValueError, match="log_density must map"):
        HMC().sample(lambda u: u.sum(), torch.zeros(5, 2), 3)
    with pytest.raises(ValueError, match="per-chain step_size"):
        HMC().sample(lp, torch.zeros(5, 2), 3, step_size=torch.ones(4))
    with pytest.raises(ValueError, match="cannot adapt"):
        ULA(adapt="simple")
    with pytest.raises(ValueError, match="adapt must be"):
        HMC(adapt="fast")
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("gibbs")
    with pytest.raises(ValueError, match="unknown option"):
        make_sampler("mala", n_leapfrog=3)
    with pytest.raises(ValueError, match="init must have shape"):
        sample_tilted(
            HMC(),
            DiagGaussian(torch.zeros(4, 2), torch.zeros(4, 2)),
            lambda y: y.sum(-1),
            2,
            init=torch.zeros(3, 2),
        )
    assert {"hmc", "mala", "ula", "pyro-hmc", "pyro-nuts"} <= set(available_samplers())
    assert make_sampler("hmc", n_leapfrog=3, step_size=None).n_leapfrog == 3


@pytest.mark.parametrize("precondition", [True, False])
def test_critic_value_and_grad_hook_matches_autograd(precondition):
    """An explicit critic input-gradient (as a compiled Q gradient would be) gives the autograd chain's numbers, on a
    tanh law where the chain rule runs through the squashing."""
    n, d = 32, 2
    law = TanhDiagGaussian(0.3 * torch.ones(n, d), torch.full((n, d), -0.5))
    w = torch.tensor([1.5, -0.7])

    def critic(y):
        return (y * w).sum(-1) - y.square().sum(-1)

    def critic_vg(y):
        return critic(y), w - 2 * y

    init = torch.full((n, d), 0.2)
    a = sample_tilted(
        HMC(),
        law,
        critic,
        20,
        init=init,
        generator=torch.Generator().manual_seed(0),
        precondition=precondition,
    )
    b = sample_tilted(
        HMC(), law, critic, 20, init=init, generator=torch.Generator().manual_seed(0), precondition=precondition,
        critic_value_and_grad=critic_vg,
    )  # fmt: skip
    torch.testing.assert_close(a.samples, b.samples, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.accept_rate, b.accept_rate)


def test_jitter_keeps_the_target():
    """Step-size jitter (0.5) leaves the stationary law alone: quadratic tilt still matches at ALPHA."""
    g, mu, _, s, law = _linear_case(n=400, d=2, seed=11)
    a, c = 1.0, torch.tensor([0.5, -0.5])
    res = sample_tilted(
        HMC(jitter=0.5, adapt=None),
        law,
        lambda y: -0.5 * a * (y - c).square().sum(-1),
        1,
        generator=g,
        burn_in=60,
    )
    prec = 1 / s**2 + a
    _check_gaussian(res.samples[:, -1] - (mu / s**2 + a * c) / prec, torch.zeros(2), 1 / prec)
    with pytest.raises(ValueError, match="jitter"):
        HMC(jitter=1.5)
