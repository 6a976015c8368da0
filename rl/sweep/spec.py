"""A sweep's grid spec: the YAML file read and checked (`load_spec`, whose `SpecError` names the bad key), the
`Spec` it gives, and its trials, one plain dict per grid point in grid order.

Kind `rl`: variant x dataset x seed, each trial an `rl.train` config built here (`rl.train.build_config`), so an
unknown field stops the sweep before Ray starts. Kind `staircase`: estimator x task x critic x seed (or estimator x
critic x dim x seed on CorrelatedGaussian), an estimator given by name or as a recipe (`_recipe`, every option
tried here). A trial's id is derived from its grid point (`bc__hopper-medium-v5__s0`,
`nwj__gauss-d5__separable__s0`), so it is stable across reruns. The spec format: docs/sweeps.md.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rl.sweep.staircase as sc

#: the checkout's root (in an editable install): relative config and `imports` paths are also looked up here, so
#: a spec's `configs/...` paths work from any directory
REPO = Path(__file__).resolve().parents[2]

KINDS = ("rl", "staircase")
TOP_KEYS = (
    "name",
    "kind",
    "description",
    "base",
    "grid",
    "resources",
    "max_concurrent",
    "pack_seeds",
    "max_failures",
)
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
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SpecError(ValueError):
    """A bad grid spec; the message names the key (`grid.variant[2].config`, `base.stepz`, ...)."""


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
    #: a grid cell's unfinished seeds run as one trial (`rl.sweep.trials.pack`): staircase, one stacked
    #: `estimate(seeds=...)` (default on); rl, one `rl.train.SeedGroup` (default: on where trials have a GPU share,
    #: off on CPUs, where one process per seed is faster: docs/rl.md, "Many seeds of an agent in one process")
    pack_seeds: bool = True
    #: how often Ray restarts a failed trial (a lost worker or node; also one that raised), from its last checkpoint
    max_failures: int = 1

    def trial(self, trial_id: str) -> dict[str, Any]:
        for t in self.trials:
            if t["id"] == trial_id:
                return t
        raise KeyError(f"no trial {trial_id!r} in sweep {self.name!r}")


def _tag(text: str) -> str:
    """A file-name-safe piece of a trial id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


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
        out[key] = v  # numbers as `rl.config.parse_yaml` reads them (1e-4 is a float)
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
    pack_seeds = data.get("pack_seeds", kind == "staircase" or resources["gpu"] > 0)
    if not isinstance(pack_seeds, bool):
        raise SpecError(f"pack_seeds must be true or false; got {pack_seeds!r}")
    max_failures = _int(data.get("max_failures", 1), "max_failures", 0)
    spec = Spec(
        name,
        kind,
        path,
        _mapping(data.get("base"), "base"),
        resources,
        mc,
        description=str(desc),
        pack_seeds=pack_seeds,
        max_failures=max_failures,
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
    from rl.config import ConfigError, load_yaml
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
        if spec.resources["gpu"] > 0:  # a trial that asks Ray for a GPU (or a share of one) trains on it
            ov.setdefault("device", "cuda")
        ov["seed"] = seed
        try:
            cfg = build_config(cfg_path, ov)
        except (ConfigError, FileNotFoundError) as e:
            raise SpecError(f"{where}: {e}") from None
        if str(cfg.run.device).startswith("cuda") and spec.resources["gpu"] == 0:
            raise SpecError(
                f"{where}: device {cfg.run.device!r} needs resources.gpu > 0 (Ray shows a trial only the GPUs it "
                "asks for; a fraction such as 0.25 lets four trials share one)"
            )
        tag = _tag(
            Path(cfg.run.dataset).stem if cfg.run.dataset.endswith((".hdf5", ".h5")) else cfg.run.dataset
        )
        trials.append(
            {
                "id": f"{vname}__{tag}__s{seed}",
                "kind": "rl",
                "params": {
                    "variant": vname,
                    "dataset": cfg.run.dataset,
                    "dataset_label": tag
                    if cfg.run.dataset_size is None
                    else f"{tag}-n{cfg.run.dataset_size}",
                    "dataset_size": cfg.run.dataset_size,
                    "seed": seed,
                },
                "config": cfg_path,
                # the file's content: a trial on a node without the driver's disk builds its config from this
                "config_data": load_yaml(cfg_path) if cfg_path is not None else None,
                "overrides": ov,
                "steps": cfg.run.steps,
                "eval_episodes": cfg.run.eval_episodes,
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
    options = _mapping(entry.get("options"), f"{where}.options")
    copts = _mapping(entry.get("critic_options"), f"{where}.critic_options")
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
    lr = entry.get("lr", sc.LR)
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
    average = entry.get("average")
    if average is not None:
        if built.needs_proposal:
            raise SpecError(f"{where}.average: applies to score-based estimators only")
        if isinstance(average, bool) or not isinstance(average, int | float) or not 0 < average < 1:
            raise SpecError(f"{where}.average must be a decay in (0, 1); got {average!r}")
    max_grad_norm = entry.get("max_grad_norm")
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
            # where it trains: not a setting (the same numbers to float32 rounding), so not in `settings`
            "device": "cuda" if spec.resources["gpu"] > 0 else "cpu",
        }
        for est, task, critic, seed, tid in points
    ]
