"""The comparison behind `benchmarks/same_numbers.py`: it must see a one-ulp change anywhere in a checkpoint."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import same_numbers  # noqa: E402


def _blob() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "config": {"run_dir": "a"},
        "offsets": {"progress.csv": 10},
        "agent": {"policy": {"w": torch.randn(3, 2, generator=g)}, "opt": {"state": [{"step": 3}]}},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": ("MT19937", np.arange(3)),
            "python": (3, (1, 2), None),
        },
        "obs": np.linspace(0, 1, 4, dtype=np.float32),
        "evals": [{"step": 1, "return_mean": 2.0, "time": 123.0}],
        "step": 5,
    }


def test_equal_checkpoints_compare_equal_less_what_names_the_run() -> None:
    a, b = _blob(), _blob()
    b["config"]["run_dir"], b["offsets"]["progress.csv"], b["evals"][0]["time"] = "b", 11, 456.0
    b["rng"]["numpy"], b["rng"]["python"] = ("MT19937", np.arange(3) + 1), (3, (9, 9), None)
    ca, cb = same_numbers._comparable(a), same_numbers._comparable(b)
    assert same_numbers._differences(ca, cb) == []
    assert same_numbers._count_tensors(ca) == 3  # the weight, torch's RNG state, the observation


def test_a_one_ulp_change_a_dtype_or_a_count_is_a_difference() -> None:
    base = same_numbers._comparable(_blob())
    cases = {
        "checkpoint.agent.policy.w": lambda b: (
            b["agent"]["policy"]["w"]
            .view(-1)[4]
            .copy_(torch.nextafter(b["agent"]["policy"]["w"].view(-1)[4], torch.tensor(9.0)))
        ),
        "checkpoint.obs": lambda b: b.__setitem__("obs", b["obs"].astype(np.float64)),
        "checkpoint.agent.opt.state[0].step": lambda b: b["agent"]["opt"]["state"][0].__setitem__("step", 4),
        "checkpoint.evals[0].return_mean": lambda b: b["evals"][0].__setitem__("return_mean", 2.5),
        "checkpoint.step": lambda b: b.__setitem__("step", 6),
    }
    for where, change in cases.items():
        other = same_numbers._comparable(_blob())
        change(other)
        assert same_numbers._differences(base, other, "checkpoint") == [where]


def test_the_log_comparison_drops_only_the_timing_column(tmp_path) -> None:
    for name, rate in (("a.csv", "10.0"), ("b.csv", "99.5")):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "updates_per_s"])
            w.writerow(["1", "0.5", rate])
    rows = same_numbers._log_rows(tmp_path / "a.csv", "updates_per_s")
    assert (
        rows == same_numbers._log_rows(tmp_path / "b.csv", "updates_per_s") == [{"step": "1", "loss": "0.5"}]
    )
