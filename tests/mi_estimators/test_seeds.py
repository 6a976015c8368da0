"""`estimate(..., seeds=...)`: S seeds in one stacked pass give each seed's one-seed run (same draws; estimates equal
to float32 rounding), seeds do not leak into each other, and what cannot be stacked runs seed by seed."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch

import mi_estimators as mie

TASK = mie.tasks.CorrelatedGaussian(dim=2, mi=1.0)
SMALL = {"critic_options": {"hidden": (16,), "embed_dim": 8}}
#: every score-based estimator (the proposal-based ones draw inside their scores and run seed by seed)
SCORE_BASED = [n for n in mie.available() if not mie.make(n).needs_proposal]


def _close(a: list[float], b: list[float], tol: float = 2e-4) -> None:
    assert len(a) == len(b)
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=tol, atol=tol)


def _params_close(a, b) -> None:
    """Parameters after a short run: Adam's step is about lr (5e-4) whatever the gradient's size, so where a
    gradient is rounding noise near zero the two runs may step apart by up to lr per step."""
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-3)


def _singles(name: str, seeds: list[int], **kw) -> list[mie.History]:
    return [mie.estimate(name, TASK, seed=s, **kw) for s in seeds]


@pytest.mark.parametrize("name", SCORE_BASED)
def test_each_seed_of_a_stacked_run_is_its_one_seed_run(name):
    kw = {"steps": 12, "batch_size": 16, **SMALL}
    stacked = mie.estimate(name, TASK, seeds=[0, 3], **kw)
    for h, single in zip(stacked, _singles(name, [0, 3], **kw), strict=True):
        _close(h.estimates, single.estimates)
        _params_close(h.critic.parameters(), single.critic.parameters())
        _params_close(h.module.parameters(), single.module.parameters())


def test_the_recommended_estimator_stacks_with_its_average_and_clipping():
    kw = {"steps": 25, "batch_size": 32, **mie.RECOMMENDED}
    name = kw.pop("estimator")
    stacked = mie.estimate(name, TASK, seeds=3, **kw)
    for h, single in zip(stacked, _singles(name, [0, 1, 2], **kw), strict=True):
        _close(h.estimates, single.estimates)
        assert isinstance(h.critic, mie.AveragedCritic)  # the average, as a one-seed run returns it
        _params_close(h.critic.parameters(), single.critic.parameters())
        _close(
            [h.heldout(n=256, generator=torch.Generator().manual_seed(7)).mean],
            [single.heldout(n=256, generator=torch.Generator().manual_seed(7)).mean],
        )


def test_seeds_do_not_leak_into_each_other():
    """Seed 1's history is the same beside seed 0 or beside seed 5: each seed's draws and arithmetic are its own."""
    kw = {"steps": 15, "batch_size": 16, **SMALL}
    beside_0 = mie.estimate("infonce", TASK, seeds=[0, 1], **kw)[1]
    beside_5 = mie.estimate("infonce", TASK, seeds=[5, 1, 9], **kw)[1]
    assert beside_0.estimates == beside_5.estimates


def test_fixed_samples_split_select_and_answer_per_seed():
    """Each seed draws its own split and batches from its own generator, stops on its own patience and answers
    on its own test part, as its one-seed run."""
    x, y = TASK.sample(300, generator=torch.Generator().manual_seed(0))
    # lr 1e-2 overfits the 210 training samples within ~40 updates, at a different update for each seed
    kw = {"x": x, "y": y, "steps": 300, "batch_size": 32, "eval_every": 5, "patience": 2, "lr": 1e-2, **SMALL}
    stacked = mie.estimate("nwj", seeds=[0, 1, 2], **kw)
    singles = [mie.estimate("nwj", seed=s, **kw) for s in (0, 1, 2)]
    for h, single in zip(stacked, singles, strict=True):
        assert h.best_step == single.best_step
        assert [v[0] for v in h.validation] == [v[0] for v in single.validation]
        _close([v[1] for v in h.validation], [v[1] for v in single.validation])
        _close(h.estimates, single.estimates)
        assert h.result.mean == pytest.approx(single.result.mean, abs=2e-4)
    assert len({len(h.estimates) for h in singles}) > 1, "the seeds should stop at different steps here"


def test_a_seed_that_meets_a_non_finite_step_stops_alone():
    """One sample of x is 1e30: NWJ's `e^(T - 1)` overflows on the first batch that holds it, which each seed's own
    permutation places at its own step (or after the last). The stacked run stops each seed where its one-seed run
    stops (that step's update not applied) and trains the others on."""
    x, y = TASK.sample(300, generator=torch.Generator().manual_seed(0))
    x[17] = 1e30
    kw = {"x": x, "y": y, "steps": 6, "batch_size": 32, "valid_fraction": 0, "test_fraction": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stacked = mie.estimate("nwj", seeds=5, **kw)
        singles = [mie.estimate("nwj", seed=s, **kw) for s in range(5)]
    assert [h.stopped_at for h in singles] == [4, None, 5, 0, 2]
    for h, single in zip(stacked, singles, strict=True):
        assert (h.stopped_at, h.error) == (single.stopped_at, single.error)
        _close(h.estimates, single.estimates)
        assert all(torch.isfinite(p).all() for p in h.critic.parameters())  # the last finite step's state
        _params_close(h.critic.parameters(), single.critic.parameters())


@pytest.mark.parametrize(("name", "options"), [("mine", {}), ("misa", {"n_samples": 3, "burn_in": 1})])
def test_what_cannot_be_stacked_runs_seed_by_seed_with_the_same_numbers(name, options):
    kw = {"steps": 6, "batch_size": 16, "estimator_options": options, **SMALL}
    stacked = mie.estimate(name, TASK, seeds=[0, 2], **kw)
    for h, single in zip(stacked, _singles(name, [0, 2], **kw), strict=True):
        assert h.estimates == single.estimates


def test_a_schedule_runs_stacked():
    schedule = partial(mie.tasks.staircase_task, dim=2, steps_per_level=5, levels=(0.5, 1.0))
    hs = mie.estimate("infonce", schedule, steps=10, batch_size=16, seeds=2, **SMALL)
    assert [h.true_mi for h in hs] == [[0.5] * 5 + [1.0] * 5] * 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seeds": 0}, "seeds must be an int >= 1"),
        ({"seeds": []}, "seeds must be an int >= 1 or a non-empty list"),
        ({"seeds": [0, 1.5]}, r"seeds\[1\] must be an int"),
        ({"seeds": [3, 3]}, "seeds must be distinct"),
        ({"seeds": 2, "seed": 4}, "leave seed and generator at their defaults"),
        ({"seeds": 2, "generator": torch.Generator()}, "leave seed and generator at their defaults"),
    ],
)
def test_bad_seeds_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mie.estimate("infonce", TASK, steps=2, **kwargs)


