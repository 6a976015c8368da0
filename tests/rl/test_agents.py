"""Agents: each algorithm's losses on a hand-made tiny batch against straightforward reference computations
(explicit per-member, per-sample loops), gradient routing, the fast tilted gradient, and every estimator."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
from torch.nn import functional as F

import mi_estimators as mie
from rl.agents import config_class, make_agent
from rl.agents.mi import _Jobs
from rl.agents.tilted import MemberHelper, TiltedDensity

B, DO, DA = 4, 3, 2
TINY = {"hidden_q": (8, 8), "hidden_pi": (8, 8), "seed": 3}


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(B, DO, generator=g),
        "actions": torch.tensor([[0.5, -0.2], [1.0, 0.1], [-0.7, 0.9], [0.0, -1.0]]),  # +-1: clipped to 0.999
        "rewards": torch.tensor([1.0, -0.5, 0.25, 2.0]),
        "next_observations": torch.randn(B, DO, generator=g),
        "dones": torch.tensor([0.0, 1.0, 0.0, 0.0]),
    }


# --- straightforward references -----------------------------------------------------------------------------
def q_ref(critic, s: torch.Tensor, a: torch.Tensor, e: int) -> torch.Tensor:
    """Q_e(s, a) for ONE state [do] and action [da]: the MLP on [s, a], written out."""
    act = {"elu": F.elu, "relu": F.relu}[critic.activation]
    w0 = torch.cat([critic.w_obs[e], critic.w_act[e]], 0)  # [do + da, h]
    h = torch.cat([s, a]) @ w0 + critic.b0[e, 0]
    for layer in critic.layers:
        h = act(h) @ layer.weight[e] + layer.bias[e, 0]
    return h[0]


def logp_ref(mean: torch.Tensor, log_std: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """log pi(a) of a tanh-Gaussian for one row: sum_d log N(atanh a_d; m_d, s_d) - log(1 - a_d^2)."""
    total = torch.zeros(())
    for d in range(a.shape[0]):
        u = torch.atanh(a[d])
        total = (
            total
            + (-0.5 * ((u - mean[d]) / log_std[d].exp()) ** 2 - log_std[d] - 0.5 * math.log(2 * math.pi))
            - torch.log(1 - a[d] ** 2)
        )
    return total


def gen_copy(agent) -> torch.Generator:
    g = torch.Generator()
    g.set_state(agent.generator.get_state())
    return g


def squash(mean, log_std, eps):
    return torch.tanh(mean + log_std.exp() * eps).clamp(-1 + 1.2e-7, 1 - 1.2e-7)


def grads(loss, params):
    return torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)


def assert_grads_close(a, b):
    for x, y in zip(a, b):
        if x is None or y is None:
            assert (x is None or torch.all(x == 0)) and (y is None or torch.all(y == 0))
        else:
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


# --- MI actor-critic (MISA) ---------------------------------------------------------------------------------
def test_misa_losses_by_hand(monkeypatch):
    n_neg, n_mc = 3, 5
    cfg = config_class("mi")(**TINY, n_negatives=n_neg)
    agent = make_agent(cfg, DO, DA)
    raw = tiny_batch()
    batch = agent.prepare(raw)
    assert batch["actions"].abs().max() == pytest.approx(0.999)
    # The MCMC samples are fixed here (the chain itself is tested in mi_estimators and below).
    u_mc = torch.randn(B, n_mc, DA, generator=torch.Generator().manual_seed(9))
    monkeypatch.setattr(
        agent, "_chain", lambda d, o, a, rows, gen, helper=None: (u_mc[rows], o[rows, 0], o[rows, 0])
    )
    g = gen_copy(agent)
    objectives, logs = agent.losses(batch)

    s, a, r, s2, d = (batch[k] for k in ("observations", "actions", "rewards", "next_observations", "dones"))
    pol, critic, targ = agent.policy, agent.critic, agent.critic_target
    eps_next = torch.randn(B, 1, DA, generator=g)
    eps_neg = torch.randn(B, n_neg, DA, generator=g)
    eps_new = torch.randn(B, 1, DA, generator=g)
    dist, dist2 = pol(s), pol(s2)
    critic_total = torch.zeros(())
    for e in range(2):
        td, reg = torch.zeros(()), torch.zeros(())
        for i in range(B):
            with torch.no_grad():
                a2 = squash(dist2.mean[i], dist2.log_std[i], eps_next[i, 0])
                y = r[i] + 0.99 * (1 - d[i]) * min(q_ref(targ, s2[i], a2, k) for k in range(2))
            q_d = q_ref(critic, s[i], a[i], e)
            td = td + (q_d - y) ** 2 / B
            negs = [
                q_ref(critic, s[i], squash(dist.mean[i], dist.log_std[i], eps_neg[i, j]).detach(), e)
                for j in range(n_neg)
            ]
            reg = reg + (torch.logsumexp(torch.stack(negs), 0) - math.log(n_neg) - q_d) / B
        critic_total = critic_total + td + 5.0 * reg
    torch.testing.assert_close(objectives["critic"], critic_total, atol=1e-5, rtol=1e-5)
    assert_grads_close(
        grads(objectives["critic"], critic.parameters()), grads(critic_total, critic.parameters())
    )
    assert all(x is None for x in grads(objectives["critic"], pol.parameters()))  # routing: Q loss -> Q only

    actor = torch.zeros(())
    for i in range(B):
        m, ls = dist.mean[i], dist.log_std[i]
        a_new = squash(m, ls, eps_new[i, 0])
        q_new = min(q_ref(critic, s[i], a_new, k) for k in range(2))
        bc = 1.0 * logp_ref(m, ls, a_new) - logp_ref(m, ls, a[i])  # alpha = exp(0) = 1
        mc = sum(logp_ref(m, ls, torch.tanh(u_mc[i, j])) for j in range(n_mc)) / n_mc
        actor = actor + (-q_new + 0.5 * bc + 0.1 * mc) / B
    assert_grads_close(grads(objectives["actor"], pol.parameters()), grads(actor, pol.parameters()))
    assert all(
        x is None for x in grads(objectives["actor"], critic.parameters())
    )  # routing: actor -> policy only
    # The logged BC term, by hand.
    with torch.no_grad():
        bc_ref = 0.0
        for i in range(B):
            m, ls = dist.mean[i], dist.log_std[i]
            bc_ref += float(0.5 * (logp_ref(m, ls, squash(m, ls, eps_new[i, 0])) - logp_ref(m, ls, a[i]))) / B
    assert float(logs["actor_bc"]) == pytest.approx(bc_ref, rel=1e-4)


def test_misa_policy_term_gradient_is_tilted_log_likelihood(monkeypatch):
    """grad of the misa policy term = mean_{s,j} grad log pi(a_j^MC|s) (the official w_ub term)."""
    cfg = config_class("mi")(**TINY, n_negatives=3, bc_weight=0.0)
    agent = make_agent(cfg, DO, DA)
    batch = agent.prepare(tiny_batch())
    u_mc = torch.randn(B, 4, DA, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(
        agent, "_chain", lambda d, o, a, rows, gen, helper=None: (u_mc[rows], o[rows, 0], o[rows, 0])
    )
    _, logs = agent.losses(batch)
    dist = agent.policy(batch["observations"])
    q_neg = agent.critic.q_min(batch["observations"], dist.sample(3, torch.Generator().manual_seed(0)))
    chain = _Jobs([lambda: (u_mc, torch.ones(B), torch.ones(B))], None)
    term, _ = agent._policy_term(dist, batch["observations"], torch.zeros(B), q_neg.detach(), None, chain)
    ref = (
        sum(
            logp_ref(dist.mean[i], dist.log_std[i], torch.tanh(u_mc[i, j]))
            for i in range(B)
            for j in range(4)
        )
        / 16
    )
    assert_grads_close(grads(term, agent.policy.parameters()), grads(ref, agent.policy.parameters()))


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("activation", ["elu", "relu"])
@pytest.mark.parametrize("chains", [1, 3])
def test_tilted_gradient_matches_autograd(activation, chains, split):
    torch.manual_seed(0)
    from rl.networks import QEnsemble, TanhGaussianPolicy

    critic = QEnsemble(5, 3, (16, 16), 2, activation)
    pol = TanhGaussianPolicy(5, 3, (16,), log_std_mode="misa")
    obs = torch.randn(6, 5)
    law = pol(obs)
    a = torch.rand(6, chains, 3) * 1.98 - 0.99
    if chains == 1:
        a = a.squeeze(1)
    dens = TiltedDensity(law, critic, obs)
    dens.split = split  # member-by-member with grouped backward (CPU default) or the masked batched form
    lp, g = dens.value_and_grad(a)
    x = a.clone().requires_grad_(True)
    ref = law.log_prob(x) + critic.q_min(obs, x if chains > 1 else x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(lp, ref.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)
    assert all(p.grad is None for p in critic.parameters())
    # outside the box: non-finite, so the sampler rejects the proposal
    lp_out, _ = dens.value_and_grad(torch.full_like(a, 1.5))
    assert not torch.isfinite(lp_out).any()


@pytest.mark.parametrize("space", ["action", "unconstrained"])
def test_misa_chain_runs_and_reports_acceptance(space):
    cfg = config_class("mi")(**TINY, n_negatives=4, mcmc_space=space, estimator_options={"n_samples": 6})
    agent = make_agent(cfg, DO, DA)
    logs = agent.update(tiny_batch())
    assert 0.0 <= float(logs["mcmc_accept"]) <= 1.0
    assert all(torch.isfinite(v) for v in logs.values())


def test_every_estimator_swaps_in():
    """`--estimator NAME` works for every registered lower bound (one tiny update each); club is refused by name."""
    for name in mie.available():
        opts = {"n_samples": 3} if name in ("misa",) else {}
        cfg = config_class("mi")(**TINY, n_negatives=4, estimator=name, estimator_options=opts)
        if name == "club":
            with pytest.raises(ValueError, match="'club' is an upper bound"):
                make_agent(cfg, DO, DA)
            continue
        agent = make_agent(cfg, DO, DA)
        before = [p.detach().clone() for p in agent.critic.parameters()]
        logs = agent.update(tiny_batch())
        assert all(bool(torch.isfinite(v)) for v in logs.values()), (name, logs)
        assert any(not torch.equal(b, p) for b, p in zip(before, agent.critic.parameters())), name


@pytest.mark.parametrize("estimator", ["misa", "misa-dv"])
def test_overlapped_chain_gives_the_sequential_numbers(estimator):
    """With 2 threads the chain runs in a worker beside the critic's backward pass; the result must be that of
    the sequential update (the chain has its own generator; both sides run one thread, as the sequential run)."""
    opts = {"n_samples": 5, "burn_in": 2}
    if estimator == "misa-dv":
        opts["log_z"] = "mcmc"
    states = {}
    for threads, overlap in ((1, False), (2, True), (2, False)):
        cfg = config_class("mi")(
            **TINY, n_negatives=4, estimator=estimator, estimator_options=opts, overlap_chain=overlap
        )
        agent = make_agent(cfg, DO, DA)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert (agent._chain_executor() is not None) == (threads == 2 and overlap)
            for step in range(3):
                logs = agent.update(tiny_batch(step))
            assert torch.get_num_threads() == threads  # the worker gave its thread back
        finally:
            torch.set_num_threads(old)
        states[(threads, overlap)] = (agent.state_dict(), logs)
    ref_sd, ref_logs = states[(1, False)]
    for key in ((2, True), (2, False)):
        sd, logs = states[key]
        for name, module in ref_sd["modules"].items():
            for pname, v in module.items():
                torch.testing.assert_close(sd["modules"][name][pname], v, rtol=1e-6, atol=1e-7, msg=pname)
        for state, ref_state in zip(sd["chain_generators"], ref_sd["chain_generators"], strict=True):
            assert torch.equal(state, ref_state)
        assert float(logs["mcmc_accept"]) == pytest.approx(float(ref_logs["mcmc_accept"]), abs=1e-6)


def test_chain_groups_split_independent_chains_only():
    from mi_estimators.samplers import HMC

    agent = make_agent(config_class("mi")(**TINY, chain_parts=2, mcmc_per_chain=True), DO, DA)
    assert agent._chain_groups(5) == [slice(0, 2), slice(2, 5)]
    assert agent._chain_groups(1) == [slice(0, 1)]
    # the official adaptation (one step size from the mean acceptance of all chains) couples them: one group
    official = make_agent(config_class("mi")(**TINY, chain_parts=2), DO, DA)
    assert official.partition.sampler.per_chain is False
    assert official._chain_groups(5) == [slice(0, 5)]
    assert official.cfg.hidden_init == "lecun"  # flax's default Dense init, as the official networks
    # an explicit option, or a sampler handed in as an object, is left as the user made it
    opts = {"per_chain": True}
    assert make_agent(config_class("mi")(**TINY, estimator_options=opts), DO, DA).partition.sampler.per_chain
    own = config_class("mi")(**TINY, estimator_options={"sampler": HMC(per_chain=True)})
    assert make_agent(own, DO, DA).partition.sampler.per_chain is True
    # a sampler that adapts one step size from all chains couples them: one group
    coupled = config_class("mi")(**TINY, chain_parts=2, estimator_options={"sampler": HMC(per_chain=False)})
    assert make_agent(coupled, DO, DA)._chain_groups(5) == [slice(0, 5)]
    with pytest.raises(ValueError, match="chain_parts must be >= 1"):
        config_class("mi")(**TINY, chain_parts=0)


def test_member_helper_takes_offers_while_serving_and_keeps_the_order():
    helper = MemberHelper()
    assert helper.run(lambda: 1, [lambda: 2, lambda: 3]) == [1, 2, 3]  # nobody serving: all run here
    server = threading.Thread(target=helper.serve)
    server.start()
    while not helper._serving:
        time.sleep(0.001)
    me, ran_by = threading.get_ident(), []

    def slow_own():
        time.sleep(0.02)  # long enough for the serving thread to claim the offer
        return "own"

    for _ in range(3):
        out = helper.run(slow_own, [lambda: ran_by.append(threading.get_ident()) or "a", lambda: "b"])
        assert out == ["own", "a", "b"]
    assert ran_by and all(t != me for t in ran_by)

    def broken():
        raise ValueError("member broke")

    with pytest.raises(ValueError, match="member broke"):
        helper.run(slow_own, [broken])
    helper.close()
    server.join(timeout=5)
    assert not server.is_alive()
    assert helper.run(lambda: 1, [lambda: 2]) == [1, 2]  # closed: runs here


def test_member_helper_changes_no_number(monkeypatch):
    """The main thread serving the chain's member pieces gives bitwise the numbers of the chain running alone."""
    import rl.agents.mi as mi_module

    states = []
    for helped in (True, False):
        if not helped:
            monkeypatch.setattr(mi_module, "MemberHelper", lambda: None)
        cfg = config_class("mi")(**TINY, n_negatives=4, estimator_options={"n_samples": 20, "burn_in": 2})
        agent = make_agent(cfg, DO, DA)
        old = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            for step in range(3):
                agent.update(tiny_batch(step))
        finally:
            torch.set_num_threads(old)
        states.append(agent.state_dict())
    for name, module in states[0]["modules"].items():
        for pname, v in module.items():
            assert torch.equal(states[1]["modules"][name][pname], v), pname


