"""Many seeds in one process (rl.seeds.StackedAgents, rl.train.SeedGroup, `rl.train --seeds`): seed k of a stacked
run follows the one-seed run at seed k, seeds do not leak into each other, each seed's run folder is a one-seed
run's, and a kill -9 of the whole process resumes bit for bit."""

from __future__ import annotations

import copy
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_state
from test_faults import _cli
from test_train import tiny_dataset
from torch.func import vmap

from rl._safe_load import load_torch_file
from rl.agents import make_agent, train_config
from rl.seeds import StackedAgents, _SeedDraws
from rl.train import SeedGroup, TrainingError, main, seed_configs

REPO = Path(__file__).resolve().parents[2]
SMALL = {"hidden_q": (16, 16), "hidden_pi": (16, 16), "batch_size": 16, "fast": False}
ALGOS = {
    "td3bc": {},
    "iql": {"steps": 20},
    "misa": {"n_negatives": 4, "estimator_options": {"n_samples": 3}},
    "cql": {"n_actions": 4},
    "bc": {},
    "mine": {"estimator": "mine", "n_negatives": 4},  # its moving average starts with a select, not a branch
}


def _agents(algo: str, seeds, data, **kw):
    name = "mi" if algo in ("misa", "mine") else algo
    agents = [
        make_agent(train_config(name, seed=s, **SMALL, **ALGOS[algo], **kw), data.obs_dim, data.act_dim)
        for s in seeds
    ]
    for a in agents:
        a.fit_dataset_stats(data)
    return agents


def _train_stacked(agents, data, steps: int):
    stacked = StackedAgents(agents)
    logs = []
    for _ in range(steps):
        batches = [data.sample(16, a.generator) for a in agents]
        logs.append([{k: float(v) for k, v in one.items()} for one in stacked.update(batches)])
    return logs


def _max_diff(a, b) -> float:
    return max(((p - q).abs().max().item() for p, q in zip(a, b)), default=0.0)


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_a_stacked_seed_follows_its_one_seed_run(algo):
    """Same draws, same data: over 20 updates every logged term within 1e-4 + 1e-3 |value| and every weight within
    1e-5 of the one-seed run's (batched matmuls round differently from one seed's)."""
    data, steps = tiny_dataset(256, do=5, da=2), 20
    agents = _agents(algo, [0, 1, 2], data)
    logs = _train_stacked(agents, data, steps)
    for s in (0, 2):
        (one,) = _agents(algo, [s], data)
        for t in range(steps):
            ref = {k: float(v) for k, v in one.update(data.sample(16, one.generator)).items()}
            assert ref.keys() == logs[t][s].keys()
            for k, v in ref.items():
                assert abs(logs[t][s][k] - v) <= 1e-4 + 1e-3 * abs(v), (algo, s, t, k, logs[t][s][k], v)
        for name, module in one.modules.items():
            diff = _max_diff(module.parameters(), agents[s].modules[name].parameters())
            assert diff <= 1e-5, (algo, s, name, diff)
        assert agents[s].num_updates == one.num_updates == steps
        assert agents[s].generator.get_state().equal(one.generator.get_state())  # the same draws, in order


@pytest.mark.parametrize("algo", ["td3bc", "misa"])
def test_seeds_do_not_leak_and_do_not_depend_on_their_companions(algo):
    """Seed 1 is bit-identical next to seed 0 or seed 5, and in a group of two or of three, at the same place."""
    data = tiny_dataset(256, do=5, da=2)
    runs = {}
    for seeds in ([0, 1], [5, 1], [0, 1, 2]):
        agents = _agents(algo, seeds, data)
        _train_stacked(agents, data, 8)
        runs[tuple(seeds)] = agents[1]
    ref = runs[(0, 1)].state_dict()
    for seeds in ([5, 1], [0, 1, 2]):
        assert_same_state(ref, runs[tuple(seeds)].state_dict())


def test_an_agents_state_is_its_seeds_slice_at_every_step():
    """Checkpoints read the agents: their weights and Adam moments are views of the stacked state, and loading
    a state into an agent writes its slice."""
    data = tiny_dataset(128, do=5, da=2)
    agents = _agents("iql", [0, 1], data)
    stacked = StackedAgents(agents)
    stacked.update([data.sample(16, a.generator) for a in agents])
    w = stacked.state["policy.net.0.weight"]
    assert torch.equal(agents[1].policy.net[0].weight, w[1])
    moments = agents[1].optimizers["actor"].state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moments, stacked.optimizers["actor"].state[w]["exp_avg"][1])
    saved = copy.deepcopy(agents[0].state_dict())
    stacked.update([data.sample(16, a.generator) for a in agents])
    assert not torch.equal(w[0], saved["modules"]["policy"]["net.0.weight"])
    agents[0].load_state_dict(saved)
    assert torch.equal(w[0], saved["modules"]["policy"]["net.0.weight"])


