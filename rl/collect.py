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

The policies live in ``rl/checkpoints/`` as ``<Env-v5>-expert.pt``, ``<Env-v5>-medium.pt``, ``<Env-v5>-replay_*.pt``
with a manifest ``<Env-v5>.json`` (command, seed, step and eval return of each snapshot); the project's reference returns in ``rl/references/v5.json`` (``python -m rl.collect references``).

CLI::

    python -m rl.collect make hopper-medium-v5 [--size N] [--seed S] [--root DIR]
    python -m rl.collect list
    python -m rl.collect info hopper-medium-v5
    python -m rl.collect references --env Hopper-v5 --episodes 100
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rl._atomic import atomic_write
from rl.networks import TanhGaussianPolicy
from rl.sac import load_policy_snapshot

__all__ = [
    "ENVS",
    "LEVELS",
    "DEFAULT_SIZE",
    "CHECKPOINT_DIR",
    "REFERENCES_PATH",
    "DatasetName",
    "parse_name",
    "all_names",
    "data_root",
    "dataset_id",
    "manifest",
    "load_role_policy",
    "rollout",
    "replay_segments",
    "make_dataset",
    "load_or_make",
    "is_cached",
    "measure_references",
    "write_references",
    "ship_checkpoints",
    "markdown_tables",
    "main",
]

#: dataset env prefix -> gymnasium env id
ENVS: dict[str, str] = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}
LEVELS: tuple[str, ...] = ("random", "medium", "medium-replay", "expert", "medium-expert")
DEFAULT_SIZE = 1_000_000
CHECKPOINT_DIR = Path(__file__).with_name("checkpoints")
REFERENCES_PATH = Path(__file__).with_name("references") / "v5.json"
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
    """The manifest of the shipped checkpoints of `env_id` (``rl/checkpoints/<env_id>.json``)."""
    path = Path(checkpoint_dir or CHECKPOINT_DIR) / f"{env_id}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped checkpoints for {env_id}: {path} does not exist (train with `python -m rl.sac --env "
            f"{env_id}` and ship snapshots as docs/datasets.md describes)"
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
    `progress`: an object with ``update(n)`` (a tqdm bar) or None.
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
        taken += len(idx)
        if progress is not None:
            progress.update(len(idx))
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


def _progress(total: int, desc: str, enabled: bool, unit: str = "step"):
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
):
    """Generate dataset `name` (not cached; see `load_or_make`) and return an `rl.data.OfflineDataset`.

    `size`: transitions (default: 1M; the medium step count for medium-replay; 2M for medium-expert, built from
    the cached medium and expert datasets of half that size each, in `root`).
    """
    from rl.data import OfflineDataset

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


def _read_cached(did: str, root: Path):
    """The cached dataset, its files checked against the recorded SHA-256s first (a cache made before the
    checksums existed is sealed on this read). `ValueError` naming the file on a mismatch."""
    from rl.data import load

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
        return load(f"minari:{did}", root=root)
    ds = load(f"minari:{did}", root=root)
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
):
    """The cached dataset `name` (an `rl.data.OfflineDataset`), generating and caching it first if needed.

    A cached dataset made from other checkpoints than the shipped ones (manifest hash differs) is regenerated.
    """
    from rl.data import to_minari

    dn = parse_name(name)
    root_path = data_root(root)
    did = dataset_id(name, size, seed, checkpoint_dir)
    if not regenerate and (root_path / did / "data").is_dir():
        ds = _read_cached(did, root_path)
        want = None if dn.level == "random" else manifest(dn.env_id, checkpoint_dir)["_sha256"]
        if want is None or ds.metadata.get("checkpoints_sha256") == want:
            return ds
        warnings.warn(
            f"cached dataset {did} in {root_path} was made from other checkpoints; regenerating it",
            stacklevel=2,
        )
    _check_writable(root_path)  # before the generation, whose minutes would be lost on a failed save
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


