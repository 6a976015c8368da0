"""Gathering a sweep's results from its run folders alone (no Ray, no training): `gather` reads every trial's
files into the rows, per-trial statuses and per-cell statistics that the tables and plots are made of.

RL: a cell is (variant, dataset), its value the final normalised score's mean and sample std over the finished
seeds; unfinished, diverged, failed and not-started seeds are kept apart. Staircase: a cell is (estimator, task,
critic, true MI), holding per-seed lists of bias, variance, MSE and the held-out estimate.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from rl.sweep.folders import (
    RESULT,
    as_float,
    divergence_headline,
    first_error_line,
    read_evals,
    run_dir,
    trial_status,
)
from rl.sweep.spec import Spec

STAIRCASE_METRICS = ("bias", "variance", "mse", "heldout")


def gather(spec: Spec, out: str | os.PathLike) -> dict[str, Any]:
    """Everything the report needs, from the files in `out` only (no Ray, no training).

    RL: `rows` (one per trial and evaluation), `trials` (id, params, status finished/diverged/unfinished/error/
    pending, step reached, final score, the update that diverged), `cells` ((variant, dataset label) -> mean/std/n
    over finished seeds, and the diverged, unfinished, failed and pending ones), `behaviour` (label -> cached
    score). Staircase: `rows` (one per finished trial and level), `trials`, `cells` ((estimator, task, critic,
    true MI) -> per-seed lists of bias, variance, mse, heldout), `runs`.
    """
    out = Path(out).resolve()
    return _gather_rl(spec, out) if spec.kind == "rl" else _gather_staircase(spec, out)


def _status(out: Path, t: dict[str, Any], has_progress: bool) -> tuple[str, str | None]:
    """(finished | error | unfinished | pending, the error's last line)."""
    status, detail = trial_status(t, out)
    if status == "finished":
        return "finished", None
    if status == "changed":
        return "error", detail
    err = out / "errors" / f"{t['id']}.txt"
    if err.exists():
        return "error", first_error_line(err)
    return ("unfinished" if has_progress else "pending"), None


def _gather_rl(spec: Spec, out: Path) -> dict[str, Any]:
    rows, trials = [], []
    for t in spec.trials:
        p, d = t["params"], run_dir(out, t)
        evals = read_evals(d / "eval.csv")
        res = json.loads((d / RESULT).read_text()) if (d / RESULT).exists() else None
        if res is not None:  # the finished run's own record wins over the CSV
            evals = [
                {**e, "return_std": e.get("return_std", math.nan)} for e in res.get("evals", [])
            ] or evals
        status, error = _status(out, t, bool(evals) or (d / "checkpoint.pt").exists())
        if status == "finished" and res is not None and res.get("diverged"):
            status, error = "diverged", divergence_headline(res["diverged"])
        steps = t["steps"]
        final = None
        if status == "finished" and evals and evals[-1]["step"] == steps:
            final = evals[-1]["normalized_score"]
        for e in evals:
            rows.append(
                {
                    "trial_id": t["id"],
                    "variant": p["variant"],
                    "dataset": p["dataset_label"],
                    "seed": p["seed"],
                    "status": status,
                    "step": e["step"],
                    "normalized_score": e["normalized_score"],
                    "return_mean": e["return_mean"],
                    "return_std": e["return_std"],
                }
            )
        trials.append(
            {
                "id": t["id"],
                **p,
                "status": status,
                "steps": steps,
                "step": evals[-1]["step"] if evals else 0,
                "final": final,
                "diverged_at": res["step"] + 1 if status == "diverged" else None,  # the update that diverged
                "error": error,
                "updates_per_s": _median_rate(d / "progress.csv"),
            }
        )
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for tr in trials:
        c = cells.setdefault(
            (tr["variant"], tr["dataset_label"]),
            {
                "scores": [],
                "seeds": [],
                "steps": set(),
                "unfinished": [],
                "diverged": [],
                "errors": [],
                "pending": [],
            },
        )
        c["steps"].add(tr["steps"])
        if tr["status"] == "finished" and tr["final"] is not None:
            c["scores"].append(tr["final"])
            c["seeds"].append(tr["seed"])
        elif tr["status"] == "error":
            c["errors"].append(tr)
        elif tr["status"] == "diverged":
            c["diverged"].append(tr)
        elif tr["status"] == "pending":
            c["pending"].append(tr)
        else:
            c["unfinished"].append(tr)
    for (variant, _), c in cells.items():
        c["mean"], c["std"] = mean_std(c["scores"]) if c["scores"] else (None, None)
        rates = [tr["updates_per_s"] for tr in trials if tr["variant"] == variant and tr["updates_per_s"]]
        c["updates_per_s"] = statistics.median(rates) if rates else None
    behaviour_path = out / "behaviour.json"
    behaviour = json.loads(behaviour_path.read_text()) if behaviour_path.exists() else {}
    return {"kind": "rl", "rows": rows, "trials": trials, "cells": cells, "behaviour": behaviour}


def _median_rate(progress: Path) -> float | None:
    """Median of the `updates_per_s` column a run logs (its training speed, evaluations excluded), or None."""
    if not progress.exists():
        return None
    with open(progress, newline="") as f:
        rates = [float(r["updates_per_s"]) for r in csv.DictReader(f) if r.get("updates_per_s")]
    return statistics.median(rates) if rates else None


def mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _gather_staircase(spec: Spec, out: Path) -> dict[str, Any]:
    rows, trials, runs = [], [], {}
    for t in spec.trials:
        p, d = t["params"], run_dir(out, t)
        status, error = _status(out, t, False)
        res = json.loads((d / RESULT).read_text()) if status == "finished" else None
        trials.append(
            {
                "id": t["id"],
                **p,
                "status": status,
                "error": error,
                "seconds": res.get("seconds") if res else None,
                "stopped_at": res.get("stopped_at") if res else None,
                "stop_error": res.get("error") if res else None,
            }
        )
        if res is None:
            continue
        runs[t["id"]] = res
        for r in res["levels"]:
            rows.append(
                {
                    "trial_id": t["id"],
                    **p,
                    "true_mi": r["mi"],
                    "bias": as_float(r["bias"]),
                    "variance": as_float(r["variance"]),
                    "mse": as_float(r["mse"]),
                    "nonfinite": r["nonfinite"],
                    "heldout": as_float(r.get("heldout")),
                    "heldout_batch_std": as_float(r.get("heldout_std")),
                    "stopped_at": res.get("stopped_at"),
                }
            )
    cells: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["estimator"], r["task"], r["critic"], r["true_mi"])
        c = cells.setdefault(key, {m: [] for m in (*STAIRCASE_METRICS, "seeds")})
        for m in STAIRCASE_METRICS:
            c[m].append(r[m])
        c["seeds"].append(r["seed"])
    return {"kind": "staircase", "rows": rows, "trials": trials, "cells": cells, "runs": runs}
