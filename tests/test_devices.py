"""Every device-dependent path on each device this machine has: the CPU always, CUDA when
`torch.cuda.is_available()` (skipped otherwise, with the reason in the test id and the skip message).

Tensors, parameters and generators stay on the run's device through an agent's update (one seed and stacked
seeds), the MCMC chain, the MI estimators (one seed and stacked) and a short `rl.train` run.
`benchmarks/gpu_check.sh` runs this file on a GPU machine together with the GPU timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import mi_estimators as mie
from rl.agents import make_agent, train_config
from rl.seeds import StackedAgents
from rl.train import main

sys.path.append(str(Path(__file__).resolve().parent / "rl"))
from test_train import tiny_dataset  # noqa: E402

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
        id="cuda",
    ),
]
SMALL = {"hidden_q": (16, 16), "hidden_pi": (16, 16), "batch_size": 16}
AGENTS = {
    "bc": {},
    "td3bc": {},
    "iql": {},
    "cql": {"n_actions": 4},
    "misa": {"n_negatives": 4, "estimator_options": {"n_samples": 3}, "q_activation": "elu"},
    "nwj": {"estimator": "nwj", "n_negatives": 4},
}


def _agent(name: str, device: str, seed: int = 0, **kw):
    algo = "mi" if name in ("misa", "nwj") else name
    cfg = train_config(algo, seed=seed, device=device, **SMALL, **AGENTS[name], **kw)
    data = tiny_dataset(128, do=5, da=2)
    agent = make_agent(cfg, data.obs_dim, data.act_dim)
    agent.fit_dataset_stats(data)
    return agent, data


def _on(device: str, tensors) -> None:
    want = torch.device(device).type
    for t in tensors:
        assert t.device.type == want, (t.shape, t.device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_an_agents_update_stays_on_its_device(name, device):
    agent, data = _agent(name, device)
    assert agent.generator.device.type == torch.device(device).type
    for _ in range(3):
        logs = agent.update(data.sample(16, agent.generator, agent.device))
    _on(device, logs.values())
    assert all(bool(torch.isfinite(v)) for v in logs.values())
    _on(device, [p for m in agent.modules.values() for p in m.parameters()])
    _on(device, [s for o in agent.optimizers.values() for st in o.state.values() for s in st.values()])
    act = agent.act(data.observations[:4])
    assert act.shape == (4, 2) and abs(act).max() < 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["td3bc", "misa"])
def test_stacked_seeds_stay_on_their_device_and_follow_one_seed(name, device):
    pairs = [_agent(name, device, seed=s, fast=False) for s in (0, 1)]
    agents, data = [a for a, _ in pairs], pairs[0][1]
    stacked = StackedAgents(agents)
    for _ in range(3):
        logs = stacked.update([data.sample(16, a.generator, a.device) for a in agents])
    _on(device, [*stacked.state.values(), *logs[1].values()])
    one, _ = _agent(name, device, seed=1, fast=False)
    for _ in range(3):
        ref = one.update(data.sample(16, one.generator, one.device))
    for k, v in ref.items():
        assert abs(float(logs[1][k]) - float(v)) <= 1e-4 + 1e-3 * abs(float(v)), k


@pytest.mark.parametrize("device", DEVICES)
def test_the_mcmc_chain_stays_on_its_device(device):
    from mi_estimators.proposals import TanhDiagGaussian
    from mi_estimators.samplers import HMC, sample_tilted

    gen = torch.Generator(device).manual_seed(0)
    law = TanhDiagGaussian(torch.zeros(6, 2, device=device), torch.full((6, 2), -1.0, device=device))
    res = sample_tilted(HMC(burn_in=3), law, lambda y: -(y**2).sum(-1), 4, generator=gen)
    _on(device, [res.samples])
    assert res.samples.shape == (6, 4, 2) and bool(torch.isfinite(res.samples).all())


@pytest.mark.parametrize("device", DEVICES)
def test_estimators_one_seed_and_stacked_run_on_their_device(device):
    task = mie.tasks.CorrelatedGaussian(dim=2, mi=1.0)
    one = mie.estimate("infonce", task, steps=6, batch_size=16, seed=1, device=device)
    both = mie.estimate("infonce", task, steps=6, batch_size=16, seeds=[0, 1], device=device)
    assert abs(both[1].final() - one.final()) < 1e-4
    x, y = task.sample(256, generator=torch.Generator().manual_seed(0))
    mine = mie.estimate("nwj", x=x, y=y, steps=6, batch_size=16, device=device)
    assert mine.result is not None


@pytest.mark.parametrize("device", DEVICES)
def test_a_short_training_run_on_the_device(tmp_path, device):
    path = tmp_path / "small.hdf5"
    tiny_dataset(200).to_hdf5(path)
    argv = ["--algo", "td3bc", "--dataset", str(path), "--steps", "5", "--device", device, "--quiet"]
    argv += ["--hidden-q", "[8, 8]", "--hidden-pi", "[8, 8]", "--batch-size", "8", "--final-eval", "false"]
    assert main([*argv, "--eval-every", "0", "--run-dir", str(tmp_path / "run")]) == 0
    assert main([*argv, "--eval-every", "0", "--run-dir", str(tmp_path / "group"), "--seeds", "0", "1"]) == 0
    assert (tmp_path / "group" / "seed1" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_the_estimator_suites_protocol_on_the_device(device):
    from rl.sweep import staircase as sc

    def run(dev: str, seed):
        return sc.run_protocol("nwj", "gauss-d2", "separable", 4, 16, seed, heldout_samples=32, device=dev)

    here = run(device, [0, 1])  # a packed cell: the stacked run
    assert [r["stopped_at"] for r in here] == [None, None]
    assert all(all(h["error"] is None for h in r["heldout"]) for r in here)
    cpu = run("cpu", 1)  # the same draws on the CPU, one seed alone: the same numbers to float32 rounding
    assert here[1]["estimates"] == pytest.approx(cpu["estimates"], rel=1e-4, abs=1e-5)
