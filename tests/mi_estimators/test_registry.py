"""Registry: `available()`, `make(name, **options)` with its errors, `register(name)` for classes and functions."""

from __future__ import annotations

import re

import pytest
import torch

import mi_estimators as mie
from mi_estimators import Estimator, Scores
from mi_estimators.bounds import dv_bound, nwj_bound

ANCHORS = ["ba", "club", "dv", "infonce", "interpolated", "js", "mine", "nwj", "smile", "tuba"]


@pytest.fixture
def cleanup():
    """Names registered by a test, unregistered afterwards even when it fails."""
    names: list[str] = []
    yield names
    for name in names:
        if name in mie.available():
            mie.unregister(name)


def scores() -> Scores:
    g = torch.Generator().manual_seed(0)
    return Scores(torch.randn(4, generator=g), torch.randn(4, 3, generator=g))


def test_available_is_sorted_and_holds_the_anchors():
    names = mie.available()
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    missing = set(ANCHORS) - set(names)
    assert not missing, missing
    # a copy: mutating it changes nothing
    names.append("zzz")
    assert "zzz" not in mie.available()


@pytest.mark.parametrize("name", ANCHORS)
def test_every_anchor_builds_and_names_itself(name):
    est = mie.make(name)
    assert isinstance(est, Estimator) and isinstance(est, torch.nn.Module)
    assert est.name == name
    assert name in repr(est)
    s = Scores(torch.zeros(3), torch.zeros(3, 2), log_proposal=torch.zeros(3), marginal_entropy=1.0)
    value = est.bound(s)
    assert value.shape == () and torch.isfinite(value)
    assert torch.equal(est(s), value)  # forward is the bound


def test_make_unknown_name_lists_what_is_available():
    with pytest.raises(ValueError, match=r"unknown estimator 'no-such-bound'") as info:
        mie.make("no-such-bound")
    message = str(info.value)
    for name in mie.available():
        assert re.search(rf"\b{re.escape(name)}\b", message), name


@pytest.mark.parametrize(
    "name, options",
    [
        ("smile", {"bogus": 1}),
        ("mine", {"tau": 1.0}),
        ("dv", {"bogus": 1}),
        ("nwj", {"ema_rate": 0.1}),
        ("infonce", {"alpha": 0.5}),
    ],
)
def test_make_unknown_option_names_the_option_and_the_estimator(name, options):
    (option,) = options
    with pytest.raises(ValueError, match=rf"'{re.escape(name)}'.*{option}"):
        mie.make(name, **options)


def test_make_passes_options():
    assert mie.make("smile", tau=2.5).tau == 2.5
    assert mie.make("mine", ema_rate=0.3).ema_rate == 0.3
    est = mie.make("interpolated", alpha=0.2, log_baseline=1.0, learned_baseline=False)
    assert est.alpha == 0.2 and float(est.log_baseline) == 1.0 and list(est.parameters()) == []
    assert isinstance(mie.make("tuba", learned_baseline=True).log_baseline, torch.nn.Parameter)


def test_register_a_user_class(cleanup):
    @mie.register("test-scaled-dv")
    class ScaledDV(Estimator):
        def __init__(self, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def bound(self, s: Scores) -> torch.Tensor:
            return self.scale * dv_bound(s)

    cleanup.append("test-scaled-dv")
    assert "test-scaled-dv" in mie.available()
    assert mie.available() == sorted(mie.available())
    s = scores()
    est = mie.make("test-scaled-dv", scale=2.0)
    assert isinstance(est, ScaledDV) and est.name == "test-scaled-dv"
    torch.testing.assert_close(est.bound(s), 2.0 * dv_bound(s))
    torch.testing.assert_close(est.loss(s), -2.0 * dv_bound(s))  # default loss: -bound
    with pytest.raises(ValueError, match=r"'test-scaled-dv'.*bogus.*scale"):
        mie.make("test-scaled-dv", bogus=1)

    # a class with no own __init__ takes no options
    @mie.register("test-plain")
    class Plain(Estimator):
        def bound(self, s: Scores) -> torch.Tensor:
            return nwj_bound(s)

    cleanup.append("test-plain")
    torch.testing.assert_close(mie.make("test-plain").bound(s), nwj_bound(s))
    with pytest.raises(ValueError, match=r"'test-plain'.*bogus"):
        mie.make("test-plain", bogus=1)


def test_register_a_user_function(cleanup):
    def half_dv(s: Scores, weight: float = 0.5) -> torch.Tensor:
        return weight * dv_bound(s)

    returned = mie.register("test-half-dv")(half_dv)
    cleanup.append("test-half-dv")
    assert returned is half_dv  # the decorator leaves the function usable
    s = scores()
    est = mie.make("test-half-dv")
    assert isinstance(est, Estimator) and est.name == "test-half-dv"
    torch.testing.assert_close(est.bound(s), 0.5 * dv_bound(s))
    torch.testing.assert_close(est.loss(s), -0.5 * dv_bound(s))
    torch.testing.assert_close(mie.make("test-half-dv", weight=3.0).bound(s), 3.0 * dv_bound(s))
    with pytest.raises(ValueError, match=r"'test-half-dv'.*bogus.*weight"):
        mie.make("test-half-dv", bogus=1)
    # the user's bound trains a critic through estimate() like any built-in
    hist = mie.estimate(
        "test-half-dv",
        mie.tasks.CorrelatedGaussian(dim=2, mi=0.5),
        steps=3,
        batch_size=8,
        critic="bilinear",
        progress=False,
    )
    assert len(hist.estimates) == 3 and hist.estimator == "test-half-dv"


def test_duplicate_registration_raises_and_keeps_the_first(cleanup):
    @mie.register("test-dup")
    def first(s: Scores) -> torch.Tensor:
        return dv_bound(s)

    cleanup.append("test-dup")

    def second(s: Scores) -> torch.Tensor:
        return nwj_bound(s)

    with pytest.raises(ValueError, match=r"'test-dup' is already registered"):
        mie.register("test-dup")(second)
    s = scores()
    torch.testing.assert_close(mie.make("test-dup").bound(s), dv_bound(s))
    with pytest.raises(ValueError, match=r"'nwj' is already registered"):
        mie.register("nwj")(second)
    torch.testing.assert_close(mie.make("nwj").bound(s), nwj_bound(s))


def test_unregister(cleanup):
    mie.register("test-gone")(lambda s: dv_bound(s))
    cleanup.append("test-gone")
    assert "test-gone" in mie.available()
    mie.unregister("test-gone")
    assert "test-gone" not in mie.available()
    with pytest.raises(ValueError, match=r"unknown estimator 'test-gone'"):
        mie.make("test-gone")
    with pytest.raises(ValueError, match=r"unknown estimator 'test-gone'"):
        mie.unregister("test-gone")
    # the name is free again
    mie.register("test-gone")(lambda s: nwj_bound(s))
    torch.testing.assert_close(mie.make("test-gone").bound(scores()), nwj_bound(scores()))


@pytest.mark.parametrize("name", ["", None, 3])
def test_register_rejects_bad_names(name):
    with pytest.raises(ValueError, match=r"non-empty string name"):
        mie.register(name)


def test_register_rejects_non_estimators():
    with pytest.raises(TypeError, match=r"Estimator subclass or a function; got class"):
        mie.register("test-not-estimator")(int)
    with pytest.raises(TypeError, match=r"Estimator subclass or a function"):
        mie.register("test-not-callable")(42)
    assert "test-not-estimator" not in mie.available() and "test-not-callable" not in mie.available()
