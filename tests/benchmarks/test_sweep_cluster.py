"""The sweep on a real Ray cluster without a shared output folder: a head node and a worker node started with
`ray start` on loopback addresses only (127.0.0.2 and 127.0.0.3: Ray rewrites 127.0.0.1 to the machine's address),
the trials running on the worker node in scratch folders of its own temp dir, storage in a third folder. The driver
is killed with SIGKILL mid-run and started again: the finished trial is skipped, the running one resumes from its
last checkpoint in storage, and the gathered CSV has each trial's rows exactly once. Before that, the trial's
worker process is killed (as on a lost node): Ray restarts the trial from its last checkpoint
(`tune.get_checkpoint()`).

About a minute on 2 cores. Run alone: `python -m pytest tests/benchmarks/test_sweep_cluster.py`.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")

from rl.sweep.spec import load_spec  # noqa: E402
from rl.sweep.storage import Storage  # noqa: E402
from rl.sweep.trials import run_trial  # noqa: E402

TINY = "batch_size: 32, hidden_q: [16, 16], hidden_pi: [16, 16], log_every: 100"
SHORT, LONG = "short__tiny-hopper__s0", "long__tiny-hopper__s0"
LONG_STEPS = 3000


def _ray(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _processes(marker: str) -> dict[int, str]:
    """{pid: command line} of every process whose command line names `marker` (the cluster's temp dir), and of
    their descendants (Ray renames its workers' command lines, so they are found through their parents)."""
    procs: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(d.name)] = (ppid, cmd)
    found = {pid for pid, (_, cmd) in procs.items() if marker in cmd}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        grew = bool(more)
        found |= more
    return {pid: procs[pid][1] for pid in found}


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, env, worker temp dir, temp dir): a head node with no CPUs (no trial runs there) and one worker
    node with one CPU, both on loopback, the worker's TMPDIR a folder of its own. No `ray stop` at the end: that
    would stop every Ray instance on the machine; the cluster's own processes are killed instead."""
    # a short temp dir: Ray's socket paths must fit in 107 bytes
    temp = tempfile.mkdtemp(prefix="mrt-", dir="/tmp")
    worker_tmp = tmp_path_factory.mktemp("worker-node-tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    try:
        said = _ray(
            *("start", "--head", "--node-ip-address=127.0.0.2", "--port=0", "--num-cpus=0"),
            *("--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"),
            env=env,
        )
        address = re.search(r"ray start --address='(127\.0\.0\.2:\d+)'", said).group(1)
        _ray(
            *("start", f"--address={address}", "--node-ip-address=127.0.0.3", "--num-cpus=1"),
            "--disable-usage-stats",
            env={**env, "TMPDIR": str(worker_tmp)},
        )
        yield address, env, worker_tmp, temp
    finally:
        _kill(_processes(temp))
        subprocess.run(["rm", "-rf", temp], check=False)


def _spec(tmp: Path, dataset: Path) -> Path:
    path = tmp / "cluster.yaml"
    path.write_text(
        f"""
name: cluster
kind: rl
max_failures: 1
base: {{eval_every: 100, eval_episodes: 1, checkpoint_every: 100, dataset: {dataset}, {TINY}}}
grid:
  variant:
    - {{name: short, algo: bc, steps: 100}}
    - {{name: long, algo: td3bc, steps: {LONG_STEPS}}}
  seed: [0]
"""
    )
    return path


def _driver(spec: Path, out: Path, storage: Path, address: str, env: dict, cwd: Path, log: Path):
    cmd = [sys.executable, "-m", "rl.sweep", str(spec), "--out", str(out), "--storage", str(storage)]
    return subprocess.Popen(
        [*cmd, "--address", address], cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT
    )


def _wait_for(store: Storage, step: int, proc, log: Path, after: str = "") -> None:
    """Until the long trial has a tree at `step` or beyond, the short one finished."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        best = store.best_trees("cluster")
        if SHORT in best and best[SHORT].runs[SHORT][0] and LONG in best:
            finished, at = best[LONG].runs[LONG]
            assert not finished, "the long trial ended before the kill: make it longer"
            if at >= step:
                return
        time.sleep(0.2)


def test_a_killed_driver_on_a_cluster_without_shared_output_resumes_from_storage(
    cluster, hopper_file, tmp_path
):
    address, env, worker_tmp, temp = cluster
    driver_dir, storage_dir = tmp_path / "driver", tmp_path / "storage"
    driver_dir.mkdir()
    out = driver_dir / "out"
    spec_path = _spec(tmp_path, hopper_file)
    store = Storage(storage_dir)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    first = _driver(spec_path, out, storage_dir, address, env, driver_dir, first_log)
    _wait_for(store, 300, first, first_log)
    # the trial's worker process dies (as on a lost node): Ray restarts the trial from its last checkpoint
    _kill(pid for pid, cmd in _processes(temp).items() if cmd.startswith("ray::ImplicitFunc"))
    killed_worker_at = store.best_trees("cluster")[LONG].runs[LONG][1]
    _wait_for(store, killed_worker_at + 300, first, first_log)
    first.send_signal(signal.SIGKILL)  # and then the driver
    first.wait()
    killed_at = store.best_trees("cluster")[LONG].runs[LONG][1]
    short_result = (out / "runs" / SHORT / "result.json").read_bytes()  # mirrored while the driver ran

    second = _driver(spec_path, out, storage_dir, address, env, driver_dir, second_log)
    assert second.wait(timeout=300) == 0, second_log.read_text()
    said = second_log.read_text()
    assert "2 trials; 1 finished (skipped), 1 to resume: long__tiny-hopper__s0" in said, said
    assert said.count("  done  ") == 1 and f"done  {LONG} step {LONG_STEPS}" in said

    # the finished trial was not run again; the long one resumed twice, each time from its last checkpoint
    assert (out / "runs" / SHORT / "result.json").read_bytes() == short_result
    log = (out / "logs" / f"{LONG}.log").read_text()
    resumed = [int(m) for m in re.findall(rf"resumed {LONG} at step (\d+) of {LONG_STEPS}", log)]
    # Ray restarts a trial from the last checkpoint its controller has registered: a worker killed right after it
    # wrote a tree (the one `killed_worker_at` read) may be restarted from the tree before, one chunk back (seen
    # under load). After the driver's kill, our own resume reads the storage: its best tree, exactly.
    chunk = 100  # checkpoint_every and eval_every of the spec
    assert len(resumed) == 2 and resumed[0] >= killed_worker_at - chunk and resumed[1] >= killed_at, log
    # trials ran on the worker node, in its temp dir; the driver's folder got only the mirrored copies
    starts = re.findall(rf"working in {worker_tmp}/misa-sweep-{LONG}-\S+ on \S+, (afresh|from \S+ \S+)", log)
    assert starts == ["afresh", "from Ray's checkpoint", "from the storage's"], log
    assert not (out / "ray").exists() and any((storage_dir / "ray").iterdir())

    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()[1:]))
    counts = Counter((r["trial_id"], r["step"]) for r in rows)
    assert set(counts.values()) == {1}, counts
    assert {t for t, _ in counts} == {SHORT, LONG}
    assert sorted(int(s) for t, s in counts if t == LONG) == list(range(100, LONG_STEPS + 1, 100))

    # and the resumed run is the straight run's, evaluation for evaluation
    straight = tmp_path / "straight"
    run_trial(load_spec(spec_path).trial(LONG), straight)
    assert (out / "runs" / LONG / "eval.csv").read_text() == (
        straight / "runs" / LONG / "eval.csv"
    ).read_text()
