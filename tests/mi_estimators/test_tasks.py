"""Ground-truth tasks: the known MI, the optimal critic, sampling laws, transforms, the staircase, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mi_estimators import tasks as T

N_MC = 100_000
#: Monte-Carlo checks allow this many standard errors (seeds are fixed, so the tests are deterministic)
N_SE = 6.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_spd(d: int, seed: int) -> torch.Tensor:
    g = gen(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.3 * torch.eye(d, dtype=torch.float64)


def correlated_dispersion(dim_x: int, dim_y: int, rho: float) -> torch.Tensor:
    """Unit diagonal, corr(x_i, y_i) = rho for i < min(dim_x, dim_y)."""
    s = torch.eye(dim_x + dim_y, dtype=torch.float64)
    for i in range(min(dim_x, dim_y)):
        s[i, dim_x + i] = s[dim_x + i, i] = rho
    return s


def make_tasks() -> dict[str, T.Task]:
    cg3 = T.CorrelatedGaussian(3, 1.5)
    return {
        "cg-20d-4nats": T.CorrelatedGaussian(20, 4.0),
        "cg-1d-8nats": T.CorrelatedGaussian(1, 8.0),
        "mvn-random": T.MultivariateNormalTask(random_spd(5, 1), dim_x=2, mean=[0.5, -1.0, 2.0, 0.0, 3.0]),
        "student-identity-df3": T.StudentTTask(2, 2, df=3.0),
        "student-corr-df5": T.StudentTTask(3, 2, df=5.0, dispersion=correlated_dispersion(3, 2, 0.8)),
        "student-df0.7": T.StudentTTask(1, 2, df=0.7),
        "spiral-cubic": T.TransformedTask(cg3, "spiral", "cubic"),
        "asinh-halfcube-student": T.TransformedTask(T.StudentTTask(2, 3, df=2.5), "asinh", "half_cube"),
    }


TASKS = make_tasks()


def mc_mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


# ---------------------------------------------------------------------------------------------- known MI


@pytest.mark.parametrize("key", sorted(TASKS))
def test_mc_mean_of_log_density_ratio_is_mi(key):
    task = TASKS[key]
    x, y = task.sample(N_MC, gen(123))
    assert x.shape == (N_MC, task.dim_x) and y.shape == (N_MC, task.dim_y)
    assert x.dtype == y.dtype == torch.float32
    r = task.log_density_ratio(x, y)
    assert r.shape == (N_MC,) and bool(torch.isfinite(r).all())
    mean, se = mc_mean_and_se(r)
    assert abs(mean - task.mi) < N_SE * se + 1e-3, (key, mean, task.mi, se)


def test_product_of_marginals_has_negative_mean_log_ratio():
    """Under p(x)p(y) the mean of the log ratio is -KL(p(x)p(y) || p(x,y)) < 0; shuffling y breaks the pairs."""
    task = TASKS["cg-20d-4nats"]
    x, y = task.sample(20_000, gen(5))
    perm = torch.randperm(y.shape[0], generator=gen(6))
    assert float(task.log_density_ratio(x, y[perm]).mean()) < -1.0


@settings(max_examples=50, deadline=None)
@given(dim=st.integers(1, 50), mi_per_dim=st.floats(0.0, 5.0))
def test_correlated_gaussian_mi_from_rho(dim, mi_per_dim):
    task = T.CorrelatedGaussian(dim, mi_per_dim * dim)
    assert 0.0 <= task.rho < 1.0
    assert -0.5 * dim * math.log(1.0 - task.rho**2) == pytest.approx(task.mi, rel=1e-8, abs=1e-10)
    assert task.one_minus_rho2 == pytest.approx(1.0 - task.rho**2, rel=1e-8, abs=1e-12)


def test_correlated_gaussian_sample_covariance_matches_design():
    task = T.CorrelatedGaussian(4, 3.0)
    x, y = task.sample(N_MC, gen(7))
    z = torch.cat([x, y], 1).double()
    assert float(z.mean(0).abs().max()) < 0.02
    cov = torch.cov(z.T)
    assert torch.allclose(cov, task.covariance, atol=0.025), cov
    assert float(torch.corrcoef(torch.stack([x[:, 2], y[:, 2]]).double())[0, 1]) == pytest.approx(
        task.rho, abs=0.01
    )


def test_correlated_gaussian_zero_mi_is_independent():
    task = T.CorrelatedGaussian(3, 0.0)
    assert task.rho == 0.0
    x, y = task.sample(100, gen(1))
    assert torch.allclose(task.log_density_ratio(x, y), torch.zeros(100))


def test_mvn_reproduces_correlated_gaussian():
    cg = T.CorrelatedGaussian(6, 5.0)
    mvn = T.MultivariateNormalTask(cg.covariance, dim_x=6)
    assert mvn.mi == pytest.approx(cg.mi, rel=1e-10)
    assert mvn.entropy_y == pytest.approx(cg.entropy_y, rel=1e-12)
    x, y = cg.sample(500, gen(2), dtype=torch.float64)
    assert torch.allclose(mvn.log_density_ratio(x, y), cg.log_density_ratio(x, y), atol=1e-9)
    m1, s1 = cg.conditional(x)
    m2, c2 = mvn.conditional(x)
    assert torch.allclose(m1, m2, atol=1e-12)
    assert torch.allclose(torch.diag_embed(s1[0] ** 2), c2, atol=1e-12)
    assert torch.allclose(cg.conditional_log_prob(x, y), mvn.conditional_log_prob(x, y), atol=1e-9)


def test_mvn_log_ratio_matches_torch_distributions():
    cov, mean = random_spd(5, 3), torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0], dtype=torch.float64)
    task = T.MultivariateNormalTask(cov, dim_x=3, mean=mean)
    x, y = task.sample(300, gen(4), dtype=torch.float64)
    joint = torch.distributions.MultivariateNormal(mean, cov).log_prob(torch.cat([x, y], 1))
    px = torch.distributions.MultivariateNormal(mean[:3], cov[:3, :3]).log_prob(x)
    py = torch.distributions.MultivariateNormal(mean[3:], cov[3:, 3:]).log_prob(y)
    assert torch.allclose(task.log_density_ratio(x, y), joint - px - py, atol=1e-9)
    assert torch.allclose(task.conditional_log_prob(x, y), joint - px, atol=1e-9)
    # closed form MI
    expected = 0.5 * (torch.logdet(cov[:3, :3]) + torch.logdet(cov[3:, 3:]) - torch.logdet(cov))
    assert task.mi == pytest.approx(float(expected), rel=1e-10)


def test_mvn_sample_moments_and_conditional_sampler():
    cov, mean = random_spd(4, 8), torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    task = T.MultivariateNormalTask(cov, dim_x=1, mean=mean)
    x, y = task.sample(N_MC, gen(9))
    z = torch.cat([x, y], 1).double()
    assert torch.allclose(z.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(z.T), cov, atol=0.04)
    # y | x from the conditional sampler has the conditional mean and covariance
    x0 = torch.tensor([[0.7]])
    ys = task.sample_conditional(x0, 50_000, gen(10))
    assert ys.shape == (1, 50_000, 3)
    m, c = task.conditional(x0)
    assert torch.allclose(ys[0].double().mean(0), m[0].double(), atol=0.03)
    assert torch.allclose(torch.cov(ys[0].double().T), c.double(), atol=0.04)


def test_correlated_gaussian_conditional_is_the_optimal_ba_proposal():
    task = T.CorrelatedGaussian(5, 2.0)
    x, y = task.sample(1000, gen(11), dtype=torch.float64)
    log_py = torch.distributions.Normal(0.0, 1.0).log_prob(y).sum(-1)
    assert torch.allclose(task.conditional_log_prob(x, y) - log_py, task.log_density_ratio(x, y), atol=1e-9)
    ys = task.sample_conditional(x[:2].float(), 40_000, gen(12))
    assert ys.shape == (2, 40_000, 5) and ys.dtype == torch.float32
    mean, std = task.conditional(x[:2].float())
    assert torch.allclose(ys.mean(1), mean, atol=0.02)
    assert torch.allclose(ys.std(1), std, atol=0.02)


# ---------------------------------------------------------------------------------------------- entropies


def test_correlated_gaussian_entropy_y_matches_monte_carlo():
    task = T.CorrelatedGaussian(8, 3.0)
    _, y = task.sample(N_MC, gen(13))
    nll = -torch.distributions.Normal(0.0, 1.0).log_prob(y.double()).sum(-1)
    mean, se = mc_mean_and_se(nll)
    assert task.entropy_y == pytest.approx(4.0 * math.log(2 * math.pi * math.e), rel=1e-12)
    assert abs(mean - task.entropy_y) < N_SE * se


def test_student_t_entropy_y_matches_monte_carlo():
    stats = pytest.importorskip("scipy.stats")
    disp = correlated_dispersion(2, 3, 0.6) * 1.7
    task = T.StudentTTask(2, 3, df=4.0, dispersion=disp)
    _, y = task.sample(30_000, gen(14), dtype=torch.float64)
    nll = -torch.from_numpy(
        stats.multivariate_t(loc=[0.0] * 3, shape=disp[2:, 2:].numpy(), df=4.0).logpdf(y.numpy())
    )
    mean, se = mc_mean_and_se(nll)
    assert abs(mean - task.entropy_y) < N_SE * se


@pytest.mark.parametrize("name", ["cubic", "half_cube"])
@pytest.mark.parametrize("base_kind", ["cg", "mvn"])
def test_transformed_entropy_y_of_power_maps_matches_monte_carlo(name, base_kind):
    if base_kind == "cg":
        base = T.CorrelatedGaussian(3, 1.0)
    else:
        base = T.MultivariateNormalTask(random_spd(4, 15) * 2.0, dim_x=2)
    task = T.TransformedTask(base, transform_y=name)
    _, y = base.sample(N_MC, gen(16), dtype=torch.float64)
    if base_kind == "cg":
        log_py = torch.distributions.Normal(0.0, 1.0).log_prob(y).sum(-1)
    else:
        log_py = torch.distributions.MultivariateNormal(
            torch.zeros(2, dtype=torch.float64), base.covariance[2:, 2:]
        ).log_prob(y)
    # H(g(Y)) = H(Y) + E log|J_g(Y)|
    samples = -log_py + task.transform_y.log_abs_det_jacobian(y)
    mean, se = mc_mean_and_se(samples)
    assert abs(mean - task.entropy_y) < N_SE * se


def test_transformed_entropy_y_availability():
    cg = T.CorrelatedGaussian(3, 1.0)
    assert T.TransformedTask(cg, "cubic", None).entropy_y == cg.entropy_y
    assert T.TransformedTask(cg, None, "spiral").entropy_y == cg.entropy_y
    no = T.TransformedTask(cg, None, "asinh")
    assert not hasattr(no, "entropy_y")
    with pytest.raises(AttributeError, match="asinh|Asinh"):
        _ = no.entropy_y
    # power map of a heavy-tailed marginal: no closed form offered
    with pytest.raises(AttributeError, match="entropy_y"):
        _ = T.TransformedTask(T.StudentTTask(1, 1, df=3.0), None, "cubic").entropy_y
    # a Gaussian with a non-zero mean: E log|Y| is not the centred formula
    shifted = T.MultivariateNormalTask(cg.covariance, dim_x=3, mean=[0.0, 0, 0, 1, 1, 1])
    with pytest.raises(AttributeError):
        _ = T.TransformedTask(shifted, None, "cubic").entropy_y


# ---------------------------------------------------------------------------------------------- Student-t


def test_student_t_log_ratio_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    disp, mean = random_spd(5, 17), [0.3, -0.2, 1.0, 0.0, 2.0]
    task = T.StudentTTask(2, 3, df=3.5, dispersion=disp, mean=mean)
    x, y = task.sample(400, gen(18), dtype=torch.float64)
    d, m = disp.numpy(), torch.tensor(mean).numpy()
    joint = stats.multivariate_t(loc=m, shape=d, df=3.5).logpdf(torch.cat([x, y], 1).numpy())
    px = stats.multivariate_t(loc=m[:2], shape=d[:2, :2], df=3.5).logpdf(x.numpy())
    py = stats.multivariate_t(loc=m[2:], shape=d[2:, 2:], df=3.5).logpdf(y.numpy())
    expected = torch.from_numpy(joint - px - py)
    assert torch.allclose(task.log_density_ratio(x, y), expected, atol=1e-8)


@pytest.mark.parametrize("df", [0.7, 3.5])
def test_student_t_marginal_is_t_distributed(df):
    """KS test of one coordinate against the univariate t (covers both branches of the gamma sampler)."""
    stats = pytest.importorskip("scipy.stats")
    task = T.StudentTTask(1, 1, df=df, dispersion=[[4.0, 1.0], [1.0, 1.0]])
    x, y = task.sample(20_000, gen(19), dtype=torch.float64)
    assert stats.kstest(x[:, 0].numpy(), stats.t(df, scale=2.0).cdf).pvalue > 1e-3
    assert stats.kstest(y[:, 0].numpy(), stats.t(df).cdf).pvalue > 1e-3


@pytest.mark.parametrize("df", [0.5, 1.0, 3.0, 30.0])
def test_student_t_mi_exceeds_gaussian_mi(df):
    disp = correlated_dispersion(2, 2, 0.7)
    task = T.StudentTTask(2, 2, df=df, dispersion=disp)
    gauss = T.MultivariateNormalTask(disp, dim_x=2)
    assert task.gaussian_mi == pytest.approx(gauss.mi, rel=1e-12)
    assert task.correction > 0
    assert task.mi > gauss.mi


def test_student_t_correction_decreases_and_vanishes_with_df():
    disp = correlated_dispersion(3, 2, 0.5)
    gauss_mi = T.MultivariateNormalTask(disp, dim_x=3).mi
    corrections = [T.StudentTTask(3, 2, df=v, dispersion=disp).correction for v in (1.0, 2.0, 5.0, 20.0, 1e3)]
    assert all(a > b for a, b in zip(corrections, corrections[1:]))
    big = T.StudentTTask(3, 2, df=1e7, dispersion=disp)
    assert big.mi == pytest.approx(gauss_mi, abs=1e-5)
    # the t entropy tends to the Gaussian one
    assert big.entropy_y == pytest.approx(T.MultivariateNormalTask(disp, dim_x=3).entropy_y, abs=1e-5)


def test_student_t_identity_dispersion_mi_matches_bmi_formula():
    """bmi's closed form for the identity dispersion, written out independently."""
    v, dx, dy = 3.0, 2, 4
    dg = lambda a: float(torch.special.digamma(torch.tensor(a, dtype=torch.float64)))  # noqa: E731
    lg = math.lgamma
    expected = (
        lg(v / 2)
        + lg((v + dx + dy) / 2)
        - lg((v + dx) / 2)
        - lg((v + dy) / 2)
        + (v + dx) / 2 * dg((v + dx) / 2)
        + (v + dy) / 2 * dg((v + dy) / 2)
        - (v + dx + dy) / 2 * dg((v + dx + dy) / 2)
        - v / 2 * dg(v / 2)
    )
    assert T.StudentTTask(dx, dy, df=v).mi == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------- transforms

