from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test tensors are small: one intra-op thread is faster than several (each parallel op pays a
    synchronisation), and it keeps the suite's numbers independent of the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_state(a, b, path: str = "state") -> None:
    """Nested state (dicts, lists, tensors, plain values) equal exactly; the message names the first path that is
    not (exact resume checks: checkpoints, agent states)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory) -> Path:
    """400 random transitions with Hopper-v5's shapes (4 episodes), so trials evaluate on the real env (the sweep
    tests, tests/benchmarks/test_sweep*.py)."""
    from rl.data import OfflineDataset

    n, do, da = 400, 11, 3
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n + 1, do)).astype(np.float32)
    terminals = np.zeros(n, bool)
    terminals[[99, 199, 299]] = True
    timeouts = np.zeros(n, bool)
    timeouts[-1] = True
    ds = OfflineDataset(
        observations=obs[:-1],
        actions=rng.uniform(-1, 1, size=(n, da)).astype(np.float32),
        rewards=rng.normal(1.0, 0.1, size=n).astype(np.float32),
        next_observations=obs[1:],
        terminals=terminals,
        timeouts=timeouts,
        metadata={"env_id": "Hopper-v5"},
    )
    path = tmp_path_factory.mktemp("data") / "tiny-hopper.hdf5"
    ds.to_hdf5(path)
    return path