# ----------------------------------------------------------------------------------------------------------------
# Reference returns
# ----------------------------------------------------------------------------------------------------------------
def _episode_returns(
    env_id: str, policy: TanhGaussianPolicy | None, episodes: int, seed: int, stochastic: bool, progress: bool
) -> np.ndarray:
    """Undiscounted returns of `episodes` complete episodes, all envs in lockstep."""
    torch_seed, _ = _stream_seed(seed, 9)
    gen = torch.Generator().manual_seed(torch_seed)
    envs = [gym.make(env_id) for _ in range(episodes)]
    space = envs[0].action_space
    low, high = space.low, space.high
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    ret = np.zeros(episodes)
    alive = np.ones(episodes, bool)
    bar = _progress(episodes, f"{env_id} {'random' if policy is None else 'expert'}", progress, "episode")
    with torch.no_grad():
        while alive.any():
            idx = np.flatnonzero(alive)
            if policy is None:
                a = (torch.rand(len(idx), space.shape[0], generator=gen) * 2 - 1).numpy()
            else:
                dist = policy(torch.from_numpy(obs[idx]))
                a = (dist.sample(1, gen).squeeze(1) if stochastic else torch.tanh(dist.mean)).numpy()
            a = np.clip(low + (a + 1) * 0.5 * (high - low), low, high)
            for j, i in enumerate(idx):
                o, r, term, trunc, _ = envs[i].step(a[j])
                ret[i] += r
                obs[i] = o
                if term or trunc:
                    alive[i] = False
                    bar.update(1)
    bar.close()
    return ret


