"""One sweep runner on Ray Tune for every grid of trials: offline RL (variant x dataset x seed) and the MI estimator
suite on the staircase (estimator x task x critic x seed; or estimator x critic x dim x seed on CorrelatedGaussian).

    python benchmarks/sweep.py benchmarks/sweeps/smoke.yaml                    # local Ray, all cores
    python benchmarks/sweep.py benchmarks/sweeps/hopper-medium-50k.yaml --max-concurrent 2
    python benchmarks/sweep.py SPEC.yaml --address HOST:6379                   # an existing cluster (`ray start`)
    python benchmarks/sweep.py SPEC.yaml --report-only                         # tables and plots only, no Ray

A grid spec is a plain YAML file (see docs/sweeps.md and benchmarks/sweeps/). Each trial has a stable, readable id
derived from its grid point (`bc__hopper-medium-v5__s0`) and its own folder `<out>/runs/<id>` (default out:
`runs/sweeps/<name>`); RL trials are `rl.train` runs in that folder, trained in chunks up to the next evaluation,
each chunk reported to Tune. A trial is finished when its `<out>/runs/<id>/result.json` exists (written atomically
at its end; an RL run whose loss turns NaN or passes `max_abs_loss` ends there too, its result.json saying where
it diverged: that is the algorithm's outcome on that seed, which a rerun would replay). Rerunning the same command
after a kill skips finished trials (they are not even submitted to Ray), resumes unfinished RL trials exactly from
their `checkpoint.pt`, and restarts unfinished staircase trials.

Outputs in `<out>`: `results.csv` (one row per trial and evaluation, or per trial and staircase level),
`summary.csv`, `results.md` (mean +- std over seeds), `curves_<dataset>.png` (RL) or `staircase_<task>.png` and
`heldout_<task>.png`,
`behaviour.json` (cached behaviour-data scores), `sweep.log` (the driver's log), `errors/<id>.txt` (tracebacks of
failed trials), `ray/` (Ray Tune's own experiment folders). Exit status: 0 when every trial finished (diverged runs
included), 1 when a trial failed or is unfinished, 2 for a bad spec.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import re
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/sweep.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from rl._atomic import atomic_write  # noqa: E402

__all__ = [
    "SpecError",
    "SweepError",
    "Spec",
    "load_spec",
    "trial_config",
    "trial_status",
    "run_trial",
    "run_sweep",
    "gather",
    "write_report",
    "publish",
    "carry_files",
    "main",
]

KINDS = ("rl", "staircase")
TOP_KEYS = ("name", "kind", "description", "base", "grid", "resources", "max_concurrent", "pack_seeds")
RL_AXES = ("variant", "dataset", "seed")
STAIRCASE_AXES = ("estimator", "task", "critic", "seed", "dim")
STAIRCASE_BASE = {
    "steps_per_level": 4000,
    "batch_size": 64,
    "dim": 20,
    "threads": 1,
    "heldout_samples": 4096,  # per level; 0: no held-out estimate
    "record_every": 10,  # result.json keeps every n-th per-step estimate (for the plots)
}
#: the keys of a staircase estimator given as a recipe (a mapping in `grid.estimator`)
RECIPE_KEYS = (
    *(
        "name",
        "estimator",
        "options",
        "critic_options",
        "lr",
        "negatives",
        "average",
        "max_grad_norm",
        "critics",
    ),
)
STAIRCASE_LOW = {"steps_per_level": 2, "heldout_samples": 0}  # the lowest value of each base key (default 1)
CRITICS = ("separable", "concat", "hybrid")
SWEEP_KEYS = ("seed", "run_dir")  # set by the sweep itself; a spec may not override them
# may change between reruns without invalidating a run (`imports`: where the estimators' code is, resolved paths)
IGNORED_DRIFT = ("run_dir", "threads", "device", "imports", "progress")
RESULT = "result.json"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

log = logging.getLogger("sweep")


class SpecError(ValueError):
    """A bad grid spec; the message names the key (`grid.variant[2].config`, `base.stepz`, ...)."""


class SweepError(RuntimeError):
    """The sweep cannot run at all (Ray cannot be started or reached)."""


# ------------------------------------------------------------------------------------------------------------
# Spec
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """A validated grid spec and its trials (in grid order).

    Each trial is a plain dict (it travels to Ray workers): `id`, `kind`, `params` (the grid point: variant, dataset,
    dataset_size, seed for rl; estimator, task, critic, dim, seed for staircase) and, for rl, `config` (a YAML path
    or None), `overrides` (`rl.train` field -> value, dotted keys into dict fields) or, for staircase, `settings`
    (the base values and the task's definition).
    """

    name: str
    kind: str
    path: Path
    base: dict[str, Any]
    resources: dict[str, float]
    max_concurrent: int | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    #: staircase: a grid cell's unfinished seeds run as one trial, one stacked `estimate(seeds=...)` (`pack`)
    pack_seeds: bool = True

    def trial(self, trial_id: str) -> dict[str, Any]:
        for t in self.trials:
            if t["id"] == trial_id:
                return t
        raise KeyError(f"no trial {trial_id!r} in sweep {self.name!r}")


def _tag(text: str) -> str:
    """A file-name-safe piece of a trial id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _plain(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` as a string; a number is meant."""
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a mapping; got {type(value).__name__} {value!r}")
    for k in value:
        if not isinstance(k, str):
            raise SpecError(f"{where}: key {k!r} must be a string")
    return dict(value)


def _list(value: Any, where: str) -> list[Any]:
    if isinstance(value, list | tuple) and value:
        return list(value)
    if value is None or (isinstance(value, list | tuple) and not value):
        raise SpecError(f"{where} must be a non-empty list")
    return [value]  # a single value is a one-element axis


def _int(value: Any, where: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where} must be an integer; got {value!r}")
    if low is not None and value < low:
        raise SpecError(f"{where} must be >= {low}; got {value}")
    return value


def _check_overrides(values: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        key = k.replace("-", "_")
        if key in SWEEP_KEYS:
            raise SpecError(f"{where}.{k}: '{key}' is set by the sweep (the seed axis, <out>/runs/<id>)")
        out[key] = _plain(v)
    return out


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate a grid spec; `SpecError` names the bad key. RL configs are built here (so an unknown
    config field fails before Ray starts)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    from rl.config import ConfigError, parse_yaml

    try:
        data = parse_yaml(path.read_text(), str(path))
    except ConfigError as e:
        raise SpecError(str(e)) from None
    data = _mapping(data, str(path))
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(TOP_KEYS)}")
    for key in ("name", "kind", "grid"):
        if key not in data:
            raise SpecError(f"{path}: missing key {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise SpecError(f"name must be letters, digits, '_', '.', '-' (no spaces); got {name!r}")
    kind = data["kind"]
    if kind not in KINDS:
        raise SpecError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    res = _mapping(data.get("resources"), "resources")
    bad = [k for k in res if k not in ("cpu", "gpu")]
    if bad:
        raise SpecError(f"resources: unknown key {bad[0]!r}; known keys: cpu, gpu")
    resources = {"cpu": res.get("cpu", 1), "gpu": res.get("gpu", 0)}
    for k, v in resources.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (k == "cpu" and v <= 0):
            raise SpecError(f"resources.{k} must be a {'positive' if k == 'cpu' else 'non-negative'} number")
    mc = data.get("max_concurrent")
    if mc is not None:
        _int(mc, "max_concurrent", 1)
    desc = data.get("description") or ""
    pack_seeds = data.get("pack_seeds", True)
    if not isinstance(pack_seeds, bool):
        raise SpecError(f"pack_seeds must be true or false; got {pack_seeds!r}")
    spec = Spec(
        name,
        kind,
        path,
        _mapping(data.get("base"), "base"),
        resources,
        mc,
        description=str(desc),
        pack_seeds=pack_seeds,
    )
    grid = _mapping(data["grid"], "grid")
    spec.trials = _rl_trials(spec, grid) if kind == "rl" else _staircase_trials(spec, grid)
    ids = [t["id"] for t in spec.trials]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise SpecError(f"grid: two grid points give the same trial id {dup!r}")
    return spec


def _resolve_config(value: Any, where: str, spec_path: Path) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where} must be a path to a YAML config; got {value!r}")
    p = Path(value).expanduser()
    for cand in [p] if p.is_absolute() else [Path.cwd() / p, REPO / p, spec_path.parent / p]:
        if cand.is_file():
            return str(cand.resolve())
    raise SpecError(f"{where}: config file not found: {value} (relative paths: to the repo root or the spec)")


def _resolve_imports(value: Any, where: str, spec_path: Path) -> Any:
    """`imports` with its `.py` paths made absolute as `config` paths are (Ray Tune runs a trial in its own
    working directory); module names stay (Ray puts the driver's directory on its workers' sys.path)."""
    from rl.plugins import is_path

    if not isinstance(value, list | tuple):
        return value  # the config's own type check names it
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, str) and is_path(entry):
            p = Path(entry).expanduser()
            places = [p] if p.is_absolute() else [Path.cwd() / p, REPO / p, spec_path.parent / p]
            hit = next((c for c in places if c.is_file()), None)
            if hit is None:
                raise SpecError(
                    f"{where}[{i}]: no such file: {entry} (relative paths: to the repo root or the spec)"
                )
            entry = str(hit.resolve())
        out.append(entry)
    return out


def _rl_trials(spec: Spec, grid: dict[str, Any]) -> list[dict[str, Any]]:
    from rl.config import ConfigError
    from rl.train import build_config

    unknown = [k for k in grid if k not in RL_AXES]
    if unknown:
        raise SpecError(f"grid: unknown axis {unknown[0]!r} for kind rl; axes: {', '.join(RL_AXES)}")
    for axis in ("variant", "seed"):
        if axis not in grid:
            raise SpecError(f"grid: missing axis {axis!r}")
    base = _check_overrides(spec.base, "base")
    datasets = None
    if "dataset" in grid:
        datasets = _list(grid["dataset"], "grid.dataset")
        for i, d in enumerate(datasets):
            if not isinstance(d, str) or not d.strip():
                raise SpecError(f"grid.dataset[{i}] must be a dataset name or path; got {d!r}")
        if "dataset" in base:
            raise SpecError("base.dataset: the grid has a dataset axis; set datasets there")
    seeds = [_int(s, f"grid.seed[{i}]", 0) for i, s in enumerate(_list(grid["seed"], "grid.seed"))]
    variants = []
    for i, v in enumerate(_list(grid["variant"], "grid.variant")):
        where = f"grid.variant[{i}]"
        v = _mapping(v, where)
        vname = v.pop("name", None)
        if not isinstance(vname, str) or not _ID.fullmatch(vname):
            raise SpecError(f"{where}.name must be letters, digits, '_', '.', '-'; got {vname!r}")
        where = f"grid.variant[{i}] ({vname})"
        cfg_path = v.pop("config", None)
        algo = v.pop("algo", None)
        if cfg_path is None and algo is None:
            raise SpecError(f"{where}: give 'config' (a YAML file) or 'algo'")
        if cfg_path is not None:
            cfg_path = _resolve_config(cfg_path, f"{where}.config", spec.path)
        overrides = _check_overrides(v, where)
        if datasets is not None and "dataset" in overrides:
            raise SpecError(f"{where}.dataset: the grid has a dataset axis; set datasets there")
        if algo is not None:
            overrides = {"algo": algo, **overrides}
        merged = {**base, **overrides}
        if "imports" in merged:
            merged["imports"] = _resolve_imports(merged["imports"], f"{where}.imports", spec.path)
        variants.append((vname, cfg_path, merged, where))
    names = [v[0] for v in variants]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise SpecError(f"grid.variant: two variants are named {dup!r}")
    res_threads = max(1, int(spec.resources["cpu"]))
    trials = []
    for (vname, cfg_path, overrides, where), dataset, seed in itertools.product(
        variants, datasets or [None], seeds
    ):
        ov = dict(overrides)
        if dataset is not None:
            ov["dataset"] = dataset
        ov.setdefault("threads", res_threads)
        ov["seed"] = seed
        try:
            cfg = build_config(cfg_path, ov)
        except (ConfigError, FileNotFoundError) as e:
            raise SpecError(f"{where}: {e}") from None
        tag = _tag(Path(cfg.dataset).stem if cfg.dataset.endswith((".hdf5", ".h5")) else cfg.dataset)
        trials.append(
            {
                "id": f"{vname}__{tag}__s{seed}",
                "kind": "rl",
                "params": {
                    "variant": vname,
                    "dataset": cfg.dataset,
                    "dataset_label": tag if cfg.dataset_size is None else f"{tag}-n{cfg.dataset_size}",
                    "dataset_size": cfg.dataset_size,
                    "seed": seed,
                },
                "config": cfg_path,
                "overrides": ov,
                "steps": cfg.steps,
                "eval_episodes": cfg.eval_episodes,
            }
        )
    return trials


def _recipe(entry: dict[str, Any], where: str, available: list[str], critics: list[str]) -> dict[str, Any]:
    """A validated estimator recipe: `{name, estimator, options, critic_options, lr, negatives[, average]}` with
    the defaults filled in (a registered estimator's own options, the suite's critic sizes and lr, its own
    negatives; no averaging), and `critics`: the grid critics it runs with (default all). Every option is tried here (the estimator built, the
    critic of each grid critic built), so a bad one fails the spec, not a trial."""
    import mi_estimators as mie
    from mi_estimators.estimate import CRITICS as CRITIC_CLASSES

    sc = _staircase_module()
    unknown = [k for k in entry if k not in RECIPE_KEYS]
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(RECIPE_KEYS)}")
    for key in ("name", "estimator"):
        if not isinstance(entry.get(key), str):
            raise SpecError(f"{where}.{key} must be a string; got {entry.get(key)!r}")
    name, est = entry["name"], entry["estimator"]
    if not _ID.fullmatch(name):
        raise SpecError(f"{where}.name must be letters, digits, '_', '.', '-'; got {name!r}")
    if est not in available:
        raise SpecError(f"{where}.estimator: unknown estimator {est!r}; available: {', '.join(available)}")
    options = {k: _plain(v) for k, v in _mapping(entry.get("options"), f"{where}.options").items()}
    copts = {
        k: _plain(v) for k, v in _mapping(entry.get("critic_options"), f"{where}.critic_options").items()
    }
    copts = {k: tuple(v) if isinstance(v, list) else v for k, v in copts.items()}
    try:
        built = mie.make(est, **options)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{where}.options: {err}") from None
    for critic in critics:
        try:
            CRITIC_CLASSES[critic](2, 2, **sc.critic_options(critic, copts))
        except (TypeError, ValueError) as err:
            raise SpecError(f"{where}.critic_options (critic {critic!r}): {err}") from None
    lr = _plain(entry.get("lr", sc.LR))
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise SpecError(f"{where}.lr must be a positive number; got {lr!r}")
    only = _list(entry.get("critics", critics), f"{where}.critics")
    for j, c in enumerate(only):
        if c not in critics:
            raise SpecError(
                f"{where}.critics[{j}]: {c!r} is not a critic of grid.critic ({', '.join(critics)})"
            )
    negatives = entry.get("negatives")
    if negatives is not None and (built.needs_proposal or negatives not in ("all-pairs", "derangement")):
        why = (
            "a proposal-based estimator draws its own" if built.needs_proposal else "all-pairs or derangement"
        )
        raise SpecError(f"{where}.negatives: {why}; got {negatives!r}")
    average = _plain(entry.get("average"))
    if average is not None:
        if built.needs_proposal:
            raise SpecError(f"{where}.average: applies to score-based estimators only")
        if isinstance(average, bool) or not isinstance(average, int | float) or not 0 < average < 1:
            raise SpecError(f"{where}.average must be a decay in (0, 1); got {average!r}")
    max_grad_norm = _plain(entry.get("max_grad_norm"))
    if max_grad_norm is not None and (
        isinstance(max_grad_norm, bool)
        or not isinstance(max_grad_norm, int | float)
        or not math.isfinite(max_grad_norm)
        or max_grad_norm <= 0
    ):
        raise SpecError(f"{where}.max_grad_norm must be a positive number; got {max_grad_norm!r}")
    recipe = {
        "name": name,
        "estimator": est,
        "options": options,
        "critic_options": {k: list(v) if isinstance(v, tuple) else v for k, v in copts.items()},
        "lr": float(lr),
        "negatives": negatives if negatives is not None else getattr(built, "negatives", None),
        "critics": only,
    }
    # only when given: the settings of trials made before these keys existed stay as they were
    if average is not None:
        recipe["average"] = float(average)
    if max_grad_norm is not None:
        recipe["max_grad_norm"] = float(max_grad_norm)
    return recipe


def _staircase_trials(spec: Spec, grid: dict[str, Any]) -> list[dict[str, Any]]:
    import mi_estimators as mie

    sc = _staircase_module()
    unknown = [k for k in grid if k not in STAIRCASE_AXES]
    if unknown:
        raise SpecError(
            f"grid: unknown axis {unknown[0]!r} for kind staircase; axes: {', '.join(STAIRCASE_AXES)}"
        )
    for axis in ("estimator", "seed"):
        if axis not in grid:
            raise SpecError(f"grid: missing axis {axis!r}")
    bad = [k for k in spec.base if k not in STAIRCASE_BASE]
    if bad:
        raise SpecError(
            f"base: unknown key {bad[0]!r} for kind staircase; known keys: {', '.join(STAIRCASE_BASE)}"
        )
    settings = {**STAIRCASE_BASE, **spec.base}
    for k in settings:
        settings[k] = _int(settings[k], f"base.{k}", STAIRCASE_LOW.get(k, 1))
    if 0 < settings["heldout_samples"] < settings["batch_size"]:
        raise SpecError(
            f"base.heldout_samples must be 0 (no held-out estimate) or at least one batch "
            f"(batch_size {settings['batch_size']}); got {settings['heldout_samples']}"
        )
    if "dim" in grid and "dim" in spec.base:
        raise SpecError("base.dim: the grid has a dim axis")
    available = mie.available()
    critics = _list(grid.get("critic", ["separable"]), "grid.critic")
    for i, c in enumerate(critics):
        if c not in CRITICS:
            raise SpecError(f"grid.critic[{i}]: unknown critic {c!r}; known: {', '.join(CRITICS)}")
    estimators, recipes, only = [], {}, {}
    for i, e in enumerate(_list(grid["estimator"], "grid.estimator")):
        if isinstance(e, dict):
            recipe = _recipe(e, f"grid.estimator[{i}]", available, critics)
            e = recipe.pop("name")
            only[e] = recipe.pop("critics")
            recipes[e] = recipe
        elif e not in available:
            raise SpecError(
                f"grid.estimator[{i}]: unknown estimator {e!r}; available: {', '.join(available)}"
            )
        if e in estimators:
            raise SpecError(f"grid.estimator[{i}]: a second estimator named {e!r}")
        estimators.append(e)
    seeds = [_int(s, f"grid.seed[{i}]", 0) for i, s in enumerate(_list(grid["seed"], "grid.seed"))]
    if "task" in grid:
        if "dim" in grid or "dim" in spec.base:
            where = "grid.dim" if "dim" in grid else "base.dim"
            raise SpecError(f"{where}: the grid has a task axis; give each task its dim")
        tasks = []
        for i, v in enumerate(_list(grid["task"], "grid.task")):
            try:
                tasks.append(sc.parse_task(v))
            except ValueError as e:
                raise SpecError(f"grid.task[{i}]: {e}") from None
        names = [t.name for t in tasks]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise SpecError(f"grid.task: two tasks are named {dup!r}")
        points = [
            (est, task, critic, seed, f"{_tag(est)}__{task.name}__{critic}__s{seed}")
            for est, task, critic, seed in itertools.product(estimators, tasks, critics, seeds)
            if critic in only.get(est, critics)
        ]
    else:  # the CorrelatedGaussian staircase of each `dim` (specs written before the task axis; same trial ids)
        dims = [
            _int(d, f"grid.dim[{i}]", 1)
            for i, d in enumerate(_list(grid.get("dim", [settings["dim"]]), "grid.dim"))
        ]
        points = [
            (
                est,
                sc.TaskSpec(name=f"gauss-d{dim}", dim=dim),
                critic,
                seed,
                f"{_tag(est)}__{critic}__d{dim}__s{seed}",
            )
            for est, critic, dim, seed in itertools.product(estimators, critics, dims, seeds)
            if critic in only.get(est, critics)
        ]
    base = {k: settings[k] for k in STAIRCASE_BASE if k != "dim"}
    return [
        {
            "id": tid,
            "kind": "staircase",
            "params": {"estimator": est, "task": task.name, "critic": critic, "dim": task.dim, "seed": seed},
            "settings": {
                **base,
                "task": task.as_dict(),
                **({"recipe": recipes[est]} if est in recipes else {}),
            },
        }
        for est, task, critic, seed, tid in points
    ]


# ------------------------------------------------------------------------------------------------------------
# One trial (runs in a Ray worker, or in-process in tests)
# ------------------------------------------------------------------------------------------------------------
def run_dir(out: Path, trial: dict[str, Any]) -> Path:
    return Path(out) / "runs" / trial["id"]


def trial_config(trial: dict[str, Any], out: str | os.PathLike) -> Any:
    """The `rl.train` config of an RL trial, run directory `<out>/runs/<id>` included."""
    from rl.train import build_config

    ov = {**trial["overrides"], "run_dir": str(Path(out).resolve() / "runs" / trial["id"])}
    return build_config(trial["config"], ov)


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    d = yaml.safe_load(yaml.safe_dump(cfg_dict, sort_keys=True))  # tuples -> lists, floats normalised
    return {k: v for k, v in d.items() if k not in IGNORED_DRIFT}


def _drift(saved: dict[str, Any], cfg: Any) -> str | None:
    """None when the saved config equals `cfg` (up to `IGNORED_DRIFT`); else which keys differ."""
    from rl.config import ConfigError, drop_retired, to_dict

    try:  # a key an earlier version wrote at the default of a setting since moved is no difference
        saved = drop_retired(type(cfg), saved, "the run's config")
    except ConfigError as e:
        return str(e)
    # a field the run predates counts at its default, as `rl.train --resume` reads it
    a, b = _comparable({**to_dict(type(cfg)()), **saved}), _comparable(to_dict(cfg))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if not keys:
        return None
    return ", ".join(f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} in the spec" for k in keys[:4])


def trial_status(trial: dict[str, Any], out: str | os.PathLike) -> tuple[str, str]:
    """(`finished` | `resume` | `new` | `changed`, detail) of a trial, from its files only."""
    d = run_dir(Path(out), trial)
    res = d / RESULT
    if res.exists():
        try:
            data = json.loads(res.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"it holds a {type(data).__name__}, not a mapping")
        except (ValueError, OSError) as err:
            return "changed", f"{res} is unreadable ({err}); remove it to rerun the trial"
        if trial["kind"] == "rl":
            why = _drift(data.get("config", {}), trial_config(trial, out))
        else:
            same = data.get("params") == trial["params"] and data.get("settings") == trial["settings"]
            why = None if same else f"made with {data.get('params')} {data.get('settings')}"
        if why:
            return (
                "changed",
                f"{d} holds a finished run whose settings differ ({why}); remove it or use another --out",
            )
        return "finished", f"step {data.get('step', '')}"
    if trial["kind"] == "rl" and (d / "config.yaml").exists() and (d / "checkpoint.pt").exists():
        from rl.config import load_yaml

        try:
            why = _drift(load_yaml(d / "config.yaml"), trial_config(trial, out))
        except (ValueError, OSError) as err:  # ConfigError is a ValueError
            return "changed", f"{d / 'config.yaml'} is unreadable ({err}); remove {d} to rerun the trial"
        if why:
            return "changed", f"{d} holds a run whose settings differ ({why}); remove it or use another --out"
        return "resume", f"step {_last_eval_step(d)}"
    return "new", ""


def _last_eval_step(d: Path) -> int:
    rows = _read_evals(d / "eval.csv")
    return rows[-1]["step"] if rows else 0


def _read_evals(path: Path) -> list[dict[str, Any]]:
    """The rows of an `rl.train` eval.csv (step, return_mean, return_std, normalized_score or None); a partial
    last line (a kill mid-write) is dropped."""
    if not path.exists():
        return []
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if None in row.values() or None in row:
                continue  # fewer or more fields than the header: a partial line
            try:
                step = int(row["step"])
                rec = {
                    "step": step,
                    "return_mean": float(row["return_mean"]),
                    "return_std": float(row["return_std"]) if row.get("return_std") else math.nan,
                    "normalized_score": float(row["normalized_score"])
                    if row.get("normalized_score")
                    else None,
                }
            except (KeyError, TypeError, ValueError):
                continue
            out.append(rec)
    return out


def _write_json(path: Path, data: Any) -> None:
    from rl._atomic import jsonable

    text = json.dumps(jsonable(data), indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_trial(
    trial: dict[str, Any], out: str | os.PathLike, report: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) one trial to its end and write `<out>/runs/<id>/result.json`; returns the result.

    RL: an `rl.train.Trainer` in `<out>/runs/<id>`, resumed from its checkpoint when there is one, trained in chunks
    up to each evaluation; `report(metrics)` after each chunk. Staircase: `benchmarks/staircase.py`'s
    `run_protocol` (training over the staircase, per-level bias/variance/MSE, a held-out estimate at each level's
    end) on one thread count, `settings["threads"]`. A failure writes `<out>/errors/<id>.txt` and re-raises.
    """
    out = Path(out).resolve()
    err = out / "errors" / f"{trial['id']}.txt"
    err.unlink(missing_ok=True)
    report = report or (lambda metrics: None)
    try:
        if trial["kind"] == "rl":
            return _run_rl(trial, out, report)
        if trial["kind"] == PACK:
            return _run_staircase_pack(trial, out, report)
        return _run_staircase(trial, out, report)
    except Exception:  # not KeyboardInterrupt/SystemExit: an interrupted trial is unfinished, not failed
        text = f"trial {trial['id']} failed:\n{traceback.format_exc()}"
        atomic_write(err, lambda tmp: Path(tmp).write_text(text))
        raise


def _run_rl(trial: dict[str, Any], out: Path, report: Callable) -> dict[str, Any]:
    from rl.train import Trainer

    cfg = trial_config(trial, out)
    d = Path(cfg.run_dir)
    status, why = trial_status(trial, out)
    if status == "changed":
        raise RuntimeError(why)
    if status == "finished":
        return json.loads((d / RESULT).read_text())
    # A trial killed before its first checkpoint starts afresh (the trainer voids the logs it left).
    resume = (d / "checkpoint.pt").exists()
    t0 = time.perf_counter()
    with Trainer(cfg, resume=resume, quiet=True) as trainer:  # its run dir's lock is released at the end
        return _train_trial(trial, trainer, resume, out, report, t0)


def _train_trial(
    trial: dict[str, Any], trainer: Any, resume: bool, out: Path, report: Callable, t0: float
) -> dict[str, Any]:
    """`_run_rl`'s training of a trial by `trainer` (chunk by chunk, each reported) and its result.json."""
    from rl.config import to_dict
    from rl.train import TrainingError

    cfg, d = trainer.cfg, trainer.run_dir
    start = trainer.step
    tlog = _trial_logger(out, trial["id"])
    tlog.info("%s %s at step %d of %d", "resumed" if resume else "started", trial["id"], start, cfg.steps)
    every = cfg.eval_every or cfg.checkpoint_every
    diverged = None
    try:
        while trainer.step < cfg.steps:
            trainer.train(until=min(cfg.steps, (trainer.step // every + 1) * every))
            last = trainer.evals[-1] if trainer.evals else {}
            metrics = {
                "step": trainer.step,
                "normalized_score": last.get("normalized_score"),
                "return_mean": last.get("return_mean"),
                "eval_step": last.get("step"),
            }
            tlog.info("%s step %d: %s", trial["id"], trainer.step, metrics)
            report(metrics)
        trainer.train()  # a no-op, unless the run was killed inside its last evaluation: then that evaluation
    except TrainingError as err:
        # A NaN or a term past `max_abs_loss` is what the algorithm does on this seed, not a fault to retry: resume
        # is exact, so a rerun from the checkpoint replays the same updates and diverges at the same step.
        diverged = str(err)
        tlog.info("%s diverged: %s", trial["id"], diverged)
        report({"step": trainer.step, "normalized_score": None, "diverged": diverged})
    final = trainer.evals[-1] if trainer.evals and diverged is None else {}
    result = {
        "id": trial["id"],
        "kind": "rl",
        "params": trial["params"],
        "step": trainer.step,
        "steps": cfg.steps,
        "final": final,
        "evals": trainer.evals,
        "resumed_from": start,
        "seconds_last_attempt": round(time.perf_counter() - t0, 1),
        "config": to_dict(cfg),
    }
    if diverged is not None:
        result["diverged"] = diverged  # `step`: the last good update; the message names the one that diverged
    _write_json(d / RESULT, result)
    tlog.info("finished %s: %s", trial["id"], final)
    if start == cfg.steps:  # resumed after the last checkpoint but before result.json: nothing left to train
        report({"step": trainer.step, "normalized_score": final.get("normalized_score")})
    return result


def _staircase_module():
    name = "_sweep_staircase"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "staircase.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _run_staircase(trial: dict[str, Any], out: Path, report: Callable) -> dict[str, Any]:
    status, why = trial_status(trial, out)
    if status == "changed":
        raise RuntimeError(why)
    if status == "finished":
        return json.loads((run_dir(out, trial) / RESULT).read_text())
    return _protocol(trial["id"], [trial], out, report)[0]


#: the kind of a packed trial: a grid cell's seeds in one stacked run (`pack`)
PACK = "staircase-pack"


def pack(todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The staircase trials of `todo` with their grid cell's other seeds (same estimator, task, critic, settings)
    as one trial of kind `PACK`, whose `run_protocol` call trains them as one stacked `estimate(seeds=...)`; each
    seed still writes its own run folder and `result.json`, as its own trial does, with its numbers to float32
    rounding. A cell with one seed to run, and RL trials, stay as they are."""
    cells: dict[str, list[dict[str, Any]]] = {}
    out: list[Any] = []
    for t in todo:
        if t["kind"] != "staircase":
            out.append(t)
            continue
        p = t["params"]
        key = json.dumps([{k: v for k, v in p.items() if k != "seed"}, t["settings"]], sort_keys=True)
        if key not in cells:
            cells[key] = []
            out.append(cells[key])  # the cell keeps the place of its first seed
        cells[key].append(t)
    packed = []
    for item in out:
        if isinstance(item, dict) or len(item) == 1:
            packed.append(item if isinstance(item, dict) else item[0])
            continue
        prefix = item[0]["id"].rsplit("__s", 1)[0]
        seeds = "+".join(str(t["params"]["seed"]) for t in item)
        packed.append({"id": f"{prefix}__s{seeds}", "kind": PACK, "members": item})
    return packed


def _run_staircase_pack(trial: dict[str, Any], out: Path, report: Callable) -> dict[str, Any]:
    todo = []
    for member in trial["members"]:
        status, why = trial_status(member, out)
        if status == "changed":
            raise RuntimeError(why)
        if status != "finished":  # a rerun after a kill: the members that finished are not run again
            todo.append(member)
    results = _protocol(trial["id"], todo, out, report) if todo else []
    return {"id": trial["id"], "kind": PACK, "members": [r["id"] for r in results]}


def _protocol(tid: str, trials: list[dict[str, Any]], out: Path, report: Callable) -> list[dict[str, Any]]:
    """`run_protocol` for the seeds of `trials` (one grid cell: the same estimator, task, critic and settings),
    stacked when there are several; writes each trial's `result.json` and returns them as a rerun reads them."""
    import torch

    sc = _staircase_module()
    first = trials[0]
    p, s = first["params"], first["settings"]
    torch.set_num_threads(s["threads"])
    tlog = _trial_logger(out, tid)
    tlog.info("started %s on %d thread(s)", tid, torch.get_num_threads())
    t0 = time.perf_counter()
    recipe = s.get("recipe")
    seeds = [t["params"]["seed"] for t in trials]
    runs = sc.run_protocol(
        recipe["estimator"] if recipe else p["estimator"],
        sc.TaskSpec(**s["task"]),
        p["critic"],
        s["steps_per_level"],
        s["batch_size"],
        seeds if len(trials) > 1 else seeds[0],
        heldout_samples=s["heldout_samples"],
        **sc.recipe_arguments(recipe),
    )
    seconds = (time.perf_counter() - t0) / len(trials)  # each seed's share of the run
    results = []
    for trial, run in zip(trials, runs if len(trials) > 1 else [runs], strict=True):
        est = run["estimates"]
        if run["stopped_at"] is not None:
            tlog.info("%s stopped at step %d: %s", trial["id"], run["stopped_at"], run["error"])
        result = {
            "id": trial["id"],
            "kind": "staircase",
            "params": trial["params"],
            "settings": trial["settings"],
            "step": len(est),
            "steps": s["steps_per_level"] * len(sc.LEVELS),
            "stopped_at": run["stopped_at"],
            "error": run["error"],
            "negatives": run["negatives"],
            "levels": run["levels"],
            "heldout": run["heldout"],
            "estimates_every": s["record_every"],
            "estimates": est[:: s["record_every"]],
            "seconds": round(seconds, 2),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "code": sc.code_fingerprint(),
            **({"packed_seeds": seeds} if len(trials) > 1 else {}),
        }
        d = run_dir(out, trial)
        d.mkdir(parents=True, exist_ok=True)
        _write_json(d / RESULT, result)
        mse = [r["mse"] for r in run["levels"] if math.isfinite(r["mse"])]
        report({"step": len(est), "mean_mse": statistics.fmean(mse) if mse else None})
        results.append(
            json.loads((d / RESULT).read_text())
        )  # as a rerun reads it (non-finite floats: strings)
    tlog.info("finished %s in %.1f s", tid, seconds * len(trials))
    return results


def _trial_logger(out: Path, trial_id: str) -> logging.Logger:
    lg = logging.getLogger(f"sweep.trial.{trial_id}")
    if not lg.handlers:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        h = logging.FileHandler(out / "logs" / f"{trial_id}.log")
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    return lg


def _ray_trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial, reported to Tune after each chunk."""
    repo = config["repo"]
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from ray import tune

    report = tune.report if "metrics" in _signature(tune.report) else _train_report()
    run_trial(config["trial"], config["out"], report=report)


def _signature(fn: Callable) -> Sequence[str]:
    import inspect

    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _train_report() -> Callable:  # Ray < 2.4x: function trainables report through ray.train
    from ray import train

    return train.report


def _trial_name(trial: Any) -> str:
    return trial.config["trial"]["id"]


# ------------------------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------------------------
def _display(path: Path | str) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def command(spec: Spec, out: Path) -> str:
    """The command that (re)runs the sweep and rewrites its tables (`--report-only`: tables only)."""
    return shlex.join(["python", "benchmarks/sweep.py", _display(spec.path), "--out", _display(out)])


def _setup_logging(out: Path) -> logging.Handler:
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "sweep.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


_NOISY = ("ray", "py.warnings")


def _quiet_ray(path: str) -> logging.Handler:
    """Ray's and Tune's Python logging (and warnings) to the sweep log, not the console. A handler of its own:
    Ray sets the format of the handlers on its loggers."""
    handler = logging.FileHandler(path)
    logging.captureWarnings(True)
    for name in _NOISY:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.addHandler(handler)
        lg.propagate = False
    return handler


def _unquiet(handler: logging.Handler) -> None:
    for name in _NOISY:
        logging.getLogger(name).removeHandler(handler)
    logging.captureWarnings(False)
    handler.close()


def _console(msg: str) -> None:
    print(msg, flush=True)
    log.info(msg)


def ensure_behaviour(spec: Spec, out: Path, make: bool) -> dict[str, Any]:
    """Behaviour-data normalised score per dataset label, cached in `<out>/behaviour.json`.

    The score is `rl.collect info`'s: the mean over the dataset's episodes (the last one may be cut) of the D4RL
    normalised return. With `make`, a dataset that is not cached is generated (the trials need it anyway, and one
    generation in the driver avoids concurrent trials generating it twice); without, such a dataset is left out.
    """
    if spec.kind != "rl":
        return {}
    path = out / "behaviour.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    seen = {}
    for t in spec.trials:
        p = t["params"]
        seen.setdefault(p["dataset_label"], (p["dataset"], p["dataset_size"]))
    for label, (dataset, size) in seen.items():
        hit = cache.get(label)
        if hit and hit.get("dataset") == dataset and hit.get("dataset_size") == size:
            if make and _load_dataset(dataset, size, make=False, probe=True) is None:
                _load_dataset(dataset, size, make=True)  # generate it once, for the trials
            continue
        ds = _load_dataset(dataset, size, make=make)
        if ds is None:
            continue
        cache[label] = {"dataset": dataset, "dataset_size": size, **_behaviour_score(dataset, ds)}
        changed = True
    if changed:
        _write_json(path, cache)
    return cache


def _load_dataset(dataset: str, size: int | None, make: bool, probe: bool = False) -> Any:
    """The dataset (None when `make` is off and it would have to be generated); `probe`: only whether it is
    on disk (True/None), without reading it."""
    from rl.data import load

    if not make:
        if Path(dataset).expanduser().is_file():
            if probe:
                return True
        else:
            try:
                from rl.collect.generate import is_cached, parse_name

                parse_name(dataset)
                if not is_cached(dataset, size):
                    return None
                if probe:
                    return True
            except (ImportError, ValueError):
                return True if probe else None  # minari:/d4rl: sources: not loaded for a report
    try:
        return load(dataset, **({"size": size} if size else {}))
    except Exception as e:  # noqa: BLE001 - the report goes on without a behaviour score
        log.warning("behaviour score of %s: cannot load it: %s", dataset, e)
        return None


def _behaviour_score(dataset: str, ds: Any) -> dict[str, Any]:
    from rl.data.references import behaviour_score

    rets = ds.episode_returns()
    env_id = (getattr(ds, "metadata", None) or {}).get("env_id")
    return {
        "normalized_score": behaviour_score(ds, (dataset, env_id)),
        "return_mean": float(rets.mean()) if len(rets) else None,
        "episodes": int(len(rets)),
        "transitions": int(len(ds)),
    }


def run_sweep(
    spec: Spec,
    out: str | os.PathLike,
    address: str | None = None,
    num_cpus: int | None = None,
    max_concurrent: int | None = None,
) -> dict[str, Any]:
    """Run the trials of `spec` that are not finished on Ray Tune, then gather the report.

    Returns `{"skipped": [ids], "resumed": {id: step}, "started": [ids], "errors": {id: message}, "files": [...]}`.
    A Ray instance that is already initialised (tests) is used as it is; otherwise `address` (an existing cluster)
    or a new local instance with `num_cpus` CPUs (default: all), shut down at the end.
    """
    out = Path(out).resolve()
    lock = _lock(out)
    handler = _setup_logging(out)
    try:
        return _run_sweep(spec, out, address, num_cpus, max_concurrent, handler)
    finally:
        log.removeHandler(handler)
        handler.close()
        lock.release()


def _lock(out: Path) -> Any:
    """The lock file `<out>/.sweep.lock` for this driver's lifetime (`rl._atomic.acquire_lock`, as `rl.train`
    locks a run dir: it holds the driver's PID and host; a driver killed by kill -9 leaves it stale, and the next
    one takes it over), so that two drivers never train the same trials at once."""
    from rl._atomic import LockError, acquire_lock

    try:
        return acquire_lock(out / ".sweep.lock", "another sweep driver", what=f"the sweep folder {out}")
    except LockError as err:
        raise SweepError(str(err)) from None


def _run_sweep(spec, out, address, num_cpus, max_concurrent, handler) -> dict[str, Any]:
    summary: dict[str, Any] = {"skipped": [], "resumed": {}, "started": [], "errors": {}}
    todo = []
    for t in spec.trials:
        status, detail = trial_status(t, out)
        if status == "finished":
            summary["skipped"].append(t["id"])
        elif status == "changed":
            summary["errors"][t["id"]] = detail
            _write_error(out, t["id"], detail)
        else:
            if status == "resume":
                summary["resumed"][t["id"]] = int(detail.split()[-1])
            else:
                summary["started"].append(t["id"])
            todo.append(t)
    resumed = ", ".join(f"{k} (evaluated up to step {v})" for k, v in summary["resumed"].items())
    _console(
        f"sweep {spec.name}: {len(spec.trials)} trials; {len(summary['skipped'])} finished (skipped), "
        f"{len(summary['resumed'])} to resume{': ' + resumed if resumed else ''}, {len(summary['started'])} new; "
        f"{len(summary['errors'])} refused; log: {_display(out / 'sweep.log')}"
    )
    for tid, msg in summary["errors"].items():
        _console(f"  refused {tid}: {msg}")
    if todo:
        ensure_behaviour(spec, out, make=True)
        if spec.pack_seeds:
            todo = pack(todo)
        summary["errors"].update(_tune(spec, out, todo, address, num_cpus, max_concurrent, handler))
    else:
        ensure_behaviour(spec, out, make=False)
    summary["files"] = write_report(spec, out)
    _console(f"wrote {', '.join(_display(p) for p in summary['files'])}")
    return summary


def _write_error(out: Path, tid: str, text: str) -> None:
    atomic_write(out / "errors" / f"{tid}.txt", lambda tmp: Path(tmp).write_text(text + "\n"))


def _tune(spec, out, todo, address, num_cpus, max_concurrent, handler) -> dict[str, str]:
    import ray.tune  # noqa: F401 - Ray's loggers exist once it is imported; then they are redirected

    ray_log = _quiet_ray(handler.baseFilename)
    try:
        return _tune_run(spec, out, todo, address, num_cpus, max_concurrent)
    finally:
        _unquiet(ray_log)


def _tune_run(spec, out, todo, address, num_cpus, max_concurrent) -> dict[str, str]:
    import ray
    from ray import cloudpickle, tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no progress tables on the console
    if (
        __name__ != "__main__"
    ):  # imported (tests): workers may not find this module; ship its code with the trial
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    own = not ray.is_initialized()
    if own:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kwargs)
        except Exception as e:  # noqa: BLE001 - reported as one clear line
            where = f"connect to the Ray cluster at {address}" if address else "start a local Ray instance"
            hint = (
                " (a cluster started with token authentication, the default of `ray start` since Ray 2.59, needs "
                "RAY_AUTH_MODE=token in this command's environment too)"
                if address
                else ""
            )
            raise SweepError(f"cannot {where}: {type(e).__name__}: {e}{hint}") from e
    cpus = ray.cluster_resources().get("CPU", 0)
    _console(
        f"Ray {'cluster ' + address if address else 'local'} ({cpus:g} CPUs); {len(todo)} trials, "
        f"{spec.resources['cpu']:g} CPU each, at most {max_concurrent or spec.max_concurrent or 'all'} at once"
    )
    done: dict[str, str] = {}

    class Progress(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            log.info(
                "%s: %s",
                trial.config["trial"]["id"],
                {k: result.get(k) for k in ("step", "normalized_score")},
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            score = r.get("normalized_score")
            tail = f" score {score:.1f}" if isinstance(score, float) else ""
            if r.get("diverged"):
                tail = f" diverged: {_divergence_headline(r['diverged'])}"
            done[trial.config["trial"]["id"]] = "ok"
            _console(
                f"  done  {trial.config['trial']['id']} step {r.get('step')}{tail} ({len(done)}/{len(todo)})"
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            tid = trial.config["trial"]["id"]
            done[tid] = "error"
            _console(
                f"  error {tid} (see {_display(out / 'errors' / (tid + '.txt'))}) ({len(done)}/{len(todo)})"
            )

    payloads = [{"trial": copy.deepcopy(t), "out": str(out), "repo": str(REPO)} for t in todo]
    run_config_cls = getattr(tune, "RunConfig", None)
    if run_config_cls is None:  # Ray < 2.4x
        from ray.train import RunConfig as run_config_cls
    tuner = tune.Tuner(
        tune.with_resources(_ray_trainable, {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]}),
        param_space={
            "trial": tune.grid_search([p["trial"] for p in payloads]),
            "out": str(out),
            "repo": str(REPO),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or spec.max_concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            reuse_actors=True,  # one worker process runs trial after trial: no torch import per trial
        ),
        run_config=run_config_cls(
            storage_path=str(out / "ray"),
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            verbose=0,
            callbacks=[Progress()],
        ),
    )
    try:
        grid = tuner.fit()
    finally:
        if own:
            ray.shutdown()
    errors = {}
    for res in grid:
        if res.error is None:
            continue
        tid = (res.config or {}).get("trial", {}).get("id", "?")
        path = out / "errors" / f"{tid}.txt"
        if not path.exists():  # died without a Python exception (a killed worker): keep Ray's word for it
            _write_error(out, tid, f"trial {tid} failed:\n{res.error}")
        errors[tid] = _first_error_line(path)
    return errors


def _first_error_line(path: Path) -> str:
    lines = [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return lines[-1].strip() if lines else "failed"


# ------------------------------------------------------------------------------------------------------------
# Gathering: CSV, markdown, plots
# ------------------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _divergence_headline(message: str) -> str:
    """`rl.train`'s divergence message without its `; last good checkpoint: <absolute path>` tail, which is
    machine-specific: `step 40954: term 'critic_td' diverged to 1.38e+08`."""
    return message.split(";")[0]


def _fmt(mean: float | None, std: float | None, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


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
        return "error", _first_error_line(err)
    return ("unfinished" if has_progress else "pending"), None


def _gather_rl(spec: Spec, out: Path) -> dict[str, Any]:
    rows, trials = [], []
    for t in spec.trials:
        p, d = t["params"], run_dir(out, t)
        evals = _read_evals(d / "eval.csv")
        res = json.loads((d / RESULT).read_text()) if (d / RESULT).exists() else None
        if res is not None:  # the finished run's own record wins over the CSV
            evals = [
                {**e, "return_std": e.get("return_std", math.nan)} for e in res.get("evals", [])
            ] or evals
        status, error = _status(out, t, bool(evals) or (d / "checkpoint.pt").exists())
        if status == "finished" and res is not None and res.get("diverged"):
            status, error = "diverged", _divergence_headline(res["diverged"])
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
        c["mean"], c["std"] = _mean_std(c["scores"]) if c["scores"] else (None, None)
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


def _num(value: Any) -> float:
    """A number of a result.json: non-finite floats are written as strings ("nan", "-inf"), missing ones None."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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
                    "bias": _num(r["bias"]),
                    "variance": _num(r["variance"]),
                    "mse": _num(r["mse"]),
                    "nonfinite": r["nonfinite"],
                    "heldout": _num(r.get("heldout")),
                    "heldout_batch_std": _num(r.get("heldout_std")),
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


STAIRCASE_METRICS = ("bias", "variance", "mse", "heldout")


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


def write_report(spec: Spec, out: str | os.PathLike) -> list[Path]:
    """Write results.csv, summary.csv, results.md and the plots into `out`, atomically; returns their paths."""
    out = Path(out).resolve()
    g = gather(spec, out)
    cmd = command(spec, out)
    head = f"# regenerate: {cmd}   (add --report-only to rebuild the tables from the run folders alone)\n"
    if g["kind"] == "rl":
        return _report_rl(spec, out, g, cmd, head)
    return _report_staircase(spec, out, g, cmd, head)


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
        f"Spec: `{_display(spec.path)}`.",
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
        if _plot_curves(spec, g, lab, variants, path):
            plots.append(path)
    if plots:
        lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    files.append(_write_text(out / "results.md", "\n".join(lines) + "\n"))
    return files + plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _plot_curves(spec: Spec, g: dict[str, Any], label: str, variants: list[str], path: Path) -> bool:
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


def _finite_stats(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean and sample std over the finite values (None when there are none; std None for one), and their count."""
    ok = [v for v in values if math.isfinite(v)]
    if not ok:
        return None, None, 0
    mean, std = _mean_std(ok)
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
    sc = _staircase_module()
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
        f"Spec: `{_display(spec.path)}`.",
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
            for kind, draw in (("staircase", _plot_staircase), ("heldout", _plot_heldout)):
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


def _plot_staircase(spec, g, task, task_spec, estimators, critics, path: Path) -> None:
    """Per estimator: the per-step training estimate (mean ± std over seeds) per critic, the held-out estimates at
    the ends of the levels (markers, ± std over seeds), the true MI as a staircase."""
    import numpy as np

    plt = _plt()
    sc = _staircase_module()
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
                e = np.asarray([_num(u) for u in r["estimates"]], dtype=float)[: len(x)]
                v[: len(e)] = e
                series.append(v)
            mean, std = _mean_band(series)
            ax.plot(x, mean, color=f"C{j}", lw=0.7, label=f"{critic} (n={len(runs)})")
            ax.fill_between(x, mean - std, mean + std, color=f"C{j}", alpha=0.2)
            held = [[_num(h["mean"]) for h in r.get("heldout", [])] for r in runs]
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


def _plot_heldout(spec, g, task, task_spec, estimators, critics, path: Path) -> None:
    """Per critic: the held-out estimate vs the true MI, one line per estimator (mean ± std over seeds)."""
    plt = _plt()
    sc = _staircase_module()
    levels = list(sc.LEVELS)
    fig, axes = plt.subplots(1, len(critics), figsize=(5.5 * len(critics), 4.2), sharey=True, squeeze=False)
    for ax, critic in zip(axes[0], critics):
        for j, est in enumerate(estimators):
            runs = _task_runs(spec, g, task, est, critic)
            held = [[_num(h["mean"]) for h in r.get("heldout", [])] for r in runs]
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


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/sweep.py",
        description=__doc__.split("\n\n")[0],
        epilog="See docs/sweeps.md.",
    )
    p.add_argument("spec", type=Path, help="grid spec YAML (e.g. benchmarks/sweeps/smoke.yaml)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/sweeps/<name>)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (`ray start --head` prints it)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
    p.add_argument("--report-only", action="store_true", help="only gather results.csv/.md and plots; no Ray")
    p.add_argument(
        "--list-carry",
        action="store_true",
        help="print the checkpoints of unfinished trials (what a later session needs to resume) and exit",
    )
    p.add_argument(
        "--publish",
        type=Path,
        default=None,
        help="also copy the tables and plots into this folder (e.g. benchmarks/results/<name>, to commit)",
    )
    args = p.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = (args.out or Path("runs") / "sweeps" / spec.name).resolve()
    if args.list_carry:
        for path in carry_files(spec, out):
            print(_display(path))
        return 0
    if args.report_only:
        ensure_behaviour(spec, out, make=False)
        files = write_report(spec, out)
        print(f"wrote {', '.join(_display(f) for f in files)}")
    else:
        try:
            summary = run_sweep(spec, out, args.address, args.num_cpus, args.max_concurrent)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if summary["errors"]:
            print(
                f"{len(summary['errors'])} trial(s) failed: {', '.join(summary['errors'])}", file=sys.stderr
            )
    if args.publish is not None:
        publish(write_report(spec, out), args.publish)
    g = gather(spec, out)
    bad = [t for t in g["trials"] if t["status"] not in ("finished", "diverged")]
    if bad:
        counts = {s: sum(t["status"] == s for t in bad) for s in ("error", "unfinished", "pending")}
        print(
            "not finished: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
