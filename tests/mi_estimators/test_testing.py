"""`mi_estimators.testing`: every registered estimator passes `check_estimator` with the facts theory gives it, and
planted faults are caught, each by the property that should catch it."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings

import mi_estimators as mie
from mi_estimators import Scores
from mi_estimators._math import logmeanexp
from mi_estimators.bounds import dv_bound
from mi_estimators.testing import EstimatorCheckError, check_estimator, critics, gaussian_tasks, scores

#: what theory says of each registered estimator (check_estimator's keywords); a new registration must add its own
FACTS: dict[str, dict] = {
    "ba": {},
    "club": {"kind": "upper"},
    "dv": {"shift_invariant": True},
    "gan-dime": {"kind": "two-sided"},
    "hd-dime": {"kind": "two-sided"},
    "kl-dime": {"kind": "two-sided"},
    "infonce": {"shift_invariant": True, "ceiling": lambda s: math.log(s.k + 1)},
    "interpolated": {"min_negatives": 2},
    "js": {"below": ["dv"]},  # it reports NWJ
    "mine": {"shift_invariant": True},  # its bound is DV's
    "misa": {},
    "misa-biased": {},
    "misa-dv": {"shift_invariant": True, "below": ["misa"]},
    "misa-f": {"below": ["misa-dv"], "critic_shift": 1.0},
    "nwj": {"below": ["dv"], "critic_shift": 1.0},
    "smile": {},
    "tuba": {"below": ["dv"]},
}


def test_every_registered_estimator_has_its_facts():
    assert sorted(FACTS) == mie.available()


@pytest.mark.parametrize("name", sorted(FACTS))
def test_every_registered_estimator_passes_check_estimator(name):
    report = check_estimator(name, max_examples=30, **FACTS[name])
    assert report and "closed-form" in report.checked and "gradient" in report.checked


# ------------------------------------------------------------------------------------------------------------
# planted faults


def _sign_flipped(s: Scores) -> torch.Tensor:
    return -dv_bound(s)


def _missing_log(s: Scores) -> torch.Tensor:  # DV's partition term without its log
    return s.positive.mean() - s.negative.exp().mean()


def _off_by_one(s: Scores) -> torch.Tensor:  # InfoNCE counting K + 1 negatives where K + 1 scores belong
    k = s.all_scores().shape[1]  # K + 1: the positive is among them
    return (s.positive - torch.logsumexp(s.all_scores(), dim=1)).mean() + math.log(k + 1)


def _raw_exp(s: Scores) -> torch.Tensor:  # DV's log-mean-exp without the max trick
    return s.positive.mean() - torch.log(s.negative.exp().mean(1)).mean()


@pytest.mark.parametrize(
    "fault, facts, caught_by",
    [
        (_sign_flipped, {"shift_invariant": True}, "closed-form"),
        (_missing_log, {"shift_invariant": True}, "shift"),
        (_off_by_one, {"shift_invariant": True, "ceiling": lambda s: math.log(s.k + 1)}, "ordering"),
        (_raw_exp, {"shift_invariant": True}, "no-nan"),
    ],
    ids=["sign flip", "missing log", "off-by-one in K", "raw exp"],
)
def test_a_planted_fault_is_caught_by_its_property(fault, facts, caught_by):
    name = f"planted-{fault.__name__.strip('_')}"
    mie.register(name)(fault)
    try:
        with pytest.raises(EstimatorCheckError) as raised:
            check_estimator(name, max_examples=30, **facts)
        report = raised.value.report
        assert caught_by in report.failed(), str(report)
        assert f"[{caught_by}]" in str(raised.value)  # the message names the property ...
        failure = next(f for f in report.failures if f.property == caught_by)
        if caught_by != "closed-form":
            assert "Falsifying example" in failure.example  # ... and its minimal example
    finally:
        mie.unregister(name)


def test_the_missing_log_also_misses_the_closed_form():
    mie.register("planted-missing-log-2")(_missing_log)
    try:
        report = check_estimator("planted-missing-log-2", max_examples=10, raise_on_failure=False)
        assert report.failed() == [
            "closed-form"
        ]  # MI - 1 at the optimal critic; nothing else it can be held to
    finally:
        mie.unregister("planted-missing-log-2")


def test_check_estimator_takes_instances_and_factories_and_refuses_bad_arguments():
    assert check_estimator(mie.make("dv"), shift_invariant=True, max_examples=5)
    assert check_estimator(lambda: mie.make("nwj"), below=["dv"], critic_shift=1.0, max_examples=5)
    with pytest.raises(ValueError, match=r"kind must be one of \['lower', 'upper', 'two-sided'\]; got 'low'"):
        check_estimator("dv", kind="low")
    with pytest.raises(ValueError, match=r"unknown estimator 'nope'"):
        check_estimator("dv", below=["nope"])
    with pytest.raises(ValueError, match=r"estimator 'smile' option tau must be"):
        check_estimator("smile", options={"tau": -1.0})


# ------------------------------------------------------------------------------------------------------------
# the strategies themselves


@settings(max_examples=40, deadline=None)
@given(scores(proposal=None))
def test_scores_strategy_gives_valid_scores_of_every_dtype(s):
    assert s.positive.dtype == s.negative.dtype and s.negative.shape[0] == s.n
    assert s.positive.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    assert (s.log_proposal is None) == (s.marginal_entropy is None)
    assert float(s.positive.abs().max()) <= 1e4


@settings(max_examples=20, deadline=None)
@given(scores(all_pairs=True, k=(3, 6)))
def test_all_pairs_scores_are_matrix_like_with_at_least_k_negatives(s):
    assert s.matrix_like() and s.k >= 3


@settings(max_examples=10, deadline=None)
@given(gaussian_tasks(), critics(2, 2))
def test_task_and_critic_strategies(task, critic):
    assert 0.0 <= task.mi <= 3.0
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    assert critic(x, y).shape == (4,)
    assert logmeanexp(torch.zeros(3)) == 0


def test_the_pytest_fixture_runs_the_check_in_a_users_suite(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["mi_estimators.pytest_plugin"]\n')
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import mi_estimators as mie

            @mie.register("user-dv")
            def user_dv(s):
                return -mie.dv_bound(s)  # a sign flip

            def test_good(check_estimator):
                check_estimator("dv", shift_invariant=True, max_examples=5)

            def test_bad(check_estimator):
                check_estimator("user-dv", max_examples=5)
            """
        )
    )
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "1 failed, 1 passed" in res.stdout, res.stdout[-3000:]
    assert "[closed-form]" in res.stdout
