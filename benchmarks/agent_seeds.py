"""Many seeds of an agent in one process against one seed per process, at equal total work: `rl.seeds.StackedAgents`
(one vmapped update for S agents, `rl.train --seeds`) against S one-seed runs as the sweep runs them.

Throughput is seed-updates per second of wall-clock time. On one core: S one-seed updates in turn at one thread
(the committed one-seed path, `fast: true`) against the stacked update at one thread. On two cores: two one-seed
processes side by side at one thread each (how a sweep fills two cores) against the stacked update at two threads.
Each algorithm runs its committed hopper-medium-v5 config (`configs/<algo>/hopper-medium-v5.yaml`: batch 256,
256-256 networks; MISA with 10 negatives x 10 HMC samples) on hopper's shapes (observations 11, actions 3; the
timing does not depend on the data, so the batches come from a synthetic dataset of that shape).

    nice python benchmarks/agent_seeds.py [--algos td3bc iql misa] [--seeds 3 10]

Writes `benchmarks/results/agent_seeds.{csv,md}`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
UPDATES = {"td3bc": 60, "iql": 60, "misa": 8}
TARGETS = {"td3bc": 2.0, "iql": 2.0, "misa": 1.5}  # issue 28, at S = 3


def _dataset(n: int = 20_000, obs_dim: int = 11, act_dim: int = 3):
    from rl.data.dataset import OfflineDataset

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[999::1000] = True
    return OfflineDataset(
        observations=obs[:-1],
        actions=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=obs[1:],
        terminals=np.zeros(n, bool),
        timeouts=timeouts,
        metadata={"env_id": None},
    )


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _agents(algo: str, seeds: int, fast: bool, device: str = "cpu"):
    from rl.agents import make_agent
    from rl.train import build_config

    cfg = build_config(str(ROOT / "configs" / algo / "hopper-medium-v5.yaml"), {})
    data = _dataset()
    agents = []
    for s in range(seeds):
        one = cfg.replace(seed=s, fast=fast, device=device)
        agent = make_agent(one, data.obs_dim, data.act_dim)
        agent.fit_dataset_stats(data)
        agents.append(agent)
    return agents, data, cfg.run.batch_size


def one_seed_rate(algo: str, threads: int, updates: int, device: str = "cpu") -> float:
    """Updates/s of one seed in this process (the committed path, `fast: true`), after two warm-up updates."""
    torch.set_num_threads(threads)
    (agent,), data, batch = _agents(algo, 1, fast=True, device=device)
    for _ in range(2):
        agent.update(data.sample(batch, agent.generator, agent.device))
    _sync(device)
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(data.sample(batch, agent.generator, agent.device))
    _sync(device)
    return updates / (time.perf_counter() - start)


def stacked_rate(algo: str, seeds: int, threads: int, updates: int, device: str = "cpu") -> float:
    """Seed-updates/s of `seeds` agents in one stacked update, after two warm-up updates."""
    from rl.seeds import StackedAgents

    torch.set_num_threads(threads)
    agents, data, batch = _agents(algo, seeds, fast=False, device=device)
    stacked = StackedAgents(agents)

    def step() -> None:
        stacked.update([data.sample(batch, a.generator, a.device) for a in agents])

    for _ in range(2):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(updates):
        step()
    _sync(device)
    return seeds * updates / (time.perf_counter() - start)


def _processes_side_by_side(algo: str, count: int, updates: int) -> float:
    """Summed updates/s of `count` one-seed processes at one thread each, started together."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--one-seed", algo, "--updates", str(updates)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(count)]
    rates = []
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode})")
        rates.append(float(out.strip().splitlines()[-1]))
    return sum(rates)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", default=list(UPDATES), choices=list(UPDATES))
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 10])
    p.add_argument("--out", default=str(RESULTS / "agent_seeds"))
    p.add_argument(
        "--device",
        default="cpu",
        help="cuda: one seed at a time on the GPU against the stacked update on the GPU (benchmarks/gpu_check.sh)",
    )
    # the child process of `_processes_side_by_side`
    p.add_argument("--one-seed", default=None, help=argparse.SUPPRESS)
    p.add_argument("--updates", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_seed:
        print(one_seed_rate(args.one_seed, 1, args.updates))
        return
    rows = []
    gpu = torch.device(args.device).type == "cuda"
    for algo in args.algos:
        n = UPDATES[algo]
        if gpu:  # one GPU: the seeds one after another on it, against all of them stacked on it
            cases = [(1, one_seed_rate(algo, 1, n, args.device), "one seed at a time on the GPU")]
        else:
            cases = [
                (1, one_seed_rate(algo, 1, n), "one process at a time"),
                (2, _processes_side_by_side(algo, 2, n), "two side by side"),
            ]
        for seeds in args.seeds:
            for threads, baseline, how in cases:
                rate = stacked_rate(algo, seeds, threads, n, args.device)
                row = {
                    "algo": algo,
                    "seeds": seeds,
                    "cores": "GPU" if gpu else threads,
                    "updates": n,
                    "stacked_seed_updates_per_s": round(rate, 2),
                    "one_seed_per_process_seed_updates_per_s": round(baseline, 2),
                    "baseline": how,
                    "speedup": round(rate / baseline, 2),
                    "target_at_s3": TARGETS[algo],
                }
                print(row, file=sys.stderr)
                rows.append(row)
    cmd = f"python benchmarks/agent_seeds.py --algos {' '.join(args.algos)} --seeds {' '.join(map(str, args.seeds))}"
    if gpu:
        cmd += f" --device {args.device}"
        table = "agent-seeds-gpu"
    else:
        table = "agent-seeds"
    lines = [
        "# Many seeds in one run (agents)",
        "",
        f"`{cmd}`, {time.strftime('%Y-%m-%d')}. CPU: {platform.machine()}, {os.cpu_count()} cores; torch "
        f"{torch.__version__}{'; ' + torch.cuda.get_device_name() if gpu else ''}. Seed-updates per second of wall-clock time at equal total work; the committed "
        "hopper-medium-v5 configs; targets at S = 3 (issue 28): TD3+BC and IQL 2x, MISA 1.5x. Interpretation: "
        'docs/rl.md, "Many seeds of an agent in one process".',
        "",
        f"<!-- table:{table} -->",
        "| algorithm | S | cores | stacked (seed-updates/s) | one seed per process (seed-updates/s) | "
        "speed-up |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['algo']} | {r['seeds']} | {r['cores']} | {r['stacked_seed_updates_per_s']} | "
            f"{r['one_seed_per_process_seed_updates_per_s']} ({r['baseline']}) | {r['speedup']}x |"
        )
    lines.append(f"<!-- /table:{table} -->")
    write_results(Path(args.out), rows, lines)


if __name__ == "__main__":
    main()