@pytest.mark.parametrize("algo", ["td3bc", "misa"])
def test_a_state_loaded_after_stacking_reaches_the_stacked_update(algo):
    """`StackedAgents.load_state_dict(s, state)`: seed s then is the agent that state came from (weights, Adam
    moments, dataset statistics, generator): its next updates are bit for bit that agent's, at the same place in
    the stack."""
    data, other = tiny_dataset(256, do=5, da=2), tiny_dataset(256, do=5, da=2, seed=7)
    source = _agents(algo, [0, 1], data)
    _train_stacked(source, data, 3)
    target = _agents(algo, [5, 6], other)  # everything else: seeds, statistics, moments
    stacked = StackedAgents(target)
    for _ in range(3):
        stacked.update([other.sample(16, a.generator) for a in target])
    stacked.load_state_dict(1, copy.deepcopy(source[1].state_dict()))
    assert_same_state(target[1].state_dict(), source[1].state_dict())
    ahead = _train_stacked(source, data, 2)
    logs = [
        [
            {k: float(v) for k, v in one.items()}
            for one in stacked.update([data.sample(16, a.generator) for a in target])
        ]
        for _ in range(2)
    ]
    assert [step[1] for step in logs] == [step[1] for step in ahead]
    assert_same_state(target[1].state_dict(), source[1].state_dict())
    with pytest.raises(ValueError, match=r"state is at update 3, the stack at 5"):
        stacked.load_state_dict(0, _agents(algo, [0], data)[0].state_dict() | {"num_updates": 3})


def test_stacking_refuses_agents_with_other_settings_and_dropout():
    data = tiny_dataset(64, do=5, da=2)
    a = _agents("td3bc", [0], data)[0]
    b = _agents("td3bc", [1], data, alpha_bc=3.0)[0]
    with pytest.raises(
        ValueError, match=r"agents\[1\] has another config than agents\[0\] \(alpha_bc: 3\.0 vs 2\.5\)"
    ):
        StackedAgents([a, b])
    gen = torch.Generator().manual_seed(0)
    streams = {id(gen): [torch.Generator().manual_seed(s) for s in range(2)]}

    def body(index, x, training):
        with _SeedDraws(streams, index):
            return torch.nn.functional.dropout(x, 0.5, training)

    assert torch.equal(
        vmap(lambda i, x: body(i, x, False))(torch.arange(2), torch.ones(2, 3)), torch.ones(2, 3)
    )
    with pytest.raises(RuntimeError, match="ran dropout in training mode"):
        vmap(lambda i, x: body(i, x, True), randomness="same")(torch.arange(2), torch.ones(2, 3))


@pytest.mark.parametrize("algo", ["cql", "misa"])
def test_restacking_keeps_every_seeds_adam_state(algo):
    """A second stack (what a resume, a catch-up or a diverged seed's removal builds) of agents with scalar
    parameters (the temperature, MISA's log-std scalars) carries each seed's own moments: bit-identical to one
    stack throughout."""
    data = tiny_dataset(256, do=5, da=2)
    straight = _agents(algo, [0, 1, 2], data)
    _train_stacked(straight, data, 8)
    twice = _agents(algo, [0, 1, 2], data)
    _train_stacked(twice, data, 4)
    _train_stacked(twice, data, 4)  # stacked anew from the agents' views
    for a, b in zip(straight, twice):
        assert_same_state(a.state_dict(), b.state_dict())


def test_a_draw_without_the_agents_generator_is_refused():
    gen = torch.Generator().manual_seed(0)
    streams = {id(gen): [torch.Generator().manual_seed(s) for s in range(2)]}

    def body(index, x):
        with _SeedDraws(streams, index):
            return x + torch.randn(3)

    with pytest.raises(RuntimeError, match="without one of the agent's generators"):
        vmap(body, randomness="same")(torch.arange(2), torch.zeros(2, 3))

    def seeded(index, x):
        with _SeedDraws(streams, index):
            return x + torch.randn(3, generator=gen)

    out = vmap(seeded, randomness="same")(torch.arange(2), torch.zeros(2, 3))
    for s in range(2):
        assert torch.equal(out[s], torch.randn(3, generator=torch.Generator().manual_seed(s)))


