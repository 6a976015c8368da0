"""D4RL-format HDF5 files: read (`read_hdf5`); written atomically by `rl.data.export.to_hdf5`.

The format is D4RL's: top-level datasets ``observations [N, do]``, ``actions [N, da]``, ``rewards [N]``,
``terminals [N]``, ``timeouts [N]``, optionally ``next_observations [N, do]``, plus optional ``infos/*`` and
``metadata/*`` groups. We write all six arrays (``next_observations`` included, so a reader never has to
rebuild it), the action bounds as ``metadata/action_space/low|high``, each scalar metadata entry as a
``metadata/<key>`` dataset (readable by D4RL tools), and the whole metadata dict as a JSON string in
``metadata/metadata_json`` (what `read_hdf5` prefers, so metadata round-trips exactly when JSON-able; a
dataset rather than an attribute, because HDF5 attributes are limited to 64 KiB).
``infos/*`` (qpos, qvel, log-probs in D4RL files) is not loaded. The six arrays carry HDF5's fletcher32
checksum, so a corrupted copy of a file we wrote fails to read instead of loading other numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rl.data.dataset import REQUIRED_D4RL_KEYS, OfflineDataset, from_d4rl_dict

# The writer (`to_hdf5`) lives with the other exporters (rl.data.export), which build no dataset.
from rl.data.export import _ARRAY_KEYS, _JSON_KEY

__all__ = ["read_hdf5"]


def _scalar_metadata(group) -> dict[str, Any]:
    """Scalar entries of a D4RL ``metadata`` group (nested names joined by '/'); arrays such as the policy
    weights some D4RL files store there are skipped."""
    import h5py

    out: dict[str, Any] = {}

    def visit(name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset) or name.startswith("action_space/") or name == _JSON_KEY:
            return
        if obj.shape not in ((), (1,)):
            return
        value = obj[()]
        if isinstance(value, np.ndarray):
            value = value.reshape(-1)[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, np.generic):
            value = value.item()
        out[name] = value

    group.visititems(visit)
    return out


class _Invalid(ValueError):
    """A readable file that is not a D4RL dataset (our message, passed on as it is)."""


def _read_open_file(f, path: Path, action_low, action_high, max_episode_steps):
    keys = sorted(str(k) for k in f.keys())
    for key in REQUIRED_D4RL_KEYS:
        if key not in f and not (key == "timeouts" and max_episode_steps is not None):
            raise _Invalid(
                f"{path} has no {key!r} dataset (a D4RL-format file needs "
                f"{', '.join(REQUIRED_D4RL_KEYS)}; next_observations is optional); it has: {keys}"
            )
    data: dict[str, np.ndarray] = {}
    for key in _ARRAY_KEYS:
        if key in f:
            data[key] = f[key][()]
    meta_group = f.get("metadata")
    metadata: dict[str, Any]
    if meta_group is not None and _JSON_KEY in meta_group:
        raw = meta_group[_JSON_KEY][()]
        metadata = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        if not isinstance(metadata, dict):
            raise _Invalid(f"{path}: metadata/{_JSON_KEY} holds a {type(metadata).__name__}, not a mapping")
    else:
        metadata = _scalar_metadata(meta_group) if meta_group is not None else {}
        metadata.setdefault("source", str(path))
    if action_low is None and action_high is None and meta_group is not None:
        if "action_space/low" in meta_group and "action_space/high" in meta_group:
            action_low = meta_group["action_space/low"][()]
            action_high = meta_group["action_space/high"][()]
    return data, metadata, action_low, action_high


def read_hdf5(
    path: str | os.PathLike,
    *,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
    max_episode_steps: int | None = None,
) -> OfflineDataset:
    """Load a D4RL-format HDF5 file as an `OfflineDataset`.

    Action bounds come from the arguments, else from ``metadata/action_space/low|high`` if the file has them
    (files written by `to_hdf5` do), else the dataset is unbounded. A missing ``next_observations`` is rebuilt
    by `rl.data.from_d4rl_dict`'s rule (d4rl's ``qlearning_dataset``: rows that end by timeout are dropped).

    Raises ``FileNotFoundError`` if the file does not exist, ``IsADirectoryError`` if `path` is a directory, and
    ``ValueError`` naming the file for a truncated or corrupt file, a missing key (named), or any invalid row
    (field and index named).
    """
    import h5py

    path = Path(path).expanduser()
    if path.is_dir():  # `x.hdf5/` (an unpacked archive, say) exists, so "no such file" would mislead
        raise IsADirectoryError(
            f"{path} is a directory, not an HDF5 file (a D4RL-format dataset is one .hdf5 file)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no such HDF5 file: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot open {path} as an HDF5 file (truncated or corrupt?): {err}") from err
    try:
        with handle as f:
            data, metadata, action_low, action_high = _read_open_file(
                f, path, action_low, action_high, max_episode_steps
            )
    except _Invalid as err:
        # a plain ValueError for the caller: the class only kept our message apart from h5py's errors in here
        raise ValueError(str(err)) from None
    except Exception as err:  # only I/O and parsing happen in there
        # h5py raises these when the data blocks behind an intact header are missing or damaged (a cut-off or
        # corrupted file: a failed fletcher32 checksum, a garbled name, a broken B-tree).
        msg = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"cannot read {path} (truncated or corrupt HDF5 file?): {msg}") from None
    return from_d4rl_dict(
        data,
        action_low=action_low,
        action_high=action_high,
        metadata=metadata,
        max_episode_steps=max_episode_steps,
        where=str(path),
    )
