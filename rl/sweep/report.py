"""A sweep's tables, from what `rl.sweep.gather` read of its run folders: `results.csv`, `summary.csv` and
`results.md` (with the plots of `rl.sweep.plots`), each written atomically and headed by the command that
regenerates it; no timestamps, so a report rebuilt from finished trials is the same byte for byte.

Also the two helpers for a sweep kept in git: `carry_files` (the checkpoints a later session needs to resume)
and `publish` (the report files copied elsewhere).
"""

from __future__ import annotations

import csv
import io
import math
import os
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rl.sweep.staircase as sc
from rl._atomic import atomic_write
from rl.sweep.folders import run_dir, trial_status
from rl.sweep.gather import STAIRCASE_METRICS, gather, mean_std
from rl.sweep.plots import plot_curves, plot_heldout, plot_staircase
from rl.sweep.spec import Spec


def display(path: Path | str) -> str:
    """`path` relative to the current directory when it is below it (as the console and the tables show it)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def command(spec: Spec, out: Path) -> str:
    """The command that (re)runs the sweep and rewrites its tables (`--report-only`: tables only)."""
    # the repo's alias of `python -m rl.sweep`, as every committed table names it: a report rebuilt from the same
    # folders stays byte for byte the same
    return shlex.join(["python", "benchmarks/sweep.py", display(spec.path), "--out", display(out)])


def write_report(spec: Spec, out: str | os.PathLike) -> list[Path]:
    """Write results.csv, summary.csv, results.md and the plots into `out`, atomically; returns their paths."""
    out = Path(out).resolve()
    g = gather(spec, out)
    cmd = command(spec, out)
    head = f"# regenerate: {cmd}   (add --report-only to rebuild the tables from the run folders alone)\n"
    if g["kind"] == "rl":
        return _report_rl(spec, out, g, cmd, head)
    return _report_staircase(spec, out, g, cmd, head)


def _csv_text(header: str, fields: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    buf.write(header)
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()}
        )
    return buf.getvalue()


def _write_text(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def _fmt(mean: float | None, std: float | None, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _cell_text(c: dict[str, Any]) -> str:
    parts = []
    if c["scores"]:
        n = len(c["scores"])
        parts.append(f"{_fmt(c['mean'], c['std'])} ({n} seed{'s' if n > 1 else ''})")
    if c["unfinished"]:
        parts.append("unfinished: " + ", ".join(f"s{t['seed']} at step {t['step']}" for t in c["unfinished"]))
    if c["pending"]:
        parts.append("not started: " + ", ".join(f"s{t['seed']}" for t in c["pending"]))
    if c["diverged"]:
        parts.append(
            "diverged: " + ", ".join(f"s{t['seed']} at step {t['diverged_at']}" for t in c["diverged"])
        )
    if c["errors"]:
        parts.append("failed: " + ", ".join(f"s{t['seed']}" for t in c["errors"]))
    return "; ".join(parts) or "—"


def _report_rl(spec: Spec, out: Path, g: dict[str, Any], cmd: str, head: str) -> list[Path]:
    variants = list(dict.fromkeys(t["params"]["variant"] for t in spec.trials))
    labels = list(dict.fromkeys(t["params"]["dataset_label"] for t in spec.trials))
    fields = [
        "trial_id",
        "variant",
        "dataset",
        "seed",
        "status",
        "step",
        "normalized_score",
        "return_mean",
        "return_std",
    ]
    files = [_write_text(out / "results.csv", _csv_text(head, fields, g["rows"]))]
    srows = []
    for v in variants:
        for lab in labels:
            c = g["cells"].get((v, lab))
            if c is None:
                continue
            srows.append(
                {
                    "variant": v,
                    "dataset": lab,
                    "steps": "/".join(str(s) for s in sorted(c["steps"])),
                    "n_finished": len(c["scores"]),
                    "mean": c["mean"],
                    "std": c["std"],
                    "seeds": " ".join(str(s) for s in c["seeds"]),
                    "unfinished": " ".join(f"s{t['seed']}@{t['step']}" for t in c["unfinished"]),
                    "not_started": " ".join(f"s{t['seed']}" for t in c["pending"]),
                    "diverged": " ".join(f"s{t['seed']}@{t['diverged_at']}" for t in c["diverged"]),
                    "failed": " ".join(f"s{t['seed']}" for t in c["errors"]),
                    "behaviour_score": (g["behaviour"].get(lab) or {}).get("normalized_score"),
                    "updates_per_s": c["updates_per_s"],
                }
            )
    files.append(
        _write_text(out / "summary.csv", _csv_text(head, list(srows[0]) if srows else ["variant"], srows))
    )
    budgets = sorted({t["steps"] for t in g["trials"]})
    per_variant_budget = len(budgets) > 1
    ep = sorted({t["eval_episodes"] for t in spec.trials})
    lines = [
        f"<!-- regenerate: {cmd} (add --report-only to rebuild the tables from the run folders alone) -->",
        f"# Sweep `{spec.name}`",
        "",
        f"Regenerate: `{cmd}` (reruns unfinished trials only; `--report-only` rebuilds the tables alone). "
        f"Spec: `{display(spec.path)}`.",
        "",
        f"Final normalised score (D4RL formula; the project's v5 references for v5 datasets) "
        f"{'at ' + str(budgets[0]) + ' gradient steps' if not per_variant_budget else 'at each row’s step budget'}: "
        f"mean ± sample std over seeds (deterministic policy, {'/'.join(map(str, ep))} evaluation episodes). "
        "Unfinished trials are listed with the last step they evaluated; they are not in the mean. "
        "updates/s: the median training speed the runs logged (evaluations excluded; on their `threads`, "
        "beside whatever else the machine ran).",
        "",
        f"<!-- table:{spec.name} -->",  # a named block: benchmarks/docs_tables.py pastes it into the docs
        "| variant | " + " | ".join(labels) + " | updates/s |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    beh = [(g["behaviour"].get(lab) or {}).get("normalized_score") for lab in labels]
    lines.append("| behaviour data | " + " | ".join(_fmt(b, None) for b in beh) + " | |")
    for v in variants:
        name = v
        if per_variant_budget:
            vs = sorted({t["steps"] for t in g["trials"] if t["variant"] == v})
            name += f" ({'/'.join(map(str, vs))} steps)"
        cells = [_cell_text(g["cells"][(v, lab)]) if (v, lab) in g["cells"] else "" for lab in labels]
        rates = [g["cells"][(v, lab)]["updates_per_s"] for lab in labels if (v, lab) in g["cells"]]
        rates = [r for r in rates if r]
        rate = f"{statistics.median(rates):.3g}" if rates else "—"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rate} |")
    lines.append(f"<!-- /table:{spec.name} -->")
    for status, title in (("diverged", "Diverged trials (a rerun skips them)"), ("error", "Failed trials")):
        bad = [t for t in g["trials"] if t["status"] == status]
        if bad:
            lines += ["", f"{title}:", ""] + [f"- `{t['id']}`: {t['error']}" for t in bad]
    plots = []
    for lab in labels:
        path = out / f"curves_{lab}.png"
        if plot_curves(spec, g, lab, variants, path):
            plots.append(path)
    if plots:
        lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    files.append(_write_text(out / "results.md", "\n".join(lines) + "\n"))
    return files + plots


def _finite_stats(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean and sample std over the finite values (None when there are none; std None for one), and their count."""
    ok = [v for v in values if math.isfinite(v)]
    if not ok:
        return None, None, 0
    mean, std = mean_std(ok)
    return mean, std, len(ok)