def test_stacking_refuses_mixed_agents():
    data = tiny_dataset(64, do=5, da=2)
    a, b = _agents("td3bc", [0], data)[0], _agents("iql", [1], data)[0]
    with pytest.raises(ValueError, match=r"agents\[1\] is a IQLAgent"):
        StackedAgents([a, b])
    fast = make_agent(train_config("td3bc", **{**SMALL, "fast": True}), data.obs_dim, data.act_dim)
    with pytest.raises(ValueError, match="fast: true"):
        StackedAgents([fast, a])


# --- the trainer and the CLI ---------------------------------------------------------------------------------
def _argv(data: Path, run: Path, *extra: str, steps: int = 30) -> list[str]:
    return [
        "--algo",
        "td3bc",
        "--dataset",
        str(data),
        "--steps",
        str(steps),
        "--hidden-q",
        "[8, 8]",
        "--hidden-pi",
        "[8, 8]",
        "--batch-size",
        "8",
        "--final-eval",
        "false",
        "--eval-every",
        "0",
        "--log-every",
        "10",
        "--run-dir",
        str(run),
        "--quiet",
        *extra,
    ]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data" / "small.hdf5"
    tiny_dataset(200).to_hdf5(path)
    return path


def test_seeds_on_the_cli_write_one_seed_run_folders(tmp_path, data_file, capsys):
    assert main(_argv(data_file, tmp_path / "group", "--seeds", "0", "3")) == 0
    assert main(_argv(data_file, tmp_path / "one", "--seed", "3", "--fast", "false")) == 0
    seed3, one = tmp_path / "group" / "seed3", tmp_path / "one"
    assert sorted(p.name for p in (tmp_path / "group").iterdir()) == ["seed0", "seed3"]
    assert sorted(p.name for p in seed3.iterdir()) == sorted(p.name for p in one.iterdir())
    a, b = load_torch_file(seed3 / "checkpoint.pt"), load_torch_file(one / "checkpoint.pt")
    assert a["config"] == {**b["config"], "run_dir": str(seed3)}  # a one-seed run's config: seed 3, no seeds
    assert a["step"] == b["step"] == 30
    for name, sd in b["agent"]["modules"].items():
        assert _max_diff(sd.values(), a["agent"]["modules"][name].values()) <= 1e-5, name
    # resumable as a one-seed run
    assert main(_argv(data_file, seed3, "--resume", "--seed", "3", "--fast", "false", "--steps", "40")) == 0
    assert load_torch_file(seed3 / "checkpoint.pt")["step"] == 40
    # the group's folder without --seeds: the message says how to resume it
    capsys.readouterr()
    assert main(["--resume", "--run-dir", str(tmp_path / "group"), "--steps", "40"]) == 2
    err = capsys.readouterr().err
    assert "holds the run folders of a --seeds run (seeds 0, 3): resume it with --seeds 0 3" in err, err


def test_a_seed_groups_done_lines_format_the_score(tmp_path, hopper_file, capsys):
    argv = _argv(hopper_file, tmp_path / "group", "--seeds", "0", "1", "--eval-episodes", "1", steps=4)
    argv = [a for a in argv if a != "--quiet"]
    argv[argv.index("--final-eval") + 1] = "true"  # on Hopper-v5, the env of the file
    assert main(argv) == 0
    done = [x for x in capsys.readouterr().out.splitlines() if x.startswith("done: seed")]
    assert len(done) == 2 and all(
        re.search(r"4 steps; (normalised score -?\d+\.\d|return -?\d+\.\d)[ ;]", x) for x in done
    ), done


def test_seed_configs_name_each_seeds_folder_and_refuse_repeats():
    cfgs = seed_configs(train_config("td3bc", seeds=(2, 7), run_dir="runs/x"))
    assert [(c.run.seed, c.run.run_dir, c.run.seeds, c.run.fast) for c in cfgs] == [
        (2, str(Path("runs/x/seed2")), (), False),
        (7, str(Path("runs/x/seed7")), (), False),
    ]
    assert seed_configs(train_config("td3bc", seeds=(4,)))[0].run.run_dir.endswith(
        str(Path("td3bc/hopper-medium-v5/seed4"))
    )
    with pytest.raises(ValueError, match="holds a seed twice"):
        train_config("td3bc", seeds=(1, 1))


