"""Side by side with torch-mist on Poole's task: the same data, budget and network, ours and theirs, in one run.

    python benchmarks/peer_torch_mist.py --peer-python /work/.venv-torchmist/bin/python

torch-mist runs in its own venv (torch-mist 0.2.17 needs `pandas<2.3` and `numpy<2`; install the CPU torch first):

    python -m venv .venv-torchmist && .venv-torchmist/bin/pip install torch==2.13.0 \\
        && .venv-torchmist/bin/pip install torch-mist==0.2.17 "pandas<2.3" "numpy<2" torch==2.13.0

The task is `CorrelatedGaussian(dim=20, mi=4.0)` (Poole et al.'s): 100,000 training and 10,000 held-out samples
drawn once (seed 0 / 1) and handed to both libraries as the same arrays. Each estimator trains 4000 steps of batch 64
with Adam at lr 5e-4, then is evaluated on the held-out samples in batches of 64 (both libraries' evaluation: the
mean of the batch estimates). Two settings:
- `defaults`: what each library gives a user who names the estimator (torch-mist: its factory's default critic and
  negatives, e.g. a joint critic with one negative for NWJ/SMILE; ours: `mie.estimate`'s separable critic and
  all-pairs negatives), both with hidden layers (256, 256);
- `matched`: the same critic on both sides, a joint (concat) MLP (256, 256) scoring all pairs of the batch.
Each run is one process-local torch thread; the wall time covers training and the held-out evaluation. Writes
`benchmarks/results/torch_mist.{csv,md}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = ("nwj", "smile", "infonce", "mine")
TRUE_MI, DIM, STEPS, BATCH, LR, HIDDEN = 4.0, 20, 4000, 64, 5e-4, (256, 256)


def _peer_worker(data_path: str, name: str, setting: str, seed: int, infonce_neg: int = 0) -> dict:
    """Runs in torch-mist's venv: train and evaluate one estimator; returns its held-out estimate and wall time."""
    import numpy as np
    import torch
    from torch_mist import estimate_mi

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    z = np.load(data_path)
    train = {"x": torch.from_numpy(z["x_train"]), "y": torch.from_numpy(z["y_train"])}
    test = {"x": torch.from_numpy(z["x_test"]), "y": torch.from_numpy(z["y_test"])}
    options: dict = {"hidden_dims": list(HIDDEN)}
    if setting == "matched":
        # every pair of the batch: for the NWJ family torch-mist counts the other N - 1 samples (-1); its InfoNCE
        # counts the N samples of the batch, the positive included (0, its default)
        options.update(critic_type="joint", neg_samples=infonce_neg if name == "infonce" else -1)
    if name == "smile":
        options["tau"] = 5.0
    t0 = time.perf_counter()
    value = estimate_mi(
        data=train,
        estimator=name,
        test_data=test,
        valid_percentage=0.0,
        max_iterations=STEPS,
        batch_size=BATCH,
        evaluation_batch_size=BATCH,
        optimizer_params={"lr": LR},
        early_stopping=False,
        verbose=False,
        logger=False,
        **options,
    )
    return {"estimate": float(value), "seconds": time.perf_counter() - t0}


def _ours(data: dict, name: str, setting: str, seed: int) -> dict:
    import torch

    import mi_estimators as mie

    torch.set_num_threads(1)
    critic, options = (
        ("separable", {"hidden": HIDDEN}) if setting == "defaults" else ("concat", {"hidden": HIDDEN})
    )
    t0 = time.perf_counter()
    hist = mie.estimate(
        name,
        x=data["x_train"],
        y=data["y_train"],
        critic=critic,
        critic_options=options,
        steps=STEPS,
        batch_size=BATCH,
        lr=LR,
        seed=seed,
        progress=False,
        estimator_options={"tau": 5.0} if name == "smile" else None,
    )
    value = float(hist.evaluate(data["x_test"], data["y_test"], batch_size=BATCH))
    return {"estimate": value, "seconds": time.perf_counter() - t0}


def _data(path: Path) -> dict:
    import numpy as np
    import torch

    import mi_estimators as mie

    task = mie.tasks.CorrelatedGaussian(dim=DIM, mi=TRUE_MI)
    x_train, y_train = task.sample(100_000, generator=torch.Generator().manual_seed(0))
    x_test, y_test = task.sample(10_000, generator=torch.Generator().manual_seed(1))
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    np.savez(path, **{k: v.numpy() for k, v in arrays.items()})
    return arrays


