"""The D4RL-style dataset factory: behaviour policies, dataset generation and caching, reference returns.

``rl.data`` reads datasets; this package makes the project's own (``hopper-medium-v5``, ...), on gymnasium MuJoCo v5
from behaviour policies trained by the project's own SAC. It holds:

* `rl.collect.generate`: names, rollouts, generation on first use and the checksummed cache (`load_or_make`, which
  ``rl.data.load("hopper-medium-v5")`` calls);
* `rl.collect.sac`: the online SAC that trains the behaviour policies (``python -m rl.collect.sac``);
* `rl.collect.snapshots`: the policy-only snapshots SAC writes and the generator reads;
* ``rl/collect/checkpoints/``: the shipped behaviour policies (package data, with their manifests);
* here: measuring the reference returns (`measure_references`, `write_references`; the table itself is read by
  `rl.data.references`), shipping the behaviour policies of a SAC run (`ship_checkpoints`), the docs tables
  (`markdown_tables`) and the command line (`main`).

CLI::

    python -m rl.collect make hopper-medium-v5 [--size N] [--seed S] [--root DIR]
    python -m rl.collect list                     # every name, with every cached (size, seed)
    python -m rl.collect info hopper-medium-v5 [--size N] [--seed S]
    python -m rl.collect references --env Hopper-v5 --episodes 100

``info`` exits 1 (one line on stderr) when the dataset asked for is not cached, 2 on a bad name or usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rl._atomic import atomic_write
from rl.collect.generate import (
    CHECKPOINT_DIR,
    DEFAULT_N_ENVS,
    ENVS,
    _progress,
    _read_cached,
    _stream_seed,
    all_names,
    cached_variants,
    data_root,
    dataset_id,
    default_size,
    is_cached,
    load_or_make,
    load_role_policy,
    manifest,
    parse_name,
)
from rl.collect.snapshots import load_policy_snapshot, save_policy_snapshot
from rl.data.references import V5_REFERENCES_PATH, load_v5_references, normalized_score
from rl.evaluation import evaluate
from rl.networks import TanhGaussianPolicy

__all__ = ["measure_references", "write_references", "ship_checkpoints", "markdown_tables", "main"]


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
            f"stochastic policy of rl/collect/checkpoints/{entry['file']} (SAC step {entry['step']}), the policy "
            f"that generates the expert dataset; episode i reset with seed {seed}+i (random) / "
            f"{seed + 100_000}+i (expert); `python -m rl.collect references --env {env_id} --episodes {episodes}`"
        ),
        "measured": time.strftime("%Y-%m-%d"),
    }


def write_references(env_id: str, entry: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Merge `entry` into the v5 reference table at `path` (atomic rewrite); returns the path."""
    path = Path(path or V5_REFERENCES_PATH)
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
    """Copy the chosen snapshots of a `python -m rl.collect.sac` run into `checkpoint_dir` with a manifest ``<env>.json``.

    expert: the snapshot with the best eval return; medium: among earlier snapshots, the one whose eval return is
    closest to `medium_fraction` of the expert's (D4RL's early-stopped agent); medium-replay: up to
    `max_replay_snapshots` snapshots after the random warm-up up to the medium one (evenly thinned, the medium
    one always last). All are stored in float32 by default (8 replay snapshots keep an env under 3 MB);
    `replay_dtype=torch.float16` halves the replay snapshots. The expert and
    medium policies are also measured as they generate data (stochastic, `stochastic_episodes` episodes): mean,
    std and the `dataset_return_range` (mean +- max(3 std / sqrt(5), 15 %)) a small dataset should fall in.
    With `check_float16`, each float16 snapshot is evaluated again as in training (`eval_return_float16`).
    """
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
        f"python -m rl.collect.sac --env {env_id} --steps {cfg['steps']} --seed {cfg['seed']} "
        f"--eval-every {cfg['eval_every']} --checkpoint-every {cfg['checkpoint_every']} --run-dir runs/sac/{env_id}"
    )
    man: dict[str, Any] = {
        "env": env_id,
        "algorithm": "SAC (Haarnoja et al. 2018 v2), rl.collect.sac",
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
class NotCachedError(LookupError):
    """The dataset asked for is not in the cache (`main` exits with status 1 and this one-line message)."""


def _not_cached_message(
    name: str, size: int | None, seed: int, root: str | None, checkpoint_dir: str | None
) -> str:
    """One line: what is missing, which variants of `name` are cached instead and how to show or make one."""
    root_path = data_root(root)
    variants = cached_variants(name, root, checkpoint_dir)
    seed_arg = f" --seed {seed}" if seed else ""
    if size is None:
        try:
            what = f"at its default size ({default_size(name, checkpoint_dir):,} transitions"
        except FileNotFoundError:  # medium-replay's default size is in the manifest
            what = "at its default size (unknown: no shipped checkpoints"
        what += f"{f', seed {seed}' if seed else ''})"
    else:
        what = f"with {size:,} transitions{f', seed {seed}' if seed else ''}"
    text = f"{name} is not cached {what} in {root_path}"
    if variants:
        labels = "; ".join(v.label() for v in variants)
        return (
            f"{text}; cached: {labels}. Pick one with `python -m rl.collect info {name} --size N [--seed S]`, "
            f"or make this one with `python -m rl.collect make {name}{f' --size {size}' if size else ''}{seed_arg}`"
        )
    return f"{text}; make it with `python -m rl.collect make {name}{f' --size {size}' if size else ''}{seed_arg}`"


def _info(name: str, size: int | None, seed: int, root: str | None, checkpoint_dir: str | None = None) -> str:
    """What `info` prints: id, transitions, episodes, returns and normalised score of the cached dataset.

    Raises `NotCachedError` (naming the cached variants, if any) when it is not cached, ``ValueError`` on a bad name.
    """
    parse_name(name)  # a bad name is a ValueError (status 2), not "not cached"
    if not is_cached(name, size, seed, root, checkpoint_dir):
        raise NotCachedError(_not_cached_message(name, size, seed, root, checkpoint_dir))
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
        lines.append(
            f"  normalised:  mean {float(np.mean(ns)):.1f} (v5 references, rl/data/references/v5.json)"
        )
    except ValueError as err:
        lines.append(f"  normalised:  unavailable ({err})")
    return "\n".join(lines)


def _list(root: str | None, checkpoint_dir: str | None = None) -> str:
    """What `list` prints: every dataset name with every cached variant (size, seed) of it, or ``-``."""
    lines = [f"cache: {data_root(root)}"]
    for name in all_names():
        variants = cached_variants(name, root, checkpoint_dir)
        lines.append(
            f"  {name:32s} {'cached: ' + '; '.join(v.label() for v in variants) if variants else '-'}"
        )
    lines.append(
        "(`info NAME` shows the default size; `info NAME --size N [--seed S]` another cached one; "
        "`make NAME [--size N]` generates)"
    )
    return "\n".join(lines)


def markdown_tables(
    root: str | os.PathLike | None = None, checkpoint_dir: str | os.PathLike | None = None
) -> str:
    """Markdown tables (for docs/datasets.md): checkpoints, v5 references, and every cached default-seed dataset."""
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
        for v in cached_variants(name, root_path, checkpoint_dir):
            if v.seed != 0:
                continue
            d = v.path
            ds = _read_cached(v.dataset_id, root_path)
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
    """Console entry point (`misa-collect`). Returns the exit status: 0 done, 1 the dataset asked for is not
    cached (`info`), 2 bad input (name, size, files); errors are one line on stderr."""
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
    s = sub.add_parser("list", help="dataset names and every cached (size, seed) of each")
    s.add_argument("--root", default=None)
    s.add_argument("--checkpoint-dir", default=None, help=f"default {CHECKPOINT_DIR}")
    s = sub.add_parser(
        "references", help="measure random/expert returns and write rl/data/references/v5.json"
    )
    s.add_argument("--env", required=True, choices=sorted(ENVS.values()))
    s.add_argument("--episodes", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help=f"default {V5_REFERENCES_PATH}")
    s = sub.add_parser("table", help="markdown tables of checkpoints, references and cached datasets")
    s.add_argument("--root", default=None)
    s = sub.add_parser("ship", help="copy the chosen snapshots of a SAC run into rl/collect/checkpoints/")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--checkpoint-dir", default=None, help=f"default {CHECKPOINT_DIR}")
    s.add_argument("--max-replay-snapshots", type=int, default=8)
    s.add_argument("--float16", action="store_true", help="store the replay snapshots in float16")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.cmd == "list":
            print(_list(args.root, args.checkpoint_dir))
        elif args.cmd == "make":
            ds = load_or_make(
                args.name,
                args.size,
                args.seed,
                args.root,
                n_envs=args.n_envs,
                checkpoint_dir=args.checkpoint_dir,
                regenerate=args.force,
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
    except NotCachedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