def test_seeds_behind_catch_up_to_the_uninterrupted_run(tmp_path):
    """What a kill between two seeds' checkpoint writes leaves: seed 0 at step 20, seeds 1 and 2 at 10. Seeds 1
    and 2 catch up with seed 0 riding along unrecorded, then all go on: every seed bit-identical to the straight
    run (in a group of the same seeds, each element keeps its place in the stacked tensors)."""
    data = tiny_dataset(200)
    cfg = train_config("td3bc", seeds=(0, 1, 2), steps=30, final_eval=False, eval_every=0, **SMALL)
    straight = SeedGroup(cfg.replace(run_dir=str(tmp_path / "a")), data, quiet=True)
    with straight:
        straight.train()
    group = SeedGroup(cfg.replace(run_dir=str(tmp_path / "b")), data, quiet=True)
    with group:
        group.train(until=10)
        group._train_together(group.trainers, 20, riders=group.trainers[1:])
        assert [t.step for t in group.trainers] == [20, 10, 10]
        group.train()
    for a, b in zip(straight.trainers, group.trainers):
        assert a.step == b.step == 30
        assert_same_state(a.agent.state_dict(), b.agent.state_dict())


def test_seeds_behind_catch_up_in_chunks_with_the_ones_ahead_at_the_chunks_end(tmp_path):
    """The sweep trains a group chunk by chunk (`train(until=...)`); a kill between two seeds' checkpoint writes at
    a chunk's end leaves the seeds ahead exactly at that end. They still ride along while the others redo the
    chunk, so every seed stays bit-identical to the straight run."""
    data = tiny_dataset(200)
    cfg = train_config("td3bc", seeds=(0, 1, 2), steps=30, final_eval=False, eval_every=0, **SMALL)
    straight = SeedGroup(cfg.replace(run_dir=str(tmp_path / "a")), data, quiet=True)
    with straight:
        for until in (10, 20, 30):
            straight.train(until=until)
    group = SeedGroup(cfg.replace(run_dir=str(tmp_path / "b")), data, quiet=True)
    with group:
        group.train(until=10)
        group._train_together(group.trainers, 20, riders=group.trainers[1:])
        group.train(until=20)  # seed 0 is at 20 already: it rides along
        assert [t.step for t in group.trainers] == [20, 20, 20]
        group.train(until=30)
    for a, b in zip(straight.trainers, group.trainers):
        assert a.step == b.step == 30
        assert_same_state(a.agent.state_dict(), b.agent.state_dict())


def test_a_diverging_seed_stops_alone(tmp_path, monkeypatch):
    data = tiny_dataset(200)
    cfg = train_config(
        "td3bc", seeds=(0, 1, 2), steps=20, final_eval=False, eval_every=0, run_dir=str(tmp_path), **SMALL
    )
    with SeedGroup(cfg, data, quiet=True) as group:
        bad = group.trainers[1]
        record = bad.record

        def diverge(loop, logs, batch):
            if bad.step == 7:
                raise TrainingError("step 8: critic term is nan")
            record(loop, logs, batch)

        monkeypatch.setattr(bad, "record", diverge)
        group.train()
    assert [t.step for t in group.trainers] == [20, 7, 20]
    assert list(group.failures) == [1] and "nan" in str(group.failures[1])


def test_kill_9_of_a_seed_group_then_resume_is_bit_identical(tmp_path, data_file):
    common = ["--seeds", "0", "1", "2", "--checkpoint-every", "1", "--threads", "1"]
    p = _cli(_argv(data_file, tmp_path / "straight", *common, steps=150))
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    run = tmp_path / "killed"
    ckpt = run / "seed0" / "checkpoint.pt"
    rng = np.random.default_rng(0)
    kills = 0
    while True:
        resume = ["--resume"] if ckpt.exists() else []
        p = _cli(_argv(data_file, run, *common, *resume, steps=150))
        done = int(load_torch_file(ckpt)["step"]) if ckpt.exists() else 0
        if kills < 3 and done < 150:
            seen = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            while p.poll() is None and (ckpt.stat().st_mtime_ns if ckpt.exists() else None) == seen:
                time.sleep(0.001)
            time.sleep(float(rng.uniform(0.0, 0.05)))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait(timeout=600)
            continue
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()
        break
    assert kills == 3
    for s in range(3):
        a = load_torch_file(tmp_path / "straight" / f"seed{s}" / "checkpoint.pt")
        b = load_torch_file(run / f"seed{s}" / "checkpoint.pt")
        assert a["step"] == b["step"] == 150
        assert_same_state(a["agent"], b["agent"])
        strip = lambda t: [line.rsplit(",", 1)[0] for line in t.splitlines()]  # noqa: E731 - drop updates/s
        straight_rows = (tmp_path / "straight" / f"seed{s}" / "progress.csv").read_text()
        assert strip(straight_rows) == strip((run / f"seed{s}" / "progress.csv").read_text())
