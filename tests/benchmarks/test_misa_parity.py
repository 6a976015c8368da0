"""The parity script's mapping between our networks and the official flax parameters (the oracle itself needs the
official checkout and its venv, so it is not run here): a round trip through the flax layout gives the same policy,
the Q layout is the official `concat([s, a]) @ kernel` network, the noise replay reproduces the agent's draws, and
`report` rebuilds the curves page from its CSV and JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import misa_parity  # noqa: E402

from rl.networks import QEnsemble, TanhGaussianPolicy  # noqa: E402


def test_policy_round_trip_through_the_flax_layout():
    torch.manual_seed(0)
    src = TanhGaussianPolicy(11, 3, (32, 32), log_std_mode="misa", hidden_init="lecun")
    with torch.no_grad():
        src.log_std_multiplier.fill_(0.7)
        src.log_std_offset.fill_(-0.3)
    flat = misa_parity.policy_to_flax(src, "policy")
    assert flat["policy/params/base_network/Dense_0/kernel"].shape == (11, 32)  # flax: [in, out]
    dst = TanhGaussianPolicy(11, 3, (32, 32), log_std_mode="misa")
    misa_parity.policy_from_flax(dst, flat, "policy")
    obs = torch.randn(5, 11)
    a, b = src(obs), dst(obs)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.log_std, b.log_std)


def test_q_layout_is_the_official_concat_network():
    torch.manual_seed(1)
    q = QEnsemble(11, 3, (16, 16), 2, activation="elu")
    flat = misa_parity.q_to_flax(q)
    obs, act = torch.randn(4, 11), torch.rand(4, 3) * 2 - 1
    for k, prefix in enumerate(("qf1", "qf2")):
        p = {name: torch.as_tensor(v) for name, v in flat.items() if name.startswith(prefix)}
        dense = [f"{prefix}/params/FullyConnectedNetwork_0/Dense_{i}" for i in range(3)]
        h = torch.cat([obs, act], -1) @ p[f"{dense[0]}/kernel"] + p[f"{dense[0]}/bias"]
        h = torch.nn.functional.elu(h) @ p[f"{dense[1]}/kernel"] + p[f"{dense[1]}/bias"]
        out = (torch.nn.functional.elu(h) @ p[f"{dense[2]}/kernel"] + p[f"{dense[2]}/bias"]).squeeze(-1)
        torch.testing.assert_close(out, q(obs, act)[k], rtol=1e-5, atol=1e-6)


def test_noise_replay_reproduces_the_agents_draws():
    """The noise the script hands the official side is the noise our update drew: the reparameterised action's
    entropy term, recomputed from the replayed noise and the pre-update policy, equals the logged one."""
    import copy

    import pytest

    from rl.agents import make_agent, train_config

    cfg = train_config(
        "mi",
        hidden_q=(8, 8),
        hidden_pi=(8, 8),
        n_negatives=4,
        estimator_options={"n_samples": 3},
        batch_size=8,
    )
    agent = make_agent(cfg, 11, 3)
    g = torch.Generator().manual_seed(0)
    batch = {
        "observations": torch.randn(8, 11, generator=g),
        "actions": torch.rand(8, 3, generator=g) * 1.8 - 0.9,
        "rewards": torch.randn(8, generator=g),
        "next_observations": torch.randn(8, 11, generator=g),
        "dones": torch.zeros(8),
    }
    before = copy.deepcopy(agent.policy)
    out = misa_parity._one_update(agent, batch)
    assert out["noise"]["new"].shape == (8, 3) and out["noise"]["negatives"].shape == (8, 4, 3)
    assert out["mcmc_u"].shape == (8, 3, 3)  # [B, S, da] from our chain
    with torch.no_grad():
        dist = before(agent.prepare(batch)["observations"])
        u = dist.mean + dist.log_std.exp() * torch.as_tensor(out["noise"]["new"])
        entropy = -dist.log_prob_of_squashed(u.unsqueeze(1)).mean()
    assert out["logs"]["entropy"] == pytest.approx(float(entropy), rel=1e-5)
    assert set(out["grads"]) == set(misa_parity.policy_to_flax(agent.policy)) | set(
        misa_parity.q_to_flax(agent.critic)
    ) | {"log_alpha/params/value"}


def test_report_rebuilds_the_curves_page_from_the_csv_and_json(tmp_path, capsys):
    rows = [
        {"code": code, "seed": seed, "step": step, "return_mean": 100.0 + step, "normalized_score": score}
        for code, seed, step, score in (
            ("official", 0, 0, 1.0),
            ("official", 0, 500, 8.0),
            ("official", 1, 500, 10.0),
            ("ours", 0, 500, 6.0),
            ("ours", 1, 500, 7.0),
        )
    ]
    assert misa_parity.main(["report", "--out", str(tmp_path)]) == 2
    assert "misa_parity_curves.csv is missing" in capsys.readouterr().err
    args = argparse.Namespace(
        out=str(tmp_path), command="python benchmarks/misa_parity.py train X", seeds=[0, 1]
    )
    misa_parity._write_curves(rows, args, 27.9125)
    first = {n: (tmp_path / n).read_bytes() for n in ("misa_parity_curves.md", "misa_parity_curves.csv")}
    md = first["misa_parity_curves.md"].decode()
    assert "Made by `python benchmarks/misa_parity.py train X`" in md and "scores 27.9." in md
    table = md.split("<!-- table:misa-parity -->\n")[1].split("<!-- /table:misa-parity -->")[0]
    assert table.splitlines()[2:] == [
        "| 0 | 1.0 ± 0.0 (1.0) | - |",
        "| 500 | 9.0 ± 1.4 (8.0, 10.0) | 6.5 ± 0.7 (6.0, 7.0) |",
    ]
    (tmp_path / "misa_parity_curves.md").unlink()
    assert (
        misa_parity.main(["report", "--out", str(tmp_path)]) == 0
    )  # from the two files alone, the same page
    assert {n: (tmp_path / n).read_bytes() for n in first} == first
    with pytest.raises(SystemExit):
        misa_parity.main(["train", "--out", str(tmp_path)])
    assert "train needs --official and --official-python" in capsys.readouterr().err