def measure_references(
    env_id: str,
    episodes: int = 100,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean returns of the uniform-random policy and of the shipped expert (stochastic policy) over `episodes`."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    policy, entry = load_role_policy(env_id, "expert", checkpoint_dir)
    rand = _episode_returns(env_id, None, episodes, seed, True, progress)
    exp = _episode_returns(env_id, policy, episodes, seed + 100_000, True, progress)
    return {
        "random": float(rand.mean()),
        "expert": float(exp.mean()),
        "random_std": float(rand.std()),
        "expert_std": float(exp.std()),
        "episodes": int(episodes),
        "how": (
            f"mean undiscounted return over {episodes} full episodes (gymnasium {gym.__version__}, time limit "
            f"{gym.spec(env_id).max_episode_steps}); random: uniform actions in the action box; expert: the "
            f"stochastic policy of rl/checkpoints/{entry['file']} (SAC step {entry['step']}), the policy "
            f"that generates the expert dataset; episode i reset with seed {seed}+i (random) / "
            f"{seed + 100_000}+i (expert); `python -m rl.collect references --env {env_id} --episodes {episodes}`"
        ),
        "measured": time.strftime("%Y-%m-%d"),
    }


def write_references(env_id: str, entry: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Merge `entry` into the v5 reference table at `path` (atomic rewrite); returns the path."""
    path = Path(path or REFERENCES_PATH)
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[env_id] = entry
    text = json.dumps(dict(sorted(table.items())), indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Shipping checkpoints from a SAC run
# ----------------------------------------------------------------------------------------------------------------
def ship_checkpoints(
    run_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike | None = None,
    max_replay_snapshots: int = 8,
    medium_fraction: float = 1.0 / 3.0,
    stochastic_episodes: int = 20,
    check_float16: bool = True,
    replay_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Copy the chosen snapshots of a `python -m rl.sac` run into `checkpoint_dir` with a manifest ``<env>.json``.

    expert: the snapshot with the best eval return; medium: among earlier snapshots, the one whose eval return is
    closest to `medium_fraction` of the expert's (D4RL's early-stopped agent); medium-replay: up to
    `max_replay_snapshots` snapshots after the random warm-up up to the medium one (evenly thinned, the medium
    one always last). All are stored in float32 by default (8 replay snapshots keep an env under 3 MB);
    `replay_dtype=torch.float16` halves the replay snapshots. The expert and
    medium policies are also measured as they generate data (stochastic, `stochastic_episodes` episodes): mean,
    std and the `dataset_return_range` (mean +- max(3 std / sqrt(5), 15 %)) a small dataset should fall in.
    With `check_float16`, each float16 snapshot is evaluated again as in training (`eval_return_float16`).
    """
    from rl.sac import save_policy_snapshot

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    evals = json.loads((run_dir / "evals.json").read_text())
    if not evals:
        raise ValueError(f"{run_dir}/evals.json holds no evaluations")
    env_id = cfg["env"]
    out = Path(checkpoint_dir or CHECKPOINT_DIR)
    snap = {int(e["step"]): run_dir / "snapshots" / f"step_{int(e['step']):07d}.pt" for e in evals}
    best = max(evals, key=lambda e: e["return_mean"])
    target = medium_fraction * best["return_mean"]
    earlier = [e for e in evals if e["step"] < best["step"] and e["step"] > cfg["start_steps"]]
    if not earlier:
        raise ValueError(f"{run_dir}: no snapshot between the warm-up and the best one to serve as medium")
    medium = min(earlier, key=lambda e: abs(e["return_mean"] - target))
    replay = [e for e in evals if cfg["start_steps"] < e["step"] <= medium["step"]]
    if len(replay) > max_replay_snapshots:
        keep = np.unique(np.round(np.linspace(0, len(replay) - 1, max_replay_snapshots)).astype(int))
        replay = [replay[i] for i in keep]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{env_id}-*.pt"):
        old.unlink()

    def put(e: dict, fname: str, dtype: torch.dtype) -> dict[str, Any]:
        policy, meta = load_policy_snapshot(snap[int(e["step"])])
        save_policy_snapshot(out / fname, policy, meta, dtype=dtype)
        return {
            "file": fname,
            "step": int(e["step"]),
            "eval_return": float(e["return_mean"]),
            "eval_return_std": float(e["return_std"]),
            "dtype": str(dtype).replace("torch.", ""),
            "sha256": hashlib.sha256((out / fname).read_bytes()).hexdigest(),
        }

    command = (
        f"python -m rl.sac --env {env_id} --steps {cfg['steps']} --seed {cfg['seed']} "
        f"--eval-every {cfg['eval_every']} --checkpoint-every {cfg['checkpoint_every']} --run-dir runs/sac/{env_id}"
    )
    man: dict[str, Any] = {
        "env": env_id,
        "algorithm": "SAC (Haarnoja et al. 2018 v2), rl.sac",
        "command": command,
        "seed": cfg["seed"],
        "sac_config": cfg,
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "eval": f"{evals[0]['episodes']} deterministic episodes (tanh(mean)), episode i reset with seed "
        f"{cfg['eval_seed']}+i",
        "selection": f"expert: best eval return; medium: earlier snapshot closest to {medium_fraction:.3f} x expert",
        "expert": put(best, f"{env_id}-expert.pt", torch.float32),
        "medium": put(medium, f"{env_id}-medium.pt", torch.float32),
    }
    snaps = []
    for e in replay:
        if e["step"] == medium["step"]:
            snaps.append({**man["medium"]})
        else:
            entry = put(e, f"{env_id}-replay_{int(e['step']):07d}.pt", replay_dtype)
            if (
                check_float16 and replay_dtype == torch.float16
            ):  # the same deterministic evaluation as in training, on the float16 weights
                from rl.sac import evaluate

                half_policy, _ = load_policy_snapshot(out / entry["file"])
                rets = evaluate(half_policy, env_id, int(evals[0]["episodes"]), seed=int(cfg["eval_seed"]))
                entry["eval_return_float16"] = float(rets.mean())
            snaps.append(entry)
    for role in ("expert", "medium"):
        if stochastic_episodes > 0:
            policy, _ = load_policy_snapshot(out / man[role]["file"])
            rets = _episode_returns(env_id, policy, stochastic_episodes, 2_000_000, True, False)
            m, sd = float(rets.mean()), float(rets.std())
            man[role]["stochastic_return_mean"] = round(m, 1)
            man[role]["stochastic_return_std"] = round(sd, 1)
            man[role]["stochastic_episodes"] = stochastic_episodes
            # what a small dataset (>= 5 complete episodes) of this policy should show; tests check it
            half = max(3.0 * sd / np.sqrt(5.0), 0.15 * abs(m))
            man[role]["dataset_return_range"] = [round(m - half, 1), round(m + half, 1)]
    man["medium_replay"] = {
        "start_steps": int(cfg["start_steps"]),
        "snapshots": snaps,
        "how": "segment [0, start_steps) uniform random; snapshot i rolled out (stochastic) for (step_{i-1}, step_i]",
    }
    man["learning_curve"] = [
        {"step": int(e["step"]), "eval_return": round(float(e["return_mean"]), 1)} for e in evals
    ]
    text = json.dumps(man, indent=1) + "\n"
    atomic_write(out / f"{env_id}.json", lambda tmp: Path(tmp).write_text(text))
    return man


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _info(name: str, size: int | None, seed: int, root: str | None, checkpoint_dir: str | None = None) -> str:
    from rl.references import normalized_score

    if not is_cached(name, size, seed, root, checkpoint_dir):
        return f"{name}: not cached in {data_root(root)} (make it with `python -m rl.collect make {name}`)"
    did = dataset_id(name, size, seed, checkpoint_dir)
    ds = _read_cached(did, data_root(root))
    rets = ds.episode_returns()
    lines = [
        f"{name} ({did} in {data_root(root)})",
        f"  transitions: {len(ds)}",
        f"  episodes:    {ds.num_episodes} (terminals {int(ds.terminals.sum())}, timeouts {int(ds.timeouts.sum())})",
        f"  return:      mean {rets.mean():.1f}, std {rets.std():.1f}, min {rets.min():.1f}, max {rets.max():.1f}",
    ]
    try:
        ns = normalized_score(name, rets)
        lines.append(f"  normalised:  mean {float(np.mean(ns)):.1f} (v5 references, rl/references/v5.json)")
    except ValueError as err:
        lines.append(f"  normalised:  unavailable ({err})")
    return "\n".join(lines)


def markdown_tables(
    root: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None
) -> str:
    """Markdown tables (for docs/datasets.md): checkpoints, v5 references, and every cached default-seed dataset."""
    from rl.references import load_v5_references, normalized_score

    lines = [
        "| env | snapshot | SAC step | eval return (10 det. episodes) | file |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for env_id in ENVS.values():
        try:
            man = manifest(env_id, checkpoint_dir)
        except FileNotFoundError:
            lines.append(f"| {env_id} | (not shipped yet) | | | |")
            continue
        for role in ("expert", "medium"):
            e = man[role]
            lines.append(
                f"| {env_id} | {role} | {e['step']} | {e['eval_return']:.1f} | {e['file']} ({e['dtype']}) |"
            )
        steps = ", ".join(str(s["step"]) for s in man["medium_replay"]["snapshots"])
        dtypes = sorted({s["dtype"] for s in man["medium_replay"]["snapshots"]})
        lines.append(f"| {env_id} | medium-replay | {steps} | | {', '.join(dtypes)} |")
    refs = load_v5_references(None)
    lines += ["", "| env | random return | expert return | episodes |", "| --- | ---: | ---: | ---: |"]
    for env_id in ENVS.values():
        r = refs.get(env_id)
        if r:
            lines.append(f"| {env_id} | {r['random']:.1f} | {r['expert']:.1f} | {r['episodes']} |")
        else:
            lines.append(f"| {env_id} | (not measured) | | |")
    lines += [
        "",
        "| dataset | transitions | episodes | mean return | min | max | normalised (mean) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    root_path = data_root(root)
    for name in all_names():
        found = sorted(root_path.glob(f"misa/{name[:-3]}-v5")) + sorted(
            root_path.glob(f"misa/{name[:-3]}-n*-v5")
        )
        for d in found:
            if not (d / "data").is_dir() or "-seed" in d.name:
                continue
            ds = _read_cached(f"misa/{d.name}", root_path)
            rets = ds.episode_returns()
            try:
                ns = f"{float(np.mean(normalized_score(name, rets))):.1f}"
            except ValueError:
                ns = "n/a"
            lines.append(
                f"| {d.name} | {len(ds)} | {ds.num_episodes} | {rets.mean():.1f} | {rets.min():.1f} | "
                f"{rets.max():.1f} | {ns} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (`misa-collect`)."""
    p = argparse.ArgumentParser(
        prog="python -m rl.collect", description="D4RL-style datasets on gymnasium MuJoCo v5"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("make", "info"):
        s = sub.add_parser(cmd, help=f"{cmd} a dataset, e.g. hopper-medium-v5")
        s.add_argument("name")
        s.add_argument("--size", type=int, default=None, help="transitions (default: 1M, as D4RL)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument(
            "--root",
            default=None,
            help="cache dir (default $MISA_DATA_DIR or ~/.cache/misa-toolkit/datasets)",
        )
        s.add_argument("--checkpoint-dir", default=None, help=f"default {CHECKPOINT_DIR}")
        if cmd == "make":
            s.add_argument("--n-envs", type=int, default=DEFAULT_N_ENVS)
            s.add_argument("--force", action="store_true", help="regenerate even if cached")
    s = sub.add_parser("list", help="dataset names and whether they are cached")
    s.add_argument("--root", default=None)
    s = sub.add_parser("references", help="measure random/expert returns and write rl/references/v5.json")
    s.add_argument("--env", required=True, choices=sorted(ENVS.values()))
    s.add_argument("--episodes", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help=f"default {REFERENCES_PATH}")
    s = sub.add_parser("table", help="markdown tables of checkpoints, references and cached datasets")
    s.add_argument("--root", default=None)
    s = sub.add_parser("ship", help="copy the chosen snapshots of a SAC run into rl/checkpoints/")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--checkpoint-dir", default=None, help=f"default {CHECKPOINT_DIR}")
    s.add_argument("--max-replay-snapshots", type=int, default=8)
    s.add_argument("--float16", action="store_true", help="store the replay snapshots in float16")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.cmd == "list":
            root = data_root(args.root)
            print(f"cache: {root}")
            for n in all_names():
                print(f"  {n:32s} {'cached' if is_cached(n, root=root) else '-'}")
        elif args.cmd == "make":
            ds = load_or_make(
                args.name, args.size, args.seed, args.root, n_envs=args.n_envs, regenerate=args.force
            )
            print(
                f"{args.name}: {len(ds)} transitions in {data_root(args.root) / dataset_id(args.name, args.size, args.seed, args.checkpoint_dir)}"
            )
            print(_info(args.name, args.size, args.seed, args.root, args.checkpoint_dir))
        elif args.cmd == "info":
            print(_info(args.name, args.size, args.seed, args.root, args.checkpoint_dir))
        elif args.cmd == "references":
            entry = measure_references(args.env, args.episodes, args.seed)
            path = write_references(args.env, entry, args.out)
            print(
                f"{args.env}: random {entry['random']:.1f}, expert {entry['expert']:.1f} ({args.episodes} episodes) -> {path}"
            )
        elif args.cmd == "table":
            print(markdown_tables(args.root))
        elif args.cmd == "ship":
            man = ship_checkpoints(
                args.run_dir,
                args.checkpoint_dir,
                args.max_replay_snapshots,
                replay_dtype=torch.float16 if args.float16 else torch.float32,
            )
            for role in ("expert", "medium"):
                print(f"  {role}: {json.dumps({k: v for k, v in man[role].items() if k != 'sha256'})}")
            print(
                f"{man['env']}: expert step {man['expert']['step']} (eval {man['expert']['eval_return']:.1f}), "
                f"medium step {man['medium']['step']} (eval {man['medium']['eval_return']:.1f}), "
                f"{len(man['medium_replay']['snapshots'])} replay snapshots"
            )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
