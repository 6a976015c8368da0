"""The opt-in fast paths of `rl._fast` against plain autograd: the critic's input gradient (split and masked,
eager and compiled), the member helper, and the chain run beside the caller. The wide pass: test_networks.py."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from rl import _fast
from rl.networks import QEnsemble, TanhGaussianPolicy


def _critic_and_actions(
    activation: str, chains: int, fast: bool
) -> tuple[QEnsemble, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    critic = QEnsemble(5, 3, (16, 16), 2, activation, fast=fast)
    obs = torch.randn(6, 5)
    a = torch.rand(6, chains, 3) * 1.98 - 0.99
    return critic, obs, a.squeeze(1) if chains == 1 else a


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("activation", ["elu", "relu"])
@pytest.mark.parametrize("chains", [1, 3])
def test_input_gradient_matches_autograd(activation, chains, split):
    critic, obs, a = _critic_and_actions(activation, chains, fast=True)
    grad = critic.input_gradient(obs)
    assert isinstance(grad, _fast.InputGradient)
    grad.split = split  # member-by-member with grouped backward (CPU default) or the masked batched form
    q, g = grad(a)
    x = a.clone().requires_grad_(True)
    ref = critic.q_min(obs, x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(q, ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    assert all(p.grad is None for p in critic.parameters())  # the weights are read, never differentiated
    # the plain path (fast=False) is autograd itself
    critic.fast = False
    q_plain, g_plain = critic.input_gradient(obs)(a)
    torch.testing.assert_close(q_plain, ref.detach())
    torch.testing.assert_close(g_plain, g_ref)


def test_input_gradient_of_other_activations_is_autograd():
    critic, obs, a = _critic_and_actions("tanh", 1, fast=True)
    grad = critic.input_gradient(obs)
    assert not isinstance(grad, _fast.InputGradient)
    x = a.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(critic.q_min(obs, x).sum(), x)
    torch.testing.assert_close(grad(a)[1], g_ref)
    with pytest.raises(ValueError, match="ELU and ReLU critics; got 'tanh'"):
        _fast.InputGradient(critic, obs)


def test_law_and_critic_gradient_in_action_coordinates():
    """`TanhDiagGaussian.log_prob_and_grad` + the critic's input gradient is the density the official chain runs
    on (the action itself); outside the box it is non-finite, so the sampler rejects the proposal."""
    critic, obs, a = _critic_and_actions("elu", 3, fast=True)
    law = TanhGaussianPolicy(5, 3, (16,), log_std_mode="misa")(obs)
    log_q, g_q = law.log_prob_and_grad(a)
    x = a.clone().requires_grad_(True)
    ref = law.log_prob(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(log_q, ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_q, g_ref, atol=1e-4, rtol=1e-4)
    assert not torch.isfinite(law.log_prob_and_grad(torch.full_like(a, 1.5))[0]).any()


def test_member_helper_takes_offers_while_serving_and_keeps_the_order():
    helper = _fast.MemberHelper()
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


def test_beside_serves_the_workers_members_and_changes_no_number():
    """A chain's input gradient run beside the caller (which serves its member pieces) gives bitwise the numbers
    of the same evaluations run alone, and torch gets its threads back."""
    critic, obs, a = _critic_and_actions("elu", 3, fast=True)
    grad = critic.input_gradient(obs)

    def chain() -> list[torch.Tensor]:
        x, out = a, []
        for _ in range(20):
            q, g = grad(x)
            x = (x + 1e-3 * g).clamp(-0.99, 0.99)
            out.append(q)
        return out

    alone = _fast.beside(chain, overlap=False)
    assert not alone.concurrent
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        job = _fast.beside(chain, overlap=True)
        assert job.concurrent and torch.get_num_threads() == 1
        helped = job.result()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    for x, y in zip(alone.result(), helped, strict=True):
        assert torch.equal(x, y)


def test_beside_surfaces_a_failure_and_frees_the_threads():
    def broken():
        raise RuntimeError("chain broke")

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        job = _fast.beside(broken, overlap=True)
        with pytest.raises(RuntimeError, match="chain broke"):
            job.result()
        assert torch.get_num_threads() == 2
        job.close()  # idempotent
    finally:
        torch.set_num_threads(old)


@pytest.mark.slow
def test_compiled_input_gradient_matches_eager():
    critic, obs, a = _critic_and_actions("elu", 1, fast=True)
    eager = _fast.InputGradient(critic, obs)(a)
    compiled = _fast.InputGradient(critic, obs, compile=True)(a)
    for x, y in zip(eager, compiled):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
