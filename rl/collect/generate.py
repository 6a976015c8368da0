"""D4RL-style offline datasets on gymnasium MuJoCo v5, made from the project's own SAC behaviour policies.

Names are ``<env>-<level>-v5`` with env in ``hopper``, ``walker2d``, ``halfcheetah`` and level in

=================  ================================================================================================
level              what it holds (as D4RL's gym-locomotion datasets)
=================  ================================================================================================
``random``         a uniformly random policy (1M transitions by default)
``medium``         the *stochastic* policy of the SAC snapshot whose eval return is closest to 1/3 of the expert's
                   (D4RL's early-stopped "medium" agent), 1M transitions
``expert``         the stochastic policy of the best SAC snapshot, 1M transitions
``medium-replay``  the medium agent's replay buffer, rebuilt: its first ``start_steps`` transitions uniformly
                   random, then each shipped training snapshot ``i`` (stochastic policy, the SAC exploration
                   noise) rolled out for the steps between snapshot ``i-1`` and ``i``. Default size = the number
                   of environment steps the medium agent trained for (what its buffer held); ``--size`` rescales
                   the segments proportionally. Segments end with a cut (timeout) episode.
``medium-expert``  ``medium`` followed by ``expert`` (D4RL's concatenation), 2M transitions by default
=================  ================================================================================================

D4RL also rolled out its stochastic SAC policies for medium/expert; we do the same. Rollouts run many environments in
lockstep with one batched policy call per step. Everything is seeded: the same ``(name, size, seed)`` gives identical
arrays. Running episodes are finished once the budget is reached; episodes are kept in order of their start and the
concatenation is cut to exactly ``size`` transitions (the last kept episode then ends with a timeout).

Datasets are stored in Minari format (via ``rl.data.to_minari``) under a cache root (argument ``root``, else
``$MISA_DATA_DIR``, else ``~/.cache/misa-toolkit/datasets``) with id ``misa/<name>`` (size/seed other than the defaults
are part of the id) and read back with ``rl.data.load("minari:<id>", root=...)``.

The policies live in ``rl/collect/checkpoints/`` as ``<Env-v5>-expert.pt``, ``<Env-v5>-medium.pt``,
``<Env-v5>-replay_*.pt`` with a manifest ``<Env-v5>.json`` (command, seed, step and eval return of each snapshot); the
project's reference returns in ``rl/data/references/v5.json`` (``python -m rl.collect references``).

This module generates and caches; it imports no CLI. ``python -m rl.collect`` (the CLI: make/list/info, reference
returns, shipping checkpoints) and ``rl.data.load("hopper-medium-v5")`` both call `load_or_make` here, and
`rl.collect` re-exports every public name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rl._atomic import atomic_write
from rl.collect.snapshots import load_policy_snapshot
from rl.data.dataset import OfflineDataset
from rl.data.export import to_minari
from rl.data.minari_io import read_minari
from rl.networks import TanhGaussianPolicy

__all__ = [
    "ENVS",
    "LEVELS",
    "DEFAULT_SIZE",
    "DEFAULT_N_ENVS",
    "CHECKPOINT_DIR",
    "DatasetName",
    "CachedVariant",
    "parse_name",
    "all_names",
    "data_root",
    "dataset_id",
    "default_size",
    "manifest",
    "load_role_policy",
    "rollout",
    "replay_segments",
    "make_dataset",
    "load_or_make",
    "is_cached",
    "cached_variants",
    "describe_generation",
]

#: dataset env prefix -> gymnasium env id
ENVS: dict[str, str] = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}
LEVELS: tuple[str, ...] = ("random", "medium", "medium-replay", "expert", "medium-expert")
DEFAULT_SIZE = 1_000_000
# rl/collect/checkpoints/, shipped as package data next to this module
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
DEFAULT_N_ENVS = 32
_NAME_RE = re.compile(r"(?P<env>[a-z0-9]+)-(?P<level>[a-z]+(?:-[a-z]+)*)-v5")


# ----------------------------------------------------------------------------------------------------------------
# Names, roots, manifests
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetName:
    """A parsed dataset name: ``hopper-medium-v5`` -> env ``hopper``, env_id ``Hopper-v5``, level ``medium``."""

    env: str
    env_id: str
    level: str

    @property
    def name(self) -> str:
        return f"{self.env}-{self.level}-v5"


def parse_name(name: str) -> DatasetName:
    """Parse ``<env>-<level>-v5``; a ``ValueError`` names the bad part and lists the valid ones."""
    m = _NAME_RE.fullmatch(name.strip().lower())
    if m is None:
        raise ValueError(
            f"dataset name {name!r} is not of the form '<env>-<level>-v5', e.g. 'hopper-medium-v5'"
        )
    env, level = m["env"], m["level"]
    if env not in ENVS:
        raise ValueError(f"unknown env {env!r} in dataset name {name!r}; known: {', '.join(ENVS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} in dataset name {name!r}; known: {', '.join(LEVELS)}")
    return DatasetName(env, ENVS[env], level)


def all_names() -> list[str]:
    """Every dataset name this module can make."""
    return [f"{e}-{lv}-v5" for e in ENVS for lv in LEVELS]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Cache directory: `root`, else ``$MISA_DATA_DIR``, else ``~/.cache/misa-toolkit/datasets``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MISA_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/misa-toolkit/datasets").expanduser()


def manifest(env_id: str, checkpoint_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of the shipped checkpoints of `env_id` (``rl/collect/checkpoints/<env_id>.json``)."""
    path = Path(checkpoint_dir or CHECKPOINT_DIR) / f"{env_id}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped checkpoints for {env_id}: {path} does not exist (train with `python -m rl.collect.sac "
            f"--env {env_id}` and ship snapshots as docs/datasets.md describes)"
        )
    out = json.loads(path.read_text())
    out["_dir"] = str(path.parent)
    out["_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def load_role_policy(
    env_id: str, role: str, checkpoint_dir: str | os.PathLike | None = None
) -> tuple[TanhGaussianPolicy, dict[str, Any]]:
    """The shipped ``"expert"`` or ``"medium"`` policy of `env_id` as float32, with its manifest entry."""
    man = manifest(env_id, checkpoint_dir)
    if role not in man:
        raise ValueError(
            f"the manifest of {env_id} has no {role!r} policy; it has {sorted(k for k in man if k[0] != '_')}"
        )
    entry = man[role]
    policy, _ = load_policy_snapshot(Path(man["_dir"]) / entry["file"])
    return policy, entry


