"""A trial's run folder, `<out>/runs/<id>`, and what its files say: the trial's `rl.train` config, whether it is
finished, resumable, new or made with other settings (`trial_status`, from the files alone), the evaluations an
RL run logged, and the one-line summaries the console and the tables show of a failure or a divergence.

Every decision of a rerun after a kill is made here, from the folder only: `result.json` (written atomically as a
trial's last act) means finished, an `rl.train` checkpoint means resume, and a folder whose settings differ from
what the spec now gives is refused, naming the keys (docs/sweeps.md, "What a rerun does after a kill").
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rl._atomic import atomic_write

if TYPE_CHECKING:
    from rl.agents import TrainConfig

# may change between reruns without invalidating a run (`imports`: where the estimators' code is, resolved paths;
# `fast`: the hand-written CPU passes or autograd, the same numbers to float rounding, as `threads` and `device`:
# a packed cell's seeds train with `fast: false`)
IGNORED_DRIFT = ("run_dir", "threads", "device", "imports", "progress", "fast")
RESULT = "result.json"


def run_dir(out: Path, trial: dict[str, Any]) -> Path:
    """The trial's run folder, `<out>/runs/<id>`."""
    return Path(out) / "runs" / trial["id"]


def trial_config(trial: dict[str, Any], out: str | os.PathLike) -> Any:
    """The `rl.train` config of an RL trial, run directory `<out>/runs/<id>` included: from the config file's
    content that the trial carries (`config_data`; the file itself may be on another machine's disk)."""
    from rl.train import build_config

    ov = {**trial["overrides"], "run_dir": str(Path(out).resolve() / "runs" / trial["id"])}
    data = trial.get("config_data")
    if data is None:
        return build_config(trial["config"], ov)
    return build_config(None, ov, base=copy.deepcopy(data))


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    d = yaml.safe_load(yaml.safe_dump(cfg_dict, sort_keys=True))  # tuples -> lists, floats normalised
    return {k: v for k, v in d.items() if k not in IGNORED_DRIFT}


def _drift(saved: dict[str, Any], cfg: TrainConfig) -> str | None:
    """None when the saved config equals `cfg` (up to `IGNORED_DRIFT`); else which keys differ."""
    from rl.agents import TrainConfig
    from rl.config import ConfigError, to_dict

    try:  # a key an earlier version wrote at the default of a setting since moved is no difference
        saved = TrainConfig.drop_retired(cfg.algo, saved, "the run's config")
    except ConfigError as e:
        return str(e)
    # a field the run predates counts at its default, as `rl.train --resume` reads it
    a, b = _comparable({**to_dict(TrainConfig(cfg.algo)), **saved}), _comparable(to_dict(cfg))
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


def folder_progress(folder: Path) -> tuple[bool, int] | None:
    """(finished, step) of a run folder, as a storage tree's state counts them (`rl.sweep.storage`): finished
    with its result.json; else the step of its `rl.train` checkpoint (0 without one, or for a staircase run);
    None without the folder."""
    if not folder.is_dir():
        return None
    if (folder / RESULT).exists():
        return True, 0
    if not (folder / "checkpoint.pt").is_file():
        return False, 0
    from rl._safe_load import load_torch_file

    try:
        return False, int(load_torch_file(folder / "checkpoint.pt")["step"])
    except Exception:  # noqa: BLE001 - a damaged checkpoint is no progress to keep
        return False, 0


def _last_eval_step(d: Path) -> int:
    rows = read_evals(d / "eval.csv")
    return rows[-1]["step"] if rows else 0


def read_evals(path: Path) -> list[dict[str, Any]]:
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


def as_float(value: Any) -> float:
    """A number of a result.json: non-finite floats are written as strings ("nan", "-inf"), missing ones None."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, atomically (non-finite floats as strings: `rl._atomic.jsonable`)."""
    from rl._atomic import jsonable

    text = json.dumps(jsonable(data), indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def first_error_line(path: Path) -> str:
    """The last non-blank line of a trial's `errors/<id>.txt` (a traceback's exception), or "failed"."""
    lines = [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return lines[-1].strip() if lines else "failed"


def divergence_headline(message: str) -> str:
    """`rl.train`'s divergence message without its `; last good checkpoint: <absolute path>` tail, which is
    machine-specific: `step 40954: term 'critic_td' diverged to 1.38e+08`."""
    return message.split(";")[0]
