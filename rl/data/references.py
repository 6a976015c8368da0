"""Reference returns and the D4RL normalised score ``100 (R - R_random) / (R_expert - R_random)``.

Two tables:

* **D4RL** (`D4RL_REFERENCES`): the published random/expert returns of d4rl's ``infos.py`` (REF_MIN_SCORE /
  REF_MAX_SCORE) for hopper, halfcheetah, walker2d and ant. d4rl uses one pair per env family for all its
  gym-MuJoCo datasets (v0, v1, v2, every level), so they apply to names like ``hopper-medium-v2``.
* **v5** (the project's own, for gymnasium MuJoCo v5 envs): read from ``rl/data/references/v5.json``, written by
  the dataset factory (``python -m rl.collect references``, which runs the policies) as
  ``{"Hopper-v5": {"random": R, "expert": R, "episodes": n, "how": "..."}}``. The file is read on every lookup (it
  is tiny), so references measured during a session are seen at once.

This module is the reader's half: it only reads the table and scores returns, and imports nothing of `rl`.

Name mapping (case-insensitive; a ``d4rl:`` prefix is ignored; the env family is the first ``-`` field):

=====================================================  ==========================================
name                                                    reference table
=====================================================  ==========================================
``hopper-medium-v2``, ``hopper-random-v0``, ``Hopper-v2``  D4RL (versions 0, 1, 2 are d4rl's)
``hopper`` (no version)                                  D4RL (the conventional "normalised score")
``hopper-medium-v5``, ``Hopper-v5``                      v5 (``Hopper-v5`` entry of v5.json)
=====================================================  ==========================================

Other versions (v3, v4) have no reference and raise, as does an unknown env or a v5 env not yet measured;
the ``ValueError`` names the env.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "D4RL_REFERENCES",
    "V5_ENV_IDS",
    "V5_REFERENCES_PATH",
    "Reference",
    "load_v5_references",
    "normalized_score",
    "first_normalized_score",
    "behaviour_score",
    "reference",
    "reference_returns",
]

#: family -> (random, expert) returns, from d4rl/infos.py (REF_MIN_SCORE, REF_MAX_SCORE of '<env>-random-v0').
D4RL_REFERENCES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
#: family -> the gymnasium env id whose entry of v5.json holds the family's v5 references.
V5_ENV_IDS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}
#: Where the project's v5 references live (shipped as package data).
V5_REFERENCES_PATH = Path(__file__).with_name("references") / "v5.json"

_NAME = re.compile(r"(?P<body>.*?)(?:-v(?P<version>\d+))?")


@dataclass(frozen=True)
class Reference:
    """Random-policy and expert-policy mean episode returns of one env, and where they come from."""

    env: str
    random: float
    expert: float
    source: str
    episodes: int | None = None
    how: str | None = None


def _parse(name: str) -> tuple[str, int | None]:
    text = name.strip()
    if text.lower().startswith("d4rl:"):
        text = text[len("d4rl:") :]
    match = _NAME.fullmatch(text.lower().replace("_", ""))
    body = match["body"] if match else text.lower()
    family = body.split("-")[0]
    if family not in D4RL_REFERENCES:
        raise ValueError(
            f"no reference returns for {name!r}: unknown env {family!r} (known: {', '.join(sorted(D4RL_REFERENCES))}; "
            f"names like 'hopper-medium-v5', 'Hopper-v5', 'hopper-medium-v2' or 'hopper')"
        )
    version = match["version"] if match else None
    return family, None if version is None else int(version)


def load_v5_references(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """The v5 reference table (env id -> entry), or ``{}`` when the file does not exist yet."""
    path = Path(path) if path is not None else V5_REFERENCES_PATH
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the v5 reference returns from {path}: {err}") from err
    if not isinstance(table, dict):
        raise ValueError(f"{path} must hold a JSON object mapping env ids to references")
    return table


def reference(name: str, *, path: str | os.PathLike | None = None) -> Reference:
    """The reference returns that apply to env or dataset `name` (see the module docstring for the mapping).

    `path` overrides the v5 table's location. Raises ``ValueError`` naming the env when none exists.
    """
    family, version = _parse(name)
    if version is None or version <= 2:
        lo, hi = D4RL_REFERENCES[family]
        return Reference(env=f"{family} (D4RL)", random=lo, expert=hi, source="d4rl/infos.py")
    if version != 5:
        raise ValueError(
            f"no reference returns for {name!r}: D4RL's apply to its v0-v2 datasets and the project's to the "
            f"gymnasium v5 envs; v{version} has none"
        )
    env_id = V5_ENV_IDS[family]
    where = Path(path) if path is not None else V5_REFERENCES_PATH
    table = load_v5_references(where)
    entry = next((v for k, v in table.items() if k.lower() == env_id.lower()), None)
    if entry is None:
        state = "does not exist yet" if not where.is_file() else f"has no {env_id!r} entry"
        raise ValueError(
            f"no reference returns for {env_id} (asked for {name!r}): {where} {state}; the collector "
            f"(rl.collect) measures and writes them"
        )
    try:
        lo, hi = float(entry["random"]), float(entry["expert"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: the {env_id!r} entry needs numeric 'random' and 'expert' returns: {err}"
        ) from err
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        raise ValueError(f"{where}: the {env_id!r} references random={lo}, expert={hi} are not usable")
    return Reference(
        env=env_id,
        random=lo,
        expert=hi,
        source=str(where),
        episodes=entry.get("episodes"),
        how=entry.get("how"),
    )


def reference_returns(name: str, *, path: str | os.PathLike | None = None) -> tuple[float, float]:
    """``(random, expert)`` mean episode returns for `name`."""
    ref = reference(name, path=path)
    return ref.random, ref.expert


def normalized_score(
    env_or_dataset_name: str, returns: float | np.ndarray, *, path: str | os.PathLike | None = None
) -> float | np.ndarray:
    """D4RL normalised score ``100 (R - R_random) / (R_expert - R_random)`` of undiscounted return(s) `R`.

    `returns`: a number (-> float) or an array of any shape (-> float64 array of that shape).
    The random reference scores exactly 0 and the expert reference exactly 100.
    """
    ref = reference(env_or_dataset_name, path=path)
    r = np.asarray(returns, dtype=np.float64)
    # Divide before scaling by 100: (x / x) is exactly 1 in floating point, (100 x) / x need not be 100.
    score = 100.0 * ((r - ref.random) / (ref.expert - ref.random))
    return float(score) if score.ndim == 0 else score


def first_normalized_score(names: Iterable[str | None], mean_return: float) -> float | None:
    """`normalized_score` of `mean_return` under the first of `names` that has reference returns (a dataset name,
    then its env id, say; `d4rl:`/`minari:` prefixes dropped, None entries skipped), or None when none has."""
    for name in names:
        if not name:
            continue
        try:
            return float(normalized_score(name.removeprefix("d4rl:").removeprefix("minari:"), mean_return))
        except ValueError:
            continue
    return None


def behaviour_score(dataset: Any, names: Iterable[str | None]) -> float | None:
    """The behaviour data's score: `first_normalized_score` of the mean return of `dataset`'s episodes (an
    `OfflineDataset`; the last episode may be cut), the way an agent's evaluation is scored; None without episodes
    or references."""
    returns = np.asarray(dataset.episode_returns(), np.float64)
    return first_normalized_score(names, float(returns.mean())) if returns.size else None
