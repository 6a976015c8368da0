"""The parity script's mapping between our networks and the official flax parameters (the oracle itself needs the
official checkout and its venv, so it is not run here): a round trip through the flax layout gives the same policy,
the Q layout is the official `concat([s, a]) @ kernel` network, and the noise replay reproduces the agent's draws."""

from __future__ import annotations

import sys
from pathlib import Path

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

    from rl.agents import config_class, make_agent

    cfg = config_class("mi")(
        hidden_q=(8, 8), hidden_pi=(8, 8), n_negatives=4, estimator_options={"n_samples": 3}, batch_size=8
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
