"""Side by side with f-DIME's own code (Letizia, Novello, Tonello, NeurIPS 2024) on its staircase protocol, in one run.

    git clone https://github.com/tonellolab/fDIME /path/to/fDIME       # any checkout of the official code
    python -m venv .venv-fdime && .venv-fdime/bin/pip install torch==2.13.0 numpy scipy pandas matplotlib pillow
    python benchmarks/peer_fdime.py --fdime /path/to/fDIME --peer-python .venv-fdime/bin/python \
        --recipes benchmarks/sweeps/estimator-search.yaml --ours gan-dime-avg0.99-clip1 --critic hybrid
    python benchmarks/peer_fdime.py --screen benchmarks/results/sweeps/estimator-search   # the search vs f-DIME

The protocol is f-DIME's `main.py --scenario staircase`: true MI 2, 4, 6, 8, 10 nats, 4000 steps per level, a fresh
batch of 64 per step, the per-step training estimate recorded. f-DIME's side is its own `fDIME` class, unchanged
(its network, Adam at 0.002, its derangement, its losses; its `train()` reseeds torch, numpy and `random` with the
trial seed at each level, as its `main.py` does with seed 0), run in its own venv. Its sampler is replaced by one of
the same law as ours, through its own correlated-Gaussian sampler (`rho_gauss_corr=True`, `mi_to_rho`): the
Gaussian tasks are Poole et al.'s `CorrelatedGaussian(dim)` on both sides, and the cubic task cubes x and y (f-DIME's
own cubic mode cubes y only). Our side runs `benchmarks/staircase.py`'s `run_protocol` (the estimator suite's trial)
for each `--ours` entry: a registered estimator with the suite's settings, or a recipe (a mapping entry of a sweep
spec's `grid.estimator`, looked up by name in `--recipes`). Each trial is one process on one torch thread, ours and
theirs one after the other for each task and seed.

Metric (both sides, `staircase.summarise`): bias, variance and MSE of the per-step estimate over the second half of
each level. Writes `<out>/fdime.csv` (one row per library, estimator, task, seed and level) and `<out>/fdime.md`
(mean ± std over seeds; `--report-only` rebuilds it from the CSV, `--merge` keeps the rows of entries not rerun).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)
TASKS = ("gauss-d5", "gauss-d20", "gauss-cubic-d5")
PEER = "f-DIME"
#: f-DIME's estimator compared with (its best in the paper) and its architecture: one MLP on [x, y] pairs, the
#: joint batch against one derangement of it
PEER_DIVERGENCE, PEER_ARCHITECTURE = "GAN", "deranged"
FIELDS = [
    "library",
    "estimator",
    "task",
    "seed",
    "true_mi",
    "bias",
    "variance",
    "mse",
    "nonfinite",
    "seconds",
]


def _task_shape(task: str) -> tuple[int, bool]:
    """(dim, cubic) of a task name of `TASKS`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return int(task.rsplit("-d", 1)[1]), "cubic" in task


def _peer_worker(fdime: str, task: str, steps_per_level: int, batch_size: int, seed: int, out: str) -> None:
    """Runs in f-DIME's venv: its `fDIME` over the staircase; writes the per-step estimates and the seconds."""
    import torch

    sys.path.insert(0, fdime)
    import classes  # f-DIME's module (it star-imports its utils)

    torch.set_num_threads(1)
    dim, cubic = _task_shape(task)
    own_sampler = classes.sample_correlated_gaussian

    def sample_distribution(  # f-DIME's signature; the unused arguments are its other laws'
        rho_gauss_corr, latent_dim=20, rho=0, eps=0, df=1, batch_size=64, mode="gauss", device="cpu"
    ):
        x, y = own_sampler(rho=rho, dim=latent_dim, batch_size=batch_size, mode="gauss", device=device)
        return (x**3, y**3) if cubic else (x, y)

    classes.sample_distribution = sample_distribution
    params = {"latent_dim": dim, "alpha": 1, "rho_gauss_corr": True, "device": "cpu"}
    torch.manual_seed(seed)  # the network's initialisation (f-DIME seeds only inside train())
    t0 = time.perf_counter()
    est = classes.fDIME(params, PEER_DIVERGENCE, PEER_ARCHITECTURE, "gauss")
    estimates: list[float] = []
    for level in LEVELS:
        est.update_SNR_or_rho(level)
        steps = est.train(epochs=steps_per_level, batch_size=batch_size, random_seed=seed, verbose=False)
        estimates += [float(v) for v in steps]
    Path(out).write_text(json.dumps({"estimates": estimates, "seconds": time.perf_counter() - t0}))


