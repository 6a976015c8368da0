"""Writers of an `OfflineDataset` to files: D4RL-format HDF5 (`to_hdf5`) and Minari (`to_minari`).

They read only the dataset's arrays and attributes, never construct one, so this module does not import
`rl.data.dataset`: `OfflineDataset.to_hdf5` / `.to_minari` call in here, and the readers (`rl.data.hdf5`,
`rl.data.minari_io`, which build datasets) import from here, with no import cycle. Both public names are
re-exported by `rl.data`. h5py, gymnasium and minari are imported only
by the functions that need them.
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
from typing import TYPE_CHECKING

import numpy as np

from rl._atomic import atomic_dir_replace, atomic_file, jsonable
from rl.data._fmt import _fmt_row

if TYPE_CHECKING:
    from rl.data.dataset import OfflineDataset

__all__ = ["to_hdf5", "to_minari", "minari_root"]

# ---------------------------------------------------------------------------------------------------- HDF5
# The names of the D4RL HDF5 layout, shared with the reader (rl.data.hdf5).
_JSON_KEY = "metadata_json"
_ARRAY_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def to_hdf5(
    dataset: OfflineDataset,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compression: str | None = None,
) -> Path:
    """Write `dataset` to `path` as a D4RL-format HDF5 file, atomically; returns the path.

    The file is written to a temporary name in the same directory and moved into place with ``os.replace``
    only once complete, so a reader never sees a partial file and a failed write leaves nothing behind.
    An existing file is replaced only with ``overwrite=True`` (else ``FileExistsError``). ``compression``
    is passed to h5py (e.g. ``"gzip"``; default none, which is fastest to read).
    """
    import h5py

    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    metadata = jsonable(dataset.metadata)
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key in _ARRAY_KEYS:
                # fletcher32: a flipped bit in the arrays fails the read instead of training on it
                f.create_dataset(key, data=getattr(dataset, key), compression=compression, fletcher32=True)
            meta = f.create_group("metadata")
            for key, value in metadata.items():
                if (
                    isinstance(value, (str, int, float, bool))
                    and "/" not in key
                    and key not in ("action_space", _JSON_KEY)
                ):
                    meta.create_dataset(key, data=value)
            if dataset.action_low is not None:
                meta.create_dataset("action_space/low", data=dataset.action_low)
                meta.create_dataset("action_space/high", data=dataset.action_high)
            meta.create_dataset(_JSON_KEY, data=json.dumps(metadata))
            f.attrs["format"] = "d4rl"
    return path


# ---------------------------------------------------------------------------------------------------- Minari
# Our metadata key (read back by rl.data.minari_io), and the lock around minari's process-global root.
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
    `rl.data.references` when the env has references there; minari records them only when an env is known.
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
        from rl.data.references import reference_returns

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
