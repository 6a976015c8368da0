"""Tests of online SAC: loss pieces, an update on a fake batch, and exact checkpoint/resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl.collect.sac import SAC, ReplayBuffer, SACConfig, Trainer
from rl.collect.sac import main as sac_main
from rl.collect.snapshots import load_policy_snapshot
from rl.common import actor_loss, alpha_loss, critic_loss, soft_update_, td_target
from rl.run_dir import RunDirError


def test_td_target_honours_terminals_and_entropy() -> None:
    r = torch.tensor([1.0, 2.0])
    d = torch.tensor([0.0, 1.0])
    nq = torch.tensor([10.0, 10.0])
    torch.testing.assert_close(td_target(r, d, nq, 0.9), torch.tensor([10.0, 2.0]))
    y = td_target(r, d, nq, 0.9, next_log_prob=torch.tensor([-1.0, -1.0]), alpha=0.5)
    torch.testing.assert_close(y, torch.tensor([1 + 0.9 * 10.5, 2.0]))


def test_loss_pieces() -> None:
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(critic_loss(q, torch.tensor([1.0, 1.0])), torch.tensor(0.5 + 6.5))
    with pytest.raises(ValueError, match="q must be"):
        critic_loss(q, torch.zeros(3))
    torch.testing.assert_close(actor_loss(torch.tensor([1.0]), torch.tensor([2.0]), 0.5), torch.tensor(-1.5))
    la = torch.tensor(0.0, requires_grad=True)
    alpha_loss(la, torch.tensor([-1.0, -3.0]), target_entropy=-1.0).backward()
    assert la.grad.item() == pytest.approx(
        3.0
    )  # -mean(logp + target) > 0: entropy 2 > target 1 -> lower alpha
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expect = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    soft_update_(a, b, 0.1)
    torch.testing.assert_close(a.weight.detach(), expect)


def _fake_batch(n: int = 32, od: int = 5, ad: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "observations": torch.randn(n, od, generator=g),
        "actions": torch.rand(n, ad, generator=g) * 2 - 1,
        "rewards": torch.randn(n, generator=g),
        "next_observations": torch.randn(n, od, generator=g),
        "terminals": (torch.rand(n, generator=g) < 0.1).float(),
    }


def test_sac_updates_are_finite_and_move_parameters() -> None:
    torch.set_num_threads(1)
    agent = SAC(5, 2, SACConfig(hidden=(16, 16), seed=0))
    before = {k: v.clone() for k, v in agent.state_dict()["policy"].items()}
    q_before = agent.critic.w_obs.detach().clone()
    t_before = agent.critic_target.w_obs.detach().clone()
    batch = _fake_batch()
    for _ in range(5):
        out = agent.update(batch)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert any(not torch.equal(before[k], v) for k, v in agent.policy.state_dict().items())
    assert not torch.equal(q_before, agent.critic.w_obs)
    assert not torch.equal(t_before, agent.critic_target.w_obs)
    assert agent.log_alpha.item() != 0.0


def test_replay_buffer_roundtrip_and_sampling() -> None:
    buf = ReplayBuffer(3, 2, 10)
    for i in range(12):
        buf.add(np.full(3, i), np.zeros(2), float(i), np.full(3, i + 1), i % 5 == 4)
    assert buf.size == 10 and buf.ptr == 2
    b = buf.sample(64, torch.Generator().manual_seed(0))
    assert b["observations"].shape == (64, 3) and b["terminals"].dtype == torch.float32
    torch.testing.assert_close(b["next_observations"], b["observations"] + 1)
    other = ReplayBuffer(3, 2, 10)
    other.load_state(buf.state())
    for k in ReplayBuffer.FIELDS:
        np.testing.assert_array_equal(getattr(other, k), getattr(buf, k))
    assert other.ptr == buf.ptr


def _tiny_cfg(steps: int) -> SACConfig:
    return SACConfig(
        env="Hopper-v5",
        steps=steps,
        seed=3,
        hidden=(8, 8),
        batch_size=16,
        start_steps=30,
        eval_every=10_000,
        eval_episodes=1,
        checkpoint_every=40,
        buffer_size=200,
    )


def test_checkpoint_resume_reproduces_uninterrupted_run(tmp_path) -> None:
    torch.set_num_threads(1)
    full = Trainer(_tiny_cfg(100), tmp_path / "full", quiet=True)
    full.train()
    # interrupted: stop at 60 (checkpoint at 40 and at 60), then a fresh process-like trainer resumes to 100
    part = Trainer(_tiny_cfg(100), tmp_path / "part", quiet=True)
    part.train(until=60)
    part.close()
    resumed = Trainer(_tiny_cfg(100), tmp_path / "part", resume=True, quiet=True)
    assert resumed.step == 60
    resumed.train()
    a, b = full.agent.state_dict(), resumed.agent.state_dict()
    for key in ("policy", "critic", "critic_target"):
        for name, v in a[key].items():
            assert torch.equal(v, b[key][name]), f"{key}.{name} differs after resume"
    assert torch.equal(a["log_alpha"], b["log_alpha"])
    np.testing.assert_array_equal(full.buffer.observations, resumed.buffer.observations)
    np.testing.assert_array_equal(full.obs, resumed.obs)
    assert len(list((tmp_path / "part").glob("buffer_*.npz"))) == 1
    policy, meta = load_policy_snapshot(tmp_path / "full" / "snapshots" / "step_0000000.pt")
    assert meta["step"] == 0 and meta["env"] == "Hopper-v5" and policy.obs_dim == 11


def test_resume_refuses_other_env_or_seed(tmp_path) -> None:
    with Trainer(_tiny_cfg(40), tmp_path, quiet=True) as t:
        t.train()
    cfg = _tiny_cfg(40)
    cfg.seed = 4
    with pytest.raises(RunDirError, match="seed=3, but this run asks for seed=4"):
        Trainer(cfg, tmp_path, resume=True, quiet=True)


def test_cli_resume_of_a_finished_stage_is_a_no_op(tmp_path, capsys) -> None:
    # A staged script reruns earlier stages with a smaller --steps (hence a smaller default buffer): that must
    # neither fail nor touch the run.
    with Trainer(_tiny_cfg(40), tmp_path, quiet=True) as t:
        t.train()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    code = sac_main(
        ["--env", "Hopper-v5", "--steps", "20", "--seed", "3", "--run-dir", str(tmp_path), "--resume"]
    )
    assert code == 0
    assert "already at step 40 >= --steps 20" in capsys.readouterr().out
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # ... but not the resume of another seed: that is refused before the step is looked at
    code = sac_main(
        ["--env", "Hopper-v5", "--steps", "20", "--seed", "4", "--run-dir", str(tmp_path), "--resume"]
    )
    assert code == 2 and "seed=3, but this run asks for seed=4" in capsys.readouterr().err


def _log_rows(path) -> list[list[str]]:
    """train_log.csv without its timing column (steps_per_s differs from run to run)."""
    lines = path.read_text().splitlines()
    return [line.split(",")[:-1] for line in lines]


def test_a_resume_after_a_kill_redoes_the_log_rows_past_the_checkpoint_once(tmp_path, monkeypatch) -> None:
    torch.set_num_threads(1)
    with Trainer(_tiny_cfg(100), tmp_path / "full", quiet=True) as full:
        full.train()
    part = Trainer(_tiny_cfg(100), tmp_path / "part", quiet=True)
    calls = {"n": 0}
    real = part.agent.update

    def update_then_die(batch):
        calls["n"] += 1
        if part.step == 75:  # past the checkpoint at 40: episodes ended since then are in the log
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(part.agent, "update", update_then_die)
    with pytest.raises(KeyboardInterrupt):
        part.train()
    part.close()
    logged = _log_rows(tmp_path / "part" / "train_log.csv")
    assert int(logged[-1][0]) > 40  # rows past the checkpoint were written
    with Trainer(_tiny_cfg(100), tmp_path / "part", resume=True, quiet=True) as resumed:
        assert resumed.step == 40
        resumed.train()
    want = _log_rows(tmp_path / "full" / "train_log.csv")
    assert _log_rows(tmp_path / "part" / "train_log.csv") == want
    assert len({row[0] for row in want}) == len(want)  # no step twice


def test_the_sac_run_folder_is_locked_marked_and_refuses_other_folders(tmp_path) -> None:
    import json
    import os

    with Trainer(_tiny_cfg(40), tmp_path / "run", quiet=True) as t:
        held = json.loads((tmp_path / "run" / ".rl-run.lock").read_text())
        assert (held["pid"], held["tool"]) == (os.getpid(), "rl.collect.sac")
        t.train()
    assert not (tmp_path / "run" / ".rl-run.lock").exists()
    assert json.loads((tmp_path / "run" / ".rl-run.json").read_text())["tool"] == "rl.collect.sac"
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        Trainer(_tiny_cfg(40), tmp_path / "run", quiet=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not from rl.collect.sac"):
        Trainer(_tiny_cfg(40), foreign, quiet=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(RuntimeError, match="is closed"):  # its lock is gone: it writes nothing more
        t.train()
    # a fresh start over a run killed before its first checkpoint voids its log and snapshots
    killed = tmp_path / "killed"
    with Trainer(_tiny_cfg(40), killed, quiet=True):
        pass  # nothing trained: as a run killed before its first checkpoint
    (killed / "snapshots").mkdir()
    (killed / "snapshots" / "step_0000010.pt").write_bytes(b"of the killed run")
    (killed / "train_log.csv").write_text("step\n3\n")
    with Trainer(_tiny_cfg(40), killed, quiet=True):
        assert not (killed / "snapshots").exists() and not (killed / "train_log.csv").exists()
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / ".rl-run.json").write_text(json.dumps({"tool": "rl.train", "algo": "bc"}))
    with pytest.raises(RunDirError, match="holds a run of rl.train, not of rl.collect.sac"):
        Trainer(_tiny_cfg(40), offline, resume=True, quiet=True)
