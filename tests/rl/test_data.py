"""Tests for rl.data (OfflineDataset, loaders, exporters) and rl.data.references.

Every test writes its own small files in the real formats (D4RL HDF5 via h5py, Minari via minari) under
tmp_path; nothing is downloaded, and MINARI_DATASETS_PATH points at a temporary directory throughout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
from pathlib import Path

import h5py
import minari
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl import data
from rl.data import OfflineDataset, references
from rl.data.export import _episode_buffers

ARRAYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


@pytest.fixture(autouse=True)
def _minari_home(tmp_path, monkeypatch):
    """Keep minari away from ~/.minari: its default root is a fresh temporary directory in every test."""
    root = tmp_path / "minari-default"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def chain_dataset(
    lengths=(4, 3, 5), ends=("terminal", "timeout", "open"), obs_dim=3, act_dim=2, seed=0, **kw
):
    """Episodes rolled out as chains of states (next_obs[t] == obs[t+1] inside an episode)."""
    rng = np.random.default_rng(seed)
    obs, nxt, term, tout = [], [], [], []
    for n, end in zip(lengths, ends):
        states = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
        obs.append(states[:-1])
        nxt.append(states[1:])
        t = np.zeros(n, bool)
        o = np.zeros(n, bool)
        if end == "terminal":
            t[-1] = True
        elif end == "timeout":
            o[-1] = True
        term.append(t)
        tout.append(o)
    total = sum(lengths)
    return OfflineDataset(
        observations=np.concatenate(obs),
        actions=rng.uniform(-1, 1, size=(total, act_dim)).astype(np.float32),
        rewards=rng.normal(size=total).astype(np.float32),
        next_observations=np.concatenate(nxt),
        terminals=np.concatenate(term),
        timeouts=np.concatenate(tout),
        **kw,
    )


def write_d4rl_file(
    path: Path, arrays: dict, attrs: dict | None = None, metadata: dict | None = None
) -> Path:
    """A D4RL-format file written directly with h5py (not by our exporter)."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        for key, value in (metadata or {}).items():
            f.create_dataset(f"metadata/{key}", data=value)
        f.attrs.update(attrs or {})
    return path


def good_arrays(n=10, obs_dim=3, act_dim=2) -> dict:
    rng = np.random.default_rng(1)
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    term[3] = True
    tout[n - 1] = True
    return {
        "observations": rng.normal(size=(n, obs_dim)),
        "actions": rng.uniform(-0.9, 0.9, size=(n, act_dim)),
        "rewards": rng.normal(size=n),
        "terminals": term,
        "timeouts": tout,
    }


def assert_same(a: OfflineDataset, b: OfflineDataset) -> None:
    for key in ARRAYS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype, key
        np.testing.assert_array_equal(x, y, err_msg=key)
    for key in ("action_low", "action_high"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None), key
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=key)


def dir_listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# ---------------------------------------------------------------------------------------------- round trips
def test_round_trip_hdf5_minari_keeps_every_array(tmp_path):
    ds = chain_dataset(
        action_low=-1.0, action_high=1.0, metadata={"env_id": "NotAnEnv-v0", "seed": 7, "level": "x"}
    )
    path = data.to_hdf5(ds, tmp_path / "d.hdf5")
    from_file = data.load(str(path))
    assert_same(ds, from_file)
    assert from_file.metadata == ds.metadata

    root = tmp_path / "minari"
    out = data.to_minari(from_file, "misa/toy-medium-v0", root=root)
    assert out == root / "misa/toy-medium-v0"
    back = data.load("minari:misa/toy-medium-v0", root=root)
    assert_same(ds, back)
    assert back.metadata == ds.metadata
    np.testing.assert_array_equal(back.episode_returns(), ds.episode_returns())

    # Minari's own tools read what we wrote: same episodes, same flags.
    mds = minari.MinariDataset(root / "misa/toy-medium-v0" / "data")
    assert mds.total_episodes == 3 and mds.total_steps == len(ds)
    eps = list(mds.iterate_episodes())
    assert [len(e.rewards) for e in eps] == [4, 3, 5]
    assert eps[0].terminations[-1] and eps[1].truncations[-1] and not eps[2].truncations[-1]
    np.testing.assert_array_equal(eps[1].observations[1:], ds.next_observations[4:7])

    # ...and back to HDF5 again, unchanged.
    again = data.load(data.to_hdf5(back, tmp_path / "again.hdf5"))
    assert_same(ds, again)