def test_an_estimator_instance_is_refused_with_seeds():
    with pytest.raises(ValueError, match="give the estimator by name"):
        mie.estimate(mie.make("infonce"), TASK, steps=2, seeds=2)


def test_callback_sees_the_critic_of_that_moment_seed_by_seed():
    """`callback(updates, history)` every k updates reads each seed's critic as it is then: a held-out read there
    equals that of a run stopped at those updates."""
    kw = {"batch_size": 16, **SMALL}
    x, y = TASK.sample(64, generator=torch.Generator().manual_seed(11))
    seen: dict[tuple[int | None, int], float] = {}

    def read(updates: int, h: mie.History) -> None:
        seen[(h.seed, updates)] = h.evaluate(x, y, batch_size=16).mean

    mie.estimate("nwj", TASK, steps=12, seeds=[0, 4], callback=read, callback_every=6, **kw)
    assert sorted(seen) == [(0, 6), (0, 12), (4, 6), (4, 12)]
    for s in (0, 4):
        short = mie.estimate("nwj", TASK, steps=6, seed=s, **kw)
        assert seen[(s, 6)] == pytest.approx(short.evaluate(x, y, batch_size=16).mean, abs=2e-4)
    single: dict[tuple[int | None, int], float] = {}
    mie.estimate(
        "nwj",
        TASK,
        steps=12,
        seed=4,
        callback=lambda u, h: single.update({(h.seed, u): 0.0}),
        callback_every=6,
        **kw,
    )
    assert sorted(single) == [(4, 6), (4, 12)]
    with pytest.raises(ValueError, match="callback and callback_every go together"):
        mie.estimate("nwj", TASK, steps=2, callback=read)
    with pytest.raises(ValueError, match="callback_every must be an int >= 1"):
        mie.estimate("nwj", TASK, steps=2, callback=read, callback_every=0)
