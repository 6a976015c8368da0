"""Registry: `available()`, `make(name, **options)` with its errors, `register(name)` for classes and functions."""

from __future__ import annotations

import copy
import math
import pickle
import re

import numpy as np
import pytest
import torch

import mi_estimators as mie
from mi_estimators import Estimator, Scores
from mi_estimators.bounds import MINE, SMILE, dv_bound, nwj_bound
from mi_estimators.options import integer, number
from mi_estimators.registry import _REGISTRY, _accepted_options

ANCHORS = [
    "ba",
    "club",
    "dv",
    "infonce",
    "interpolated",
    "js",
    "mine",
    "nwj",
    "smile",
    "tuba",
    "kl-dime",
    "gan-dime",
    "hd-dime",
]
#: every estimator the package registers (user registrations in these tests come and go)
BUILTIN = mie.available()


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
        ("kl-dime", {"alpha": 1.0}),
        ("gan-dime", {"negatives": "all-pairs"}),
        ("hd-dime", {"bogus": 1}),
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


# ------------------------------------------------------------------------------------------------------------
# Option values: type and range, checked on construction (make() and direct), the message naming the estimator
# and the option


def _declared(name: str) -> tuple[set[str], set[str]]:
    """(options the estimator's constructor takes, options its `options` spec declares)."""
    factory = _REGISTRY[name]
    accepted, _ = _accepted_options(factory)
    return accepted, set(getattr(factory, "options", {}))


@pytest.mark.parametrize("name", BUILTIN)
def test_every_option_of_every_builtin_estimator_is_declared(name):
    accepted, declared = _declared(name)
    assert accepted == declared, (name, accepted ^ declared)


EVERY_OPTION = [(name, option) for name in BUILTIN for option in sorted(_declared(name)[0])]


@pytest.mark.parametrize("name, option", EVERY_OPTION, ids=[f"{n}.{o}" for n, o in EVERY_OPTION])
def test_every_option_refuses_a_string_of_garbage_by_name(name, option):
    with pytest.raises(
        ValueError, match=rf"^estimator '{re.escape(name)}' option {option} must be .+; got 'abc'$"
    ):
        mie.make(name, **{option: "abc"})


#: (estimator, option, value) triples that must be refused: booleans are not numbers, counts are ints, NaN and
#: infinities are not finite numbers, ranges are enforced
BAD_VALUES = [
    ("smile", "tau", True),
    ("smile", "tau", math.nan),
    ("smile", "tau", -math.inf),
    ("smile", "tau", 0),
    ("smile", "tau", -1.0),
    ("smile", "tau", None),
    ("smile", "tau", [5.0]),
    ("mine", "ema_rate", True),
    ("mine", "ema_rate", math.nan),
    ("mine", "ema_rate", 0.0),
    ("mine", "ema_rate", 1.5),
    ("interpolated", "alpha", False),
    ("interpolated", "alpha", math.nan),
    ("interpolated", "alpha", -0.1),
    ("interpolated", "alpha", 1.01),
    ("interpolated", "log_baseline", math.inf),
    ("interpolated", "log_baseline", math.nan),
    ("interpolated", "learned_baseline", 1),
    ("interpolated", "learned_baseline", "yes"),
    ("tuba", "log_baseline", True),
    ("tuba", "log_baseline", -math.inf),
    ("tuba", "learned_baseline", 0),
    ("ba", "x_dim", 2.0),
    ("ba", "x_dim", True),
    ("ba", "y_dim", 0),
    ("ba", "hidden", 64),
    ("ba", "hidden", (64, 0)),
    ("ba", "hidden", (64.0,)),
    ("ba", "squashed", 1),
    ("ba", "marginal_entropy", math.nan),
    ("ba", "marginal_entropy", math.inf),
    ("ba", "marginal_entropy", True),
    ("ba", "proposal", 3),
    ("misa", "k", 0),
    ("misa", "k", 8.0),
    ("misa", "k", True),
    ("misa", "k", np.int64(8)),
    ("misa", "n_samples", 0),
    ("misa", "n_samples", 2.5),
    ("misa", "burn_in", -1),
    ("misa", "thin", 0),
    ("misa", "chains", False),
    ("misa", "n_leapfrog", 0),
    ("misa", "n_leapfrog", 2.0),
    ("misa", "step_size", 0.0),
    ("misa", "step_size", math.inf),
    ("misa", "step_size", math.nan),
    ("misa", "step_size", True),
    ("misa", "target_accept", 1.0),
    ("misa", "target_accept", 0),
    ("misa", "target_accept", math.nan),
    ("misa", "adapt", "fast"),
    ("misa", "per_chain", 1),
    ("misa", "precondition", 1),
    ("misa", "init", "random"),
    ("misa", "log_z", "exact"),
    ("misa", "sampler", "metropolis"),
    ("misa", "sampler", 3),
    ("misa-dv", "k", -5),
    ("misa-f", "burn_in", 1.0),
    ("misa-biased", "k", 0),
]


@pytest.mark.parametrize("name, option, value", BAD_VALUES, ids=[f"{n}.{o}={v!r}" for n, o, v in BAD_VALUES])
def test_bad_option_values_are_refused_by_name(name, option, value):
    with pytest.raises(ValueError, match=rf"^estimator '{re.escape(name)}' option {option} must be .+; got "):
        mie.make(name, **{option: value})


def test_the_issue_example_message():
    with pytest.raises(ValueError) as info:
        mie.make("smile", tau="abc")
    assert str(info.value) == "estimator 'smile' option tau must be a positive number; got 'abc'"