def _number(v: float, signed: bool = False) -> str:
    """A table number: 2 decimals in the usual range, fewer digits for huge values, 2 significant for tiny ones."""
    a = abs(v)
    if a >= 1e4:
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:+.0f}" if signed else f"{v:.0f}"
    if a >= 0.01 or v == 0:
        return f"{v:+.2f}" if signed else f"{v:.2f}"
    return f"{v:+.1e}" if signed else f"{v:.1e}"


def _stair_cell(values: list[float] | None, signed: bool = False) -> str:
    """`mean ± std` over the seeds with a finite value; `(k/n)` when only k of the n seeds have one."""
    if values is None:
        return ""
    mean, std, k = _finite_stats(values)
    if mean is None:
        return f"— (0/{len(values)})"
    spread = "" if std is None else f"{std:.0f}" if 100 <= abs(mean) < 1e4 and std < 1e4 else _number(std)
    text = _number(mean, signed) + (f" ± {spread}" if spread else "")
    return text + (f" ({k}/{len(values)})" if k < len(values) else "")


def _inline(mapping: dict[str, Any]) -> str:
    """`{a: 1, b: [2, 3]}` as `a=1, b=(2, 3)` for a table cell ('' when empty)."""
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in mapping.items())


def _best_per_level(
    g: dict[str, Any], tasks: dict[str, Any], levels: list[float], seeds: list[int]
) -> list[str]:
    """The report's summary: per task and level, the (estimator, critic) of lowest mean MSE of the training
    estimate, and the one whose held-out estimates lie closest to the truth (root mean square over seeds, so that
    one lucky seed of a noisy estimator does not win). Only cells with every seed of the spec finished and finite
    compete: a run that diverged on one seed does not win on the others."""

    def complete(c: dict[str, Any], metric: str) -> bool:
        return len(c["seeds"]) == len(seeds) and all(math.isfinite(v) for v in c[metric])

    lines: list[str] = []
    for title, metric, score in (
        ("Lowest MSE (nats²) of the training estimate", "mse", lambda c, mi: statistics.fmean(c["mse"])),
        (
            "Held-out estimate closest to the truth (nats: its mean over seeds; in brackets the root mean square "
            "of its error over seeds)",
            "heldout",
            lambda c, mi: math.sqrt(statistics.fmean((h - mi) ** 2 for h in c["heldout"])),
        ),
    ):
        table = []
        for name in tasks:
            cells = []
            for mi in levels:
                ranked = sorted(
                    (score(c, mi), est, critic)
                    for (est, task, critic, m), c in g["cells"].items()
                    if task == name and m == mi and complete(c, metric)
                )
                if not ranked:
                    cells.append("")
                    continue
                value, est, critic = ranked[0]
                shown = statistics.fmean(g["cells"][(est, name, critic, mi)][metric])
                cells.append(
                    f"{est} ({critic}) {_number(shown)}"
                    + (f" [{_number(value)}]" if metric == "heldout" else "")
                )
            if any(cells):
                table.append(f"| `{name}` | " + " | ".join(cells) + " |")
        if table:
            lines += [""] if lines else []
            lines += [
                f"**{title}**, among the estimator-critic pairs with all {len(seeds)} seeds finite:",
                "",
            ]
            lines.append("| task | " + " | ".join(f"{m:g}" for m in levels) + " |")
            lines.append("|---|" + "---|" * len(levels))
            lines += table
    return lines