def _table(rows: list[dict]) -> str:
    lines = [
        "| estimator | setting | ours: held-out (nats) | torch-mist: held-out (nats) | ours: seconds | torch-mist: seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ESTIMATORS:
        for setting in ("defaults", "matched"):
            cell = {}
            for lib in ("ours", "torch-mist"):
                sel = [
                    r for r in rows if (r["estimator"], r["setting"], r["library"]) == (name, setting, lib)
                ]
                if not sel:
                    cell[lib] = ("—", "—")
                    continue
                est = [r["estimate"] for r in sel]
                sec = [r["seconds"] for r in sel]
                sd = f" ± {statistics.stdev(est):.2f}" if len(est) > 1 else ""
                cell[lib] = (f"{statistics.mean(est):.2f}{sd}", f"{statistics.mean(sec):.1f}")
            lines.append(
                f"| `{name}` | {setting} | {cell['ours'][0]} | {cell['torch-mist'][0]} | {cell['ours'][1]} | "
                f"{cell['torch-mist'][1]} |"
            )
    return "\n".join(lines)


def _markdown(rows: list[dict]) -> str:
    return (
        f"# Ours vs torch-mist 0.2.17 on Poole's task (CorrelatedGaussian d={DIM}, true MI {TRUE_MI} nats)\n\n"
        "`python benchmarks/peer_torch_mist.py --peer-python .venv-torchmist/bin/python --settings defaults`, then "
        "`... --settings matched --seeds 0 --merge` (mean ± std over the seeds run; the matched setting's joint critic "
        f"scores all 64 x 64 pairs, 6-10x slower, so it ran one seed here). {STEPS} steps of batch {BATCH}, Adam lr {LR}, "
        f"hidden {list(HIDDEN)}; held-out: 10,000 samples in batches of {BATCH}. InfoNCE is capped at log {BATCH} = "
        f"4.16 nats. Seconds: training + evaluation, one torch thread each, run one after the other.\n\n"
        + "<!-- table:torch-mist -->\n"  # a named block: benchmarks/docs_tables.py pastes it into the docs
        + _table(rows)
        + "\n<!-- /table:torch-mist -->\n"
    )


def _read_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.update(seed=int(r["seed"]), estimate=float(r["estimate"]), seconds=float(r["seconds"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-python", required=False, help="python of the torch-mist venv")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument(
        "--torch-mist-infonce-neg-samples",
        type=int,
        default=0,
        help="torch-mist's neg_samples for InfoNCE in the matched setting (0: its default, all N; -1: N - 1)",
    )
    p.add_argument("--settings", nargs="+", default=["defaults", "matched"], choices=["defaults", "matched"])
    p.add_argument("--report-only", action="store_true", help="rewrite torch_mist.md from torch_mist.csv")
    p.add_argument(
        "--merge", action="store_true", help="keep the other (estimator, setting) rows of an existing CSV"
    )
    p.add_argument(
        "--worker", nargs=5, metavar=("DATA", "NAME", "SETTING", "SEED", "NEG"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.worker:
        data_path, name, setting, seed, *neg = args.worker
        print(json.dumps(_peer_worker(data_path, name, setting, int(seed), int(neg[0]) if neg else 0)))
        return 0
    if args.report_only:
        from rl._atomic import atomic_write

        text = _markdown(_read_rows(Path(args.out) / "torch_mist.csv"))
        atomic_write(Path(args.out) / "torch_mist.md", lambda tmp: Path(tmp).write_text(text))
        print(text)
        return 0
    if not args.peer_python:
        p.error("--peer-python is required (the python of torch-mist's venv)")
    import csv

    from rl._atomic import atomic_write, atomic_write_csv

    out = Path(args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "poole.npz"
        data = _data(data_path)
        for name in args.estimators:
            for setting in args.settings:
                for seed in args.seeds:
                    ours = _ours(data, name, setting, seed)
                    res = subprocess.run(
                        [
                            args.peer_python,
                            __file__,
                            "--worker",
                            str(data_path),
                            name,
                            setting,
                            str(seed),
                            str(args.torch_mist_infonce_neg_samples),
                        ],
                        capture_output=True,
                        text=True,
                        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                    )
                    if res.returncode != 0:
                        raise RuntimeError(
                            f"torch-mist {name} {setting} seed {seed} failed:\n{res.stderr[-2000:]}"
                        )
                    theirs = json.loads(res.stdout.strip().splitlines()[-1])
                    for lib, r in (("ours", ours), ("torch-mist", theirs)):
                        rows.append(
                            {"estimator": name, "setting": setting, "seed": seed, "library": lib, **r}
                        )
                    print(
                        f"{name} {setting} seed {seed}: ours {ours['estimate']:.3f} ({ours['seconds']:.1f} s), "
                        f"torch-mist {theirs['estimate']:.3f} ({theirs['seconds']:.1f} s)",
                        flush=True,
                    )
    fields = ["estimator", "setting", "seed", "library", "estimate", "seconds"]
    if args.merge and (out / "torch_mist.csv").is_file():
        with open(out / "torch_mist.csv", newline="") as f:
            redone = {(e, st) for e in args.estimators for st in args.settings}
            kept = [r for r in csv.DictReader(f) if (r["estimator"], r["setting"]) not in redone]
        for r in kept:
            r.update(seed=int(r["seed"]), estimate=float(r["estimate"]), seconds=float(r["seconds"]))
        rows = kept + rows

    atomic_write_csv(out / "torch_mist.csv", rows, fields)
    md = _markdown(rows)
    atomic_write(out / "torch_mist.md", lambda tmp: Path(tmp).write_text(md))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