def test_good_option_values_are_accepted():
    assert mie.make("smile", tau=math.inf).tau == math.inf  # plain DV
    assert mie.make("smile", tau=3).tau == 3.0  # an int is a number
    assert mie.make("smile", tau=np.float32(2.5)).tau == 2.5
    assert mie.make("smile", tau=torch.tensor(1.5)).tau == 1.5  # a one-element tensor is a number
    assert mie.make("mine", ema_rate=1).ema_rate == 1.0
    assert mie.make("interpolated", alpha=0).alpha == 0.0
    assert mie.make("interpolated", alpha=1.0, log_baseline=-3, learned_baseline=np.bool_(False)).alpha == 1.0
    assert float(mie.make("tuba", log_baseline=np.float64(0.25)).log_baseline) == 0.25
    est = mie.make(
        "misa", k=7, n_samples=3, burn_in=0, step_size=np.float32(0.5), target_accept=0.6, sampler="HMC"
    )
    assert est.partition.k == 7 and est.partition.burn_in == 0
    assert (
        mie.make("ba", x_dim=2, y_dim=3, hidden=[8, 8], marginal_entropy=torch.tensor(1.0)).proposal
        is not None
    )
    assert mie.make("misa", log_z=mie.MonteCarloLogZ(4)).partition.k == 4
    assert mie.make("misa", sampler=mie.HMC(n_leapfrog=3)).partition.sampler.n_leapfrog == 3


def test_direct_construction_is_checked_the_same_way():
    with pytest.raises(
        ValueError, match=r"^estimator 'smile' option tau must be a positive number; got 'abc'$"
    ):
        SMILE(tau="abc")
    with pytest.raises(ValueError, match=r"^estimator 'misa' option k must be an int >= 1 or None; got 0$"):
        mie.MISA(k=0)
    with pytest.raises(
        ValueError, match=r"^estimator 'mine' option ema_rate must be a number in \(0, 1\]; got 2$"
    ):
        MINE(2)  # positionally too
    # copies and pickles do not re-run the checks (they construct without arguments)
    est = mie.make("smile", tau=2.0)
    assert copy.deepcopy(est).tau == 2.0
    assert pickle.loads(pickle.dumps(est)).tau == 2.0


def test_a_user_class_declares_its_options(cleanup):
    @mie.register("test-checked")
    class Checked(Estimator):
        options = {"scale": number(0.0, low_open=True, what="a positive number"), "count": integer(1)}

        def __init__(self, scale: float = 1.0, count: int = 1) -> None:
            super().__init__()
            self.scale, self.count = scale, count

        def bound(self, s: Scores) -> torch.Tensor:
            return self.scale * dv_bound(s)

    cleanup.append("test-checked")
    assert mie.make("test-checked", scale=2.0, count=3).count == 3
    with pytest.raises(
        ValueError, match=r"^estimator 'test-checked' option count must be an int >= 1; got 1.0$"
    ):
        mie.make("test-checked", count=1.0)
    with pytest.raises(ValueError, match=r"^estimator 'test-checked' option scale must be a positive number"):
        Checked(scale=-1.0)


# ------------------------------------------------------------------------------------------------------------
# options of user estimators, checked against their signatures


def _annotated(
    s: Scores, scale: float = 1.0, count: int = 2, exact: bool = False, label: str = "a"
) -> torch.Tensor:
    return scale * s.positive.mean()


def _unannotated(s, scale=1.0, exact=False, label="a", anything=None):
    return scale * s.positive.mean()


@pytest.mark.parametrize(
    "fn, option, value, what",
    [
        (_annotated, "scale", "abc", "a number"),
        (_annotated, "scale", True, "a number"),  # a bool is no number
        (_annotated, "scale", math.nan, "a number"),
        (_annotated, "count", 2.5, "an int"),
        (_annotated, "exact", 1, "True or False"),
        (_annotated, "label", 3, "a string"),
        (_unannotated, "scale", "abc", "a number"),  # from the default's type
        (_unannotated, "exact", "yes", "True or False"),
        (_unannotated, "label", 0.5, "a string"),
    ],
)
def test_a_registered_functions_options_are_checked_against_its_signature(cleanup, fn, option, value, what):
    mie.register("signed")(fn)
    cleanup.append("signed")
    with pytest.raises(
        ValueError,
        match=rf"^estimator 'signed' option {option} must be {what}; got {re.escape(repr(value))}$",
    ):
        mie.make("signed", **{option: value})


def test_values_the_signature_allows_pass(cleanup):
    mie.register("signed")(_annotated)
    mie.register("loose")(_unannotated)
    cleanup.extend(["signed", "loose"])
    s = scores()
    assert float(mie.make("signed", scale=2, count=3, exact=True, label="b").bound(s)) == pytest.approx(
        2 * float(s.positive.mean())
    )
    mie.make("signed", scale=np.float32(0.5), count=1)  # numpy floats are numbers; an int is a float
    mie.make("loose", scale=2, anything=object())  # a None default checks nothing


def test_a_user_class_without_declared_options_is_checked_against_its_constructor(cleanup):
    class Scaled(Estimator):
        def __init__(self, scale: float = 1.0, name_of: str | None = None) -> None:
            super().__init__()
            self.scale = scale

        def bound(self, s):
            return self.scale * dv_bound(s)

    mie.register("scaled")(Scaled)
    cleanup.append("scaled")
    with pytest.raises(ValueError, match=r"^estimator 'scaled' option scale must be a number; got '2'$"):
        mie.make("scaled", scale="2")
    with pytest.raises(ValueError, match=r"option name_of must be a string or None; got 3"):
        Scaled(name_of=3)  # direct construction is checked alike
    assert mie.make("scaled", scale=2.0, name_of=None).scale == 2.0
