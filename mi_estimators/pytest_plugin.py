"""A pytest fixture for `check_estimator`: one line in a user's `conftest.py`,

    pytest_plugins = ["mi_estimators.pytest_plugin"]

and any test can ask for it:

    def test_my_bound(check_estimator):
        check_estimator("my-bound", kind="lower", shift_invariant=True)

The fixture is `mi_estimators.testing.check_estimator` itself: a failure raises `EstimatorCheckError` (an
`AssertionError`) whose message lists every failing property with its minimal example.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .testing import check_estimator as _check_estimator


@pytest.fixture(name="check_estimator")
def check_estimator_fixture() -> Callable[..., object]:
    """`mi_estimators.testing.check_estimator`."""
    return _check_estimator
