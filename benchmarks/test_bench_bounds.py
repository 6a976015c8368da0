"""Time `bound` + `backward` for every score-based estimator at N=256, K=256 (pytest-benchmark).

    python -m pytest benchmarks/test_bench_bounds.py --benchmark-only --benchmark-columns=median,iqr,ops

Estimators that need a proposal (ba, the MISA family) get `log_proposal`, `marginal_entropy` and `tilted` scores
too; drawing the MCMC samples behind `tilted` is timed by benchmarks/partition_benchmark.py, not here.
"""

from __future__ import annotations

import pytest
import torch

import mi_estimators as mie

N, K = 256, 256


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    pos = (torch.randn(N, generator=g, dtype=dtype) + 2).requires_grad_()
    neg = torch.randn(N, K, generator=g, dtype=dtype).requires_grad_()
    log_q = torch.randn(N, generator=g, dtype=dtype).requires_grad_()
    tilted = torch.randn(N, 50, generator=g, dtype=dtype).requires_grad_()  # misa's MCMC surrogate, S = 50
    return pos, neg, log_q, tilted


@pytest.mark.parametrize("name", mie.available())
def test_bound_backward(benchmark, name: str) -> None:
    est = mie.make(name)
    pos, neg, log_q, tilted = _inputs()

    def step() -> float:
        s = mie.Scores(pos, neg, log_proposal=log_q, marginal_entropy=1.0, tilted=tilted, validate=False)
        loss = est.loss(s)
        loss.backward()
        return float(loss.detach())

    value = benchmark(step)
    assert value == value  # a NaN here would mean the timing measured a broken computation