def _default_size(level: str, env_id: str, checkpoint_dir: str | os.PathLike | None = None) -> int:
    if level == "medium-replay":
        return int(manifest(env_id, checkpoint_dir)["medium"]["step"])
    if level == "medium-expert":
        return 2 * DEFAULT_SIZE
    return DEFAULT_SIZE


def default_size(name: str, checkpoint_dir: str | os.PathLike | None = None) -> int:
    """Transitions in dataset `name` when no size is given: 1M; the medium agent's step count for medium-replay
    (read from the manifest, so ``FileNotFoundError`` without shipped checkpoints); 2M for medium-expert."""
    dn = parse_name(name)
    return _default_size(dn.level, dn.env_id, checkpoint_dir)


def dataset_id(
    name: str, size: int | None = None, seed: int = 0, checkpoint_dir: str | os.PathLike | None = None
) -> str:
    """Minari id in the cache: ``misa/<env>-<level>[-n<size>][-seed<seed>]-v5`` (defaults are left out)."""
    dn = parse_name(name)
    body = f"{dn.env}-{dn.level}"
    if size is not None and size != _default_size(dn.level, dn.env_id, checkpoint_dir):
        body += f"-n{int(size)}"
    if seed != 0:
        body += f"-seed{int(seed)}"
    return f"misa/{body}-v5"


