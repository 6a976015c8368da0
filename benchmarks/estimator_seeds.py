"""Many seeds in one run against one seed per run, at equal total work: `mie.estimate(..., seeds=S)` (one stacked
pass, `mi_estimators._stacked`) against S calls of `mie.estimate(..., seed=s)` in the same process.

Throughput is seed-steps per second of wall-clock time (S x steps / seconds); each case runs both ways back to back
on this machine, at 1 and at 2 torch threads. Cases: InfoNCE on the separable critic (the all-pairs default) and
the recommended estimator (`mie.RECOMMENDED`: GAN-DIME, hybrid critic, averaged, clipped), on the correlated
Gaussian (d = 5, 2 nats), batch 64.

    nice python benchmarks/estimator_seeds.py [--seeds 8 32] [--threads 1 2] [--steps 200]

Writes `benchmarks/results/estimator_seeds.{csv,md}`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from _results import write_results

import mi_estimators as mie

RESULTS = Path(__file__).resolve().parent / "results"
TASK = mie.tasks.CorrelatedGaussian(dim=5, mi=2.0)
CASES = {
    "infonce, separable": ("infonce", {}),
    "recommended (gan-dime, hybrid, average, clip)": (
        mie.RECOMMENDED["estimator"],
        {k: v for k, v in mie.RECOMMENDED.items() if k != "estimator"},
    ),
}
TARGET = 4.0  # issue 28: estimator throughput >= 4x at S = 8


def _time(fn, device: str = "cpu") -> float:
    start = time.perf_counter()
    fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(case: str, seeds: int, threads: int, steps: int, device: str = "cpu") -> dict:
    name, options = CASES[case]
    torch.set_num_threads(threads)
    kw = {"steps": steps, "batch_size": 64, "device": device, **options}
    stacked = _time(lambda: mie.estimate(name, TASK, seeds=seeds, **kw), device)
    one_by_one = _time(lambda: [mie.estimate(name, TASK, seed=s, **kw) for s in range(seeds)], device)
    work = seeds * steps
    return {
        "case": case,
        "seeds": seeds,
        "threads": threads,
        "steps": steps,
        "stacked_seed_steps_per_s": round(work / stacked, 1),
        "one_by_one_seed_steps_per_s": round(work / one_by_one, 1),
        "speedup": round(one_by_one / stacked, 2),
        "load_avg": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[8, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default=str(RESULTS / "estimator_seeds"))
    p.add_argument("--device", default="cpu", help="cuda: both ways on the GPU (benchmarks/gpu_check.sh)")
    args = p.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    # vmap's one-time set-up, outside the timings
    mie.estimate("nwj", TASK, steps=3, batch_size=8, seeds=2, device=args.device)
    rows = []
    for threads in args.threads:
        for case in CASES:
            for seeds in args.seeds:
                row = measure(case, seeds, threads, args.steps, args.device)
                print(row, file=sys.stderr)
                rows.append(row)
    cmd = "python benchmarks/estimator_seeds.py " + " ".join(
        [
            f"--seeds {' '.join(map(str, args.seeds))}",
            f"--threads {' '.join(map(str, args.threads))}",
            f"--steps {args.steps}",
            *([f"--device {args.device}"] if gpu else []),
        ]
    )
    table = "estimator-seeds-gpu" if gpu else "estimator-seeds"
    lines = [
        "# Many seeds in one run (estimators)",
        "",
        f"`{cmd}`, {time.strftime('%Y-%m-%d')}. CPU: {platform.machine()}, {os.cpu_count()} cores; torch "
        f"{torch.__version__}{'; ' + torch.cuda.get_device_name() if gpu else ''}. Seed-steps per second of wall-clock time at equal total work (S seeds x {args.steps} "
        f"steps, batch 64, correlated Gaussian d = 5, 2 nats); target >= {TARGET}x at S = 8 (issue 28). "
        'Interpretation: docs/benchmarks.md, "Many seeds in one run".',
        "",
        f"<!-- table:{table} -->",
        "| case | S | threads | stacked (seed-steps/s) | one seed per call (seed-steps/s) | speed-up | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['seeds']} | {r['threads']} | {r['stacked_seed_steps_per_s']} | "
            f"{r['one_by_one_seed_steps_per_s']} | {r['speedup']}x | {r['load_avg']} |"
        )
    lines.append(f"<!-- /table:{table} -->")
    write_results(Path(args.out), rows, lines)


if __name__ == "__main__":
    main()
