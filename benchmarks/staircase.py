"""Poole et al.'s MI staircase: every bound, two critics, bias and variance per level. The protocol itself (the
levels, the critics, the tasks, `run`, `run_protocol`, `summarise`) is `rl.sweep.staircase`, which the sweep's
staircase trials (`python -m rl.sweep`, kind `staircase`) run too; this script is its command line.

    python benchmarks/staircase.py                       # 4000 steps per level, as in Poole et al. (slow on CPU)
    python benchmarks/staircase.py --steps-per-level 1000 --estimators nwj infonce
    python benchmarks/staircase.py --quick               # 200 steps per level, two estimators: a smoke run

True MI steps through 2, 4, 6, 8, 10 nats on `CorrelatedGaussian(dim=20)`; each step trains on a fresh batch of 64.
Finished runs are cached in `--out/.cache` (keyed by the settings, the thread count, the torch version and a hash
of the `mi_estimators` sources, so a cache made by other code is not reused), so a rerun resumes. Writes
`staircase.csv` (every `--csv-every`-th step), `staircase_summary.csv` and `staircase.md` (bias, variance, MSE over
the second half of each level) and `staircase.png` (estimate vs step, truth as a staircase) into `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import mi_estimators as mie
from rl.sweep.staircase import (
    DEFAULT_ESTIMATORS,
    LEVELS,
    code_fingerprint,
    recipe_arguments,
    run,
    run_protocol,
    summarise,
)

#: what other scripts read from here (benchmarks/peer_fdime.py: run_protocol, recipe_arguments, summarise)
__all__ = ["LEVELS", "code_fingerprint", "main", "recipe_arguments", "run", "run_protocol", "summarise"]


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by anyone
    os.replace(tmp, path)


def plot(per_run: dict[tuple[str, str], list[float]], steps_per_level: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    estimators = sorted({e for e, _ in per_run})
    cols = min(4, len(estimators))
    rows = (len(estimators) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), sharey=True, squeeze=False)
    total = steps_per_level * len(LEVELS)
    truth = [LEVELS[min(t // steps_per_level, len(LEVELS) - 1)] for t in range(total)]
    for ax, name in zip(axes.flat, estimators):
        for critic, color in (("separable", "tab:blue"), ("concat", "tab:orange")):
            est = per_run.get((name, critic))
            if est is None:
                continue
            ax.plot(est, color=color, alpha=0.25, lw=0.5)
            smooth, acc = [], est[0]
            for v in est:  # exponential moving average, for readability only
                acc = 0.99 * acc + 0.01 * v if v == v and abs(v) != float("inf") else acc
                smooth.append(acc)
            ax.plot(smooth, color=color, lw=1.2, label=critic)
        ax.plot(truth, color="black", lw=1.0, label="true MI")
        ax.set_title(name)
        ax.set_ylim(-1, 12)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(estimators) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("MI (nats)")
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.suptitle(f"MI staircase, CorrelatedGaussian(dim=20), batch 64, {steps_per_level} steps per level")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--estimators", nargs="+", default=DEFAULT_ESTIMATORS)
    parser.add_argument(
        "--critics", nargs="+", default=["separable", "concat"], choices=["separable", "concat"]
    )
    parser.add_argument("--steps-per-level", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="200 steps per level, nwj and infonce only")
    parser.add_argument("--csv-every", type=int, default=10, help="keep every n-th step in staircase.csv")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps_per_level, args.estimators = 200, ["nwj", "infonce"]
    unknown = [e for e in args.estimators if e not in mie.available()]
    if unknown:
        parser.error(f"unknown estimator(s) {unknown}; available: {mie.available()}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    per_run: dict[tuple[str, str], list[float]] = {}
    summary: list[dict[str, object]] = []
    # one file per finished run, so an interrupted benchmark resumes where it stopped; keyed by the code and the
    # thread count too, so that a rerun after a change of the library recomputes instead of replaying old numbers
    cache = args.out / ".cache"
    cache.mkdir(exist_ok=True)
    code = code_fingerprint()
    for name in args.estimators:
        for critic in args.critics:
            key = cache / (
                f"{name}_{critic}_{args.steps_per_level}_{args.dim}_{args.batch_size}_{args.seed}"
                f"_t{args.threads}_{code}.json"
            )
            if key.exists():
                cached = json.loads(key.read_text())
                est, seconds = cached["estimates"], cached["seconds"]
            else:
                start = time.perf_counter()
                est = run(name, critic, args.steps_per_level, args.dim, args.batch_size, args.seed)
                seconds = time.perf_counter() - start
                _atomic_write_text(key, json.dumps({"estimates": est, "seconds": seconds}))
            per_run[(name, critic)] = est
            for row in summarise(est, args.steps_per_level):
                summary.append({"estimator": name, "critic": critic, **row, "seconds": seconds})
            print(
                f"{name:>13} {critic:>9}: {seconds:6.1f} s  "
                + "  ".join(f"{r['mi']:.0f}:{r['bias']:+.2f}" for r in summarise(est, args.steps_per_level)),
                file=sys.stderr,
            )

    lines = ["estimator,critic,step,true_mi,estimate"]
    for (name, critic), est in per_run.items():
        for t, v in list(enumerate(est))[:: args.csv_every]:
            lines.append(
                f"{name},{critic},{t},{LEVELS[min(t // args.steps_per_level, len(LEVELS) - 1)]},{v:.5g}"
            )
    _atomic_write_text(args.out / "staircase.csv", "\n".join(lines) + "\n")

    fields = ["estimator", "critic", "mi", "bias", "variance", "mse", "nonfinite", "seconds"]
    fd, tmp = tempfile.mkstemp(dir=args.out, prefix=".staircase_summary.")
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in summary:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, args.out / "staircase_summary.csv")

    md = [
        f"Staircase: CorrelatedGaussian(dim={args.dim}), batch {args.batch_size}, {args.steps_per_level} steps per "
        f"level, seed {args.seed}. Bias and variance (nats, nats^2) over the second half of each level.",
        "",
        "| estimator | critic | "
        + " | ".join(f"bias@{m:.0f}" for m in LEVELS)
        + " | "
        + " | ".join(f"var@{m:.0f}" for m in LEVELS)
        + " |",
        "|---|---|" + "---|" * (2 * len(LEVELS)),
    ]
    for name in args.estimators:
        for critic in args.critics:
            rows = [r for r in summary if r["estimator"] == name and r["critic"] == critic]
            md.append(
                f"| {name} | {critic} | "
                + " | ".join(f"{r['bias']:+.2f}" for r in rows)
                + " | "
                + " | ".join(f"{r['variance']:.2f}" for r in rows)
                + " |"
            )
    _atomic_write_text(args.out / "staircase.md", "\n".join(md) + "\n")
    plot(per_run, args.steps_per_level, args.out / "staircase.png")
    print(f"wrote {args.out}/staircase.{{csv,md,png}} and staircase_summary.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
