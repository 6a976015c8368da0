"""Untrusted files and hostile input: crafted and damaged files, refused resumes that touch nothing, one-line CLI
errors, kill -9 at random moments, and the CLI fuzzed with hypothesis (docs/faults.md lists what is tried)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sac import _tiny_cfg
from test_train import tiny_dataset

from rl._atomic import LockError, acquire_lock, atomic_write, check_lock, remove_stale_temps
from rl._safe_load import CheckpointError, load_torch_file
from rl.collect.snapshots import load_policy_snapshot, save_policy_snapshot
from rl.config import ConfigError, load_yaml
from rl.data.hdf5 import read_hdf5
from rl.networks import TanhGaussianPolicy
from rl.train import Trainer, main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data" / "small.hdf5"
    tiny_dataset().to_hdf5(path)
    return path


def bc_argv(data: Path, run: Path, *extra: str, steps: int = 4) -> list[str]:
    return [
        "--algo",
        "bc",
        "--dataset",
        str(data),
        "--run-dir",
        str(run),
        "--steps",
        str(steps),
        "--batch-size",
        "8",
        "--hidden-pi",
        "[8]",
        "--eval-every",
        "0",
        "--final-eval",
        "false",
        "--quiet",
        *extra,
    ]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under `d` with its bytes (what "touched nothing" compares)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


# --- crafted files run no code -------------------------------------------------------------------------------
class Payload:
    """Unpickling this calls os.mkdir(marker): what a crafted checkpoint would do with a weights_only=False load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, data_file):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run))[0] == 0
    marker = tmp_path / "pwned"
    blob = torch.load(run / "checkpoint.pt", weights_only=False)  # our own file: trusted here
    blob["evals"] = [Payload(marker)]
    torch.save(blob, run / "checkpoint.pt")
    before = snapshot(run)
    rc, _, err = run_cli(bc_argv(data_file, run, "--resume", steps=6))
    assert_one_line_error(rc, err, "refused", "checkpoint.pt")
    assert not marker.exists() and snapshot(run) == before
    # the same guard serves policy snapshots (and SAC checkpoints, through the same loader)
    torch.save({"state_dict": {}, "obs_dim": 1, "act_dim": 1, "hidden": [Payload(marker)]}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_policy_snapshot(tmp_path / "p.pt")
    assert not marker.exists()


# --- damaged files: a named error or the same content, never other numbers ---------------------------------------
def damaged_copies(data: bytes, seed: int, flips: int):
    """Truncations at the edges and the middle, then `flips` single-byte corruptions at random offsets."""
    for n in (0, 1, 16, len(data) // 2, len(data) - 1):
        yield f"cut{n}", data[:n]
    rng = np.random.default_rng(seed)
    for _ in range(flips):
        off = int(rng.integers(len(data)))
        b = bytearray(data)
        b[off] ^= int(rng.integers(1, 256))
        yield f"flip{off}", bytes(b)


def test_damaged_checkpoints_fail_by_name_or_load_identically(tmp_path, data_file):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run))[0] == 0
    good = (run / "checkpoint.pt").read_bytes()
    reference = load_torch_file(run / "checkpoint.pt")
    target = tmp_path / "damaged.pt"
    outcomes = {"error": 0, "same": 0}
    for _, data in damaged_copies(good, seed=0, flips=150):
        target.write_bytes(data)
        try:
            blob = load_torch_file(target)
        except CheckpointError as e:
            assert str(target) in str(e)
            outcomes["error"] += 1
            continue
        assert_same_state(reference, blob)  # a flip in zip padding: harmless
        outcomes["same"] += 1
    assert outcomes["error"] >= 100  # the data records dominate the file, and their CRCs catch every flip