def test_chain_failure_in_the_worker_surfaces_and_frees_the_threads(monkeypatch):
    cfg = config_class("mi")(**TINY, n_negatives=4, estimator_options={"n_samples": 3})
    agent = make_agent(cfg, DO, DA)

    def broken(*args, **kwargs):
        raise RuntimeError("chain broke")

    monkeypatch.setattr(agent, "_chain", broken)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="chain broke"):
            agent.update(tiny_batch())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="unknown estimator 'nope'.*misa"):
        make_agent(config_class("mi")(**TINY, estimator="nope"), DO, DA)
    with pytest.raises(ValueError, match="unknown algo 'sac2'"):
        config_class("sac2")


# --- baselines ----------------------------------------------------------------------------------------------
def test_cql_losses_by_hand():
    n = 2
    cfg = config_class("cql")(**TINY, n_actions=n, normalize_observations=False, normalize_rewards=False)
    agent = make_agent(cfg, DO, DA)
    batch = agent.prepare(tiny_batch())
    g = gen_copy(agent)
    objectives, _ = agent.losses(batch)
    s, a, r, s2, d = (batch[k] for k in ("observations", "actions", "rewards", "next_observations", "dones"))
    pol, critic, targ = agent.policy, agent.critic, agent.critic_target
    dist, dist2 = pol(s), pol(s2)
    eps_new = torch.randn(B, 1, DA, generator=g)
    eps_next = torch.randn(B, 1, DA, generator=g)
    uni = torch.rand(B, n, DA, generator=g) * 2 - 1
    eps_cur = torch.randn(B, n, DA, generator=g)
    eps_nxt = torch.randn(B, n, DA, generator=g)
    total = torch.zeros(())
    for e in range(2):
        for i in range(B):
            with torch.no_grad():
                a2 = squash(dist2.mean[i], dist2.log_std[i], eps_next[i, 0])
                y = r[i] + 0.99 * (1 - d[i]) * min(q_ref(targ, s2[i], a2, k) for k in range(2))
                cand, logw = [], []
                for j in range(n):
                    cand.append(uni[i, j])
                    logw.append(torch.tensor(DA * math.log(0.5)))
                for j in range(n):
                    u = dist2.mean[i] + dist2.log_std[i].exp() * eps_nxt[i, j]
                    cand.append(torch.tanh(u))
                    logw.append(
                        logp_ref(dist2.mean[i], dist2.log_std[i], torch.tanh(u).clamp(-1 + 1e-7, 1 - 1e-7))
                    )
                for j in range(n):
                    u = dist.mean[i] + dist.log_std[i].exp() * eps_cur[i, j]
                    cand.append(torch.tanh(u))
                    logw.append(
                        logp_ref(dist.mean[i], dist.log_std[i], torch.tanh(u).clamp(-1 + 1e-7, 1 - 1e-7))
                    )
            q_d = q_ref(critic, s[i], a[i], e)
            lse = torch.logsumexp(torch.stack([q_ref(critic, s[i], c, e) - w for c, w in zip(cand, logw)]), 0)
            total = total + ((q_d - y) ** 2 + 10.0 * (lse - q_d)) / B
    torch.testing.assert_close(objectives["critic"], total, atol=2e-4, rtol=1e-4)
    actor = torch.zeros(())
    for i in range(B):
        a_new = squash(dist.mean[i], dist.log_std[i], eps_new[i, 0])
        q_new = min(q_ref(critic, s[i], a_new, k) for k in range(2))
        actor = actor + (logp_ref(dist.mean[i], dist.log_std[i], a_new) - q_new) / B
    torch.testing.assert_close(objectives["actor"], actor, atol=1e-4, rtol=1e-4)


