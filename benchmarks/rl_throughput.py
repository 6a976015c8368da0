"""Updates per second of every offline agent (and MISA with each sampler) at the official settings.

CPU, batch 256, hopper shapes (obs 11, act 3), fp32, a synthetic batch (the data do not change the cost). Each case
runs in its own subprocess (so `ru_maxrss` is that case's peak resident memory) and reports

* `wall_ups`: updates per second of wall-clock time (what a user sees; depends on other jobs on the machine),
* `cpu_ups`: updates per second of this process's CPU time (with 1 thread, the rate the update would run at on an
  otherwise idle core; with more threads it undercounts),
* `peak_rss_mb`: peak resident memory of the process.

The SAC update (`rl.collect.sac.SAC`, batch 256, same shapes) is timed in the same run as a reference for machine load.

    nice python benchmarks/rl_throughput.py [--threads 1 2] [--seconds 20] [--cases misa-hmc cql ...]
        [--peer-python .venv-d3rlpy/bin/python]   # also time d3rlpy's CQL/IQL/TD3+BC/BC in the same run

Writes `benchmarks/results/rl_throughput.{csv,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

CASES: dict[str, tuple[str, dict]] = {
    "misa-hmc": ("mi", {}),
    "misa-hmc-unconstrained": ("mi", {"estimator_options": {"space": "unconstrained"}}),
    "misa-mala": ("mi", {"estimator_options": {"sampler": "mala"}}),
    "misa-ula": ("mi", {"estimator_options": {"sampler": "ula"}}),
    "misa-pyro-hmc": ("mi", {"estimator_options": {"sampler": "pyro-hmc"}}),
    "misa-hmc-plain": ("mi", {"fast": False}),  # plain autograd: what the `fast` paths buy
    "misa-biased": ("mi", {"estimator": "misa-biased"}),
    # fewer critic negatives and retained MCMC samples (benchmarks/sweeps/misa-cost.yaml trains them)
    "misa-n20-s20": ("mi", {"n_negatives": 20, "estimator_options": {"n_samples": 20}}),
    "misa-n10-s10": ("mi", {"n_negatives": 10, "estimator_options": {"n_samples": 10}}),
    "misa-dv": ("mi", {"estimator": "misa-dv"}),
    "mi-nwj": ("mi", {"estimator": "nwj"}),
    "cql": ("cql", {}),
    "iql": ("iql", {}),
    "td3bc": ("td3bc", {}),
    "bc": ("bc", {}),
    "sac (reference)": ("sac", {}),
}
TARGETS = {"misa-hmc": 3.8, "cql": 15.6, "iql": 127.0, "td3bc": 188.0, "bc": 306.0}
#: our case -> d3rlpy algorithm timed right after it by `peer_d3rlpy.py` (with --peer-python)
PEERS = {"cql": "cql", "iql": "iql", "td3bc": "td3bc", "bc": "bc"}


def _batch(b: int = 256, do: int = 11, da: int = 3):
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "observations": torch.randn(b, do, generator=g),
        "actions": torch.rand(b, da, generator=g) * 1.8 - 0.9,
        "rewards": torch.randn(b, generator=g),
        "next_observations": torch.randn(b, do, generator=g),
        "dones": (torch.rand(b, generator=g) < 0.01).float(),
    }


def run_one(name: str, threads: int, seconds: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    algo, kw = CASES[name]
    batch = _batch()
    if algo == "sac":
        from rl.collect.sac import SAC, SACConfig

        agent = SAC(11, 3, SACConfig())
        batch = {**batch, "terminals": batch.pop("dones")}
    else:
        from rl.agents import make_agent, train_config

        agent = make_agent(train_config(algo, **kw), 11, 3)
    t0 = time.perf_counter()
    agent.update(batch)  # warm-up (and compilation, when on)
    first = time.perf_counter() - t0
    agent.update(batch)
    n, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        logs = agent.update(batch)
        n += 1
        wall = time.perf_counter() - wall0
        if wall >= seconds and n >= 3:
            break
    float(next(iter(logs.values())))  # one sync at the end
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "case": name,
        "threads": threads,
        "updates": n,
        "wall_ups": round(n / wall, 3),
        "cpu_ups": round(n / cpu, 3),
        "first_update_s": round(first, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS / "rl_throughput"))
    p.add_argument(
        "--peer-python",
        default=None,
        help="a Python with d3rlpy installed (see peer_d3rlpy.py): time d3rlpy right after each matching case",
    )
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.threads[0], args.seconds)))
        return
    rows = []
    for threads in args.threads:
        for name in args.cases:
            load = os.getloadavg()[0]
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                "--threads",
                str(threads),
                "--seconds",
                str(args.seconds),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{name}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["load_avg_1m_before"] = round(load, 2)
            row["target_ups"] = TARGETS.get(name, "")
            row["d3rlpy_ups"] = ""
            if args.peer_python and name in PEERS:
                peer = [args.peer_python, str(Path(__file__).with_name("peer_d3rlpy.py")), PEERS[name]]
                peer_res = subprocess.run(
                    [*peer, str(threads), str(args.seconds)], capture_output=True, text=True
                )
                if peer_res.returncode != 0:
                    print(f"d3rlpy {name}: failed\n{peer_res.stderr[-2000:]}", file=sys.stderr)
                else:
                    row["d3rlpy_ups"] = json.loads(peer_res.stdout.strip().splitlines()[-1])["wall_ups"]
            rows.append(row)
            print(row, flush=True)
    if not rows:
        raise SystemExit("no case ran (see the errors above); is the project installed (pip install -e .)?")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from rl._atomic import atomic_write, atomic_write_csv

    atomic_write_csv(out.with_suffix(".csv"), rows, list(rows[0]))
    import platform

    import torch

    lines = [
        "# Offline RL throughput (CPU, batch 256, hopper shapes obs 11 / act 3, fp32)",
        "",
        f"`python benchmarks/rl_throughput.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}. "
        'Interpretation and the conditions of the committed run: docs/rl.md, "Throughput".',
        "",
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
        f"1-minute load average before each case in the last column (other jobs share the machine: with load L on "
        f"2 cores a process gets about 2/L of a core, so wall rates are lower than on an idle machine; the "
        f"CPU-time rates with 1 thread are the better guide to idle single-core speed; the SAC row is the same "
        f"machine's reference).",
        "",
        "| case | threads | updates/s (wall) | updates/s (CPU time) | d3rlpy, same run (wall) | ours / d3rlpy "
        "| target | first update (s) | peak RSS (MB) | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = f"{r['wall_ups'] / r['d3rlpy_ups']:.2f}" if r["d3rlpy_ups"] else ""
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['wall_ups']} | {r['cpu_ups']} | {r['d3rlpy_ups']} | {ratio} "
            f"| {r['target_ups']} | {r['first_update_s']} | {r['peak_rss_mb']} | {r['load_avg_1m_before']} |"
        )
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
