"""Tests of the D4RL-style collector: seeding, sizes, medium-replay composition, caching, CLI, shipped checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rl import collect
from rl.collect import generate
from rl.collect.snapshots import load_policy_snapshot, save_policy_snapshot
from rl.networks import TanhGaussianPolicy

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
EVALS = [10.0, 20.0, 100.0, 200.0, 300.0, 600.0, 900.0, 800.0, 1000.0, 1200.0, 900.0]  # steps 0, 10, ..., 100


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    """A fake SAC run (tiny random-init policies) shipped with `ship_checkpoints` into a temp checkpoint dir."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run")
    cfg = {"env": "Hopper-v5", "steps": 100, "seed": 0, "start_steps": 10, "eval_every": 10}
    cfg |= {"checkpoint_every": 50, "eval_seed": 1_000_000}
    (run / "config.json").write_text(json.dumps(cfg))
    evals = []
    for i, r in enumerate(EVALS):
        torch.manual_seed(i)
        pol = TanhGaussianPolicy(11, 3, hidden=(8,))
        save_policy_snapshot(
            run / "snapshots" / f"step_{10 * i:07d}.pt", pol, {"step": 10 * i, "eval_return": r}
        )
        evals.append({"step": 10 * i, "return_mean": r, "return_std": 1.0, "episodes": 10})
    (run / "evals.json").write_text(json.dumps(evals))
    out = tmp_path_factory.mktemp("ckpt")
    collect.ship_checkpoints(
        run,
        out,
        max_replay_snapshots=4,
        stochastic_episodes=0,
        check_float16=False,
        replay_dtype=torch.float16,
    )
    return out


def test_ship_selects_expert_medium_and_replay(ckpt_dir: Path) -> None:
    man = generate.manifest("Hopper-v5", ckpt_dir)
    assert man["expert"]["step"] == 90 and man["expert"]["eval_return"] == 1200.0
    assert man["medium"]["step"] == 40  # earlier snapshot closest to 1200 / 3 = 400
    assert [s["step"] for s in man["medium_replay"]["snapshots"]] == [20, 30, 40]
    assert man["medium_replay"]["snapshots"][0]["dtype"] == "float16"
    assert "python -m rl.collect.sac --env Hopper-v5" in man["command"]
    segs = generate.replay_segments("Hopper-v5", ckpt_dir)
    assert [(s["from_step"], s["to_step"]) for s in segs] == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert segs[0]["file"] is None


def test_float16_snapshot_keeps_actions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pol = TanhGaussianPolicy(11, 3)
    save_policy_snapshot(tmp_path / "p.pt", pol, {}, dtype=torch.float16)
    half, _ = load_policy_snapshot(tmp_path / "p.pt")
    obs = np.random.default_rng(0).normal(size=(256, 11)).astype(np.float32)
    assert np.abs(half.act(obs) - pol.act(obs)).max() < 5e-3
    assert (tmp_path / "p.pt").stat().st_size < 200_000


def _make(name: str, ckpt_dir: Path, size: int, seed: int):
    return generate.make_dataset(name, size, seed, n_envs=4, progress=False, checkpoint_dir=ckpt_dir)


def test_same_seed_same_arrays_other_seed_differs(ckpt_dir: Path) -> None:
    a = _make("hopper-medium-v5", ckpt_dir, 600, 0)
    b = _make("hopper-medium-v5", ckpt_dir, 600, 0)
    c = _make("hopper-medium-v5", ckpt_dir, 600, 1)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert not np.array_equal(a.observations, c.observations)
    assert len(a) == 600 and a.metadata["policy"]["step"] == 40


@pytest.mark.parametrize("level", ["random", "expert"])
def test_rollout_structure(ckpt_dir: Path, level: str) -> None:
    ds = _make(f"hopper-{level}-v5", ckpt_dir, 700, 3)
    assert len(ds) == 700
    assert ds.terminals[-1] or ds.timeouts[-1]
    assert not (ds.terminals & ds.timeouts).any()
    inside = ~(ds.terminals | ds.timeouts)[:-1]
    np.testing.assert_array_equal(ds.next_observations[:-1][inside], ds.observations[1:][inside])
    assert np.abs(ds.actions).max() <= 1.0
    assert ds.num_episodes > 1 and ds.episode_lengths().max() <= 1000