def test_damaged_policy_snapshots_and_hdf5_fail_by_name_or_load_identically(tmp_path):
    torch.manual_seed(0)
    pol = TanhGaussianPolicy(3, 2, (8,))
    save_policy_snapshot(tmp_path / "p.pt", pol, {"env": "x"})
    good_sd = pol.state_dict()
    target = tmp_path / "bad.pt"
    for _, data in damaged_copies((tmp_path / "p.pt").read_bytes(), seed=1, flips=80):
        target.write_bytes(data)
        try:
            loaded, _ = load_policy_snapshot(target)
        except CheckpointError as e:
            assert str(target) in str(e)
            continue
        assert_same_state(good_sd, loaded.state_dict())

    ds = tiny_dataset(n=500)
    ds.to_hdf5(tmp_path / "d.hdf5")
    target = tmp_path / "bad.hdf5"
    errors = 0
    for _, data in damaged_copies((tmp_path / "d.hdf5").read_bytes(), seed=2, flips=150):
        target.write_bytes(data)
        try:
            back = read_hdf5(target)
        except ValueError as e:
            assert str(target) in str(e)
            errors += 1
            continue
        for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            np.testing.assert_array_equal(getattr(back, k), getattr(ds, k))
    assert errors >= 50


def test_damaged_yaml_configs_name_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo: bc\nsteps: [1,\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: invalid YAML at line 3"):
        load_yaml(path)
    path.write_bytes(b"algo: bc\n\xff\xfe\x00steps: 3\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_yaml(path)


# --- resumes -------------------------------------------------------------------------------------------------
def test_refused_resume_touches_nothing(tmp_path, data_file):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run))[0] == 0
    before = snapshot(run)
    for extra, needle in (
        (("--seed", "1"), "seed=0"),
        (("--lr-pi", "1e-3"), "lr_pi"),
        (("--algo", "td3bc"), "algo"),
    ):
        argv = [a for a in bc_argv(data_file, run, "--resume", *extra) if a != "bc" or "--algo" not in extra]
        if "--algo" in extra:  # replace the algo rather than pass it twice
            argv = bc_argv(data_file, run, "--resume")
            argv[1] = "td3bc"
        rc, _, err = run_cli(argv)
        assert_one_line_error(rc, err, needle)
        assert snapshot(run) == before, extra


def test_resume_without_a_run_is_an_error_and_creates_nothing(tmp_path, data_file):
    missing = tmp_path / "missing"
    rc, _, err = run_cli(bc_argv(data_file, missing, "--resume"))
    assert_one_line_error(rc, err, "holds no run")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli(["--resume", "--run-dir", str(empty)])
    assert_one_line_error(rc, err, "holds no run")
    assert list(empty.iterdir()) == []


def test_resume_takes_the_runs_own_config(tmp_path, data_file):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run, steps=4))[0] == 0
    rc, out, err = run_cli(["--resume", "--run-dir", str(run), "--steps", "6"])
    assert rc == 0, err
    blob = load_torch_file(run / "checkpoint.pt")
    assert blob["step"] == 6 and blob["config"]["hidden_pi"] == [8] and blob["config"]["batch_size"] == 8
    assert "steps: 6" in (run / "config.yaml").read_text()


def test_failed_starts_leave_the_run_dir_as_it_was(tmp_path, data_file):
    run = tmp_path / "run"
    for extra, needle in (
        (("--device", "bogus"), "'bogus'"),
        (("--dataset", str(tmp_path / "nope.hdf5")), "nope.hdf5"),
        (("--env", "NoSuchEnv-v0", "--final-eval", "true"), "NoSuchEnv-v0"),
        (("--env", "Hopper-v5", "--final-eval", "true"), "observations of size 4"),
        (("--estimator-options.x", "1"), "--estimator-options.x"),
    ):
        rc, _, err = run_cli(bc_argv(data_file, run, *extra))
        assert_one_line_error(rc, err, needle)
        assert not run.exists(), extra
    # an existing run is not touched either
    assert run_cli(bc_argv(data_file, run))[0] == 0
    before = snapshot(run)
    rc, _, err = run_cli(bc_argv(data_file, run, "--resume", "--device", "bogus"))
    assert_one_line_error(rc, err, "'bogus'")
    assert snapshot(run) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only build's message")
