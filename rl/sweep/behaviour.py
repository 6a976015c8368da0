"""The behaviour data's normalised score per dataset of an RL sweep, cached in `<out>/behaviour.json`.

The driver fills the cache before it submits any trial (`make=True`): loading each dataset once there generates
it if needed, so concurrent trials never generate the same dataset twice. The report reads the cache only
(`make=False`), so `--report-only` never regenerates a dataset.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rl.sweep.folders import write_json
from rl.sweep.spec import Spec

log = logging.getLogger("sweep")


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
        write_json(path, cache)
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