def test_medium_replay_composition(ckpt_dir: Path) -> None:
    default = _make("hopper-medium-replay-v5", ckpt_dir, None, 0)
    assert len(default) == 40  # the medium agent's step count: what its buffer held
    ds = _make("hopper-medium-replay-v5", ckpt_dir, 401, 0)
    segs = ds.metadata["segments"]
    assert [s["transitions"] for s in segs] == [101, 100, 100, 100]  # proportional, sums exactly
    files = [None, "Hopper-v5-replay_0000020.pt", "Hopper-v5-replay_0000030.pt", "Hopper-v5-medium.pt"]
    assert [s["file"] for s in segs] == files
    bounds = np.cumsum([0] + [s["transitions"] for s in segs])
    for hi in bounds[1:]:  # each segment ends an episode (cut with a timeout)
        assert ds.terminals[hi - 1] or ds.timeouts[hi - 1]
    # the random segment is the uniform policy: same arrays as a random rollout of that stream
    rand = generate.rollout("Hopper-v5", None, 101, 0, (4, 0), n_envs=4)
    np.testing.assert_array_equal(ds.actions[:101], rand["actions"])


def test_load_or_make_caches_in_minari_and_loads_through_rl_data(ckpt_dir: Path, tmp_path: Path) -> None:
    from rl import data

    kw = {"checkpoint_dir": ckpt_dir, "n_envs": 4, "progress": False}
    assert not generate.is_cached("hopper-medium-v5", 300, 0, tmp_path, ckpt_dir)
    first = generate.load_or_make("hopper-medium-v5", 300, 0, tmp_path, **kw)
    did = generate.dataset_id("hopper-medium-v5", 300, 0, ckpt_dir)
    assert did == "misa/hopper-medium-n300-v5"
    assert (tmp_path / did / "data").is_dir()
    assert generate.is_cached("hopper-medium-v5", 300, 0, tmp_path, ckpt_dir)
    again = data.load("hopper-medium-v5", size=300, root=tmp_path, **kw)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(first, f), getattr(again, f), err_msg=f)
    assert again.metadata["checkpoints_sha256"] == generate.manifest("Hopper-v5", ckpt_dir)["_sha256"]
    me = generate.load_or_make("hopper-medium-expert-v5", 600, 0, tmp_path, **kw)
    exp = generate.load_or_make("hopper-expert-v5", 300, 0, tmp_path, **kw)
    np.testing.assert_array_equal(me.observations, np.concatenate([first.observations, exp.observations]))


def test_names_and_errors() -> None:
    assert generate.parse_name("walker2d-medium-replay-v5").env_id == "Walker2d-v5"
    assert len(generate.all_names()) == 15
    with pytest.raises(ValueError, match="unknown level"):
        generate.parse_name("hopper-mediocre-v5")
    with pytest.raises(ValueError, match="unknown env"):
        generate.parse_name("ant-medium-v5")
    with pytest.raises(ValueError, match="form"):
        generate.parse_name("hopper-medium-v2")
    with pytest.raises(FileNotFoundError, match="no shipped checkpoints"):
        generate.manifest("Hopper-v5", "/nonexistent")


