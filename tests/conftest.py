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