def _recipes(path: Path | None) -> dict[str, dict[str, Any]]:
    """The recipes (name -> recipe) of a staircase sweep spec's estimator axis."""
    if path is None:
        return {}
    import importlib.util

    spec_ = importlib.util.spec_from_file_location("_fdime_sweep", ROOT / "benchmarks" / "sweep.py")
    sweep = importlib.util.module_from_spec(spec_)
    sys.modules["_fdime_sweep"] = sweep
    spec_.loader.exec_module(sweep)
    spec = sweep.load_spec(path)
    return {
        t["params"]["estimator"]: t["settings"]["recipe"] for t in spec.trials if "recipe" in t["settings"]
    }


@functools.cache
def _staircase() -> Any:
    """`benchmarks/staircase.py`, imported once (its directory put on `sys.path` once)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import staircase

    return staircase


def _ours(name: str, recipe: dict[str, Any] | None, task: str, critic: str, spl: int, batch: int, seed: int):
    import torch

    sc = _staircase()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run = sc.run_protocol(
        recipe["estimator"] if recipe else name,
        task,
        critic,
        spl,
        batch,
        seed,
        heldout_samples=0,
        **sc.recipe_arguments(recipe),
    )
    return run["estimates"], time.perf_counter() - t0


def _rows(
    library: str, estimator: str, task: str, seed: int, estimates, seconds: float, spl: int
) -> list[dict]:
    sc = _staircase()
    return [
        {"library": library, "estimator": estimator, "task": task, "seed": seed, "true_mi": r["mi"]}
        | {k: r[k] for k in ("bias", "variance", "mse", "nonfinite")}
        | {"seconds": round(seconds, 2)}
        for r in sc.summarise(estimates, spl)
    ]


def _mean_std(values: list[float]) -> str:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "—"
    cell = f"{statistics.fmean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")
    return cell + (f" ({len(v)}/{len(values)})" if len(v) < len(values) else "")


def markdown(rows: list[dict], command: str) -> str:
    """The report: a summary (per task, MSE per level and each of ours' worst ratio to f-DIME's: at most 1 means at
    or below f-DIME's MSE, mean over seeds, at every level), then per task MSE / bias / variance per level (mean ±
    std over seeds), then the seconds per trial."""
    entries = list(dict.fromkeys((r["library"], r["estimator"]) for r in rows))
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    seeds = sorted({int(r["seed"]) for r in rows})
    lines = [
        f"<!-- regenerate: {command} -->",
        "# Side by side with f-DIME's own code on its staircase",
        "",
        f"Regenerate: `{command}` (`--report-only` rebuilds this page from `fdime.csv`). Protocol and details: "
        "the docstring of `benchmarks/peer_fdime.py`. f-DIME: its GAN estimator with its `deranged` architecture "
        "(its best in the paper), its own code in its own venv. Cells: mean ± std over seeds "
        f"{', '.join(map(str, seeds))} of the per-level value over the second half of each level.",
    ]

    lines += ["", "## Summary", "", *_summary(rows, entries, tasks)]
    for task in tasks:
        lines += ["", f"## `{task}`"]
        for title, key in (("MSE (nats²)", "mse"), ("bias (nats)", "bias"), ("variance (nats²)", "variance")):
            lines += [
                "",
                f"**{title}**",
                "",
                "| library | estimator | " + " | ".join(f"{m:g}" for m in LEVELS) + " |",
            ]
            lines.append("|---|---|" + "---|" * len(LEVELS))
            for lib, est in entries:
                cells = []
                for mi in LEVELS:
                    sel = _values(rows, lib, est, task, mi, key)
                    cells.append(_mean_std(sel) if sel else "")
                if any(cells):
                    lines.append(f"| {lib} | `{est}` | " + " | ".join(cells) + " |")
    secs = {}
    for r in rows:
        secs.setdefault((r["library"], r["estimator"], r["task"], r["seed"]), r["seconds"])
    lines += ["", "Seconds per trial (median over tasks and seeds, one torch thread):", ""]
    for lib, est in entries:
        v = [s for (lb, e, _, _), s in secs.items() if (lb, e) == (lib, est)]
        lines.append(f"- {lib} `{est}`: {statistics.median(v):.1f} s")
    return "\n".join(lines) + "\n"


def _values(rows: list[dict], lib: str, est: str, task: str, mi: float, key: str) -> list[float]:
    """One metric of one library's estimator on one task and level, over the seeds in `rows`."""
    return [
        r[key]
        for r in rows
        if (r["library"], r["estimator"], r["task"], r["true_mi"]) == (lib, est, task, mi)
    ]


