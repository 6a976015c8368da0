import pytest
import torch

import mi_estimators as mie


@pytest.mark.parametrize("mi", [0.0, 0.5, 1.5])
def test_ksg_recovers_gaussian_mi(mi: float) -> None:
    # KSG on 2-D Gaussians at N=2000 has bias and spread well under 0.1 nats at these MI levels.
    task = mie.tasks.CorrelatedGaussian(dim=2, mi=mi)
    x, y = task.sample(2000, generator=torch.Generator().manual_seed(1))
    assert abs(float(mie.ksg(x, y, k=3)) - mi) < 0.1


def test_ksg_invariant_to_invertible_marginal_maps() -> None:
    # kNN counts depend only on ranks per coordinate when the map is monotone per dimension and 1-D.
    task = mie.tasks.CorrelatedGaussian(dim=1, mi=1.0)
    x, y = task.sample(1500, generator=torch.Generator().manual_seed(2))
    base = float(mie.ksg(x, y))
    warped = float(mie.ksg(x**3, torch.asinh(y)))
    assert abs(base - warped) < 0.15


def test_ksg_chunking_does_not_change_the_value() -> None:
    x, y = mie.tasks.CorrelatedGaussian(dim=3, mi=1.0).sample(700, generator=torch.Generator().manual_seed(3))
    assert float(mie.ksg(x, y, chunk=64)) == pytest.approx(float(mie.ksg(x, y, chunk=4096)), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k": 0}, "k must be"), ({"k": 10}, "k must be")],
)
def test_ksg_bad_k(kwargs: dict, match: str) -> None:
    x, y = torch.randn(10, 2), torch.randn(10, 2)
    with pytest.raises(ValueError, match=match):
        mie.ksg(x, y, **kwargs)


def test_ksg_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(10, 2\).*\(9, 2\)"):
        mie.ksg(torch.randn(10, 2), torch.randn(9, 2))