# ----------------------------------------------------------------------------------------------------------------
# Rollouts
# ----------------------------------------------------------------------------------------------------------------
def _stream_seed(seed: int, *stream: int) -> tuple[int, np.random.Generator]:
    """A torch seed and a numpy generator (for env reset seeds) for one independent stream of `seed`."""
    ss = np.random.SeedSequence([int(seed), *[int(s) for s in stream]])
    torch_seed = int(ss.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))
    return torch_seed, np.random.default_rng(ss.spawn(1)[0])


@torch.no_grad()
def rollout(
    env_id: str,
    policy: TanhGaussianPolicy | None,
    size: int,
    seed: int = 0,
    stream: Sequence[int] = (0,),
    deterministic: bool = False,
    n_envs: int = DEFAULT_N_ENVS,
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """Exactly `size` transitions of `policy` (None: uniform random actions) on `env_id`, as D4RL-style arrays.

    Returns ``observations [size, do], actions [size, da] (env units), rewards [size], next_observations
    [size, do]`` (float32) and ``terminals, timeouts [size]`` (bool). `n_envs` environments run in lockstep; once
    `size` steps have been taken no new episode starts and the running ones finish; episodes are ordered by start
    and the concatenation is cut at `size` (a cut episode ends with ``timeouts=True``). Randomness: torch
    generator and env reset seeds from ``SeedSequence([seed, *stream])``; `n_envs` is part of the result.
    `progress`: an object with ``update(n)`` (a tqdm bar) or None; it is advanced by exactly `size` in all.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1; got {size}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1; got {n_envs}")
    torch_seed, np_rng = _stream_seed(seed, *stream)
    gen = torch.Generator().manual_seed(torch_seed)
    n_envs = min(n_envs, size)
    envs = [gym.make(env_id) for _ in range(n_envs)]
    space = envs[0].action_space
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    do, da = envs[0].observation_space.shape[0], space.shape[0]
    max_t = envs[0].spec.max_episode_steps or 1000
    ep_obs = np.zeros((n_envs, max_t + 1, do), np.float32)
    ep_act = np.zeros((n_envs, max_t, da), np.float32)
    ep_rew = np.zeros((n_envs, max_t), np.float32)
    ep_len = np.zeros(n_envs, np.int64)
    ep_start = np.zeros(n_envs, np.int64)
    episodes: list[tuple[int, dict[str, np.ndarray]]] = []
    order = 0

    def start(i: int) -> None:
        nonlocal order
        o, _ = envs[i].reset(seed=int(np_rng.integers(2**31 - 1)))
        ep_obs[i, 0] = o
        ep_len[i] = 0
        ep_start[i] = order
        order += 1

    def finish(i: int, terminated: bool) -> None:
        n = int(ep_len[i])
        term = np.zeros(n, bool)
        tout = np.zeros(n, bool)
        (term if terminated else tout)[n - 1] = True
        episodes.append(
            (
                int(ep_start[i]),
                {
                    "observations": ep_obs[i, :n].copy(),
                    "actions": ep_act[i, :n].copy(),
                    "rewards": ep_rew[i, :n].copy(),
                    "next_observations": ep_obs[i, 1 : n + 1].copy(),
                    "terminals": term,
                    "timeouts": tout,
                },
            )
        )

    for i in range(n_envs):
        start(i)
    active = np.ones(n_envs, bool)
    taken = 0
    while active.any():
        idx = np.flatnonzero(active)
        if policy is None:
            a = (torch.rand(len(idx), da, generator=gen) * 2.0 - 1.0).numpy()
        else:
            o = torch.from_numpy(ep_obs[idx, ep_len[idx]])
            dist = policy(o)
            a = torch.tanh(dist.mean) if deterministic else dist.sample(1, gen).squeeze(1)
            a = a.numpy()
        a_env = np.clip(low + (a + 1.0) * 0.5 * (high - low), low, high).astype(np.float32)
        for j, i in enumerate(idx):
            t = int(ep_len[i])
            o2, r, terminated, truncated, _ = envs[i].step(a_env[j])
            ep_act[i, t], ep_rew[i, t], ep_obs[i, t + 1] = a_env[j], r, o2
            ep_len[i] = t + 1
            if terminated or truncated:
                finish(i, bool(terminated))
                if taken + len(idx) >= size:
                    active[i] = False
                else:
                    start(i)
        if progress is not None:
            # Count the transitions the result will hold, `size` in all: the steps past the budget (the running
            # episodes finishing, then cut to `size` in start order) would carry the bar past its total.
            progress.update(min(taken + len(idx), size) - min(taken, size))
            if taken < size <= taken + len(idx) and hasattr(progress, "set_postfix_str"):
                progress.set_postfix_str(f"finishing {int(active.sum())} running episodes", refresh=False)
        taken += len(idx)
    for e in envs:
        e.close()

    episodes.sort(key=lambda x: x[0])
    out: dict[str, list[np.ndarray]] = {k: [] for k in episodes[0][1]}
    total = 0
    for _, ep in episodes:
        n = min(len(ep["rewards"]), size - total)
        for k, v in ep.items():
            out[k].append(v[:n])
        total += n
        if total >= size:
            if n < len(ep["rewards"]) or not (ep["terminals"][n - 1] or ep["timeouts"][n - 1]):
                out["timeouts"][-1] = out["timeouts"][-1].copy()
                out["timeouts"][-1][n - 1] = True
            break
    if total < size:  # cannot happen: all running episodes are finished after the budget is reached
        raise RuntimeError(f"rollout produced {total} transitions, fewer than the {size} asked for")
    return {k: np.concatenate(v) for k, v in out.items()}


def replay_segments(env_id: str, checkpoint_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The medium agent's replay buffer as segments ``{"file": str | None, "from_step", "to_step", "steps"}``.

    The first segment (``file=None``) is SAC's uniform-random warm-up; then snapshot ``i`` covers
    ``(step_{i-1}, step_i]``. The segments tile ``[0, medium_step)`` exactly.
    """
    man = manifest(env_id, checkpoint_dir)
    rep = man["medium_replay"]
    segs: list[dict[str, Any]] = []
    prev = 0
    start_steps = int(rep["start_steps"])
    if start_steps > 0:
        segs.append({"file": None, "from_step": 0, "to_step": start_steps, "steps": start_steps})
        prev = start_steps
    for s in rep["snapshots"]:
        step = int(s["step"])
        if step <= prev:
            raise ValueError(
                f"{env_id} manifest: medium_replay snapshot steps must increase past {prev}; got {step}"
            )
        segs.append({"file": s["file"], "from_step": prev, "to_step": step, "steps": step - prev})
        prev = step
    if prev != int(man["medium"]["step"]):
        raise ValueError(
            f"{env_id} manifest: medium_replay segments end at step {prev}, not at the medium step {man['medium']['step']}"
        )
    return segs


def _split(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` into integer parts proportional to `weights` (largest remainder; sums exactly to `total`)."""
    w = np.asarray(weights, np.float64)
    raw = total * w / w.sum()
    parts = np.floor(raw).astype(np.int64)
    rest = total - int(parts.sum())
    for i in np.argsort(-(raw - parts), kind="stable")[:rest]:
        parts[i] += 1
    return parts.tolist()


def _progress(total: int, desc: str, enabled: bool, unit: str = "step") -> Any:
    """A tqdm bar on stderr (disabled unless `enabled`), redrawn at most once a second."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, mininterval=1.0, file=sys.stderr)


def make_dataset(
    name: str,
    size: int | None = None,
    seed: int = 0,
    *,
    n_envs: int = DEFAULT_N_ENVS,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> OfflineDataset:
    """Generate dataset `name` (not cached; see `load_or_make`) and return an `rl.data.OfflineDataset`.

    `size`: transitions (default: 1M; the medium step count for medium-replay; 2M for medium-expert, built from
    the cached medium and expert datasets of half that size each, in `root`).
    """
    dn = parse_name(name)
    size = _default_size(dn.level, dn.env_id, checkpoint_dir) if size is None else int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1; got {size}")
    meta: dict[str, Any] = {
        "env_id": dn.env_id,
        "name": dn.name,
        "level": dn.level,
        "size": size,
        "seed": seed,
        "n_envs": n_envs,
        "generator": "rl.collect",
        "policy_sampling": "stochastic" if dn.level != "random" else "uniform random",
    }
    env = gym.make(dn.env_id)
    low, high = env.action_space.low, env.action_space.high
    env.close()
    if dn.level != "random":
        man = manifest(dn.env_id, checkpoint_dir)
        meta["checkpoints_sha256"] = man["_sha256"]

    if dn.level == "medium-expert":
        half = size // 2
        parts = [
            load_or_make(
                f"{dn.env}-medium-v5", half, seed, root=root, progress=progress, checkpoint_dir=checkpoint_dir
            ),
            load_or_make(
                f"{dn.env}-expert-v5",
                size - half,
                seed,
                root=root,
                progress=progress,
                checkpoint_dir=checkpoint_dir,
            ),
        ]
        arrays = {
            k: np.concatenate([getattr(p, k) for p in parts])
            for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
        }
        meta["parts"] = [
            dataset_id(f"{dn.env}-medium-v5", half, seed, checkpoint_dir),
            dataset_id(f"{dn.env}-expert-v5", size - half, seed, checkpoint_dir),
        ]
        meta["medium_size"] = half
    else:
        bar = _progress(size, dn.name, progress)
        try:
            if dn.level == "random":
                arrays = rollout(dn.env_id, None, size, seed, (1,), n_envs=n_envs, progress=bar)
            elif dn.level in ("medium", "expert"):
                policy, entry = load_role_policy(dn.env_id, dn.level, checkpoint_dir)
                meta["policy"] = {k: entry[k] for k in ("file", "step", "eval_return") if k in entry}
                stream = (2,) if dn.level == "medium" else (3,)
                arrays = rollout(dn.env_id, policy, size, seed, stream, n_envs=n_envs, progress=bar)
            else:  # medium-replay
                segs = replay_segments(dn.env_id, checkpoint_dir)
                counts = _split(size, [s["steps"] for s in segs])
                chunks = []
                cdir = Path(manifest(dn.env_id, checkpoint_dir)["_dir"])
                for k, (seg, n) in enumerate(zip(segs, counts)):
                    if n == 0:
                        continue
                    pol = None if seg["file"] is None else load_policy_snapshot(cdir / seg["file"])[0]
                    chunks.append(rollout(dn.env_id, pol, n, seed, (4, k), n_envs=n_envs, progress=bar))
                arrays = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
                meta["segments"] = [
                    {
                        "file": s["file"],
                        "from_step": s["from_step"],
                        "to_step": s["to_step"],
                        "transitions": n,
                    }
                    for s, n in zip(segs, counts)
                ]
        finally:
            bar.close()
    return OfflineDataset(**arrays, action_low=low, action_high=high, metadata=meta)


CHECKSUMS = "checksums.json"


def _digests(data_dir: Path) -> dict[str, str]:
    out = {}
    for f in sorted(data_dir.iterdir()):
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            out[f.name] = h.hexdigest()
    return out


def _seal(did: str, root: Path) -> None:
    """Record the SHA-256 of the cached dataset's files (Minari's HDF5 has no checksums of its own)."""
    text = json.dumps(_digests(root / did / "data"), indent=1)
    atomic_write(root / did / CHECKSUMS, lambda tmp: Path(tmp).write_text(text))


def _read_cached(did: str, root: Path) -> OfflineDataset:
    """The cached dataset, its files checked against the recorded SHA-256s first (a cache made before the
    checksums existed is sealed on this read). `ValueError` naming the file on a mismatch.

    Read with `read_minari` (what ``rl.data.load("minari:<id>")`` calls), not through `rl.data.load`, which
    imports this module for the project's own names.
    """
    sums_path = root / did / CHECKSUMS
    if sums_path.is_file():
        try:
            want = json.loads(sums_path.read_text())
        except ValueError:
            want = None
        have = _digests(root / did / "data")
        if want != have:
            bad = sorted(k for k in set(have) | set(want or {}) if (want or {}).get(k) != have.get(k))
            raise ValueError(
                f"the cached dataset {root / did} is damaged ({', '.join(bad) or CHECKSUMS} differs from the "
                f"checksum recorded when it was made); delete {root / did} and it is made again on the next use"
            )
        return read_minari(did, root=root)
    ds = read_minari(did, root=root)
    with contextlib.suppress(OSError):  # a read-only cache stays usable, only unsealed
        _seal(did, root)
    return ds


def is_cached(
    name: str,
    size: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> bool:
    """Whether dataset `name` (with this size and seed) is in the cache root (False if its checkpoints are absent)."""
    try:
        did = dataset_id(name, size, seed, checkpoint_dir)
    except FileNotFoundError:
        return False
    return (data_root(root) / did / "data").is_dir()


@dataclass(frozen=True)
class CachedVariant:
    """One cached copy of a dataset name: ``size`` transitions (None: the default size of a medium-replay whose
    checkpoints are absent, so unknown), ``seed``, whether the size is the name's default, its Minari id and
    directory."""

    name: str
    size: int | None
    seed: int
    is_default_size: bool
    dataset_id: str
    path: Path

    def label(self) -> str:
        """``1,000,000 (default)`` / ``100,000 (seed 1)``: how `list` and `info` name this variant."""
        notes = (["default"] if self.is_default_size else []) + ([f"seed {self.seed}"] if self.seed else [])
        text = "size unknown" if self.size is None else f"{self.size:,}"
        return text + (f" ({', '.join(notes)})" if notes else "")


def cached_variants(
    name: str, root: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None
) -> list[CachedVariant]:
    """Every cached variant (size, seed) of dataset `name` in the cache root, by seed, default size first, then
    by decreasing size. Read from the directory names that `dataset_id` makes (``misa/<env>-<level>[-n<size>]
    [-seed<seed>]-v5`` with a ``data`` directory), without opening the datasets."""
    dn = parse_name(name)
    base = data_root(root) / "misa"
    pattern = re.compile(
        rf"{re.escape(dn.env)}-{re.escape(dn.level)}(?:-n(?P<n>\d+))?(?:-seed(?P<seed>\d+))?-v5"
    )
    try:
        default: int | None = _default_size(dn.level, dn.env_id, checkpoint_dir)
    except FileNotFoundError:  # medium-replay's default needs the manifest
        default = None
    out = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        m = pattern.fullmatch(d.name)
        if m is None or not (d / "data").is_dir():
            continue
        size = int(m["n"]) if m["n"] else default
        out.append(CachedVariant(dn.name, size, int(m["seed"] or 0), m["n"] is None, f"misa/{d.name}", d))
    out.sort(key=lambda v: (v.seed, not v.is_default_size, -(v.size or 0)))
    return out


def _check_writable(root: Path) -> None:
    """`PermissionError` naming the cache directory (and how to pick another) when a dataset cannot be saved there."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test.", suffix=".tmp"):
            pass
    except OSError as err:
        raise PermissionError(
            f"the dataset cache {root} is not writable ({err.strerror or err}); set MISA_DATA_DIR to a writable "
            "directory (or pass root=) so the generated dataset can be kept"
        ) from None


# Throughput of a whole generation (rollout with the default 32 envs in lockstep, Minari write, checksums, read
# back), in transitions/s, measured with `make_dataset` + `to_minari` + `_read_cached` on 40,000 transitions per
# dataset on the project's 2-core CPU (torch 1 thread, the other core busy) in 2025: hopper random 4,200 /
# medium 6,700 / expert 5,200; walker2d 4,100 / 5,400 / 4,600; halfcheetah 11,600 / 8,400 / 10,200. Random
# data is slower per transition than its rollout alone (7,400/s) because its short episodes make many Minari
# episodes to write. Below: the slower of medium/expert for any policy-driven level (medium-replay included).
_RATE = {
    ("hopper", "random"): 4_200,
    ("hopper", "policy"): 5_200,
    ("walker2d", "random"): 4_100,
    ("walker2d", "policy"): 4_600,
    ("halfcheetah", "random"): 11_600,
    ("halfcheetah", "policy"): 8_400,
}


def _seconds(env: str, level: str, size: int) -> float:
    """Rough wall time of generating `size` transitions of `env`/`level` at the measured `_RATE`."""
    return size / _RATE[(env, "random" if level == "random" else "policy")]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    return (
        f"about {minutes} minute{'s' if minutes != 1 else ''}"
        if minutes < 90
        else f"about {seconds / 3600:.1f} hours"
    )


def _show_path(path: Path) -> str:
    """`path` with the home directory written as ``~`` (shorter, and the same on every account)."""
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def describe_generation(
    name: str,
    size: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> str:
    """One line saying what generating `name` makes, how big, where, and roughly how long; e.g.
    ``generating hopper-medium-v5: 1,000,000 transitions with the shipped medium policy (SAC step 120,000) into
    ~/.cache/misa-toolkit/datasets/misa/hopper-medium-v5 (about 3 minutes on a 2-core CPU)``.

    The time is the measured throughput `_RATE` (transitions/s on a 2-core CPU) applied to the transitions still
    to generate: a medium-expert whose parts are cached is only a concatenation.
    """
    dn = parse_name(name)
    n = _default_size(dn.level, dn.env_id, checkpoint_dir) if size is None else int(size)
    where = _show_path(data_root(root) / dataset_id(name, size, seed, checkpoint_dir))
    if dn.level == "random":
        how = "with uniformly random actions"
    elif dn.level in ("medium", "expert"):
        step = manifest(dn.env_id, checkpoint_dir)[dn.level].get("step")
        how = f"with the shipped {dn.level} policy" + (
            f" (SAC step {int(step):,})" if step is not None else ""
        )
    elif dn.level == "medium-replay":
        k = sum(s["file"] is not None for s in replay_segments(dn.env_id, checkpoint_dir))
        how = f"from the medium agent's replay buffer (uniform warm-up, then {k} shipped training snapshots)"
    if dn.level != "medium-expert":
        todo = _seconds(dn.env, dn.level, n)
    else:  # the two halves are datasets of their own, made first unless cached
        half = n // 2
        parts = [(f"{dn.env}-medium-v5", half), (f"{dn.env}-expert-v5", n - half)]
        cached = [is_cached(p, m, seed, root, checkpoint_dir) for p, m in parts]
        how = "as the concatenation of " + " and ".join(
            f"{p} ({m:,}{', cached' if c else ''})" for (p, m), c in zip(parts, cached)
        )
        todo = sum(_seconds(dn.env, parse_name(p).level, m) for (p, m), c in zip(parts, cached) if not c)
    return (
        f"generating {dn.name}{f' (seed {seed})' if seed else ''}: {n:,} transitions {how}, into {where} "
        f"({_duration(todo)} on a 2-core CPU)"
    )


def load_or_make(
    name: str,
    size: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    n_envs: int = DEFAULT_N_ENVS,
    checkpoint_dir: str | os.PathLike | None = None,
    regenerate: bool = False,
) -> OfflineDataset:
    """The cached dataset `name` (an `rl.data.OfflineDataset`), generating and caching it first if needed.

    A cached dataset made from other checkpoints than the shipped ones (manifest hash differs) is regenerated.
    With `progress`, a generation first says on stderr what it makes, how big, where and about how long
    (`describe_generation`), then shows a tqdm bar of the transitions kept (it ends exactly at the size).
    """
    dn = parse_name(name)
    root_path = data_root(root)
    did = dataset_id(name, size, seed, checkpoint_dir)
    stale = False
    if not regenerate and (root_path / did / "data").is_dir():
        ds = _current(did, root_path, dn, checkpoint_dir)
        if ds is not None:
            return ds
        stale = True
        warnings.warn(
            f"cached dataset {did} in {root_path} was made from other checkpoints; regenerating it",
            stacklevel=2,
        )
    _check_writable(root_path)  # before the generation, whose minutes would be lost on a failed save
    with _generation_lock(root_path, did, progress):
        if not regenerate and not stale and (root_path / did / "data").is_dir():
            ds = _current(did, root_path, dn, checkpoint_dir)  # made by the process we waited for
            if ds is not None:
                return ds
        return _generate(name, size, seed, root, root_path, did, dn, progress, n_envs, checkpoint_dir)


def _current(
    did: str, root: Path, dn: Any, checkpoint_dir: str | os.PathLike | None
) -> OfflineDataset | None:
    """The cached dataset `did`, or None where it was made from other checkpoints than the ones asked for."""
    ds = _read_cached(did, root)
    want = None if dn.level == "random" else manifest(dn.env_id, checkpoint_dir)["_sha256"]
    return ds if want is None or ds.metadata.get("checkpoints_sha256") == want else None


#: how long a generation waits for another process generating the same dataset (a lock left on another host,
#: whose process cannot be checked from here, is reported after this)
GENERATION_WAIT_S = 3 * 3600


@contextlib.contextmanager
def _generation_lock(root: Path, did: str, progress: bool) -> Any:
    """One process generates a dataset at a time (trials of a sweep starting together on one node, or on nodes
    sharing a cache): the lock file `.<name>.lock` beside the dataset's folder; the others wait for it, then read
    what it made."""
    import time

    from rl._atomic import LockError, acquire_lock

    deadline, said = time.monotonic() + GENERATION_WAIT_S, False
    path = (root / did).with_name(f".{Path(did).name}.lock")
    while True:
        try:
            lock = acquire_lock(path, "rl.collect", what=f"the dataset {did} in {root}")
            break
        except LockError as err:
            if time.monotonic() > deadline:
                raise LockError(
                    f"{err} (waited {GENERATION_WAIT_S // 3600} h; remove {err.path} if no process generates it)",
                    err.path,
                    err.holder,
                ) from None
            if progress and not said:
                print(f"waiting: {err}", file=sys.stderr, flush=True)
                said = True
            time.sleep(2.0)
    try:
        yield
    finally:
        lock.release()


def _generate(name, size, seed, root, root_path, did, dn, progress, n_envs, checkpoint_dir) -> OfflineDataset:
    if progress:  # before the first minute passes in silence: what, how big, where, how long
        print(describe_generation(name, size, seed, root, checkpoint_dir), file=sys.stderr, flush=True)
    ds = make_dataset(
        name, size, seed, n_envs=n_envs, progress=progress, checkpoint_dir=checkpoint_dir, root=root
    )
    to_minari(
        ds,
        did,
        root=root_path,
        env_id=dn.env_id,
        overwrite=True,
        algorithm_name=f"SAC behaviour policy ({dn.level})",
        description=f"{dn.name}: D4RL-style dataset generated by rl.collect (seed {seed})",
    )
    _seal(did, root_path)
    return _read_cached(did, root_path)
