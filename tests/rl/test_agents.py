"""Agents: each algorithm's losses on a hand-made tiny batch against straightforward reference computations
(explicit per-member, per-sample loops), gradient routing, the MISA chain on the fast and plain paths, and every
estimator. (The fast paths themselves, against autograd: tests/rl/test_fast.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import mi_estimators as mie
from mi_estimators.samplers import SampleResult
from rl import _fast
from rl.agents import config_class, make_agent, train_config

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
    cfg = train_config("mi", **TINY, n_negatives=n_neg)
    agent = make_agent(cfg, DO, DA)
    raw = tiny_batch()
    batch = agent.prepare(raw)
    assert batch["actions"].abs().max() == pytest.approx(0.999)
    # The MCMC samples are fixed here (the chain itself is tested in mi_estimators and below).
    u_mc = torch.randn(B, n_mc, DA, generator=torch.Generator().manual_seed(9))
    ones = torch.ones(B)
    monkeypatch.setattr(
        agent, "_chain", lambda d, o, a: SampleResult(torch.tanh(u_mc), u_mc, ones, ones, ones, None, 0)
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
    cfg = train_config("mi", **TINY, n_negatives=3, bc_weight=0.0)
    agent = make_agent(cfg, DO, DA)
    batch = agent.prepare(tiny_batch())
    u_mc = torch.randn(B, 4, DA, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(B)
    samples = SampleResult(torch.tanh(u_mc), u_mc, ones, ones, ones, None, 0)
    monkeypatch.setattr(agent, "_chain", lambda d, o, a: samples)
    _, logs = agent.losses(batch)
    dist = agent.policy(batch["observations"])
    neg = dist.sample(3, torch.Generator().manual_seed(0))
    q_neg = agent.critic(batch["observations"], neg)
    term = agent._policy_term(dist, batch["observations"], torch.zeros(2, B), q_neg.detach(), neg, samples)
    ref = (
        sum(
            logp_ref(dist.mean[i], dist.log_std[i], torch.tanh(u_mc[i, j]))
            for i in range(B)
            for j in range(4)
        )
        / 16
    )
    assert_grads_close(grads(term, agent.policy.parameters()), grads(ref, agent.policy.parameters()))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("space", ["constrained", "unconstrained"])
def test_misa_chain_runs_and_reports_acceptance(space, fast):
    opts = {"n_samples": 6, "space": space}
    cfg = train_config("mi", **TINY, n_negatives=4, fast=fast, estimator_options=opts)
    agent = make_agent(cfg, DO, DA)
    assert agent.partition.space == space
    logs = agent.update(tiny_batch())
    assert 0.0 <= float(logs["mcmc_accept"]) <= 1.0
    assert all(torch.isfinite(v) for v in logs.values())


def test_every_estimator_swaps_in():
    """`--estimator NAME` works for every registered lower bound (one tiny update each); club is refused by name."""
    for name in mie.available():
        opts = {"n_samples": 3} if name in ("misa",) else {}
        cfg = train_config("mi", **TINY, n_negatives=4, estimator=name, estimator_options=opts)
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
def test_overlapped_chain_gives_the_sequential_numbers(estimator, monkeypatch):
    """With 2 threads and `fast` the chain runs in a worker beside the critic's backward pass; the result must be
    that of the sequential update (the chain has its own generator; both sides run one thread, as the sequential
    run). `fast=False` (plain autograd, no worker) computes the same functions: equal up to float rounding."""
    opts = {"n_samples": 5, "burn_in": 2}
    if estimator == "misa-dv":
        opts["log_z"] = "mcmc"
    states = {}
    for threads, fast in ((1, True), (2, True), (2, False)):
        cfg = train_config(
            "mi", **TINY, n_negatives=4, estimator=estimator, estimator_options=opts, fast=fast
        )
        agent = make_agent(cfg, DO, DA)
        if threads == 1 or not fast:
            monkeypatch.setattr(_fast, "_executor", lambda: pytest.fail("the chain ran in a worker"))
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for step in range(3):
                logs = agent.update(tiny_batch(step))
            assert torch.get_num_threads() == threads  # the worker gave its thread back
        finally:
            torch.set_num_threads(old)
            monkeypatch.undo()
        states[(threads, fast)] = (agent.state_dict(), logs)
    ref_sd, ref_logs = states[(1, True)]
    for key, tol in (((2, True), 1e-6), ((2, False), 1e-4)):
        sd, logs = states[key]
        for name, module in ref_sd["modules"].items():
            for pname, v in module.items():
                torch.testing.assert_close(sd["modules"][name][pname], v, rtol=tol, atol=tol / 10, msg=pname)
        assert torch.equal(sd["chain_generator"], ref_sd["chain_generator"])
        assert float(logs["mcmc_accept"]) == pytest.approx(float(ref_logs["mcmc_accept"]), abs=tol)


def test_official_chain_defaults_fill_only_what_the_options_leave_open():
    from mi_estimators.partition import MCMCLogZ
    from mi_estimators.samplers import HMC

    def part(**opts):
        return make_agent(train_config("mi", **TINY, estimator_options=opts), DO, DA).partition

    official = part()  # HMC on the action, one step size for all chains
    assert official.space == "constrained" and official.sampler.per_chain is False
    assert make_agent(train_config("mi", **TINY), DO, DA).cfg.hidden_init == "lecun"  # flax's Dense init
    # an explicit option, or a sampler or partition function handed in as an object, is left as the user made it
    assert part(per_chain=True).sampler.per_chain is True
    assert part(space="unconstrained").space == "unconstrained"
    assert part(precondition=False).space == "unconstrained"
    assert part(sampler=HMC(per_chain=True)).sampler.per_chain is True
    own = MCMCLogZ(n_samples=3)
    assert part(log_z=own) is own and own.space == "unconstrained"
    # score-only estimators have no chain
    assert make_agent(train_config("mi", **TINY, estimator="nwj"), DO, DA).partition is None
    # pyro's kernels differentiate the density themselves: they keep the unconstrained chain
    pytest.importorskip("pyro")
    assert part(sampler="pyro-hmc").space == "unconstrained"


@pytest.mark.parametrize(
    ("key", "value", "now"),
    [
        ("mcmc_space", "unconstrained", "estimator_options.space"),
        ("mcmc_per_chain", True, "estimator_options.per_chain"),
        ("overlap_chain", False, "fast"),
        ("chain_parts", 2, "nothing"),
    ],
)
def test_retired_keys_read_at_their_old_default_and_name_their_new_place(key, value, now):
    from rl.config import ConfigError, from_dict

    cls = config_class("mi")
    old = {
        "mcmc_space": "action",
        "mcmc_per_chain": False,
        "compile": False,
        "chain_parts": 1,
        "overlap_chain": True,
    }
    assert from_dict(cls, {"n_negatives": 7, **old}) == cls(n_negatives=7)
    with pytest.raises(ConfigError, match=f"{key!r} was retired; its setting is now {now}"):
        from_dict(cls, {key: value})
    with pytest.raises(ConfigError, match="unknown key 'mcmc_space'"):
        from_dict(config_class("iql"), {"mcmc_space": "action"})


def test_chain_failure_in_the_worker_surfaces_and_frees_the_threads(monkeypatch):
    cfg = train_config("mi", **TINY, n_negatives=4, estimator_options={"n_samples": 3})
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
        make_agent(train_config("mi", **TINY, estimator="nope"), DO, DA)
    with pytest.raises(ValueError, match="unknown algo 'sac2'"):
        config_class("sac2")


# --- baselines ----------------------------------------------------------------------------------------------
def test_cql_losses_by_hand():
    n = 2
    cfg = train_config("cql", **TINY, n_actions=n, normalize_observations=False, normalize_rewards=False)
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
    cfg = train_config("iql", **TINY, normalize_observations=False, normalize_rewards=False)
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
    cfg = train_config("td3bc", **TINY, normalize_observations=False)
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
    cfg = train_config("bc", **TINY, normalize_observations=False, bc_loss=kind)
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
    cfg = train_config(
        algo, **TINY, **({"n_negatives": 4, "estimator_options": {"n_samples": 3}} if algo == "mi" else {})
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