def test_cli_make_list_info(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MISA_DATA_DIR", str(tmp_path))
    assert generate.data_root() == tmp_path
    assert collect.main(["make", "hopper-random-v5", "--size", "300", "--n-envs", "4"]) == 0
    assert collect.main(["info", "hopper-random-v5", "--size", "300"]) == 0
    out = capsys.readouterr().out
    assert "transitions: 300" in out and "return:" in out and "normalised:" in out
    assert collect.main(["list"]) == 0
    assert "hopper-random-v5" in capsys.readouterr().out
    assert collect.main(["info", "hopper-bogus-v5"]) == 2


def test_write_references_merges_atomically(tmp_path: Path) -> None:
    from rl.data.references import normalized_score

    path = tmp_path / "v5.json"
    collect.write_references(
        "Hopper-v5", {"random": -10.0, "expert": 3000.0, "episodes": 100, "how": "x"}, path
    )
    collect.write_references(
        "Walker2d-v5", {"random": 0.0, "expert": 4000.0, "episodes": 100, "how": "y"}, path
    )
    table = json.loads(path.read_text())
    assert set(table) == {"Hopper-v5", "Walker2d-v5"}
    assert normalized_score("hopper-medium-v5", 3000.0, path=path) == 100.0
    assert normalized_score("Hopper-v5", -10.0, path=path) == 0.0


SHIPPED = [e for e in generate.ENVS.values() if (generate.CHECKPOINT_DIR / f"{e}.json").is_file()]


@pytest.mark.parametrize(
    "env_id", SHIPPED or [pytest.param("none", marks=pytest.mark.skip("no shipped checkpoints"))]
)
def test_shipped_medium_dataset_return_in_documented_range(env_id: str) -> None:
    """A small dataset from the shipped medium checkpoint has the mean episode return documented in its manifest."""
    torch.set_num_threads(1)
    man = generate.manifest(env_id)
    for entry in [man["expert"], man["medium"], *man["medium_replay"]["snapshots"]]:
        assert (generate.CHECKPOINT_DIR / entry["file"]).stat().st_size < 400_000
    lo, hi = man["medium"]["dataset_return_range"]
    policy, _ = generate.load_role_policy(env_id, "medium")
    arrays = generate.rollout(env_id, policy, 5000, seed=0, stream=(2,), n_envs=5)
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    rets = np.add.reduceat(arrays["rewards"].astype(np.float64), starts)
    if len(rets) > 5:
        rets = rets[:-1]  # the last episode may be cut at the size limit
    assert len(rets) >= 5
    assert lo <= rets.mean() <= hi, f"{env_id} medium: mean return {rets.mean():.1f} outside [{lo}, {hi}]"


# ---------------------------------------------------------------------------------------------------------------
# The first use: what is made, how far along, what is cached
# ---------------------------------------------------------------------------------------------------------------
def _record_bars(monkeypatch) -> list:
    """Keep every tqdm bar that the generator opens, to read its count after the run."""
    bars: list = []
    original = generate._progress

    def recording(*args, **kwargs):
        bars.append(original(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(generate, "_progress", recording)
    return bars


def test_generation_says_what_it_makes_before_it_starts(
    ckpt_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    original = generate.make_dataset

    def marked(*args, **kwargs):
        print("<<generation starts>>", file=sys.stderr)
        return original(*args, **kwargs)

    monkeypatch.setattr(generate, "make_dataset", marked)
    kw = {"checkpoint_dir": ckpt_dir, "n_envs": 4}
    generate.load_or_make("hopper-medium-v5", 300, 0, tmp_path, **kw)
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("generating"))
    assert line.startswith(
        "generating hopper-medium-v5: 300 transitions with the shipped medium policy (SAC step 40), into "
    )
    assert str(tmp_path / "misa" / "hopper-medium-n300-v5") in line and "minute" in line
    assert err.index(line) < err.index("<<generation starts>>")
    # cached: nothing to announce; progress=False: silent
    generate.load_or_make("hopper-medium-v5", 300, 0, tmp_path, **kw)
    generate.load_or_make("hopper-expert-v5", 300, 1, tmp_path, progress=False, **kw)
    assert "generating" not in capsys.readouterr().err
    # the composite names its parts and which are cached; each part made announces itself
    generate.load_or_make("hopper-medium-expert-v5", 600, 0, tmp_path, **kw)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("generating")]
    assert len(lines) == 2, lines
    assert "hopper-medium-v5 (300, cached) and hopper-expert-v5 (300)" in lines[0]
    assert lines[1].startswith("generating hopper-expert-v5: 300 transitions")


def test_first_use_through_rl_data_load_announces_too(tmp_path: Path, capsys) -> None:
    from rl import data

    data.load("hopper-random-v5", size=300, root=tmp_path, n_envs=4)
    err = capsys.readouterr().err
    assert "generating hopper-random-v5: 300 transitions with uniformly random actions, into " in err
    data.load("hopper-random-v5", size=301, root=tmp_path, n_envs=4, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "name, size, totals",
    [
        ("hopper-random-v5", 300, [300]),  # short episodes: 4 envs finishing past the budget
        ("hopper-medium-v5", 300, [300]),
        ("hopper-medium-replay-v5", 401, [401]),  # 4 segments on one bar
        ("hopper-medium-expert-v5", 600, [300, 300]),  # each part its own bar
    ],
)
def test_progress_bar_ends_exactly_at_the_size(
    ckpt_dir: Path, tmp_path: Path, monkeypatch, name: str, size: int, totals: list[int]
) -> None:
    bars = _record_bars(monkeypatch)
    ds = generate.load_or_make(name, size, 0, tmp_path, checkpoint_dir=ckpt_dir, n_envs=4, progress=True)
    assert len(ds) == size
    assert [b.total for b in bars] == totals
    assert [b.n for b in bars] == totals


def test_rollout_advances_progress_by_exactly_size() -> None:
    class Count:
        n = 0

        def update(self, k: int) -> None:
            assert k >= 0
            self.n += k

    for size, n_envs in [(1, 1), (37, 5), (250, 32)]:
        bar = Count()
        arrays = generate.rollout("Hopper-v5", None, size, 0, (1,), n_envs=n_envs, progress=bar)
        assert len(arrays["rewards"]) == size and bar.n == size


def test_list_and_info_show_every_cached_size(ckpt_dir: Path, tmp_path: Path, capsys) -> None:
    base = ["--root", str(tmp_path), "--checkpoint-dir", str(ckpt_dir)]
    make = ["--n-envs", "4", *base]
    assert collect.main(["make", "hopper-random-v5", "--size", "300", *make]) == 0
    assert collect.main(["make", "hopper-random-v5", "--size", "200", "--seed", "1", *make]) == 0
    capsys.readouterr()
    assert collect.main(["list", *base]) == 0
    out = capsys.readouterr().out
    (row,) = [x for x in out.splitlines() if x.split()[:1] == ["hopper-random-v5"]]
    assert "300" in row and "200 (seed 1)" in row
    (row,) = [x for x in out.splitlines() if x.split()[:1] == ["hopper-medium-v5"]]
    assert row.split()[-1] == "-"

    # no --size: the default (1M) is not cached; the cached sizes are named, with how to pick one
    assert collect.main(["info", "hopper-random-v5", *base]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert "not cached at its default size (1,000,000" in line
    assert "300" in line and "200 (seed 1)" in line and "--size N" in line
    assert collect.main(["info", "hopper-random-v5", "--size", "300", *base]) == 0
    assert "transitions: 300" in capsys.readouterr().out

    # a level whose default is small here (medium-replay: the medium step, 40): default and another size
    assert collect.main(["make", "hopper-medium-replay-v5", *make]) == 0
    assert collect.main(["make", "hopper-medium-replay-v5", "--size", "300", *make]) == 0
    capsys.readouterr()
    assert collect.main(["list", *base]) == 0
    (row,) = [x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == ["hopper-medium-replay-v5"]]
    assert "40 (default); 300" in row
    assert collect.main(["info", "hopper-medium-replay-v5", *base]) == 0
    assert "transitions: 40" in capsys.readouterr().out
    variants = generate.cached_variants("hopper-medium-replay-v5", tmp_path, ckpt_dir)
    assert [(v.size, v.seed, v.is_default_size) for v in variants] == [(40, 0, True), (300, 0, False)]
    assert [v.dataset_id for v in variants] == [
        generate.dataset_id("hopper-medium-replay-v5", n, 0, ckpt_dir) for n in (None, 300)
    ]


def test_info_on_a_dataset_not_cached_fails_in_one_line(tmp_path: Path, capsys) -> None:
    assert collect.main(["info", "hopper-expert-v5", "--root", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert (
        line.startswith("error: hopper-expert-v5 is not cached")
        and "rl.collect make hopper-expert-v5" in line
    )
    assert collect.main(["info", "hopper-expert-v5", "--size", "300", "--root", str(tmp_path)]) == 1
    assert "--size 300" in capsys.readouterr().err
    assert collect.main(["info", "hopper-bogus-v5", "--root", str(tmp_path)]) == 2


def test_a_dataset_another_process_is_generating_is_waited_for_not_made_twice(
    ckpt_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Trials starting together on one node (or nodes sharing a cache) generate a dataset once: the second waits
    for the first's lock, then reads what it made."""
    import subprocess
    import time

    script = (
        "import sys, time\n"
        "import rl.collect.generate as g\n"
        "made = g.make_dataset\n"
        "g.make_dataset = lambda *a, **k: (time.sleep(3), made(*a, **k))[1]  # holds the lock a while\n"
        f"g.load_or_make('hopper-medium-v5', 300, 0, {str(tmp_path)!r}, checkpoint_dir={str(ckpt_dir)!r}, "
        "n_envs=4, progress=False)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", script])
    lock = tmp_path / "misa" / ".hopper-medium-n300-v5.lock"
    deadline = time.monotonic() + 120
    while not lock.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the first process never took the lock"
        time.sleep(0.05)

    def not_again(*args, **kwargs):
        raise AssertionError("generated a second time")

    monkeypatch.setattr(generate, "make_dataset", not_again)
    ds = generate.load_or_make("hopper-medium-v5", 300, 0, tmp_path, checkpoint_dir=ckpt_dir, n_envs=4)
    assert first.wait(timeout=120) == 0
    err = capsys.readouterr().err
    assert "waiting: the dataset misa/hopper-medium-n300-v5 in" in err and "in use by rl.collect (pid" in err
    assert "generating" not in err and len(ds) == 300 and not lock.exists()
