"""Plot runs: `python -m rl.plot RUN_DIR [RUN_DIR ...] --out curves.png`.

Draws, from the logs `rl.train` writes in each run directory, the evaluation curve (`eval.csv`: D4RL-normalised
score, or the raw return where the env has no reference returns) and every logged loss (`progress.csv`) against the
gradient step, one line per run; `--mean` draws the runs as one mean ± std band (seeds of one setting), and
`--behaviour` adds the behaviour data's score as a dashed line. The band drawing (`draw_curves`) is the one the
sweep runner's learning-curve plots use.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl._atomic import atomic_write

__all__ = ["read_run", "draw_curves", "plot_runs", "main"]

Curves = dict[str, dict[int, list[float]]]


def _rows(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rec = {}
            for k, v in row.items():
                try:
                    rec[k] = float(v)
                except (TypeError, ValueError):
                    rec[k] = math.nan  # empty cells: a score without reference returns
            out.append(rec)
    return out


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """`{"evals": [row], "progress": [row], "config": dict}` of a run directory (rows as floats; NaN where empty).

    Raises `FileNotFoundError` naming the directory when it holds neither log.
    """
    d = Path(run_dir)
    evals, progress = _rows(d / "eval.csv"), _rows(d / "progress.csv")
    if not evals and not progress:
        raise FileNotFoundError(f"{d} holds no eval.csv or progress.csv: not an rl.train run directory (yet)")
    config: dict[str, Any] = {}
    if (d / "config.yaml").is_file():
        from rl.config import load_yaml

        config = load_yaml(d / "config.yaml")
    return {"evals": evals, "progress": progress, "config": config}


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def draw_curves(
    ax: Any, curves: Curves, behaviour: float | None = None, order: Sequence[str] | None = None
) -> None:
    """Each label's curve `{step: [values over runs]}` as its mean with a ± sample-std band (a plain line for one
    run), coloured by its position in `order` (default: the curves' order); the behaviour score as a dashed line."""
    for i, label in enumerate(
        order or curves
    ):  # colour by position in `order`: the same run, the same colour
        if label not in curves:
            continue
        steps = sorted(curves[label])
        stats = [_mean_std(curves[label][s]) for s in steps]
        mean = [m for m, _ in stats]
        std = [s for _, s in stats]
        color = f"C{i % 10}"
        ax.plot(steps, mean, color=color, lw=1.4, label=label, ls="-" if i < 10 else "--")
        if any(std):
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(steps, lo, hi, color=color, alpha=0.15)
    if behaviour is not None:
        ax.axhline(behaviour, color="black", ls="--", lw=1.0, label="behaviour data")
    ax.grid(alpha=0.3)


def _curves(runs: dict[str, list[dict[str, Any]]], table: str, column: str) -> Curves:
    out: Curves = {}
    for label, members in runs.items():
        for run in members:
            for row in run[table]:
                v = row.get(column, math.nan)
                if "step" in row and not math.isnan(v):
                    out.setdefault(label, {}).setdefault(int(row["step"]), []).append(v)
    return out


def plot_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    mean: bool = False,
    behaviour: float | None = None,
) -> Path:
    """Write a PNG: the evaluation curve on top, then one panel per logged loss; returns its path.

    Args:
        run_dirs: `rl.train` run directories.
        out: the PNG path (written atomically).
        labels: one per run (default: the directory paths), or one for all with `mean`.
        mean: draw the runs as one mean ± std band (seeds of one setting).
        behaviour: the behaviour data's normalised score, drawn as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("plot_runs needs at least one run directory")
    if labels is not None and len(labels) != (1 if mean else len(dirs)):
        raise ValueError(
            f"labels: got {len(labels)}, need {1 if mean else len(dirs)} (one per run, or one with mean)"
        )
    runs = [read_run(d) for d in dirs]
    if mean:
        grouped = {(labels or [" + ".join(str(d) for d in dirs)])[0]: runs}
    else:
        names = labels or _short_names(dirs)
        grouped = {name: [run] for name, run in zip(names, runs)}
    scored = any(not math.isnan(r.get("normalized_score", math.nan)) for run in runs for r in run["evals"])
    eval_col = "normalized_score" if scored else "return_mean"
    losses = []
    for run in runs:
        for row in run["progress"][:1]:
            losses += [k for k in row if k not in ("step", "updates_per_s") and k not in losses]
    n = 1 + len(losses)
    cols = min(3, n)
    rows = 1 + math.ceil(len(losses) / cols)
    fig = plt.figure(figsize=(4.2 * cols, 3.0 * rows))
    top = fig.add_subplot(rows, 1, 1)
    order = list(grouped)
    draw_curves(top, _curves(grouped, "evals", eval_col), behaviour, order)
    top.set_ylabel("normalised score" if scored else "return")
    top.set_xlabel("gradient step")
    top.set_title("evaluation" + (" (mean ± std over runs)" if mean and len(dirs) > 1 else ""))
    if top.get_legend_handles_labels()[0]:
        top.legend(fontsize=7)
    for i, loss in enumerate(losses):
        ax = fig.add_subplot(rows, cols, cols + 1 + i)
        draw_curves(ax, _curves(grouped, "progress", loss), order=order)
        ax.set_title(loss, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(out)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def _short_names(dirs: list[Path]) -> list[str]:
    """The run directories relative to their common parent (the whole path for one run)."""
    if len(dirs) == 1:
        return [str(dirs[0])]
    base = Path(os.path.commonpath([d.resolve() for d in dirs]))
    names = [str(d.resolve().relative_to(base)) for d in dirs]
    return names if all(names) and len(set(names)) == len(names) else [str(d) for d in dirs]


def _behaviour_of(run_dir: Path) -> float | None:
    from rl.data import load
    from rl.data.references import behaviour_score

    cfg = read_run(run_dir)["config"]
    if "dataset" not in cfg:
        raise ValueError(f"--behaviour: {run_dir}/config.yaml names no dataset")
    kwargs = {"size": cfg["dataset_size"]} if cfg.get("dataset_size") else {}
    ds = load(cfg["dataset"], **kwargs)
    return behaviour_score(ds, (cfg["dataset"], cfg.get("env") or ds.metadata.get("env_id")))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="rl.train run directories")
    p.add_argument("--out", default="curves.png", help="the PNG to write (default curves.png)")
    p.add_argument("--labels", nargs="+", default=None, help="one label per run (one with --mean)")
    p.add_argument("--mean", action="store_true", help="draw the runs as one mean ± std band (seeds)")
    p.add_argument(
        "--behaviour",
        action="store_true",
        help="add the behaviour data's score (loads the first run's dataset)",
    )
    args = p.parse_args(argv)
    try:
        behaviour = _behaviour_of(Path(args.runs[0])) if args.behaviour else None
        path = plot_runs(args.runs, args.out, labels=args.labels, mean=args.mean, behaviour=behaviour)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