def _finite_mean(values: list[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return statistics.fmean(v) if v else math.nan


def _summary(rows: list[dict], entries: list, tasks: list[str]) -> list[str]:
    """The page's headline, a named block that benchmarks/docs_tables.py pastes into docs/benchmarks.md: per task,
    f-DIME's row then ours, MSE per level (mean ± std over seeds) and each of ours' worst ratio to f-DIME."""
    seeds = len({r["seed"] for r in rows})
    lines = [
        "<!-- table:fdime -->",
        f"MSE (nats²) per level, mean ± std over {seeds} seeds; last column: the largest ratio over the levels of "
        "the row's mean MSE to f-DIME's.",
        "",
        "| task | library | estimator | "
        + " | ".join(f"{m:g}" for m in LEVELS)
        + " | worst ratio to f-DIME |",
        "|---|---|---|" + "---|" * (len(LEVELS) + 1),
    ]
    peer_name = f"{PEER_DIVERGENCE.lower()}-{PEER_ARCHITECTURE}"
    order = [e for e in entries if e[0] == PEER] + [e for e in entries if e[0] != PEER]
    for task in tasks:
        peer = [_finite_mean(_values(rows, PEER, peer_name, task, mi, "mse")) for mi in LEVELS]
        for lib, est in order:
            sel = [_values(rows, lib, est, task, mi, "mse") for mi in LEVELS]
            if not all(sel):
                continue
            ours = [_finite_mean(v) for v in sel]
            ok = lib != PEER and all(math.isfinite(v) for v in ours + peer) and min(peer) > 0
            ratio = f"{max(o / p for o, p in zip(ours, peer)):.2f}" if ok else ""
            cells = " | ".join(_mean_std(v) for v in sel)
            lines.append(
                f"| `{task}` | {lib} | `{est}`{' (its code)' if lib == PEER else ''} | {cells} | {ratio} |"
            )
    return [*lines, "<!-- /table:fdime -->"]


def screen(rows: list[dict], sweep_out: Path, command: str) -> str:
    """The ratio table of a staircase sweep's finished trials (`<sweep_out>/runs/*/result.json`) against f-DIME's
    MSE in `rows` (its mean over seeds, per task and level): per estimator (recipe) and critic, for each task the
    largest ratio over the levels of the trial's MSE (mean over the sweep's seeds) to f-DIME's."""
    peer = {}
    for r in rows:
        if r["library"] == PEER:
            peer.setdefault((r["task"], r["true_mi"]), []).append(r["mse"])
    peer_mse = {k: statistics.fmean(v) for k, v in peer.items()}
    cells: dict[tuple[str, str], dict[str, list[list[float]]]] = {}
    for path in sorted((sweep_out / "runs").glob("*/result.json")):
        res = json.loads(path.read_text())
        p = res["params"]
        if p["task"] not in TASKS:
            continue
        cells.setdefault((p["estimator"], p["critic"]), {}).setdefault(p["task"], []).append(
            [lv["mse"] for lv in res["levels"]]
        )
    tasks = [t for t in TASKS if any((t, m) in peer_mse for m in LEVELS)]
    lines = [
        f"<!-- regenerate: {command} -->",
        "<!-- table:search -->",  # a named block: benchmarks/docs_tables.py pastes it into docs/benchmarks.md
        "| estimator | critic | " + " | ".join(f"`{t}`" for t in tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for (est, critic), by_task in cells.items():
        out = []
        for t in tasks:
            runs = by_task.get(t)
            if not runs:
                out.append("")
                continue
            mse = [statistics.fmean(v[i] for v in runs) for i in range(len(LEVELS))]
            ratios = [m / peer_mse[(t, mi)] for m, mi in zip(mse, LEVELS)]
            worst = max(ratios) if all(math.isfinite(x) for x in ratios) else math.inf
            out.append("∞ (non-finite)" if math.isinf(worst) else f"{worst:.2f}")
        lines.append(f"| {est} | {critic} | " + " | ".join(out) + " |")
    return "\n".join([*lines, "<!-- /table:search -->"]) + "\n"


def _read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.update(seed=int(r["seed"]), nonfinite=int(r["nonfinite"]))
        for k in ("true_mi", "bias", "variance", "mse", "seconds"):
            r[k] = float(r[k])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fdime", help="a checkout of f-DIME's official code (classes.py, utils.py)")
    p.add_argument("--peer-python", help="the python of f-DIME's venv")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--ours",
        nargs="+",
        default=["gan-dime"],
        help="our estimators: registered names (the suite's settings) or recipe names from --recipes",
    )
    p.add_argument("--critic", default="concat", choices=["separable", "concat", "hybrid"], help="our critic")
    p.add_argument("--recipes", type=Path, help="a staircase sweep spec whose recipes --ours may name")
    p.add_argument("--steps-per-level", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-peer", action="store_true", help="run ours only (with --merge: keep f-DIME's rows)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--report-only", action="store_true", help="rewrite fdime.md from fdime.csv")
    p.add_argument(
        "--merge", action="store_true", help="keep the rows of an existing CSV that this run does not redo"
    )
    p.add_argument(
        "--screen",
        type=Path,
        metavar="SWEEP_OUT",
        help="write <out>/fdime_screen.md: each trial of this staircase sweep folder against f-DIME's MSE in fdime.csv",
    )
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        fdime, task, spl, batch, seed, out = args.worker
        _peer_worker(fdime, task, int(spl), int(batch), int(seed), out)
        return 0

    sys.path.insert(0, str(ROOT))
    from rl._atomic import atomic_write, atomic_write_csv

    csv_path, md_path = args.out / "fdime.csv", args.out / "fdime.md"
    command = "python " + " ".join(
        ["benchmarks/peer_fdime.py", *(argv if argv is not None else sys.argv[1:])]
    )
    command = command.replace(" --report-only", "").replace(" --merge", "")
    if args.screen:
        text = screen(_read_csv(csv_path), args.screen, command)
        atomic_write(args.out / "fdime_screen.md", lambda tmp: Path(tmp).write_text(text))
        print(text)
        return 0
    if args.report_only:
        rows = _read_csv(csv_path)
        first = md_path.read_text().splitlines()[0] if md_path.exists() else ""
        if first.startswith("<!-- regenerate: "):
            command = first.removeprefix("<!-- regenerate: ").removesuffix(" -->")
        text = markdown(rows, command)
        atomic_write(md_path, lambda tmp: Path(tmp).write_text(text))
        print(text)
        return 0
    if not args.no_peer and not (args.fdime and args.peer_python):
        p.error(
            "--fdime and --peer-python are required (a checkout of f-DIME's code and the python of its venv)"
        )
    if args.fdime and not (Path(args.fdime) / "classes.py").is_file():
        p.error(f"--fdime {args.fdime}: no classes.py there (give a checkout of f-DIME's official code)")
    recipes = _recipes(args.recipes)
    import mi_estimators as mie

    for name in args.ours:
        if name not in recipes and name not in mie.available():
            p.error(
                f"--ours {name!r}: neither a registered estimator nor a recipe of --recipes {args.recipes}"
            )
    spl, batch = args.steps_per_level, args.batch_size
    rows: list[dict] = []
    peer_name = f"{PEER_DIVERGENCE.lower()}-{PEER_ARCHITECTURE}"
    for task in args.tasks:
        for seed in args.seeds:
            for name in args.ours:
                est, secs = _ours(name, recipes.get(name), task, args.critic, spl, batch, seed)
                rows += _rows("ours", name, task, seed, est, secs, spl)
                print(
                    f"{task} seed {seed} ours {name}: " + _brief(rows[-5:]) + f" ({secs:.0f} s)", flush=True
                )
            if args.no_peer:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "estimates.json"
                res = subprocess.run(
                    [
                        args.peer_python,
                        __file__,
                        "--worker",
                        args.fdime,
                        task,
                        str(spl),
                        str(batch),
                        str(seed),
                        str(out),
                    ],
                    capture_output=True,
                    text=True,
                    env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                )
                if res.returncode != 0:
                    raise RuntimeError(f"f-DIME {task} seed {seed} failed:\n{res.stderr[-2000:]}")
                theirs = json.loads(out.read_text())
            rows += _rows(PEER, peer_name, task, seed, theirs["estimates"], theirs["seconds"], spl)
            print(
                f"{task} seed {seed} f-DIME {peer_name}: "
                + _brief(rows[-5:])
                + f" ({theirs['seconds']:.0f} s)",
                flush=True,
            )
    if args.merge and csv_path.is_file():
        redone = {(r["library"], r["estimator"], r["task"], r["seed"]) for r in rows}
        rows = [
            r
            for r in _read_csv(csv_path)
            if (r["library"], r["estimator"], r["task"], r["seed"]) not in redone
        ] + rows

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(csv_path, rows, FIELDS)
    text = markdown(rows, command)
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


def _brief(rows: list[dict]) -> str:
    return "MSE " + "/".join(f"{r['mse']:.2f}" for r in rows)


if __name__ == "__main__":
    raise SystemExit(main())