def test_cuda_on_a_cpu_build_is_one_line(tmp_path, data_file):
    rc, _, err = run_cli(bc_argv(data_file, tmp_path / "run", "--device", "cuda"))
    assert_one_line_error(rc, err, "'cuda'", "--device cpu")
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path, data_file):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([*bc_argv(data_file, tmp_path / "run", "--device", "bogus"), "--debug"])
    assert rc == 2 and "Traceback" in err.getvalue()


def test_numbers_parse_as_yaml_does(tmp_path, data_file):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"algo: bc\ndataset: {data_file}\nlr_pi: 3e-4\nsteps: 1e1\nmax_abs_loss: 1E6\n")
    rc, out, err = run_cli(
        ["--config", str(cfg), "--lr-q", "2e-4", "--dry-run", "--run-dir", str(tmp_path / "r")]
    )
    assert rc == 0, err
    assert "for 10 steps" in out and not (tmp_path / "r").exists()
    from rl.train import build_config

    c = build_config(cfg, {"lr-q": "2e-4"})
    assert (c.agent.lr_pi, c.agent.lr_q, c.run.steps, c.run.max_abs_loss) == (3e-4, 2e-4, 10, 1e6)


def test_unusable_checkpoints_are_one_line(tmp_path, data_file):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run))[0] == 0
    good = (run / "checkpoint.pt").read_bytes()
    for data, needle in ((good[: len(good) // 2], "not a torch zip"), (b"garbage" * 10, "not a torch zip")):
        (run / "checkpoint.pt").write_bytes(data)
        rc, _, err = run_cli(bc_argv(data_file, run, "--resume", steps=6))
        assert_one_line_error(rc, err, needle, "checkpoint.pt")
    # a checkpoint of another network size fits the file format but not the agent
    (run / "checkpoint.pt").write_bytes(good)
    blob = load_torch_file(run / "checkpoint.pt")
    blob["config"]["hidden_pi"] = [16]
    torch.save(blob, run / "checkpoint.pt")
    rc, _, err = run_cli(["--resume", "--run-dir", str(run)])
    assert_one_line_error(rc, err, "does not fit")


def test_unwritable_dataset_cache_fails_before_generating(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MISA_DATA_DIR", str(blocker / "cache"))
    import rl.collect.generate

    def no_generation(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("generated a dataset that could not be saved")

    monkeypatch.setattr(rl.collect.generate, "make_dataset", no_generation)
    rc, _, err = run_cli(["--algo", "bc", "--dataset", "hopper-medium-v5", "--run-dir", str(tmp_path / "r")])
    assert_one_line_error(rc, err, "dataset cache", "not writable", "MISA_DATA_DIR")
    assert not (tmp_path / "r").exists()


def test_hdf5_without_a_key_and_a_directory_named_hdf5_are_one_line(tmp_path):
    import h5py

    path = tmp_path / "partial.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"], f["actions"] = np.zeros((5, 4), np.float32), np.zeros((5, 2), np.float32)
    rc, _, err = run_cli(bc_argv(path, tmp_path / "run"))
    assert_one_line_error(rc, err, str(path), "has no 'rewards' dataset")
    assert "_Invalid" not in err
    folder = tmp_path / "x.hdf5"
    folder.mkdir()
    rc, _, err = run_cli(bc_argv(folder, tmp_path / "run"))
    assert_one_line_error(rc, err, f"{folder} is a directory, not an HDF5 file")
    assert not (tmp_path / "run").exists()


def test_a_failed_import_is_one_line_naming_the_module(tmp_path, data_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the import puts the current directory on it
    (tmp_path / "broken_bounds_mod.py").write_text("import mi_estimators\nraise RuntimeError('not today')\n")
    (tmp_path / "needs_dep_mod.py").write_text("import no_such_dependency_xyz\n")
    run = tmp_path / "run"
    for target, needles in (
        ("no_such_bounds_mod", ("import 'no_such_bounds_mod'", "no module named 'no_such_bounds_mod'")),
        ("broken_bounds_mod", ("import 'broken_bounds_mod' failed", "RuntimeError: not today")),
        ("needs_dep_mod", ("import 'needs_dep_mod' failed", "No module named 'no_such_dependency_xyz'")),
        ("lib/missing.py", ("import 'lib/missing.py'", "no such file")),
        (str(tmp_path / "broken_bounds_mod.py"), ("broken_bounds_mod.py' failed", "not today")),
    ):
        rc, _, err = run_cli(bc_argv(data_file, run, "--import", target))
        assert_one_line_error(rc, err, *needles)
        assert not run.exists(), target
    assert "broken_bounds_mod" not in sys.modules  # a failed file import leaves no half-made module behind
    # from the config file, the same
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algo: bc\nimports: [no_such_bounds_mod]\n")
    rc, _, err = run_cli(
        ["--config", str(cfg), "--dataset", str(data_file), "--run-dir", str(run), "--dry-run"]
    )
    assert_one_line_error(rc, err, "no module named 'no_such_bounds_mod'")


# --- one run per run dir: the lock ---------------------------------------------------------------------------------
@pytest.fixture
def live_pid():
    """The PID of a live process that is not this one (a sleeping child), killed at the end."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child.pid
    child.kill()
    child.wait()


def _write_lock(path: Path, pid: int, host: str | None = None) -> None:
    lock = {"pid": pid, "host": host or socket.gethostname(), "tool": "rl.train", "since": "then"}
    path.write_text(json.dumps(lock))


def test_a_second_run_on_a_locked_run_dir_is_refused(tmp_path, data_file, live_pid):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run))[0] == 0
    assert not (run / ".rl-run.lock").exists()  # released at the end of the run
    _write_lock(run / ".rl-run.lock", live_pid)  # as a run still training there would hold it
    before = snapshot(run)
    for argv in (
        bc_argv(data_file, run, "--resume", steps=6),
        ["--resume", "--run-dir", str(run), "--steps", "6", "--dry-run"],
        bc_argv(data_file, run),
    ):
        rc, _, err = run_cli(argv)
        assert_one_line_error(rc, err, f"--run-dir {run} is in use by rl.train (pid {live_pid} on ")
        assert snapshot(run) == before  # not a row added, not a byte of the lock changed
    # a fresh run dir that holds only the lock of a live run is refused as well (not called "not from rl.train")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _write_lock(fresh / ".rl-run.lock", live_pid)
    rc, _, err = run_cli(bc_argv(data_file, fresh))
    assert_one_line_error(rc, err, f"pid {live_pid}")
    # a lock written on another host cannot be checked from here: it counts as held, and the message says so
    _write_lock(run / ".rl-run.lock", live_pid, host="elsewhere.example")
    rc, _, err = run_cli(bc_argv(data_file, run, "--resume", steps=6))
    assert_one_line_error(rc, err, f"pid {live_pid} on elsewhere.example", "another host", ".rl-run.lock")


def test_a_stale_lock_is_taken_over_and_the_lock_is_held_while_training(tmp_path, data_file):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its PID names no process (until the system reuses it)
    run = tmp_path / "run"
    run.mkdir()
    _write_lock(run / ".rl-run.lock", dead.pid)  # what a start killed before it wrote its marker leaves
    rc, _, err = run_cli(bc_argv(data_file, run))
    assert rc == 0, err
    assert not (run / ".rl-run.lock").exists()
    _write_lock(run / ".rl-run.lock", dead.pid)  # a run killed by kill -9 after its checkpoint
    from rl.agents import train_config

    cfg = train_config(
        "bc",
        dataset=str(data_file),
        hidden_pi=(8,),
        batch_size=8,
        steps=6,
        eval_every=0,
        final_eval=False,
        run_dir=str(run),
    )
    with Trainer(cfg, resume=True, quiet=True) as trainer:
        held = json.loads((run / ".rl-run.lock").read_text())
        assert (held["pid"], held["host"], held["tool"]) == (os.getpid(), socket.gethostname(), "rl.train")
        trainer.train()
    assert not (run / ".rl-run.lock").exists()
    with pytest.raises(RuntimeError, match="closed"):
        trainer.train()
    # a run that fails still releases it
    rc, _, err = run_cli(bc_argv(data_file, run, "--resume", "--max-abs-loss", "1e-12", steps=8))
    assert rc == 1 and "diverged" in err and not (run / ".rl-run.lock").exists()


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path, data_file):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run, steps=6))[0] == 0
    before = snapshot(run)
    rc, _, err = run_cli(["--resume", "--run-dir", str(run), "--steps", "4"])
    assert_one_line_error(rc, err, "checkpoint.pt is at step 6, past --steps 4", "--steps 6 or more")
    assert snapshot(run) == before  # config.yaml still says steps: 6
    rc, out, err = run_cli(["--resume", "--run-dir", str(run), "--steps", "6"])  # nothing to do is fine
    assert rc == 0 and "done: 6 steps" in out, err


def test_lock_helper_takes_over_dead_reused_and_unreadable_locks(tmp_path, live_pid):
    path = tmp_path / "d" / ".lock"
    first = acquire_lock(path, "tool-a")
    assert json.loads(path.read_text())["pid"] == os.getpid() and first.held
    second = acquire_lock(path, "tool-b")  # this process's own earlier lock: nothing else holds it
    first.release()  # does not remove the lock that `second` made in its place
    assert json.loads(path.read_text())["tool"] == "tool-b"
    second.release()
    assert not path.exists() and not second.held
    second.release()  # twice: nothing
    # the PID of a live process, written with another start time: that PID was reused, the writer is gone
    path.write_text(json.dumps({"pid": live_pid, "host": socket.gethostname(), "proc_start": -1}))
    acquire_lock(path, "t").release()
    # a bare PID (what other tools write) of a live process holds; the check writes nothing
    path.write_text(f"{live_pid}\n")
    # ... unless that process started after the lock was written: then the PID was reused
    if Path("/proc/stat").exists():
        os.utime(path, (time.time() - 3600, time.time() - 3600))
        acquire_lock(path, "t").release()
        path.write_text(f"{live_pid}\n")
    with pytest.raises(LockError, match=f"in use by another process \\(pid {live_pid}"):
        check_lock(path, what="the folder")
    with pytest.raises(LockError) as info:
        acquire_lock(path, "t", what="the folder")
    assert info.value.holder["pid"] == live_pid and path.read_text() == f"{live_pid}\n"
    # no PID at all: a lock being written right now (refused), or a crash's leftover once it is old (taken over)
    path.write_text("")
    with pytest.raises(LockError, match="being locked by another process just now"):
        acquire_lock(path, "t")
    os.utime(path, (time.time() - 60, time.time() - 60))
    acquire_lock(path, "t").release()


def test_out_of_range_actions_are_refused_before_training(tmp_path):
    ds = tiny_dataset()
    ds = ds.replace(actions=ds.actions * 3.0)
    path = tmp_path / "wide.hdf5"
    ds.to_hdf5(path)
    rc, _, err = run_cli(bc_argv(path, tmp_path / "run"))
    assert_one_line_error(rc, err, "outside [-1, 1]", "actions[")


# --- checkpoint before the final evaluation; temp files of killed writes ----------------------------------------
def test_checkpoint_is_written_before_the_final_evaluation(tmp_path, monkeypatch):
    from rl.agents import train_config

    ds = tiny_dataset(do=11, da=3).replace(metadata={"env_id": "Hopper-v5"})
    cfg = train_config(
        "bc", hidden_pi=(8,), batch_size=8, steps=3, eval_every=0, run_dir=str(tmp_path), eval_episodes=1
    )

    def broken(self):
        raise RuntimeError("the env crashed")

    monkeypatch.setattr(Trainer, "evaluate", broken)
    with pytest.raises(RuntimeError, match="env crashed"):
        Trainer(cfg, ds, quiet=True).train()
    assert load_torch_file(tmp_path / "checkpoint.pt")["step"] == 3
    monkeypatch.undo()
    resumed = Trainer(cfg, ds, resume=True, quiet=True)
    rec = resumed.train()  # nothing left to train: only the missing final evaluation
    assert rec is not None and rec["step"] == 3 and load_torch_file(tmp_path / "checkpoint.pt")["evals"]


def test_temp_files_of_killed_writes_are_removed_on_the_next_start(tmp_path, data_file):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run))[0] == 0
    code = (
        "import os, sys\n"
        "from rl._atomic import atomic_write\n"
        "def die(tmp):\n"
        "    open(tmp, 'wb').write(b'partial')\n"
        "    os._exit(9)\n"
        "atomic_write(sys.argv[1], die)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(run / "checkpoint.pt")], check=False)
    left = sorted(p.name for p in run.glob(".checkpoint.pt.*.tmp"))
    assert len(left) == 1
    assert load_torch_file(run / "checkpoint.pt")["step"] == 4  # the old checkpoint is whole
    assert run_cli(bc_argv(data_file, run, "--resume", steps=6))[0] == 0
    assert not list(run.glob(".checkpoint.pt.*.tmp"))
    # only our own pattern goes: a user's dotfile stays
    for name in (".notes.tmp", ".env.settings.tmp", ".vimrc.old.20240101", ".x.abcd1234.tmp"):
        (run / name).write_text("a user's")
    assert run_cli(bc_argv(data_file, run, "--resume", steps=7))[0] == 0
    assert all((run / n).exists() for n in (".notes.tmp", ".env.settings.tmp", ".vimrc.old.20240101"))
    assert [p.name for p in remove_stale_temps(run, r"x")] == [".x.abcd1234.tmp"]


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"old"))

    def interrupted(tmp):
        Path(tmp).write_bytes(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


# --- kill -9 at random moments, then resume: bit-identical -------------------------------------------------------
def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "rl.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_and_resume(tmp_path: Path, data: Path, steps: int, tries: int, seed: int) -> list[int]:
    """Kill -9 the run `tries` times while it is unfinished (the first time during its start-up, then at random
    moments of training), resume until done, compare with an unkilled run; returns the checkpointed step after
    each kill (0: killed before the first checkpoint)."""
    common = ["--checkpoint-every", "1", "--log-every", "7", "--threads", "1"]
    straight = tmp_path / "straight"
    p = _cli([*bc_argv(data, straight, *common, steps=steps)])
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    run, ckpt = tmp_path / "killed", tmp_path / "killed" / "checkpoint.pt"
    rng = np.random.default_rng(seed)
    at: list[int] = []
    while True:
        done = int(load_torch_file(ckpt)["step"]) if ckpt.exists() else 0
        p = _cli([*bc_argv(data, run, *common, *(["--resume"] if ckpt.exists() else []), steps=steps)])
        if len(at) < tries and done < steps:
            # wait until training runs (the checkpoint is rewritten: one per step), then kill a random 0-20 ms
            # later: in an update or inside a checkpoint write
            # (the first kill lands in the start-up instead: a run killed before its first checkpoint)
            seen = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            while at and p.poll() is None and (ckpt.stat().st_mtime_ns if ckpt.exists() else None) == seen:
                time.sleep(0.001)
            time.sleep(float(rng.uniform(0.0, 0.02 if at else 1.0)))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=60)
                at.append(int(load_torch_file(ckpt)["step"]) if ckpt.exists() else 0)
            p.wait(timeout=600)
            continue
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()
        break
    a, b = load_torch_file(straight / "checkpoint.pt"), load_torch_file(ckpt)
    assert a["step"] == b["step"] == steps
    assert_same_state(a["agent"], b["agent"])
    strip = lambda t: [line.rsplit(",", 1)[0] for line in t.splitlines()]  # noqa: E731 - drop updates/s
    assert strip((straight / "progress.csv").read_text()) == strip((run / "progress.csv").read_text())
    assert not list(run.glob(".*.tmp"))
    assert not (
        run / ".rl-run.lock"
    ).exists()  # each killed run's stale lock was taken over, the last released
    return at


def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path, data_file):
    _kill_and_resume(tmp_path, data_file, steps=300, tries=3, seed=0)


@pytest.mark.slow
def test_kill_9_many_times_then_resume_is_bit_identical(tmp_path, data_file):
    at = _kill_and_resume(tmp_path, data_file, steps=2000, tries=25, seed=1)
    advanced = sum(b > a for a, b in zip([0, *at], at))
    print(f"checkpointed step after each kill: {at}; {advanced} of {len(at)} kills landed in training")
    assert at[0] == 0 and advanced >= 20


# --- the CLI fuzzed --------------------------------------------------------------------------------------------
KEYS = [
    "steps",
    "seed",
    "batch-size",
    "eval-every",
    "eval-episodes",
    "log-every",
    "checkpoint-every",
    "device",
    "lr-pi",
    "lr-q",
    "gamma",
    "tau",
    "hidden-pi",
    "action-clip",
    "max-abs-loss",
    "final-eval",
    "env",
    "bc-loss",
    "normalize-observations",
    "target-entropy",
    "estimator-options.x",
    "nope",
    "steps.x",
    "progress",
]
VALUES = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["3e-4", "1e6", "-1e-3", "null", "true", "no", "[8]", "[0]", "[-1]", "[8, 8]", "[", "{a: 1}", "cpu"]
    ),
    st.sampled_from(["cuda", "cuda:7", "mps", "bogus", "Hopper-v5", "NoEnv-v1", "mse", "mle", "", "--"]),
    st.text(max_size=12),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_fuzzed_cli_exits_0_or_2_with_one_line_and_writes_nothing(tmp_path, data_file, pairs):
    run = tmp_path / "fuzz"
    argv = bc_argv(data_file, run, "--dry-run")
    for key, value in pairs:
        argv += [f"--{key}", value]
    rc, out, err = run_cli(argv)
    if rc == 0:
        assert out.startswith("ok: ") and not err
    else:
        assert_one_line_error(rc, err)
    assert not run.exists()


# --- the other file types: SAC checkpoints and buffers, Minari datasets, the dataset cache -----------------------
def test_damaged_sac_checkpoints_and_buffers_fail_by_name(tmp_path):
    from rl.collect.sac import Trainer as SACTrainer

    cfg = _tiny_cfg(40)
    with SACTrainer(cfg, tmp_path, quiet=True) as trainer:
        trainer.train()
    ckpt, (buf,) = tmp_path / "checkpoint.pt", list(tmp_path.glob("buffer_*.npz"))
    good_ckpt, good_buf = ckpt.read_bytes(), buf.read_bytes()
    for data in (good_ckpt[:100], b"", b"PK\x03\x04" + good_ckpt[4:1000]):
        ckpt.write_bytes(data)
        with pytest.raises(CheckpointError, match="checkpoint.pt"):
            SACTrainer(cfg, tmp_path, resume=True, quiet=True)
    ckpt.write_bytes(good_ckpt)
    for data in (good_buf[: len(good_buf) // 2], b"garbage"):
        buf.write_bytes(data)
        with pytest.raises(CheckpointError, match="replay buffer"):
            SACTrainer(cfg, tmp_path, resume=True, quiet=True)
    buf.write_bytes(good_buf)
    blob = load_torch_file(ckpt)
    blob["buffer_file"] = "../../etc/passwd"
    torch.save(blob, ckpt)
    with pytest.raises(CheckpointError, match="not a buffer file name"):
        SACTrainer(cfg, tmp_path, resume=True, quiet=True)


def test_damaged_minari_files_fail_by_name(tmp_path):
    from rl.data import to_minari
    from rl.data.minari_io import read_minari

    to_minari(tiny_dataset(n=200, do=11, da=3), "misa/tiny-v0", root=tmp_path, env_id="Hopper-v5")
    data_dir = tmp_path / "misa" / "tiny-v0" / "data"
    for name in ("main_data.hdf5", "metadata.json"):
        good = (data_dir / name).read_bytes()
        for cut in (0, 1, len(good) // 2, len(good) - 1):
            (data_dir / name).write_bytes(good[:cut])
            with pytest.raises(ValueError, match="tiny-v0"):
                read_minari("misa/tiny-v0", root=tmp_path)
        (data_dir / name).write_bytes(good)


def test_damaged_cached_datasets_are_caught_by_their_checksums(tmp_path):
    from rl.collect.generate import load_or_make

    ds = load_or_make("hopper-medium-v5", size=1500, root=tmp_path, progress=False)
    (f,) = tmp_path.rglob("main_data.hdf5")
    good = f.read_bytes()
    rng = np.random.default_rng(0)
    for off in rng.integers(
        len(good), size=5
    ):  # Minari's HDF5 has no checksums: a flip could load other numbers
        b = bytearray(good)
        b[int(off)] ^= 0x01
        f.write_bytes(bytes(b))
        with pytest.raises(ValueError, match="damaged.*main_data.hdf5"):
            load_or_make("hopper-medium-v5", size=1500, root=tmp_path, progress=False)
    f.write_bytes(good)
    again = load_or_make("hopper-medium-v5", size=1500, root=tmp_path, progress=False)
    np.testing.assert_array_equal(again.observations, ds.observations)


def test_sac_cli_misuse_is_one_line(tmp_path, capsys):
    from rl.collect.sac import main as sac_main

    assert sac_main(["--env", "Bogus-v0", "--run-dir", str(tmp_path / "s"), "--steps", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Bogus-v0" in err and len(err.strip().splitlines()) == 1
    assert sac_main(["--threads", "0", "--run-dir", str(tmp_path / "s")]) == 2
    assert "--threads" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_resume_refuses_another_device_and_a_new_horizon_for_a_cosine_schedule(tmp_path, data_file):
    run = tmp_path / "run"
    assert run_cli(bc_argv(data_file, run))[0] == 0
    rc, _, err = run_cli(["--resume", "--run-dir", str(run), "--device", "cuda"])
    assert_one_line_error(rc, err, "device")
    iql = tmp_path / "iql"
    argv = [a if a != "bc" else "iql" for a in bc_argv(data_file, iql)] + ["--hidden-q", "[8]"]
    assert run_cli(argv)[0] == 0
    before = snapshot(iql)
    rc, _, err = run_cli(["--resume", "--run-dir", str(iql), "--steps", "8"])
    assert_one_line_error(rc, err, "cosine learning-rate schedule", "steps=8")
    assert snapshot(iql) == before


def test_strings_that_look_like_numbers_survive_a_config_round_trip(tmp_path, data_file):
    from rl.agents import TrainConfig, train_config
    from rl.config import parse_yaml, save_yaml

    cfg = train_config("bc", run_dir="1e3", dataset="2E5")
    save_yaml(cfg, tmp_path / "c.yaml")
    assert TrainConfig.from_dict(load_yaml(tmp_path / "c.yaml")) == cfg
    # YAML 1.2 numbers (PyYAML alone reads 3e-4 as a string), a quoted number stays a string
    assert parse_yaml("a: 3e-4\nb: '3e-4'\nc: 1E6\nd: ._e5\n") == {
        "a": 3e-4,
        "b": "3e-4",
        "c": 1e6,
        "d": "._e5",
    }


def test_a_last_periodic_evaluation_interrupted_is_redone_on_resume(tmp_path, monkeypatch):
    from rl.agents import train_config

    ds = tiny_dataset(do=11, da=3).replace(metadata={"env_id": "Hopper-v5"})
    cfg = train_config(
        "bc",
        hidden_pi=(8,),
        batch_size=8,
        steps=4,
        eval_every=2,
        final_eval=False,
        run_dir=str(tmp_path),
        eval_episodes=1,
    )
    calls = []

    def broken_at_the_end(self):
        calls.append(self.step)
        if self.step == 4:
            raise RuntimeError("killed inside the evaluation")
        return real(self)

    real = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", broken_at_the_end)
    with pytest.raises(RuntimeError):
        Trainer(cfg, ds, quiet=True).train()
    monkeypatch.undo()
    resumed = Trainer(cfg, ds, resume=True, quiet=True)
    resumed.train()
    assert [e["step"] for e in resumed.evals] == [2, 4] and calls == [2, 4]