def test_minari_default_root_and_env_spec(tmp_path, monkeypatch, _minari_home):
    """Without root=, minari's MINARI_DATASETS_PATH is used (minari.load_dataset finds the dataset); a known env
    id records the env spec, and v5 references (from the JSON table) become minari's reference scores."""
    table = tmp_path / "v5.json"
    table.write_text(
        json.dumps({"Hopper-v5": {"random": -10.0, "expert": 3000.0, "episodes": 100, "how": "test"}})
    )
    monkeypatch.setattr(references, "V5_REFERENCES_PATH", table)
    ds = chain_dataset(
        obs_dim=11, act_dim=3, action_low=-1.0, action_high=1.0, metadata={"env_id": "Hopper-v5"}
    )
    out = data.to_minari(ds, "hopper-toy-v5")
    assert out == _minari_home / "hopper-toy-v5"
    mds = minari.load_dataset("hopper-toy-v5")
    assert mds.env_spec.id == "Hopper-v5"
    np.testing.assert_allclose(minari.get_normalized_score(mds, np.array([-10.0, 3000.0])), [0.0, 1.0])
    assert "hopper-toy-v5" in minari.list_local_datasets()
    assert_same(ds, data.load("minari:hopper-toy-v5"))


@pytest.mark.filterwarnings("ignore::UserWarning")  # minari asks for author, env spec, ... of this toy
def test_reads_a_foreign_minari_dataset(tmp_path):
    """A Minari dataset not written by us (float64 observations, its own metadata) is flattened correctly."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(3)
    lens, buffers = (3, 2), []
    for k, n in enumerate(lens):
        buffers.append(
            EpisodeBuffer(
                id=k,
                observations=rng.normal(size=(n + 1, 2)),
                actions=rng.uniform(-2, 2, size=(n, 1)),
                rewards=rng.normal(size=n),
                terminations=np.array([False] * (n - 1) + [k == 0]),
                truncations=np.array([False] * (n - 1) + [k == 1]),
                infos={},
            )
        )
    root = tmp_path / "foreign"
    os.environ["MINARI_DATASETS_PATH"] = str(root)  # restored by the autouse monkeypatch
    minari.create_dataset_from_buffers(
        "other/thing-v1",
        buffers,
        action_space=gym.spaces.Box(-2.0, 2.0, (1,)),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), dtype=np.float64),
        algorithm_name="x",
        author="x",
        author_email="x",
        code_permalink="x",
        description="x",
    )
    ds = data.load("minari:other/thing-v1", root=root)
    assert len(ds) == 5 and ds.num_episodes == 2
    np.testing.assert_array_equal(ds.observations[:3], buffers[0].observations[:-1].astype(np.float32))
    np.testing.assert_array_equal(ds.next_observations[3:], buffers[1].observations[1:].astype(np.float32))
    np.testing.assert_array_equal(ds.terminals, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(ds.action_low, [-2.0])
    assert ds.metadata["source"] == "minari:other/thing-v1"
    assert ds.observations.dtype == np.float32


# ------------------------------------------------------------------------------------ next_observations rebuild
def test_next_observations_rebuilt_across_timeout_and_terminal(tmp_path):
    # Three episodes, obs[i] = [i, 10 i]:
    #   A: rows 0-2, cut by timeout at row 2 -> row 2 dropped (no next obs stored); row 1 now ends A by timeout
    #   B: rows 3-4, terminal at row 4      -> kept; next obs = obs[5] (d4rl's rule; masked by done anyway)
    #   C: rows 5-7, open at the file's end -> row 7 dropped; row 6 ends C by timeout
    n = 8
    obs = np.stack([np.arange(n), 10 * np.arange(n)], axis=1).astype(np.float32)
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    tout[2] = True
    term[4] = True
    arrays = {
        "observations": obs,
        "actions": np.zeros((n, 1)),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": term,
        "timeouts": tout,
    }
    ds = data.load(write_d4rl_file(tmp_path / "three.hdf5", arrays))
    kept = [0, 1, 3, 4, 5, 6]
    np.testing.assert_array_equal(ds.observations, obs[kept])
    np.testing.assert_array_equal(ds.rewards, kept)
    np.testing.assert_array_equal(ds.next_observations, obs[[1, 2, 4, 5, 6, 7]])
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(ds.episode_ends, [1, 3, 5])
    np.testing.assert_array_equal(ds.episode_returns(), [0 + 1, 3 + 4, 5 + 6])
    assert ds.metadata["rows_dropped"] == 2


def test_terminal_final_row_and_terminal_with_timeout_are_kept(tmp_path):
    n = 5
    obs = np.arange(n, dtype=np.float32)[:, None]
    term = np.array([0, 1, 0, 0, 1], bool)
    tout = np.array([0, 1, 0, 0, 0], bool)  # row 1 is both terminal and timeout: terminal wins, row kept
    ds = data.from_d4rl_dict(
        {"observations": obs, "actions": obs, "rewards": obs[:, 0], "terminals": term, "timeouts": tout}
    )
    assert len(ds) == 5
    np.testing.assert_array_equal(
        ds.next_observations[:, 0], [1, 2, 3, 4, 4]
    )  # last: its own obs (placeholder)
    np.testing.assert_array_equal(ds.timeouts, tout)


def d4rl_reference_rebuild(obs, term, tout):
    """d4rl's qlearning_dataset loop, with the two documented differences (a terminal row is kept even when
    also flagged timeout; a terminal final row is kept)."""
    keep, nxt = [], []
    n = len(obs)
    for i in range(n):
        if i == n - 1:
            if term[i]:
                keep.append(i)
                nxt.append(obs[i])
            continue
        if tout[i] and not term[i]:
            continue
        keep.append(i)
        nxt.append(obs[i + 1])
    return keep, np.array(nxt).reshape(len(keep), obs.shape[1])


@settings(max_examples=40, deadline=None)
@given(flags=st.lists(st.sampled_from(["", "", "", "term", "tout", "both"]), min_size=1, max_size=30))
def test_rebuild_matches_d4rl_loop(flags):
    n = len(flags)
    obs = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    term = np.array([f in ("term", "both") for f in flags])
    tout = np.array([f in ("tout", "both") for f in flags])
    keep, nxt = d4rl_reference_rebuild(obs, term, tout)
    arrays = {"observations": obs, "actions": obs, "rewards": obs[:, 0], "terminals": term, "timeouts": tout}
    if not keep:
        with pytest.raises(ValueError, match="no transition has a next observation"):
            data.from_d4rl_dict(arrays)
        return
    ds = data.from_d4rl_dict(arrays)
    np.testing.assert_array_equal(ds.observations, obs[keep])
    np.testing.assert_array_equal(ds.next_observations, nxt)
    np.testing.assert_array_equal(ds.terminals, term[keep])
    # Episodes stay chains of states, so every rebuilt dataset can be written as Minari episodes.
    inside = np.ones(len(ds), bool)
    inside[ds.episode_ends] = False
    assert np.all(ds.next_observations[:-1][inside[:-1]] == ds.observations[1:][inside[:-1]])
    _episode_buffers(ds)


# ------------------------------------------------------------------------------------------------ bad files
def _missing_key(a):
    del a["rewards"]


def _length_mismatch(a):
    a["rewards"] = a["rewards"][:-1]


def _nan_reward(a):
    a["rewards"][4] = np.nan


def _bad_flag(a):
    a["terminals"] = a["terminals"].astype(np.int64)
    a["terminals"][6] = 2


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (_missing_key, r"has no 'rewards' dataset"),
        (_length_mismatch, r"rewards has 9 rows but observations has 10"),
        (_nan_reward, r"rewards\[4\] is nan"),
        (_bad_flag, r"terminals\[6\] = 2 is not a boolean flag"),
    ],
)
def test_bad_file_raises_named_error(tmp_path, corrupt, expected):
    arrays = good_arrays()
    corrupt(arrays)
    path = write_d4rl_file(tmp_path / "bad.hdf5", arrays)
    with pytest.raises(ValueError, match=expected) as info:
        data.load(str(path))
    assert str(path) in str(info.value)
    assert type(info.value) is ValueError  # not the reader's internal class, whose name the CLI would print


def test_a_directory_named_like_an_hdf5_file_is_called_a_directory(tmp_path):
    (tmp_path / "x.hdf5").mkdir()
    for source in (str(tmp_path / "x.hdf5"), tmp_path / "x.hdf5"):
        with pytest.raises(IsADirectoryError, match=r"x\.hdf5 is a directory, not an HDF5 file"):
            data.load(source)


def test_action_out_of_bounds_file(tmp_path):
    arrays = good_arrays()
    arrays["actions"][7, 1] = 1.3
    path = write_d4rl_file(tmp_path / "oob.hdf5", arrays)
    with pytest.raises(ValueError, match=r"actions\[7\] = \[.*1\.3\] is outside the action bounds \[-1, 1\]"):
        data.load(path, action_low=-1, action_high=1)
    # Bounds stored in the file by our exporter are honoured too.
    with h5py.File(path, "a") as f:
        f.create_dataset("metadata/action_space/low", data=-np.ones(2, np.float32))
        f.create_dataset("metadata/action_space/high", data=np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"oob\.hdf5: actions\[7\] .*column 1 is 1\.3"):
        data.load(path)


def test_truncated_hdf5_names_the_file(tmp_path):
    ds = chain_dataset(lengths=(200, 200), ends=("terminal", "timeout"), obs_dim=8)
    path = data.to_hdf5(ds, tmp_path / "cut.hdf5")
    raw = path.read_bytes()
    for size in (len(raw) // 2, 100):
        path.write_bytes(raw[:size])
        with pytest.raises(ValueError, match=r"cut\.hdf5.*(truncated|corrupt)"):
            data.load(path)


def test_d4rl_style_metadata_group_is_read(tmp_path):
    arrays = good_arrays()
    path = write_d4rl_file(tmp_path / "m.hdf5", arrays, metadata={"algorithm": "SAC", "iteration": 3})
    ds = data.load(path)
    assert ds.metadata["algorithm"] == "SAC" and ds.metadata["iteration"] == 3
    assert ds.metadata["source"] == str(path)
    assert ds.action_low is None


# ------------------------------------------------------------------------------------- atomic exporters
def test_to_hdf5_failure_leaves_nothing(tmp_path, monkeypatch):
    ds = chain_dataset()
    real = h5py.Group.create_dataset
    calls = []

    def failing(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="simulated"):
        data.to_hdf5(ds, tmp_path / "out.hdf5")
    assert len(calls) == 3  # it did start writing
    assert [p.name for p in tmp_path.iterdir() if p.name != "minari-default"] == []


def test_to_hdf5_refuses_to_overwrite_unless_asked(tmp_path):
    path = data.to_hdf5(chain_dataset(seed=0), tmp_path / "x.hdf5")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        data.to_hdf5(chain_dataset(seed=1), path)
    assert_same(data.load(path), chain_dataset(seed=0))
    data.to_hdf5(chain_dataset(seed=1), path, overwrite=True)
    assert_same(data.load(path), chain_dataset(seed=1))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["x.hdf5"]


def test_to_minari_failure_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    real = minari.create_dataset_from_buffers

    def write_then_fail(*args, **kwargs):
        real(*args, **kwargs)  # files now exist in the temporary root
        raise RuntimeError("crash after writing (simulated)")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", write_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        data.to_minari(chain_dataset(), "ns/x-v0", root=root)
    assert dir_listing(root) == set()


def test_to_minari_rejects_rows_that_are_not_episodes(tmp_path):
    ds = chain_dataset(lengths=(6,), ends=("terminal",))
    nxt = ds.next_observations.copy()
    nxt[2] += 1.0  # next state of row 2 no longer equals the state of row 3, inside one episode
    broken = ds.replace(next_observations=nxt)
    root = tmp_path / "root"
    with pytest.raises(
        ValueError, match=r"next_observations\[2\] .* differs from observations\[3\].*episode 0"
    ):
        data.to_minari(broken, "x-v0", root=root)
    assert dir_listing(root) == set()
    # HDF5 keeps next_observations as they are, so it can still hold this dataset.
    assert_same(data.load(data.to_hdf5(broken, tmp_path / "b.hdf5")), broken)


def test_to_minari_existing_id_needs_overwrite(tmp_path):
    root = tmp_path / "root"
    data.to_minari(chain_dataset(seed=0), "ns/toy-v0", root=root)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        data.to_minari(chain_dataset(seed=1), "ns/toy-v0", root=root)
    assert_same(data.load("minari:ns/toy-v0", root=root), chain_dataset(seed=0))
    data.to_minari(chain_dataset(seed=1), "ns/toy-v0", root=root, overwrite=True)
    assert_same(data.load("minari:ns/toy-v0", root=root), chain_dataset(seed=1))
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers


# ------------------------------------------------------------------------------------- dataset validation
def test_validation_messages():
    ds = chain_dataset()
    fields = {k: getattr(ds, k) for k in ARRAYS}

    def build(**changes):
        return OfflineDataset(**{**fields, **changes})

    with pytest.raises(ValueError, match=r"next_observations has 11 rows but observations has 12"):
        build(next_observations=fields["next_observations"][:-1])
    with pytest.raises(ValueError, match=r"observations must be 2-D"):
        build(observations=fields["observations"][:, 0])
    obs = fields["observations"].copy()
    obs[5, 2] = np.inf
    with pytest.raises(ValueError, match=r"observations\[5\] = .* is not finite \(column 2 is inf\)"):
        build(observations=obs)
    with pytest.raises(ValueError, match=r"timeouts\[0\] = 0\.5 is not a boolean flag"):
        build(timeouts=np.full(12, 0.5))
    with pytest.raises(ValueError, match=r"actions\[0\] = .* outside the action bounds \[0, 1\]"):
        build(action_low=0.0, action_high=1.0, actions=np.full((12, 2), -0.5))
    with pytest.raises(ValueError, match="together"):
        build(action_low=-1.0)
    # 0/1 integers are flags; they become bool.
    ints = build(terminals=fields["terminals"].astype(np.int8), timeouts=fields["timeouts"].astype(float))
    assert ints.terminals.dtype == np.bool_ and ints.timeouts.dtype == np.bool_
    np.testing.assert_array_equal(ints.terminals, fields["terminals"])
    with pytest.raises(
        dataclasses.FrozenInstanceError
    ):  # frozen: the torch cache relies on fields not being reassigned
        ds.rewards = ds.rewards * 2


def test_episode_structure():
    ds = chain_dataset(lengths=(4, 3, 5), ends=("terminal", "timeout", "open"))
    np.testing.assert_array_equal(ds.episode_ends, [3, 6, 11])
    np.testing.assert_array_equal(ds.episode_starts, [0, 4, 7])
    assert ds.num_episodes == 3 and len(ds) == 12 and ds.obs_dim == 3 and ds.act_dim == 2
    expected = [
        ds.rewards[0:4].sum(dtype=np.float64),
        ds.rewards[4:7].sum(dtype=np.float64),
        ds.rewards[7:].sum(),
    ]
    np.testing.assert_allclose(ds.episode_returns(), expected, rtol=1e-6)
    closed = chain_dataset(lengths=(2, 2), ends=("timeout", "terminal"))
    np.testing.assert_array_equal(closed.episode_ends, [1, 3])


# ------------------------------------------------------------------------------------------------ sampling
def test_sample_is_seeded_shaped_and_consistent():
    ds = chain_dataset(lengths=(40, 30, 30), ends=("terminal", "timeout", "timeout"), obs_dim=4, act_dim=3)
    a = ds.sample(512, torch.Generator().manual_seed(5))
    b = ds.sample(512, torch.Generator().manual_seed(5))
    c = ds.sample(512, torch.Generator().manual_seed(6))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["observations"], c["observations"])
    shapes = {"observations": (512, 4), "actions": (512, 3), "rewards": (512,), "next_observations": (512, 4)}
    for key, shape in {**shapes, "dones": (512,)}.items():
        assert a[key].shape == shape and a[key].dtype == torch.float32, key
    # Recover each sampled row's index from its observation and check every field comes from that row.
    obs = torch.from_numpy(ds.observations)
    idx = (a["observations"][:, None, :] == obs[None]).all(-1).int().argmax(1).numpy()
    np.testing.assert_array_equal(a["actions"].numpy(), ds.actions[idx])
    np.testing.assert_array_equal(a["rewards"].numpy(), ds.rewards[idx])
    np.testing.assert_array_equal(a["next_observations"].numpy(), ds.next_observations[idx])
    # dones are the terminals, never the timeouts.
    np.testing.assert_array_equal(a["dones"].numpy(), ds.terminals[idx].astype(np.float32))
    full = ds.tensors()
    np.testing.assert_array_equal(full["dones"].numpy(), ds.terminals)
    assert full["dones"][ds.timeouts].sum() == 0 and ds.timeouts.sum() == 2
    assert ds.tensors() is full  # converted once, then cached


# -------------------------------------------------------------------------------------------- load dispatch
def test_load_dispatch_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"Accepted: .*d4rl:.*minari:.*hopper-medium-v5"):
        data.load("no-such-thing")
    with pytest.raises(ValueError, match=r"'d4rl:hopper-medium-v2'"):
        data.load("hopper-medium-v2")
    with pytest.raises(FileNotFoundError, match=r"missing\.hdf5"):
        data.load(str(tmp_path / "missing.hdf5"))
    with pytest.raises(FileNotFoundError, match=r"nope-v0"):
        data.load("minari:nope-v0", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope-v0"):
        data.load("minari:nope-v0")
    with pytest.raises(TypeError):
        data.load(3)
    monkeypatch.setitem(sys.modules, "d4rl", None)  # makes `import d4rl` fail even where it is installed
    with pytest.raises(ImportError, match=r"d4rl package.*not installed.*local path"):
        data.load("d4rl:hopper-medium-v2")


def test_load_d4rl_with_a_stand_in_package(monkeypatch):
    arrays = good_arrays()

    class Env:
        action_space = types.SimpleNamespace(low=-np.ones(2, np.float32), high=np.ones(2, np.float32))
        _max_episode_steps = 1000

        def get_dataset(self):
            return arrays

    made = []
    gym = types.ModuleType("gym")
    gym.make = lambda name: made.append(name) or Env()
    monkeypatch.setitem(sys.modules, "gym", gym)
    monkeypatch.setitem(sys.modules, "d4rl", types.ModuleType("d4rl"))
    ds = data.load("d4rl:hopper-medium-v2")
    assert made == ["hopper-medium-v2"]
    assert ds.metadata["env_id"] == "hopper-medium-v2" and ds.metadata["source"] == "d4rl:hopper-medium-v2"
    np.testing.assert_array_equal(ds.action_high, [1, 1])
    assert len(ds) == 9  # the timeout row at the end has no next observation


def test_load_own_name_delegates_to_the_generator(monkeypatch):
    calls = []
    fake = types.ModuleType("rl.collect.generate")

    def load_or_make(name, **kwargs):
        calls.append((name, kwargs))
        return chain_dataset()

    fake.load_or_make = load_or_make
    monkeypatch.setitem(sys.modules, "rl.collect.generate", fake)
    ds = data.load("hopper-medium-replay-v5", size=1000)
    assert calls == [("hopper-medium-replay-v5", {"size": 1000})]
    assert_same(ds, chain_dataset())


# ---------------------------------------------------------------------------------------------- references
@pytest.mark.parametrize(
    "name, family",
    [("hopper-medium-v2", "hopper"), ("halfcheetah-medium-expert-v2", "halfcheetah"), ("Walker2d-v2", "walker2d"),
     ("ant", "ant"), ("d4rl:hopper-random-v0", "hopper")],
)  # fmt: skip
def test_normalized_score_of_d4rl_references_is_0_and_100(name, family):
    lo, hi = references.D4RL_REFERENCES[family]
    assert references.normalized_score(name, lo) == 0.0
    assert references.normalized_score(name, hi) == 100.0
    scores = references.normalized_score(name, np.array([[lo, hi]]))
    assert scores.shape == (1, 2) and scores.tolist() == [[0.0, 100.0]]


def test_first_normalized_score_takes_the_first_name_with_references():
    lo, hi = references.D4RL_REFERENCES["hopper"]
    mid = (lo + hi) / 2
    assert references.first_normalized_score(["mine.hdf5", None, "d4rl:hopper-medium-v2"], mid) == 50.0
    assert references.first_normalized_score(["minari:hopper-expert-v2"], hi) == 100.0
    assert references.first_normalized_score(["mine.hdf5", "NoSuchEnv-v5", None], mid) is None


def test_published_d4rl_values():
    assert references.D4RL_REFERENCES == {
        "hopper": (-20.272305, 3234.3),
        "halfcheetah": (-280.178953, 12135.0),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
    }
    assert references.normalized_score("hopper-medium-v2", 1617.0139) == pytest.approx(50.3, abs=0.01)


def test_v5_references_from_json(tmp_path, monkeypatch):
    table = tmp_path / "v5.json"
    monkeypatch.setattr(references, "V5_REFERENCES_PATH", table)
    with pytest.raises(ValueError, match=r"Hopper-v5.*does not exist yet"):
        references.normalized_score("hopper-medium-v5", 100.0)
    table.write_text(
        json.dumps({"Hopper-v5": {"random": 18.5, "expert": 3312.25, "episodes": 100, "how": "t"}})
    )
    for name in ("hopper-medium-v5", "Hopper-v5", "hopper-medium-replay-v5"):
        assert references.normalized_score(name, 18.5) == 0.0
        assert references.normalized_score(name, 3312.25) == 100.0
    ref = references.reference("Hopper-v5")
    assert ref.episodes == 100 and ref.how == "t"
    with pytest.raises(ValueError, match=r"HalfCheetah-v5.*has no 'HalfCheetah-v5' entry"):
        references.normalized_score("halfcheetah-expert-v5", 1.0)
    with pytest.raises(ValueError, match=r"unknown env 'cartpole'"):
        references.normalized_score("cartpole-v1", 1.0)
    with pytest.raises(ValueError, match=r"v4 has none"):
        references.normalized_score("Hopper-v4", 1.0)
