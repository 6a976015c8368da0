"""Whether a refactor changed any number: a short run of each shipped config, from another revision and from this
tree, compared bit for bit.

    python benchmarks/same_numbers.py --against 7a6d138            # bc td3bc iql cql misa sac, 30 steps each
    python benchmarks/same_numbers.py --against HEAD~3 --algos iql misa --steps 50

For each `configs/<algo>/hopper-medium-v5.yaml`, `python -m rl.train` runs `--steps` updates on one thread with
no evaluation, once in a detached git worktree of `--against` and once in this tree (each with its own code on
`PYTHONPATH`, both on the same cached dataset); `sac` is the behaviour-policy SAC (`python -m rl.collect.sac`,
`--sac-steps` environment steps on Hopper-v5, the first half random, a dozen episodes). The two `checkpoint.pt` files must be equal (every
tensor `torch.equal` and every array `np.array_equal`: networks, targets, optimiser moments, temperatures, the
agent's generators and torch's global RNG state, estimator state, logged-loss sums, evaluations; SAC's replay position,
observation and MuJoCo state) less their config, log sizes and wall-clock times, and the two logs (`progress.csv`, SAC's `train_log.csv`) equal rows less their
timing column. Prints one row per algorithm and exits 1 if any differs. Not part of CI: it trains twelve short
runs (under a minute each on this CPU, the first one generating hopper-medium-v5 if it is not cached).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("bc", "td3bc", "iql", "cql", "misa", "sac")
#: the log each trainer writes, and its timing column (which differs from run to run)
LOGS = {"rl.train": ("progress.csv", "updates_per_s"), "rl.collect.sac": ("train_log.csv", "steps_per_s")}


def _train(tree: Path, algo: str, steps: int, run_dir: Path) -> None:
    if algo == "sac":  # online, on Hopper-v5: `steps` environment steps, the first half uniform-random
        cmd = [sys.executable, "-m", "rl.collect.sac", "--env", "Hopper-v5", "--steps", str(steps)]
        cmd += [
            "--start-steps",
            str(steps // 2),
            "--eval-every",
            str(steps),
            "--checkpoint-every",
            str(steps),
        ]
        cmd += ["--threads", "1"]
    else:
        config = tree / "configs" / algo / "hopper-medium-v5.yaml"
        cmd = [sys.executable, "-m", "rl.train", "--config", str(config), "--steps", str(steps)]
        cmd += ["--eval-every", "0", "--final-eval", "false", "--threads", "1", "--progress", "false"]
    cmd += ["--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{algo} in {tree} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    """The paths at which two checkpoint values differ (tensors by `torch.equal`, arrays by `np.array_equal`, the
    rest by `==`)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        same = isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
        return [] if same and np.array_equal(a, b) else [where]
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        return [] if same and a.shape == b.shape and torch.equal(a, b) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def _log_rows(path: Path, timing: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != timing} for row in csv.DictReader(f)]


def _count_tensors(value: Any) -> int:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return 1
    if isinstance(value, dict):
        return sum(_count_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_tensors(v) for v in value)
    return 0


def _comparable(blob: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint less what names the run rather than states it: its config (the run folder), the logs' sizes
    (the timing column's width), the wall-clock time of SAC's evaluations, and the global numpy and Python RNG
    states (`rl.train` saves them for a user's code to resume with; nothing of ours seeds or draws from them, so
    they differ from process to process)."""
    out = {k: v for k, v in blob.items() if k not in ("config", "offsets")}
    if isinstance(
        out.get("rng"), dict
    ):  # numpy's and Python's global states are saved, never seeded or drawn from
        out["rng"] = {k: v for k, v in out["rng"].items() if k not in ("numpy", "python")}
    if isinstance(out.get("evals"), list):
        out["evals"] = [{k: v for k, v in e.items() if k != "time"} for e in out["evals"]]
    return out


def compare(ref: Path, new: Path, trainer: str) -> tuple[list[str], int]:
    """The differences between two run folders' checkpoints and logs, and the number of tensors and arrays compared."""
    from rl._safe_load import load_torch_file

    a, b = (_comparable(load_torch_file(d / "checkpoint.pt", map_location="cpu")) for d in (ref, new))
    diffs = _differences(a, b, "checkpoint")
    log, timing = LOGS[trainer]
    if _log_rows(ref / log, timing) != _log_rows(new / log, timing):
        diffs.append(log)
    return diffs, _count_tensors(a)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/same_numbers.py", description=__doc__.split("\n")[0])
    p.add_argument("--against", required=True, help="the revision to compare with (a commit, a tag, HEAD~1)")
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    p.add_argument("--steps", type=int, default=30, help="updates of each offline algorithm")
    p.add_argument("--sac-steps", type=int, default=400, help="environment steps of SAC")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="same-numbers-") as tmp:
        ref = Path(tmp) / "ref"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(ref), args.against], check=True
        )
        try:
            rev = subprocess.run(
                ["git", "-C", str(ref), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            print(f"| algo | steps | tensors | {rev} vs this tree |\n| --- | --- | --- | --- |", flush=True)
            failed = 0
            for algo in args.algos:
                runs = {name: Path(tmp) / f"{algo}-{name}" for name in ("ref", "new")}
                steps = args.sac_steps if algo == "sac" else args.steps
                _train(ref, algo, steps, runs["ref"])
                _train(ROOT, algo, steps, runs["new"])
                diffs, n = compare(
                    runs["ref"], runs["new"], "rl.collect.sac" if algo == "sac" else "rl.train"
                )
                verdict = "identical" if not diffs else "DIFFERENT: " + ", ".join(diffs[:5])
                failed += bool(diffs)
                print(f"| {algo} | {steps} | {n} | {verdict} |", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
