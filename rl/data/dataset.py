"""`OfflineDataset`: a validated table of transitions, and its conversion from D4RL-style dicts.

A dataset is six aligned arrays, one row per transition `t`:

* `observations [T, do]`, `actions [T, da]`, `rewards [T]`, `next_observations [T, do]` (float32)
* `terminals [T]` (bool): the episode *ended in a terminal state* after transition `t` (no bootstrapping)
* `timeouts [T]` (bool): the episode was *cut* after transition `t` (time limit, or end of the data), so
  `next_observations[t]` is a real state and the value of `t` should still be bootstrapped.

Episodes are the runs of rows between flags: an episode ends at every row with `terminals | timeouts`, and
the final row closes an open last episode. Inside an episode `next_observations[t] == observations[t + 1]`
for data collected by rolling out a policy (the Minari exporter relies on it and checks it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rl.data._fmt import _fmt_num, _fmt_row
from rl.data.export import to_hdf5 as _to_hdf5
from rl.data.export import to_minari as _to_minari

__all__ = ["OfflineDataset", "from_d4rl_dict", "REQUIRED_D4RL_KEYS"]

#: Keys a D4RL-format dict or HDF5 file must hold (``next_observations`` is optional: it is rebuilt).
REQUIRED_D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def _fmt_bounds(low: np.ndarray, high: np.ndarray) -> str:
    # Most action spaces share one bound across dimensions; print them as an interval then.
    if np.all(low == low[0]) and np.all(high == high[0]):
        return f"[{_fmt_num(low[0])}, {_fmt_num(high[0])}]"
    return f"[low={_fmt_row(low, 8)}, high={_fmt_row(high, 8)}]"


def _as_float_array(name: str, value: Any, ndim: int) -> np.ndarray:
    try:
        arr = np.ascontiguousarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot be converted to a float32 array: {err}") from err
    if ndim == 1 and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # [T, 1] rewards are common; they mean the same as [T]
    if arr.ndim != ndim:
        want = "[T]" if ndim == 1 else "[T, dim]"
        raise ValueError(f"{name} must be {ndim}-D {want}, got shape {tuple(arr.shape)}")
    return arr


def _as_flags(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [T], got shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must hold boolean flags, got dtype {arr.dtype}")
    # 0/1 ints (and 0.0/1.0 floats, as some D4RL files store them) are flags; anything else is a bug upstream.
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {arr[i].item()!r} is not a boolean flag (expected True/False or 0/1); "
            f"{bad.size} such rows"
        )
    return arr.astype(np.bool_)


def _check_finite(name: str, arr: np.ndarray) -> None:
    finite = np.isfinite(arr)
    if finite.all():
        return
    if arr.ndim == 1:
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name}[{i}] is {_fmt_num(arr[i])}")
    rows = np.flatnonzero(~finite.all(axis=1))
    i = int(rows[0])
    j = int(np.flatnonzero(~finite[i])[0])
    raise ValueError(
        f"{name}[{i}] = {_fmt_row(arr[i])} is not finite (column {j} is {_fmt_num(arr[i, j])}); "
        f"{rows.size} such rows"
    )


@dataclass(frozen=True, eq=False, repr=False)
class OfflineDataset:
    """A validated offline-RL dataset of `T` transitions.

    Arrays (converted on construction; float inputs become float32, 0/1 flags become bool):

    * observations `[T, do]`, actions `[T, da]`, rewards `[T]`, next_observations `[T, do]`: float32
    * terminals `[T]`, timeouts `[T]`: bool (see the module docstring for their meaning)
    * action_low, action_high `[da]` float32, or None: bounds the actions must lie within (inclusive)
    * metadata: free-form dict (env_id, source, seed, ...); keep it JSON-serialisable so exporters keep it

    Every validation failure is a ``ValueError`` naming the field, the index of the first bad row and what
    was found. The instance is frozen (fields cannot be reassigned) because `sample` caches torch copies
    of the arrays; derive a changed dataset with ``dataclasses.replace(ds, rewards=...)``, which validates
    again and starts a fresh cache.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    # device string -> tensors used by `sample`; built at first use on that device.
    _tensors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # frozen dataclass: set the converted arrays once

        obs = _as_float_array("observations", self.observations, 2)
        T = obs.shape[0]
        if T == 0:
            raise ValueError("observations has 0 rows; a dataset needs at least one transition")
        arrays = {"observations": obs}
        for name, ndim in (("actions", 2), ("rewards", 1), ("next_observations", 2)):
            arrays[name] = _as_float_array(name, getattr(self, name), ndim)
        for name in ("terminals", "timeouts"):
            arrays[name] = _as_flags(name, getattr(self, name))
        for name, arr in arrays.items():
            if arr.shape[0] != T:
                raise ValueError(f"{name} has {arr.shape[0]} rows but observations has {T}")
        if arrays["next_observations"].shape[1] != obs.shape[1]:
            raise ValueError(
                f"next_observations has {arrays['next_observations'].shape[1]} columns "
                f"but observations has {obs.shape[1]}"
            )
        for name in ("observations", "actions", "rewards", "next_observations"):
            _check_finite(name, arrays[name])

        low, high = self._bounds(arrays["actions"].shape[1])
        if low is not None:
            acts = arrays["actions"]
            outside = (acts < low) | (acts > high)
            rows = np.flatnonzero(outside.any(axis=1))
            if rows.size:
                i = int(rows[0])
                j = int(np.flatnonzero(outside[i])[0])
                raise ValueError(
                    f"actions[{i}] = {_fmt_row(acts[i])} is outside the action bounds {_fmt_bounds(low, high)} "
                    f"(column {j} is {_fmt_num(acts[i, j])}); {rows.size} such rows"
                )
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        for name, arr in arrays.items():
            put(name, arr)
        put("action_low", low)
        put("action_high", high)
        put("metadata", dict(self.metadata))

    def _bounds(self, act_dim: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.action_low is None and self.action_high is None:
            return None, None
        if self.action_low is None or self.action_high is None:
            raise ValueError("action_low and action_high must be given together (or both left None)")
        out = []
        for name, value in (("action_low", self.action_low), ("action_high", self.action_high)):
            arr = np.asarray(value, dtype=np.float32)
            try:
                arr = np.ascontiguousarray(np.broadcast_to(arr, (act_dim,)))
            except ValueError as err:
                raise ValueError(
                    f"{name} has shape {arr.shape}, which does not broadcast to the action dim ({act_dim},)"
                ) from err
            if np.isnan(arr).any():
                raise ValueError(f"{name}[{int(np.flatnonzero(np.isnan(arr))[0])}] is nan")
            out.append(arr)
        low, high = out
        bad = np.flatnonzero(low > high)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"action_low[{i}] = {_fmt_num(low[i])} is above action_high[{i}] = {_fmt_num(high[i])}"
            )
        return low, high

    # ------------------------------------------------------------------ structure
    def __len__(self) -> int:
        return int(self.observations.shape[0])

    def __repr__(self) -> str:
        bounds = (
            ""
            if self.action_low is None
            else f", action_bounds={_fmt_bounds(self.action_low, self.action_high)}"
        )
        env = self.metadata.get("env_id")
        return (
            f"OfflineDataset(transitions={len(self)}, episodes={self.num_episodes}, obs_dim={self.obs_dim}, "
            f"act_dim={self.act_dim}{bounds}{'' if env is None else f', env_id={env!r}'})"
        )

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_ends(self) -> np.ndarray:
        """Row index of the last transition of each episode, `[num_episodes]` int64, increasing.

        An episode ends at every row with `terminals | timeouts`; the final row also ends an episode
        when it carries no flag (an open last episode, e.g. a dataset cut at a fixed size).
        """
        ends = np.flatnonzero(self.terminals | self.timeouts).astype(np.int64)
        if ends.size == 0 or ends[-1] != len(self) - 1:
            ends = np.append(ends, np.int64(len(self) - 1))
        return ends

    @property
    def episode_starts(self) -> np.ndarray:
        """Row index of the first transition of each episode, `[num_episodes]` int64."""
        ends = self.episode_ends
        return np.concatenate([np.zeros(1, np.int64), ends[:-1] + 1])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.size)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, `[num_episodes]` float64 (summed in float64)."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    def episode_lengths(self) -> np.ndarray:
        """Number of transitions in each episode, `[num_episodes]` int64."""
        return self.episode_ends - self.episode_starts + 1

    # ------------------------------------------------------------------ sampling
    def tensors(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Torch views of the arrays on `device`, built once and cached.

        Keys: observations `[T, do]`, actions `[T, da]`, rewards `[T]`, next_observations `[T, do]` (float32),
        dones `[T]` float32 = terminals (timeouts are not terminal: a cut episode is still bootstrapped).
        On the CPU the float arrays are shared with numpy (no copy).
        """
        device = torch.device(device)
        key = str(device)
        cached = self._tensors.get(key)
        if cached is None:
            cached = {
                "observations": torch.from_numpy(self.observations).to(device),
                "actions": torch.from_numpy(self.actions).to(device),
                "rewards": torch.from_numpy(self.rewards).to(device),
                "next_observations": torch.from_numpy(self.next_observations).to(device),
                "dones": torch.from_numpy(self.terminals.astype(np.float32)).to(device),
            }
            self._tensors[key] = cached
        return cached

    def sample(
        self, batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """A minibatch of `batch_size` = B transitions drawn uniformly with replacement.

        One `torch.randint` with `generator` (on the generator's device) picks the rows, then every array is
        fancy-indexed on the cached tensors, so there is no Python loop over rows and the same generator state
        gives the same batch. Returns observations `[B, do]`, actions `[B, da]`, rewards `[B]`,
        next_observations `[B, do]`, dones `[B]` (float32 0/1, = terminals), all on `device`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        tensors = self.tensors(device)
        idx = torch.randint(len(self), (int(batch_size),), generator=generator, device=generator.device)
        idx = idx.to(tensors["observations"].device)
        return {name: t[idx] for name, t in tensors.items()}

    # ------------------------------------------------------------------ export shortcuts
    def to_hdf5(self, path, **kwargs):
        """Write this dataset as a D4RL-format HDF5 file; see `rl.data.to_hdf5`."""
        return _to_hdf5(self, path, **kwargs)

    def to_minari(self, dataset_id: str, **kwargs):
        """Write this dataset as a Minari dataset; see `rl.data.to_minari`."""
        return _to_minari(self, dataset_id, **kwargs)

    def replace(self, **changes: Any) -> OfflineDataset:
        """A validated copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _timeouts_from_episode_steps(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """D4RL v0 files carry no `timeouts`: d4rl marks step `max_episode_steps - 1` of each episode instead."""
    out = np.zeros(terminals.shape[0], dtype=np.bool_)
    step = 0
    for i, term in enumerate(terminals):  # sequential by nature (the counter resets); runs once per load
        if term:
            step = 0
        elif step == max_episode_steps - 1:
            out[i] = True
            step = 0
        else:
            step += 1
    return out


def from_d4rl_dict(
    data: Mapping[str, Any],
    *,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
    metadata: dict | None = None,
    max_episode_steps: int | None = None,
    where: str = "dataset",
) -> OfflineDataset:
    """Build an `OfflineDataset` from a D4RL-style dict (``env.get_dataset()`` or an HDF5 file's keys).

    Needs ``observations [N, do]``, ``actions [N, da]``, ``rewards [N]``, ``terminals [N]``, ``timeouts [N]``
    (``timeouts`` may be missing only when ``max_episode_steps`` is given, as for D4RL v0 files).
    When ``next_observations`` is present the rows are taken as they are. When it is absent it is rebuilt
    from the episode structure, following d4rl's ``qlearning_dataset``:

    * ``next_observations[t] = observations[t + 1]`` for every kept row;
    * a row that ends its episode by timeout (``timeouts[t]`` and not ``terminals[t]``) has no stored next
      observation (row ``t + 1`` is the next episode's reset), so it is dropped, as d4rl does; so is the
      file's final row unless it is terminal;
    * a terminal row is kept (its next observation never enters a TD target, as ``done`` masks it); like
      d4rl it gets ``observations[t + 1]``, and the file's final row, if terminal, gets its own observation.
      Unlike d4rl, a row flagged both terminal and timeout is kept (it is terminal), and so is a terminal
      final row (d4rl's loop never reaches the last row);
    * the kept row just before a dropped one (same episode) gets ``timeouts = True``: its episode was cut
      there, so episodes stay well-formed (``next_observations[t] == observations[t + 1]`` inside each).

    ``where`` names the source (a file path) in error messages. Returns float32 arrays, bool flags.
    """
    missing = [k for k in REQUIRED_D4RL_KEYS if k not in data]
    if missing == ["timeouts"] and max_episode_steps is not None:
        missing = []
    if missing:
        raise ValueError(
            f"{where} has no {missing[0]!r} key (a D4RL-format dataset needs {', '.join(REQUIRED_D4RL_KEYS)}; "
            f"next_observations is optional)"
        )
    meta = dict(metadata or {})

    def build(**arrays: Any) -> OfflineDataset:
        try:
            return OfflineDataset(**arrays, action_low=action_low, action_high=action_high, metadata=meta)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err

    obs = np.asarray(data["observations"])
    n = obs.shape[0] if obs.ndim else 0
    # Check flags and lengths here, before rebuilding, so errors point at the rows of the source.
    lengths = {k: np.shape(data[k])[0] if np.ndim(data[k]) else 0 for k in REQUIRED_D4RL_KEYS if k in data}
    for k, length in lengths.items():
        if length != n:
            raise ValueError(f"{where}: {k} has {length} rows but observations has {n}")
    try:
        terminals = _as_flags("terminals", data["terminals"])
        if "timeouts" in data:
            timeouts = _as_flags("timeouts", data["timeouts"])
        else:
            timeouts = _timeouts_from_episode_steps(terminals, int(max_episode_steps))
            meta.setdefault("timeouts_from_max_episode_steps", int(max_episode_steps))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err

    if "next_observations" in data:
        return build(
            observations=obs,
            actions=data["actions"],
            rewards=data["rewards"],
            next_observations=data["next_observations"],
            terminals=terminals,
            timeouts=timeouts,
        )

    if n == 0:
        raise ValueError(f"{where}: observations has 0 rows; a dataset needs at least one transition")
    # Rebuild next observations (see the docstring for the rule). Validate the rows as they are in the source
    # first, so that an error names the source's row index, then drop the rows without a next observation.
    try:
        obs = _as_float_array("observations", obs, 2)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    next_obs = np.empty_like(obs)
    next_obs[:-1] = obs[1:]
    next_obs[-1] = obs[-1]  # only kept when the final row is terminal, where it is never bootstrapped
    full = build(
        observations=obs,
        actions=data["actions"],
        rewards=data["rewards"],
        next_observations=next_obs,
        terminals=terminals,
        timeouts=timeouts,
    )
    keep = terminals | ~timeouts
    keep[-1] = terminals[-1]
    if not keep.any():
        raise ValueError(f"{where}: no transition has a next observation (every row ends by timeout)")
    dropped_next = np.append(~keep[1:], False)
    new_timeouts = (timeouts & terminals) | (keep & ~terminals & dropped_next)
    meta.setdefault("next_observations", "rebuilt from episode boundaries (d4rl qlearning_dataset rule)")
    meta.setdefault("rows_dropped", int((~keep).sum()))
    return build(
        observations=full.observations[keep],
        actions=full.actions[keep],
        rewards=full.rewards[keep],
        next_observations=full.next_observations[keep],
        terminals=terminals[keep],
        timeouts=new_timeouts[keep],
    )