def _report_staircase(spec: Spec, out: Path, g: dict[str, Any], cmd: str, head: str) -> list[Path]:
    fields = [
        "trial_id",
        "estimator",
        "task",
        "critic",
        "dim",
        "seed",
        "true_mi",
        "bias",
        "variance",
        "mse",
        "nonfinite",
        "heldout",
        "heldout_batch_std",
        "stopped_at",
    ]
    files = [_write_text(out / "results.csv", _csv_text(head, fields, g["rows"]))]
    seconds: dict[tuple, list[float]] = {}
    for t in g["trials"]:
        if t["seconds"] is not None:
            seconds.setdefault((t["estimator"], t["task"], t["critic"]), []).append(t["seconds"])
    dims = {t["params"]["task"]: t["params"]["dim"] for t in spec.trials}
    srows = []
    for (est, task, critic, mi), c in g["cells"].items():
        row = {
            "estimator": est,
            "task": task,
            "critic": critic,
            "dim": dims[task],
            "true_mi": mi,
            "n_seeds": len(c["seeds"]),
        }
        for m in STAIRCASE_METRICS:
            mean, std, k = _finite_stats(c[m])
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = mean, std, k
        secs = seconds.get((est, task, critic))
        row["seconds_median"] = statistics.median(secs) if secs else None
        srows.append(row)
    files.append(
        _write_text(out / "summary.csv", _csv_text(head, list(srows[0]) if srows else ["estimator"], srows))
    )
    s = spec.trials[0]["settings"]
    estimators = list(dict.fromkeys(t["params"]["estimator"] for t in spec.trials))
    tasks = {t["params"]["task"]: sc.TaskSpec(**t["settings"]["task"]) for t in spec.trials}
    critics = list(dict.fromkeys(t["params"]["critic"] for t in spec.trials))
    seeds = sorted({t["params"]["seed"] for t in spec.trials})
    levels = list(sc.LEVELS)
    heldout = (
        f"the critic as it is at the end of each level, evaluated with the same estimator on "
        f"{s['heldout_samples']} fresh samples of that level's task (batches of {s['batch_size']}, the training "
        "negatives; a generator seeded apart from training's, see `staircase.heldout_seed`)"
        if s["heldout_samples"]
        else "off (`heldout_samples: 0`)"
    )
    lines = [
        f"<!-- regenerate: {cmd} (add --report-only to rebuild the tables from the run folders alone) -->",
        f"# Sweep `{spec.name}`: MI estimators on the staircase",
        "",
        f"Regenerate: `{cmd}` (reruns unfinished trials only; `--report-only` rebuilds the tables alone). "
        f"Spec: `{display(spec.path)}`.",
        "",
        f"Protocol (f-DIME's, Poole et al.'s): true MI {', '.join(f'{m:g}' for m in levels)} nats, "
        f"{s['steps_per_level']} steps per level, a fresh batch of {s['batch_size']} per step, Adam "
        f"{sc.LR:g}, one run over the whole staircase; critics `separable` f(x)·g(y) (hidden 256, embedding 32), "
        "`concat` MLP([x, y]) (hidden 128, 128) and `hybrid` (the two summed); the estimator's own negatives "
        "(all pairs of the batch; one derangement for kl-dime, gan-dime, hd-dime). **Bias, variance, MSE**: of the per-step training estimate "
        "(the bound on the step's batch, before its update) over the second half of each level. **Held-out**: "
        f"{heldout}. Cells: mean ± sample std over seeds ({', '.join(map(str, seeds))}); `(k/n)`: only k of "
        "the n seeds have a finite value (a run that stopped on a non-finite step has none after it). "
        f"Trials on {s['threads']} thread(s); the same seed and thread count give the same numbers.",
        "",
        "| task | law | dim |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {t.describe()} | {t.dim} |" for name, t in tasks.items()]
    recipes = {
        t["params"]["estimator"]: t["settings"]["recipe"] for t in spec.trials if "recipe" in t["settings"]
    }
    if recipes:
        lines += [
            "",
            "Estimators given as recipes (the rest of the protocol as above; critic options replace the critic's "
            "defaults key by key):",
            "",
            "| name | estimator | options | critic options | lr | negatives | averaged critic (decay) | "
            "max grad norm |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {r['estimator']} | {_inline(r['options'])} | {_inline(r['critic_options'])} | "
            f"{r['lr']:g} | {r['negatives'] or ''} | {r.get('average') or ''} | {r.get('max_grad_norm') or ''} |"
            for name, r in recipes.items()
        ]
    best = _best_per_level(g, tasks, levels, seeds)
    if best:  # a named block, as the RL table: benchmarks/docs_tables.py pastes it into the docs
        lines += ["", "## Best per level", "", f"<!-- table:{spec.name}-best -->", *best]
        lines.append(f"<!-- /table:{spec.name}-best -->")
    tables = (
        ("MSE", "mse", "nats²", False),
        ("bias", "bias", "nats", True),
        ("variance", "variance", "nats²", False),
        ("held-out estimate", "heldout", "nats; the truth is the column's level", False),
    )
    plots = []
    for name, task in tasks.items():
        for critic in critics:
            rows_here = [e for e in estimators if any(g["cells"].get((e, name, critic, m)) for m in levels)]
            if not rows_here:
                continue
            lines += ["", f"## `{name}`, {critic} critic", "", f"{task.describe()}."]
            for title, metric, unit, signed in tables:
                if metric == "heldout" and not s["heldout_samples"]:
                    continue
                lines += ["", f"**{title}** ({unit})", ""]
                lines.append("| estimator | n | " + " | ".join(f"{m:g}" for m in levels) + " |")
                lines.append("|---|---|" + "---|" * len(levels))
                for est in rows_here:
                    cs = [g["cells"].get((est, name, critic, m)) for m in levels]
                    n = max(len(c["seeds"]) for c in cs if c)
                    vals = [_stair_cell(c[metric] if c else None, signed) for c in cs]
                    lines.append(f"| {est} | {n} | " + " | ".join(vals) + " |")
        if any(r["task"] == name for r in g["rows"]):
            for kind, draw in (("staircase", plot_staircase), ("heldout", plot_heldout)):
                if kind == "heldout" and not s["heldout_samples"]:
                    continue
                path = out / f"{kind}_{name}.png"
                draw(spec, g, name, task, estimators, critics, path)
                plots.append(path)
                lines += ["", f"![{kind} {name}]({path.name})"]
    if seconds:
        lines += [
            "",
            "## Cost",
            "",
            "Seconds per trial (median over its tasks and seeds; wall time of the training and the held-out "
            f"estimates, {s['threads']} thread(s), beside whatever else the machine ran).",
            "",
            "| estimator | " + " | ".join(critics) + " |",
            "|---|" + "---|" * len(critics),
        ]
        for est in estimators:
            cells = []
            for critic in critics:
                v = [x for (e, _, c), xs in seconds.items() if e == est and c == critic for x in xs]
                cells.append(f"{statistics.median(v):.1f}" if v else "")
            lines.append(f"| {est} | " + " | ".join(cells) + " |")
    made = sorted(
        {(str(r.get("torch")), str(r.get("code")), str(r.get("threads"))) for r in g["runs"].values()}
    )
    if made:
        lines += [
            "",
            "Made with: "
            + "; ".join(f"torch {t}, `mi_estimators` sources {c}, {n} thread(s)" for t, c, n in made)
            + " (`staircase.code_fingerprint`; the numbers are reproducible for the same of these and the seed).",
        ]
    stopped = [t for t in g["trials"] if t["status"] == "finished" and t["stopped_at"] is not None]
    if stopped:
        spl = s["steps_per_level"]
        lines += ["", "Runs that stopped on a non-finite step (no estimate after it):", ""]
        lines += [
            f"- `{t['id']}`: step {t['stopped_at']} (level {levels[min(t['stopped_at'] // spl, len(levels) - 1)]:g}"
            f"): {t['stop_error']}"
            for t in stopped
        ]
    missing = [t for t in g["trials"] if t["status"] != "finished"]
    if missing:
        lines += ["", "Not finished: " + ", ".join(f"`{t['id']}` ({t['status']})" for t in missing)]
        bad = [t for t in missing if t["status"] == "error"]
        if bad:
            lines += ["", "Failed trials:", ""] + [f"- `{t['id']}`: {t['error']}" for t in bad]
    files.append(_write_text(out / "results.md", "\n".join(lines) + "\n"))
    return files + plots


def carry_files(spec: Spec, out: str | os.PathLike) -> list[Path]:
    """What a later session needs, beyond the small text files, to resume this sweep exactly: the checkpoint of
    every RL trial that has one and is not finished. (Finished trials need only their `result.json`; a sweep kept
    in git ignores checkpoints and force-adds these, see docs/sweeps.md.)"""
    out = Path(out)
    return [
        run_dir(out, t) / "checkpoint.pt"
        for t in spec.trials
        if t["kind"] == "rl" and trial_status(t, out)[0] == "resume"
    ]


def publish(files: Sequence[Path], folder: Path) -> list[Path]:
    """Copy report files (tables, plots; never the run folders) into `folder`, each atomically."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in files:
        atomic_write(folder / f.name, lambda tmp, src=f: shutil.copyfile(src, tmp))
        copied.append(folder / f.name)
    return copied
