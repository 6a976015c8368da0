"""The plots of a sweep's report (PNG, written atomically): RL learning curves per dataset; per staircase task the
training estimate against the step with the true MI as a staircase, and the held-out estimate against the truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rl.sweep.staircase as sc
from rl._atomic import atomic_write
from rl.sweep.folders import as_float
from rl.sweep.spec import Spec


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def plot_curves(spec: Spec, g: dict[str, Any], label: str, variants: list[str], path: Path) -> bool:
    """RL learning curves on dataset `label`: per variant the mean over seeds with a ± std band, the behaviour
    score as a dashed line (`rl.plot.draw_curves`); False, and nothing drawn, when no trial has evaluated."""
    from rl.plot import draw_curves

    curves: dict[str, dict[int, list[float]]] = {}
    for r in g["rows"]:
        if r["dataset"] != label or r["normalized_score"] is None:
            continue
        curves.setdefault(r["variant"], {}).setdefault(r["step"], []).append(r["normalized_score"])
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw_curves(ax, curves, (g["behaviour"].get(label) or {}).get("normalized_score"), order=variants)
    ax.set_xlabel("gradient step")
    ax.set_ylabel("normalised score")
    ax.set_title(f"{spec.name}: {label} (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def _task_runs(spec: Spec, g: dict[str, Any], task: str, est: str, critic: str) -> list[dict[str, Any]]:
    return [
        g["runs"][t["id"]]
        for t in spec.trials
        if t["id"] in g["runs"]
        and (t["params"]["task"], t["params"]["estimator"], t["params"]["critic"]) == (task, est, critic)
    ]


def _mean_band(arrays: list[Any]) -> tuple[Any, Any]:
    """Mean and sample std over runs of NaN-padded arrays (std 0 for one run), without empty-slice warnings."""
    import warnings

    import numpy as np

    arr = np.asarray(arrays, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(arr, 0)
        std = np.nanstd(arr, 0, ddof=1) if len(arrays) > 1 else np.zeros(arr.shape[1])
    return mean, np.nan_to_num(std)


def plot_staircase(
    spec: Spec,
    g: dict[str, Any],
    task: str,
    task_spec: sc.TaskSpec,
    estimators: list[str],
    critics: list[str],
    path: Path,
) -> None:
    """Per estimator: the per-step training estimate (mean ± std over seeds) per critic, the held-out estimates at
    the ends of the levels (markers, ± std over seeds), the true MI as a staircase."""
    import numpy as np

    plt = _plt()
    spl = spec.trials[0]["settings"]["steps_per_level"]
    total = spl * len(sc.LEVELS)
    cols = min(4, len(estimators))
    nrows = (len(estimators) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), sharey=True, squeeze=False)
    for ax, est in zip(axes.flat, estimators):
        for j, critic in enumerate(critics):
            runs = _task_runs(spec, g, task, est, critic)
            if not runs:
                continue
            every = runs[0].get("estimates_every", 1)
            x = np.arange(0, total, every)
            series = []
            for r in runs:
                v = np.full(len(x), np.nan)
                e = np.asarray([as_float(u) for u in r["estimates"]], dtype=float)[: len(x)]
                v[: len(e)] = e
                series.append(v)
            mean, std = _mean_band(series)
            ax.plot(x, mean, color=f"C{j}", lw=0.7, label=f"{critic} (n={len(runs)})")
            ax.fill_between(x, mean - std, mean + std, color=f"C{j}", alpha=0.2)
            held = [[as_float(h["mean"]) for h in r.get("heldout", [])] for r in runs]
            if held and all(len(h) == len(sc.LEVELS) for h in held):
                hm, hs = _mean_band(held)
                ends = [(i + 1) * spl - 1 for i in range(len(sc.LEVELS))]
                ax.errorbar(ends, hm, yerr=hs, fmt="o", ms=3, color=f"C{j}", mec="black", mew=0.5, capsize=2)
        ax.step(
            [0, *[(i + 1) * spl for i in range(len(sc.LEVELS))]],
            [sc.LEVELS[0], *sc.LEVELS],
            where="pre",
            color="black",
            lw=1.0,
            label="true MI",
        )
        ax.set_title(est)
        ax.set_ylim(-2, 13)
        ax.set_xlabel("step")
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(estimators) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("MI estimate (nats)")
    fig.suptitle(
        f"{spec.name}: {task} = {task_spec.describe()}\ntraining estimate (mean ± std over seeds), "
        "held-out at each level's end (dots)",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_heldout(
    spec: Spec,
    g: dict[str, Any],
    task: str,
    task_spec: sc.TaskSpec,
    estimators: list[str],
    critics: list[str],
    path: Path,
) -> None:
    """Per critic: the held-out estimate vs the true MI, one line per estimator (mean ± std over seeds)."""
    plt = _plt()
    levels = list(sc.LEVELS)
    fig, axes = plt.subplots(1, len(critics), figsize=(5.5 * len(critics), 4.2), sharey=True, squeeze=False)
    for ax, critic in zip(axes[0], critics):
        for j, est in enumerate(estimators):
            runs = _task_runs(spec, g, task, est, critic)
            held = [[as_float(h["mean"]) for h in r.get("heldout", [])] for r in runs]
            held = [h for h in held if len(h) == len(levels)]
            if not held:
                continue
            mean, std = _mean_band(held)
            ax.errorbar(
                levels,
                mean,
                yerr=std,
                marker="o",
                ms=3,
                lw=1,
                capsize=2,
                color=f"C{j % 10}",
                ls="-" if j < 10 else "--",
                label=est,  # one colour per estimator on every panel; the seeds per cell are in the tables
            )
        ax.plot(levels, levels, color="black", lw=1.2, ls=":", label="true MI")
        ax.set_title(f"{critic} critic")
        ax.set_xlabel("true MI (nats)")
        ax.set_ylim(-5, 13)  # values below are in the held-out table
    axes[0][0].set_ylabel("held-out estimate (nats)")
    handles: dict[str, Any] = {}  # every panel's estimators, not only the last panel's (a critic some lack)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0][-1].legend(
        list(handles.values()), list(handles), fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )
    fig.suptitle(
        f"{spec.name}: {task} = {task_spec.describe()}\nheld-out estimate at the end of each level",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