ELEMENTWISE = ["cubic", "asinh", "half_cube"]


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from([*ELEMENTWISE, "spiral"]),
    values=st.lists(st.floats(-20.0, 20.0, allow_nan=False), min_size=6, max_size=6),
)
def test_transform_round_trip(name, values):
    t = torch.tensor(values, dtype=torch.float64).reshape(2, 3)
    f = T.make_transform(name, dim=3)
    assert torch.allclose(f.inverse(f.forward(t)), t, rtol=1e-9, atol=1e-9)
    u = f.forward(t)
    assert torch.allclose(f.forward(f.inverse(u)), u, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", [*ELEMENTWISE, "spiral"])
def test_transform_log_abs_det_jacobian_matches_autograd(name):
    f = T.make_transform(name, dim=3, **({"speed": 0.7} if name == "spiral" else {}))
    pts = torch.randn(5, 3, generator=gen(20), dtype=torch.float64) * 1.5
    for p in pts:
        jac = torch.autograd.functional.jacobian(f.forward, p)
        expected = torch.linalg.slogdet(jac).logabsdet
        assert float(f.log_abs_det_jacobian(p)) == pytest.approx(float(expected), abs=1e-9)


def test_spiral_keeps_norm_and_rotates():
    f = T.Spiral(4, speed=0.5, plane=(1, 3))
    t = torch.randn(100, 4, generator=gen(21), dtype=torch.float64)
    u = f(t)
    assert torch.allclose(u.norm(dim=-1), t.norm(dim=-1))
    assert torch.equal(u[:, [0, 2]], t[:, [0, 2]])  # only the plane moves
    assert not torch.allclose(u, t)
    # bmi's example: speed pi/2 on the unit vector e0 rotates by a quarter turn
    q = T.Spiral(2, speed=math.pi / 2)(torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(q, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize(
    "tx,ty",
    [("cubic", "asinh"), ("half_cube", "spiral"), ("spiral", None), (None, "cubic"), ("asinh", "half_cube")],
)
def test_transformed_task_keeps_mi_and_ratio(tx, ty):
    base = T.MultivariateNormalTask(random_spd(6, 22), dim_x=3)
    task = T.TransformedTask(base, tx, ty)
    assert task.mi == base.mi and task.dim_x == 3 and task.dim_y == 3
    # same seed: the transformed samples are the transforms of the base samples
    bx, by = base.sample(2000, gen(23), dtype=torch.float64)
    x, y = task.sample(2000, gen(23), dtype=torch.float64)
    ix, iy = task.inverse(x, y)
    assert torch.allclose(ix, bx, atol=1e-8) and torch.allclose(iy, by, atol=1e-8)
    assert torch.allclose(task.log_density_ratio(x, y), base.log_density_ratio(bx, by), atol=1e-6)
    # and the MC mean is the (unchanged) MI
    x, y = task.sample(30_000, gen(24))
    mean, se = mc_mean_and_se(task.log_density_ratio(x, y))
    assert abs(mean - base.mi) < N_SE * se + 1e-3


def test_transformed_task_accepts_transform_objects_and_nests():
    base = T.CorrelatedGaussian(2, 1.0)
    once = T.TransformedTask(base, T.Spiral(2, speed=1.0), T.Cubic())
    twice = T.TransformedTask(once, "asinh", "spiral")
    x, y = twice.sample(5000, gen(25))
    assert twice.mi == base.mi
    assert torch.allclose(twice.log_density_ratio(x, y).mean(), torch.tensor(1.0), atol=0.1)
    assert "spiral" in twice.name and "asinh" in twice.name


# ---------------------------------------------------------------------------------------------- shapes, seeds


@pytest.mark.parametrize("key", sorted(TASKS))
def test_log_density_ratio_broadcasts_to_pair_matrix(key):
    task = TASKS[key]
    x, y = task.sample(7, gen(26))
    _, y2 = task.sample(5, gen(27))
    mat = task.log_density_ratio(x[:, None, :], y2[None, :, :])
    assert mat.shape == (7, 5)
    for i in range(7):
        row = task.log_density_ratio(x[i].expand(5, -1), y2)
        assert torch.allclose(mat[i], row, atol=1e-5)
    square = task.log_density_ratio(x[:, None, :], y[None, :, :])
    assert torch.allclose(torch.diagonal(square), task.log_density_ratio(x, y), atol=1e-5)
    # a single pair broadcast against a batch
    assert task.log_density_ratio(x[0], y).shape == (7,)


def test_log_density_ratio_dtype_follows_inputs():
    task = T.CorrelatedGaussian(3, 2.0)
    x, y = task.sample(4, gen(28))
    assert task.log_density_ratio(x, y).dtype == torch.float32
    assert task.log_density_ratio(x.double(), y.double()).dtype == torch.float64
    # differentiable in its inputs (the score a critic is trained towards)
    xg = x.clone().requires_grad_(True)
    task.log_density_ratio(xg, y).sum().backward()
    assert xg.grad is not None and bool(torch.isfinite(xg.grad).all())


@pytest.mark.parametrize("key", sorted(TASKS))
def test_same_seed_same_samples_and_global_rng_untouched(key):
    task = TASKS[key]
    torch.manual_seed(0)
    before = torch.get_rng_state()
    x1, y1 = task.sample(64, gen(29))
    x2, y2 = task.sample(64, gen(29))
    x3, y3 = task.sample(64, gen(30))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3) and not torch.equal(y1, y3)
    assert torch.equal(torch.get_rng_state(), before)


def test_sample_dtype_option():
    x, y = T.StudentTTask(1, 2, df=2.0).sample(3, gen(31), dtype=torch.float64)
    assert x.dtype == y.dtype == torch.float64 and x.shape == (3, 1) and y.shape == (3, 2)


# ---------------------------------------------------------------------------------------------- staircase


@pytest.mark.parametrize(
    "step,expected",
    [(0, 2.0), (3999, 2.0), (4000, 4.0), (8000, 6.0), (15999, 8.0), (16000, 10.0), (10**7, 10.0)],
)
def test_staircase_values(step, expected):
    assert T.staircase(step) == expected


def test_staircase_custom_levels_and_task_cache():
    assert T.staircase(25, steps_per_level=10, levels=(1.0, 3.0)) == 3.0
    assert T.staircase(9, steps_per_level=10, levels=(1.0, 3.0)) == 1.0
    a, b = T.staircase_task(10, dim=5), T.staircase_task(3999, dim=5)
    assert a is b and a.mi == 2.0 and a.dim == 5
    c = T.staircase_task(4000, dim=5)
    assert c.mi == 4.0 and c is not a


@pytest.mark.parametrize("base", ["gaussian", "student_t"])
@pytest.mark.parametrize("transform", [None, "cubic", "asinh", ("half_cube", None)])
def test_staircase_of_any_base_and_transform_has_the_level_as_its_mi(base, transform):
    levels = (2.0, 4.0, 6.0)
    for step, level in ((0, 2.0), (9, 2.0), (10, 4.0), (25, 6.0), (99, 6.0)):
        task = T.staircase_task(
            step, dim=3, steps_per_level=10, levels=levels, base=base, transform=transform
        )
        assert task.mi == level and task.dim_x == task.dim_y == 3
    # cached per (base, transform, dim, level)
    a = T.staircase_task(10, dim=3, steps_per_level=10, levels=levels, base=base, transform=transform)
    assert a is T.staircase_task(19, dim=3, steps_per_level=10, levels=levels, base=base, transform=transform)
    assert a is not T.staircase_task(
        10, dim=4, steps_per_level=10, levels=levels, base=base, transform=transform
    )
    if transform is not None:
        assert isinstance(a, T.TransformedTask)
        assert isinstance(a.base, T.CorrelatedGaussian if base == "gaussian" else T.StudentTTask)
    else:
        assert isinstance(a, T.CorrelatedGaussian if base == "gaussian" else T.StudentTTask)


@pytest.mark.parametrize("transform", [None, "cubic"])
def test_student_t_staircase_level_is_its_true_mi(transform):
    """The correlation solved for the level gives a task whose Monte Carlo mean log density ratio is the level
    (sd of the mean ~0.02 at this size; 0.1 allowed), through the transform too."""
    task = T.staircase_task(0, dim=4, levels=(3.0,), base="student_t", df=2.0, transform=transform)
    base = task.base if transform else task
    assert base.df == 2.0 and 0.0 < base.rho < 1.0
    assert base.gaussian_mi + base.correction == pytest.approx(3.0, abs=1e-9)
    x, y = task.sample(20_000, generator=gen(1), dtype=torch.float64)
    assert abs(float(task.log_density_ratio(x, y).mean()) - 3.0) < 0.1


def test_staircase_custom_base_and_the_old_signature():
    made = []

    def base(dim, mi):
        made.append((dim, mi))
        return T.MultivariateNormalTask(T.CorrelatedGaussian(dim, mi).covariance, dim)

    task = T.staircase_task(5, 2, 4, (1.0, 2.5), base=base, transform="asinh")
    assert task.mi == pytest.approx(2.5) and made == [(2, 2.5)]
    assert T.staircase_task(6, 2, 4, (1.0, 2.5), base=base, transform="asinh") is task and len(made) == 1
    old = T.staircase_task(4000)  # the default: CorrelatedGaussian(20, 4)
    assert isinstance(old, T.CorrelatedGaussian) and old.dim == 20 and old.mi == 4.0
    with pytest.raises(ValueError, match=r"returned a task with mi=.*not 2\.5"):
        T.staircase_task(5, 2, 4, (1.0, 2.5), base=lambda d, m: T.CorrelatedGaussian(d, 1.0))


STAIRCASE_BAD = [
    (lambda: T.staircase_task(0, base="cauchy"), ValueError, r"base must be one of \['gaussian'"),
    (lambda: T.staircase_task(0, transform="square"), ValueError, r"unknown transform 'square'"),
    (lambda: T.staircase_task(0, transform=(1, 2, 3)), ValueError, r"transform must be None, a name"),
    (lambda: T.staircase_task(0, base="student_t", df=0.0), ValueError, r"df must be a number > 0; got 0"),
    (
        lambda: T.staircase_task(0, dim=20, levels=(0.5,), base="student_t", df=3.0),
        ValueError,
        r"df=3 and dim=20 has MI >= 0\.79\d* nats.*mi=0\.5 is below it",
    ),
    (lambda: T.staircase_task(0, dim=1, transform="spiral"), ValueError, r"spiral.*>= 2"),
]


@pytest.mark.parametrize("fn, exc, match", STAIRCASE_BAD, ids=[m for _, _, m in STAIRCASE_BAD])
def test_staircase_task_bad_arguments(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


@settings(max_examples=50, deadline=None)
@given(s1=st.integers(0, 30_000), s2=st.integers(0, 30_000))
def test_staircase_is_monotone_and_on_levels(s1, s2):
    lo, hi = sorted((s1, s2))
    assert T.staircase(lo) <= T.staircase(hi)
    assert T.staircase(s1) in (2.0, 4.0, 6.0, 8.0, 10.0)


# ---------------------------------------------------------------------------------------------- bad input

BAD = [
    (lambda: T.CorrelatedGaussian(dim=0, mi=1.0), ValueError, r"dim must be an int >= 1; got 0"),
    (lambda: T.CorrelatedGaussian(dim=2.5, mi=1.0), ValueError, r"dim must be an int >= 1; got 2\.5"),
    (lambda: T.CorrelatedGaussian(dim=3, mi=-1), ValueError, r"mi must be a number >= 0; got -1$"),
    (lambda: T.CorrelatedGaussian(dim=3, mi=float("nan")), ValueError, r"mi must be a number >= 0; got nan"),
    (
        lambda: T.MultivariateNormalTask([[1.0, 2.0], [2.0, 1.0]], 1),
        ValueError,
        r"covariance must be positive definite",
    ),
    (
        lambda: T.MultivariateNormalTask([[1.0, 0.5], [0.0, 1.0]], 1),
        ValueError,
        r"covariance must be symmetric",
    ),
    (lambda: T.MultivariateNormalTask(torch.eye(3), 3), ValueError, r"dim_x must be between 1 and 2.*got 3"),
    (lambda: T.MultivariateNormalTask(torch.ones(3), 1), ValueError, r"covariance must be a square matrix"),
    (
        lambda: T.MultivariateNormalTask(torch.eye(3), 1, mean=[0.0]),
        ValueError,
        r"mean must have shape \[3\]",
    ),
    (lambda: T.StudentTTask(1, 1, df=0.0), ValueError, r"df must be a number > 0; got 0"),
    (lambda: T.StudentTTask(1, 0, df=3.0), ValueError, r"dim_y must be an int >= 1; got 0"),
    (
        lambda: T.StudentTTask(1, 1, df=3.0, dispersion=torch.eye(3)),
        ValueError,
        r"dispersion must have shape \[2, 2\]",
    ),
    (lambda: T.CorrelatedGaussian(2, 1.0).sample(0), ValueError, r"n must be an int >= 1; got 0"),
    (lambda: T.CorrelatedGaussian(2, 1.0).sample(1.5), ValueError, r"n must be an int >= 1; got 1\.5"),
    (
        lambda: T.CorrelatedGaussian(2, 1.0).sample(3, generator=0),
        TypeError,
        r"generator must be a torch\.Generator",
    ),
    (
        lambda: T.CorrelatedGaussian(2, 1.0).sample(3, dtype=torch.int64),
        TypeError,
        r"dtype must be a floating",
    ),
    (
        lambda: T.CorrelatedGaussian(2, 1.0).log_density_ratio(torch.zeros(3, 3), torch.zeros(3, 2)),
        ValueError,
        r"x must have shape \[\.\.\., 2\]; got shape \(3, 3\)",
    ),
    (
        lambda: T.CorrelatedGaussian(2, 1.0).log_density_ratio(torch.zeros(3, 2), torch.zeros(4, 2)),
        ValueError,
        r"leading shapes of x \(3, 2\) and y \(4, 2\) must broadcast",
    ),
    (
        lambda: T.CorrelatedGaussian(2, 1.0).log_density_ratio([[0.0, 0.0]], torch.zeros(1, 2)),
        TypeError,
        r"x must be a torch\.Tensor",
    ),
    (
        lambda: T.CorrelatedGaussian(2, 1.0).sample_conditional(torch.zeros(3, 2), 0),
        ValueError,
        r"k must be an int >= 1",
    ),
    (
        lambda: T.TransformedTask(T.CorrelatedGaussian(2, 1.0), "square"),
        ValueError,
        r"transform_x: unknown transform 'square'",
    ),
    (
        lambda: T.TransformedTask(T.CorrelatedGaussian(1, 1.0), None, "spiral"),
        ValueError,
        r"transform_y: .*spiral.*>= 2",
    ),
    (
        lambda: T.TransformedTask(T.CorrelatedGaussian(3, 1.0), T.Spiral(2)),
        ValueError,
        r"transform_x: the spiral was built for dim=2 but the task's dimension is 3",
    ),
    (
        lambda: T.TransformedTask(T.CorrelatedGaussian(3, 1.0), torch.sin),
        TypeError,
        r"transform_x must be a Transform",
    ),
    (lambda: T.TransformedTask(object()), TypeError, r"base must be a task"),
    (lambda: T.Spiral(1), ValueError, r"dim must be >= 2 for a spiral"),
    (lambda: T.Spiral(3, plane=(1, 1)), ValueError, r"plane must be two distinct coordinate indices"),
    (lambda: T.make_transform("spiral"), ValueError, r"'spiral' transform needs dim"),
    (lambda: T.staircase(-1), ValueError, r"step must be an int >= 0; got -1"),
    (lambda: T.staircase(5, steps_per_level=0), ValueError, r"steps_per_level must be an int >= 1; got 0"),
    (lambda: T.staircase(5, levels=()), ValueError, r"levels must hold at least one"),
    (lambda: T.staircase(5, levels=(1.0, -2.0)), ValueError, r"levels must be non-negative"),
    (lambda: T.make_task("banana"), ValueError, r"unknown task 'banana'; available: \['correlated_gaussian'"),
]


@pytest.mark.parametrize("fn,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_raise_clear_errors(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


# ---------------------------------------------------------------------------------------------- registry


def test_registry_and_public_names():
    for name in T.__all__:
        assert hasattr(T, name), name
    task = T.make_task("correlated_gaussian", dim=4, mi=2.0)
    assert isinstance(task, T.CorrelatedGaussian) and task.mi == 2.0
    assert set(T.TASKS) >= {"correlated_gaussian", "multivariate_normal", "student_t", "transformed"}
    assert set(T.TRANSFORMS) == {"cubic", "asinh", "half_cube", "spiral"}
    assert "mi=4" in repr(T.CorrelatedGaussian(2, 4.0))