def test_iql_losses_by_hand():
    cfg = config_class("iql")(**TINY, normalize_observations=False, normalize_rewards=False)
    agent = make_agent(cfg, DO, DA)
    batch = agent.prepare(tiny_batch())
    objectives, _ = agent.losses(batch)
    s, a, r, s2, d = (batch[k] for k in ("observations", "actions", "rewards", "next_observations", "dones"))
    v_net, critic, targ, pol = agent.value, agent.critic, agent.critic_target, agent.policy
    v_loss, q_loss, actor = torch.zeros(()), torch.zeros(()), torch.zeros(())
    for i in range(B):
        qt = min(q_ref(targ, s[i], a[i], k) for k in range(2)).detach()
        v = v_net(s[i : i + 1])[0, 0]
        diff = qt - v
        weight = 0.7 if diff.item() > 0 else 0.3
        v_loss = v_loss + weight * diff**2 / B
        y = r[i] + 0.99 * (1 - d[i]) * v_net(s2[i : i + 1])[0, 0].detach()
        for e in range(2):
            q_loss = q_loss + (q_ref(critic, s[i], a[i], e) - y) ** 2 / B
        w = min(math.exp(3.0 * diff.item()), 100.0)
        dist = pol(s[i : i + 1])
        actor = actor - w * logp_ref(dist.mean[0], dist.log_std[0], a[i]) / B
    torch.testing.assert_close(objectives["value"], v_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(objectives["critic"], q_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(objectives["actor"], actor, atol=1e-4, rtol=1e-4)


def test_td3bc_losses_by_hand():
    cfg = config_class("td3bc")(**TINY, normalize_observations=False)
    agent = make_agent(cfg, DO, DA)
    batch = agent.prepare(tiny_batch())
    g = gen_copy(agent)
    crit, _ = agent.critic_losses(batch)
    act_obj, _ = agent.actor_losses(batch)
    s, a, r, s2, d = (batch[k] for k in ("observations", "actions", "rewards", "next_observations", "dones"))
    noise = (torch.randn(B, DA, generator=g) * 0.2).clamp(-0.5, 0.5)
    q_loss, qs, bc = torch.zeros(()), [], torch.zeros(())
    for i in range(B):
        with torch.no_grad():
            a2 = (torch.tanh(agent.policy_target(s2[i : i + 1]).mean[0]) + noise[i]).clamp(-1, 1)
            y = r[i] + 0.99 * (1 - d[i]) * min(q_ref(agent.critic_target, s2[i], a2, k) for k in range(2))
        for e in range(2):
            q_loss = q_loss + (q_ref(agent.critic, s[i], a[i], e) - y) ** 2 / B
        pi = torch.tanh(agent.policy(s[i : i + 1]).mean[0])
        qs.append(q_ref(agent.critic, s[i], pi, 0))
        bc = bc + ((pi - a[i]) ** 2).sum() / (B * DA)
    q1 = torch.stack(qs)
    actor = -(2.5 / q1.abs().mean().detach()) * q1.mean() + bc
    torch.testing.assert_close(crit["critic"], q_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(act_obj["actor"], actor, atol=1e-5, rtol=1e-5)
    # policy delay: the actor steps on every second update only
    p0 = [p.detach().clone() for p in agent.policy.parameters()]
    agent.update(tiny_batch())
    assert all(torch.equal(x, y) for x, y in zip(p0, agent.policy.parameters()))
    agent.update(tiny_batch())
    assert any(not torch.equal(x, y) for x, y in zip(p0, agent.policy.parameters()))


@pytest.mark.parametrize("kind", ["mse", "nll"])
def test_bc_loss_by_hand(kind):
    cfg = config_class("bc")(**TINY, normalize_observations=False, bc_loss=kind)
    agent = make_agent(cfg, DO, DA)
    batch = agent.prepare(tiny_batch())
    objectives, _ = agent.losses(batch)
    ref = torch.zeros(())
    for i in range(B):
        dist = agent.policy(batch["observations"][i : i + 1])
        if kind == "mse":
            ref = ref + ((torch.tanh(dist.mean[0]) - batch["actions"][i]) ** 2).sum() / B
        else:
            ref = ref - logp_ref(dist.mean[0], dist.log_std[0], batch["actions"][i]) / B
    torch.testing.assert_close(objectives["actor"], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("algo", ["mi", "cql", "iql", "td3bc", "bc"])
def test_update_moves_only_owned_parameters_and_targets_follow(algo):
    cfg = config_class(algo)(
        **TINY, **({"n_negatives": 4, "estimator_options": {"n_samples": 3}} if algo == "mi" else {})
    )
    agent = make_agent(cfg, DO, DA)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in agent.modules.items()}
    for _ in range(2):
        logs = agent.update(tiny_batch())
    assert all(bool(torch.isfinite(v)) for v in logs.values())
    for k, m in agent.modules.items():
        moved = any(not torch.equal(b, p) for b, p in zip(before[k], m.parameters()))
        if k != "estimator":
            assert moved, f"{algo}: {k} did not move"


@pytest.mark.slow
def test_compiled_chain_gradient_matches_eager():
    torch.manual_seed(0)
    from rl.networks import QEnsemble, TanhGaussianPolicy

    critic = QEnsemble(5, 3, (32, 32), 2, "elu")
    law = TanhGaussianPolicy(5, 3, (16,), log_std_mode="misa")(torch.randn(8, 5))
    obs = torch.randn(8, 5)
    a = torch.rand(8, 3) * 1.9 - 0.95
    eager = TiltedDensity(law, critic, obs).value_and_grad(a)
    comp = TiltedDensity(law, critic, obs, compile=True).value_and_grad(a)
    for x, y in zip(eager, comp):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
