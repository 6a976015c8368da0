"""Minari datasets: read through minari's API (`read_minari`, `from_minari`); `rl.data.export` writes them.

A Minari episode of `n` steps stores `n + 1` observations and `n` actions, rewards, terminations and
truncations. Flattened to transitions: ``observations = O[:-1]``, ``next_observations = O[1:]``,
``terminals = terminations``, ``timeouts = truncations``. Writing goes the other way, one episode per run of
rows between `episode_ends`, which needs ``next_observations[t] == observations[t + 1]`` inside an episode.

Our metadata dict is stored under the key ``rl_metadata`` of the Minari dataset's metadata and read back
from there, so a dataset written by `to_minari` round-trips exactly (arrays, bounds and JSON-able metadata).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import numpy as np

from rl.data.dataset import OfflineDataset

# The writer (`to_minari`) lives with the other exporters (rl.data.export), which build no dataset.
from rl.data.export import _METADATA_KEY, minari_root

__all__ = ["read_minari", "from_minari"]


def _flatten_obs(obs: Any, space: Any, where: str) -> np.ndarray:
    """Episode observations `[n + 1, ...]` as a float `[n + 1, do]` array (Dict spaces: keys concatenated in
    the space's order, as gymnasium's ``flatten`` does)."""
    import gymnasium as gym

    if isinstance(obs, dict):
        keys = list(space.spaces) if isinstance(space, gym.spaces.Dict) else sorted(obs)
        parts = [_flatten_obs(obs[k], getattr(space, "spaces", {}).get(k), f"{where}/{k}") for k in keys]
        return np.concatenate(parts, axis=1)
    arr = np.asarray(obs)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(
            f"{where}: observations of dtype {arr.dtype} are not supported (need numeric arrays)"
        )
    return arr.reshape(arr.shape[0], -1)


def from_minari(mds: Any, *, source: str | None = None) -> OfflineDataset:
    """Flatten a ``minari.MinariDataset`` (all its episodes, in order) into an `OfflineDataset`.

    Action bounds come from the dataset's Box action space (None where both bounds are infinite).
    Metadata: our own ``rl_metadata`` if the dataset was written by `to_minari`, else a summary of minari's
    (``source``, ``dataset_id``, ``env_id``, ``ref_min_score``/``ref_max_score`` when present).
    """
    import gymnasium as gym

    where = f"Minari dataset {mds.id!r}"
    if not isinstance(mds.action_space, gym.spaces.Box):
        raise ValueError(f"{where}: only Box action spaces are supported, got {mds.action_space}")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "act", "rew", "term", "trunc")}
    for ep in mds.iterate_episodes():
        n = len(ep.rewards)
        if n == 0:
            continue
        obs = _flatten_obs(ep.observations, mds.observation_space, f"{where}, episode {ep.id}")
        if obs.shape[0] != n + 1:
            raise ValueError(
                f"{where}, episode {ep.id}: has {obs.shape[0]} observations for {n} steps (expected {n + 1})"
            )
        cols["obs"].append(obs[:-1])
        cols["next"].append(obs[1:])
        cols["act"].append(np.asarray(ep.actions).reshape(n, -1))
        cols["rew"].append(np.asarray(ep.rewards).reshape(n))
        cols["term"].append(np.asarray(ep.terminations).reshape(n))
        cols["trunc"].append(np.asarray(ep.truncations).reshape(n))
    if not cols["obs"]:
        raise ValueError(f"{where} holds no transitions")

    raw = _raw_metadata(mds)
    if isinstance(raw.get(_METADATA_KEY), dict):
        metadata = dict(raw[_METADATA_KEY])
    else:
        metadata = {"source": source or f"minari:{mds.id}", "dataset_id": mds.id}
        if isinstance(raw.get("env_spec"), str):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                metadata["env_id"] = json.loads(raw["env_spec"])["id"]
        for key in ("ref_min_score", "ref_max_score", "algorithm_name", "description"):
            if key in raw:
                metadata[key] = raw[key]

    low = np.asarray(mds.action_space.low, dtype=np.float32).reshape(-1)
    high = np.asarray(mds.action_space.high, dtype=np.float32).reshape(-1)
    unbounded = np.isneginf(low).all() and np.isposinf(high).all()
    try:
        return OfflineDataset(
            observations=np.concatenate(cols["obs"]),
            actions=np.concatenate(cols["act"]),
            rewards=np.concatenate(cols["rew"]),
            next_observations=np.concatenate(cols["next"]),
            terminals=np.concatenate(cols["term"]),
            timeouts=np.concatenate(cols["trunc"]),
            action_low=None if unbounded else low,
            action_high=None if unbounded else high,
            metadata=metadata,
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _raw_metadata(mds: Any) -> dict:
    from minari.dataset.minari_storage import MinariStorage

    try:
        return MinariStorage.read_raw_metadata(mds.storage.data_path)
    except (ValueError, OSError, json.JSONDecodeError):
        return {}


def read_minari(dataset_id: str, *, root: str | os.PathLike | None = None) -> OfflineDataset:
    """Load the local Minari dataset `dataset_id` (e.g. ``"mujoco/hopper/medium-v0"``); nothing is downloaded.

    `root` is a Minari datasets directory; by default minari's own (``$MINARI_DATASETS_PATH`` or
    ``~/.minari/datasets``). Without `root` this is ``minari.load_dataset(dataset_id)``; with it, the same
    ``minari.MinariDataset`` on ``root/<dataset_id>/data``, without touching the environment variable.
    """
    import minari

    if root is None:
        try:
            mds = minari.load_dataset(dataset_id, download=False)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"Minari dataset {dataset_id!r} is not in the local Minari root {minari_root()} "
                f"(nothing is downloaded at run time; pass root= to read another directory)"
            ) from err
    else:
        data_path = minari_root(root) / dataset_id / "data"
        if not data_path.is_dir():
            raise FileNotFoundError(f"Minari dataset {dataset_id!r} not found: no directory {data_path}")
        try:
            mds = minari.MinariDataset(data_path)
        except Exception as err:  # noqa: BLE001 - minari and h5py meet damaged files with many exception types
            msg = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(
                f"cannot read the Minari dataset in {data_path} (damaged files?): {msg}"
            ) from None
    try:
        return from_minari(mds, source=f"minari:{dataset_id}")
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - the episodes are read here: a truncated or corrupted data file
        msg = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"cannot read the Minari dataset {dataset_id!r} (damaged files?): {msg}") from None
