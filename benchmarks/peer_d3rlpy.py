"""Updates per second of d3rlpy's CQL, IQL, TD3+BC and BC at the shapes of `rl_throughput.py` (a peer timing).

d3rlpy pins an older gymnasium and pulls `gym`, so it lives in its own environment that shares our torch:

    python -m venv --system-site-packages .venv-d3rlpy && .venv-d3rlpy/bin/pip install d3rlpy
    python benchmarks/rl_throughput.py --peer-python .venv-d3rlpy/bin/python

`rl_throughput.py` runs this script right after each of our cases (same machine state) and reports both. Each
algorithm runs at d3rlpy's own defaults (256-256 networks, CQL with 10 + 10 + 10 sampled actions) except the batch,
which is 256 as ours; one fixed minibatch is reused, as in our benchmark (the data do not change the cost).

    python benchmarks/peer_d3rlpy.py ALGO THREADS SECONDS   # prints one JSON line
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch


def main() -> None:
    import d3rlpy

    algo_name, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    torch.set_num_threads(threads)
    configs = {
        "cql": d3rlpy.algos.CQLConfig,
        "iql": d3rlpy.algos.IQLConfig,
        "td3bc": d3rlpy.algos.TD3PlusBCConfig,
        "bc": d3rlpy.algos.BCConfig,
    }
    if algo_name not in configs:
        raise SystemExit(f"unknown algorithm {algo_name!r}; choose one of {sorted(configs)}")
    rng = np.random.default_rng(0)
    n = 10_000  # hopper shapes: obs 11, act 3; episodes of 1000 steps
    dataset = d3rlpy.dataset.MDPDataset(
        rng.normal(size=(n, 11)).astype(np.float32),
        rng.uniform(-0.9, 0.9, size=(n, 3)).astype(np.float32),
        rng.normal(size=n).astype(np.float32),
        (np.arange(n) % 1000 == 999).astype(np.float32),
    )
    algo = configs[algo_name](batch_size=256).create(device="cpu:0")
    algo.build_with_dataset(dataset)
    batch = dataset.sample_transition_batch(256)
    algo.update(batch)  # warm-up
    n_updates, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        algo.update(batch)
        n_updates += 1
        if time.perf_counter() - wall0 >= seconds and n_updates >= 3:
            break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(
        json.dumps(
            {
                "case": f"d3rlpy-{algo_name}",
                "d3rlpy": d3rlpy.__version__,
                "threads": threads,
                "updates": n_updates,
                "wall_ups": round(n_updates / wall, 3),
                "cpu_ups": round(n_updates / cpu, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
