"""`load(source)`: one entry point for every dataset source, and the import-guarded d4rl loader."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from rl.data.dataset import OfflineDataset, from_d4rl_dict
from rl.data.hdf5 import read_hdf5
from rl.data.minari_io import read_minari

__all__ = ["load", "read_d4rl", "ACCEPTED_SOURCES"]

ACCEPTED_SOURCES = (
    "a path to a D4RL-format HDF5 file ('/data/hopper_medium-v2.hdf5'; .hdf5/.h5/.hdf, or any existing file)",
    "'d4rl:<name>' ('d4rl:hopper-medium-v2'; needs the d4rl package)",
    "'minari:<dataset_id>' ('minari:mujoco/hopper/medium-v0'; a local Minari dataset, root= picks the directory)",
    "one of the project's own names '<env>-<level>-v5' ('hopper-medium-v5'; generated on first use by rl.collect)",
)
_HDF5_SUFFIXES = {".hdf5", ".h5", ".hdf"}
# "<env>-<level>-v<N>": env like hopper/halfcheetah/walker2d, level like medium or medium-replay.
_OWN_NAME = re.compile(r"(?P<env>[a-z][a-z0-9_]*)-(?P<level>[a-z]+(?:-[a-z]+)*)-v(?P<version>\d+)")


def read_d4rl(name: str, **kwargs: Any) -> OfflineDataset:
    """``gym.make(name).get_dataset()`` through the `d4rl` package, converted by `from_d4rl_dict`.

    Action bounds are the env's action space; `kwargs` go to ``get_dataset`` (e.g. ``h5path=``).
    Raises ``ImportError`` with what to do instead when d4rl (or gym) is not installed.
    """
    try:
        import d4rl  # noqa: F401  (registers the offline envs with gym)
        import gym
    except ImportError as err:
        raise ImportError(
            f"'d4rl:{name}' needs the d4rl package (with gym and mujoco_py), which is not installed and is no "
            f"longer installable on current Python/MuJoCo. Get the dataset's HDF5 file once (d4rl's "
            f"DATASET_URLS) and pass its local path instead, e.g. rl.data.load('/path/to/{name}.hdf5'), "
            f"or use a Minari dataset ('minari:<id>') or one of the project's own datasets (e.g. 'hopper-medium-v5')"
        ) from err
    env = gym.make(name)
    data = env.get_dataset(**kwargs)
    space = env.action_space
    return from_d4rl_dict(
        data,
        action_low=getattr(space, "low", None),
        action_high=getattr(space, "high", None),
        metadata={"source": f"d4rl:{name}", "env_id": name},
        max_episode_steps=getattr(env, "_max_episode_steps", None),
        where=f"d4rl dataset {name!r}",
    )


def _forms() -> str:
    return "; ".join(ACCEPTED_SOURCES)


def load(source: str | os.PathLike, **kwargs: Any) -> OfflineDataset:
    """Load an `OfflineDataset` from `source` (see `ACCEPTED_SOURCES`); `kwargs` go to the loader.

    * a path (``os.PathLike``, or a string ending in .hdf5/.h5/.hdf, or naming an existing file):
      `read_hdf5(path, action_low=, action_high=, max_episode_steps=)`
    * ``"d4rl:<name>"``: `read_d4rl` (import-guarded)
    * ``"minari:<dataset_id>"``: `read_minari(dataset_id, root=)`
    * ``"<env>-<level>-v<N>"`` with N >= 3 (the project's own, e.g. ``"hopper-medium-v5"``):
      ``rl.collect.load_or_make(name, **kwargs)`` (the dataset factory, `rl.collect.generate`), imported only
      here; it generates and caches the dataset on first use, saying on stderr what it makes (``progress=False``:
      silent). D4RL's own names (v0-v2) are not ours: they raise, suggesting ``d4rl:`` or a file.

    Anything else raises ``ValueError`` listing the accepted forms.
    """
    if isinstance(source, os.PathLike):
        return read_hdf5(source, **kwargs)
    if not isinstance(source, str):
        raise TypeError(f"source must be a str or a path, got {type(source).__name__}; accepted: {_forms()}")
    text = source.strip()
    if text.startswith("d4rl:"):
        return read_d4rl(text[len("d4rl:") :], **kwargs)
    if text.startswith("minari:"):
        return read_minari(text[len("minari:") :], **kwargs)
    path = Path(text).expanduser()
    if path.suffix.lower() in _HDF5_SUFFIXES or path.is_file():
        return read_hdf5(path, **kwargs)
    match = _OWN_NAME.fullmatch(text)
    if match:
        if int(match["version"]) <= 2:
            raise ValueError(
                f"{text!r} is a D4RL dataset name; D4RL datasets are not generated here. Use 'd4rl:{text}' "
                f"(needs the d4rl package) or the path to its downloaded HDF5 file. The project's own datasets "
                f"are v5, e.g. '{match['env']}-{match['level']}-v5'"
            )
        # Imported here, not at the top: the reader does not need the factory (gymnasium, MuJoCo, the
        # policies) to read files. The factory imports the readers, never this module.
        from rl.collect.generate import load_or_make

        return load_or_make(text, **kwargs)
    raise ValueError(
        f"cannot load {source!r}: not a file and not a recognised dataset name. Accepted: {_forms()}"
    )
