"""Minari datasets: read through minari's own API (`read_minari`, `from_minari`) and write (`to_minari`).

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
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rl._atomic import atomic_dir_replace, jsonable
from rl.data.dataset import OfflineDataset, _fmt_row

__all__ = ["read_minari", "from_minari", "to_minari", "minari_root"]

_ROOT_LOCK = threading.Lock()
_METADATA_KEY = "rl_metadata"


def minari_root(root: str | os.PathLike | None = None) -> Path:
    """The Minari datasets directory: `root` if given, else ``$MINARI_DATASETS_PATH``, else minari's default
    (``~/.minari/datasets``), as minari itself resolves it."""
    if root is not None:
        return Path(root).expanduser()
    from minari.storage import get_dataset_path

    return Path(get_dataset_path())


@contextlib.contextmanager
def _minari_env_root(root: Path) -> Iterator[None]:
    """Point minari's ``MINARI_DATASETS_PATH`` at `root` for the duration (minari reads it on every call).

    Process-global, hence the lock; other threads using minari at the same moment would see `root` too.
    """
    with _ROOT_LOCK:
        old = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = str(root)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = old


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


def _episode_buffers(dataset: OfflineDataset) -> list:
    """One ``minari`` EpisodeBuffer per episode; raises if an episode's rows are not a chain of states."""
    from minari.data_collector import EpisodeBuffer

    obs, nxt = dataset.observations, dataset.next_observations
    ends, starts = dataset.episode_ends, dataset.episode_starts
    inside = np.ones(len(dataset), dtype=np.bool_)
    inside[ends] = False  # row t and t + 1 belong to the same episode
    broken = np.flatnonzero(inside[:-1] & np.any(nxt[:-1] != obs[1:], axis=1))
    if broken.size:
        t = int(broken[0])
        k = int(np.searchsorted(ends, t))
        raise ValueError(
            f"cannot express the dataset as Minari episodes: next_observations[{t}] = {_fmt_row(nxt[t])} differs "
            f"from observations[{t + 1}] = {_fmt_row(obs[t + 1])} inside episode {k} (rows {starts[k]}..{ends[k]}); "
            f"{broken.size} such rows. Minari stores each episode's observations once, so inside an episode "
            f"next_observations[t] must equal observations[t + 1]: mark episode ends with terminals/timeouts, "
            f"or use to_hdf5, which keeps next_observations as they are"
        )
    buffers = []
    for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        buffers.append(
            EpisodeBuffer(
                id=k,
                observations=np.concatenate([obs[s : e + 1], nxt[e : e + 1]]),
                actions=dataset.actions[s : e + 1],
                rewards=dataset.rewards[s : e + 1],
                terminations=dataset.terminals[s : e + 1],
                truncations=dataset.timeouts[s : e + 1],
                infos={},
            )
        )
    return buffers


def to_minari(
    dataset: OfflineDataset,
    dataset_id: str,
    root: str | os.PathLike | None = None,
    env_id: str | None = None,
    *,
    overwrite: bool = False,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    algorithm_name: str | None = None,
    author: str | None = None,
    author_email: str | None = None,
    code_permalink: str | None = None,
    description: str | None = None,
) -> Path:
    """Write `dataset` as the Minari dataset `dataset_id` under `root`, atomically; returns its directory.

    Built with ``minari.create_dataset_from_buffers`` (hdf5 storage) in a hidden temporary root inside
    `root`, then renamed into place: on any failure nothing is left behind. An existing dataset id raises
    ``FileExistsError`` unless ``overwrite=True``. `root` defaults to minari's (see `minari_root`).

    `env_id` (default ``metadata["env_id"]``) records the gymnasium env spec, so that minari's
    ``recover_environment`` works; an id that gymnasium does not know is an error when passed explicitly and
    skipped when it came from the metadata. The spaces are Box spaces of the data's shapes (float32) with
    the dataset's action bounds. The reference scores (for ``minari.get_normalized_score``) default to
    `rl.references` when the env has references there; minari records them only when an env is known.
    Raises ``ValueError`` before writing anything if the rows cannot be expressed as episodes.
    """
    import gymnasium as gym
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id

    parse_dataset_id(dataset_id)  # minari's own check of the id syntax, before any work
    root_path = minari_root(root)
    final = root_path / dataset_id
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"Minari dataset {dataset_id!r} already exists at {final}; pass overwrite=True to replace it"
        )
    buffers = _episode_buffers(dataset)

    env_spec = None
    explicit_env = env_id is not None
    env_id = env_id if explicit_env else dataset.metadata.get("env_id")
    if env_id is not None:
        try:
            env_spec = gym.spec(env_id)
        except gym.error.Error:
            if explicit_env:
                raise
    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError("give both ref_min_score and ref_max_score, or neither")
    if ref_min_score is None and env_spec is not None:
        from rl.references import reference_returns

        with contextlib.suppress(ValueError):
            ref_min_score, ref_max_score = reference_returns(env_spec.id)

    act_dim, obs_dim = dataset.act_dim, dataset.obs_dim
    low = dataset.action_low if dataset.action_low is not None else np.full(act_dim, -np.inf, np.float32)
    high = dataset.action_high if dataset.action_high is not None else np.full(act_dim, np.inf, np.float32)
    action_space = gym.spaces.Box(low, high, dtype=np.float32)
    observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), dtype=np.float32)

    root_path.mkdir(parents=True, exist_ok=True)
    # Hidden (dot) name: minari's listing skips it, and it sits on the same file system as the target.
    tmp_root = Path(tempfile.mkdtemp(prefix=".tmp-minari-", dir=root_path))
    try:
        with _minari_env_root(tmp_root), warnings.catch_warnings():
            # minari warns for every optional field left None (author, permalink, ...); they stay optional here.
            warnings.filterwarnings(
                "ignore", message=r".*(is set to None|env_spec is None)", category=UserWarning
            )
            mds = minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=env_spec,
                action_space=action_space,
                observation_space=observation_space,
                ref_min_score=ref_min_score,
                ref_max_score=ref_max_score,
                algorithm_name=algorithm_name,
                author=author,
                author_email=author_email,
                code_permalink=code_permalink,
                description=description,
                data_format="hdf5",
            )
            mds.storage.update_metadata({_METADATA_KEY: jsonable(dataset.metadata)})
        atomic_dir_replace(tmp_root / dataset_id, final, overwrite=overwrite)
        # Namespaces ("a/b/name-v0"): minari keeps a namespace_metadata.json in each namespace directory.
        for parent in reversed(Path(dataset_id).parents[:-1]):
            src = tmp_root / parent / "namespace_metadata.json"
            dst = root_path / parent / "namespace_metadata.json"
            if src.exists() and not dst.exists():
                shutil.copyfile(src, dst)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final
