"""Tests of the shared RL networks: stacked Q ensemble and tanh-Gaussian policy."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from mi_estimators.proposals import TanhDiagGaussian
from rl import _fast
from rl._activations import elu
from rl.networks import EnsembleLinear, QEnsemble, TanhGaussianPolicy


def _reference_mlp(q: QEnsemble, e: int) -> nn.Sequential:
    """Member `e` of the ensemble rebuilt as a plain nn.Linear MLP with the same weights."""
    act = nn.ReLU if q.activation == "relu" else nn.ELU
    first = nn.Linear(q.obs_dim + q.act_dim, q.hidden[0])
    with torch.no_grad():
        first.weight.copy_(torch.cat([q.w_obs[e], q.w_act[e]], 0).T)
        first.bias.copy_(q.b0[e, 0])
    layers: list[nn.Module] = [first]
    for layer in q.layers:
        lin = nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            lin.weight.copy_(layer.weight[e].T)
            lin.bias.copy_(layer.bias[e, 0])
        layers += [act(), lin]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_qensemble_members_equal_separate_mlps(activation: str) -> None:
    torch.manual_seed(0)
    q = QEnsemble(5, 3, hidden=(16, 8), ensemble_size=3, activation=activation)
    obs, act = torch.randn(7, 5), torch.rand(7, 3) * 2 - 1
    out = q(obs, act)
    assert out.shape == (3, 7)
    for e in range(3):
        ref = _reference_mlp(q, e)(torch.cat([obs, act], -1)).squeeze(-1)
        torch.testing.assert_close(out[e], ref, rtol=1e-5, atol=1e-5)
    # members are initialised independently, so they differ
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(q.layers[0].weight[0], q.layers[0].weight[1])


def test_qensemble_k_actions_equal_loop_over_actions() -> None:
    torch.manual_seed(1)
    q = QEnsemble(4, 2, hidden=(32, 32), ensemble_size=2, activation="elu")
    obs, acts = torch.randn(6, 4), torch.rand(6, 5, 2) * 2 - 1
    out = q(obs, acts)
    assert out.shape == (2, 6, 5)
    loop = torch.stack([q(obs, acts[:, k]) for k in range(5)], dim=-1)
    torch.testing.assert_close(out, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(QEnsemble.min(out), loop.min(0).values)
    # gradients flow to the actions in the K-path as in the loop
    a1 = acts.clone().requires_grad_(True)
    a2 = acts.clone().requires_grad_(True)
    q(obs, a1).square().sum().backward()
    g1 = {n: p.grad.clone() for n, p in q.named_parameters()}
    q.zero_grad()
    torch.stack([q(obs, a2[:, k]) for k in range(5)], -1).square().sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-5, atol=1e-6)
    for n, p in q.named_parameters():
        torch.testing.assert_close(g1[n], p.grad, rtol=1e-5, atol=1e-5, msg=f"grad of {n}")


def test_qensemble_members_subset() -> None:
    torch.manual_seed(4)
    q = QEnsemble(5, 2, hidden=(8, 8), ensemble_size=3)
    obs, act, acts = torch.randn(4, 5), torch.rand(4, 2), torch.rand(4, 6, 2)
    assert torch.equal(q(obs, act, members=[2, 0]), q(obs, act)[[2, 0]])
    assert torch.equal(q(obs, acts, members=[1]), q(obs, acts)[[1]])
    with pytest.raises(ValueError, match="members must index the 3 ensemble members"):
        q(obs, act, members=[3])


def test_qensemble_shape_errors_name_the_argument() -> None:
    q = QEnsemble(4, 2, hidden=(8,))
    with pytest.raises(ValueError, match="obs must have shape"):
        q(torch.randn(3, 5), torch.randn(3, 2))
    with pytest.raises(ValueError, match="act must have shape"):
        q(torch.randn(3, 4), torch.randn(2, 2))
    with pytest.raises(ValueError, match="activation"):
        QEnsemble(4, 2, activation="swishy")


def _q_and_grads(q: QEnsemble, obs: torch.Tensor, act: torch.Tensor) -> list[torch.Tensor]:
    """Q on K actions per state, and the gradients of a loss mixing a log-sum-exp and a square (so that
    every row gets its own gradient) wrt every parameter and both inputs."""
    for t in [*q.parameters(), obs, act]:
        t.grad = None
    v = q(obs, act)
    (v.logsumexp(-1).sum() + 0.1 * (v**2).mean()).backward()
    grads = [p.grad for p in _fast._params(q)] + [obs.grad, act.grad]
    return [v.detach()] + [g if g is None else g.clone() for g in grads]


@pytest.mark.parametrize(
    ("activation", "hidden", "k", "chunk"),
    [("elu", (16, 8), 6, 20), ("relu", (16, 8, 4), 5, 7), ("elu", (12,), 3, 1), ("relu", (8, 8), 4, 10**6)],
)
def test_wide_pass_matches_autograd(monkeypatch, activation, hidden, k, chunk) -> None:
    """The chunked hand-written pass gives autograd's values and gradients (chunks of whole states, the last one
    short; a chunk smaller than K rows still holds one state; one chunk for everything)."""
    torch.manual_seed(1)
    q = QEnsemble(5, 3, hidden=hidden, ensemble_size=3, activation=activation, output_init_scale=0.5)
    obs = torch.randn(9, 5, requires_grad=True)
    act = (torch.rand(9, k, 3) * 2 - 1).requires_grad_()
    calls = []
    real = _fast._WideQ.apply
    monkeypatch.setattr(_fast._WideQ, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_fast, "WIDE_MIN_ROWS", 1)
    monkeypatch.setattr(_fast, "WIDE_CHUNK_ROWS", chunk)
    ref = _q_and_grads(q, obs, act)  # fast=False (the default): plain autograd
    assert not calls
    q.fast = True
    got = _q_and_grads(q, obs, act)
    assert calls, "the wide pass did not run"
    names = ["q"] + [f"grad of parameter {i}" for i in range(len(got) - 3)] + ["grad of obs", "grad of act"]
    assert len(names) == len(ref) == len(got)
    for name, r, g in zip(names, ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6, msg=name)


def test_wide_pass_frozen_critic_gives_action_gradients_only(monkeypatch) -> None:
    """With the critic frozen (the actor's view), only the actions get a gradient, equal to autograd's."""
    torch.manual_seed(2)
    q = QEnsemble(4, 2, hidden=(8, 8), ensemble_size=2, activation="elu").requires_grad_(False)
    obs, act = torch.randn(6, 4), (torch.rand(6, 7, 2) * 2 - 1).requires_grad_()
    grads = []
    monkeypatch.setattr(_fast, "WIDE_MIN_ROWS", 1)
    for fast in (False, True):
        q.fast = fast
        act.grad = None
        q.q_min(obs, act).sum().backward()
        grads.append(act.grad.clone())
    assert all(p.grad is None for p in q.parameters())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_wide_pass_reuses_buffers_only_after_backward(monkeypatch) -> None:
    """Two passes pending at once keep their own activations; spent buffers are reused; a second backward
    through the same pass (retain_graph) is refused by name rather than reading reused memory."""
    torch.manual_seed(3)
    q = QEnsemble(4, 2, hidden=(8, 8), ensemble_size=2, activation="relu")
    obs = torch.randn(5, 4)
    acts = [torch.rand(5, 6, 2) * 2 - 1 for _ in range(3)]
    monkeypatch.setattr(_fast, "WIDE_MIN_ROWS", 1)

    def grads(fast: bool) -> list[torch.Tensor]:
        q.fast = fast
        q.zero_grad()
        pending = [q(obs, a).square().sum() for a in acts[:2]]  # both forward passes before any backward
        sum(pending).backward()
        q(obs, acts[2]).sum().backward()  # reuses the spent buffers
        return [p.grad.clone() for p in q.parameters()]

    for r, g in zip(grads(False), grads(True)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # the two pending passes held 2 x 4 buffers (2 members x 2 hidden layers); the third took 4 of them back
    assert sum(len(v) for v in q._scratch.values()) == 8
    assert copy.deepcopy(q)._scratch == {}  # scratch memory is not copied (nor pickled)
    out = q(obs, acts[0]).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        out.backward()


def test_wide_pass_is_first_order_only(monkeypatch) -> None:
    monkeypatch.setattr(_fast, "WIDE_MIN_ROWS", 1)
    q = QEnsemble(4, 2, hidden=(8,), ensemble_size=2, fast=True)
    act = (torch.rand(3, 4, 2) * 2 - 1).requires_grad_()
    (g,) = torch.autograd.grad(q(torch.randn(3, 4), act).sum(), act, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_fast_elu_matches_f_elu_with_gradient() -> None:
    z = torch.linspace(-30.0, 30.0, 2001, dtype=torch.float64).to(torch.float32).requires_grad_()
    z_ref = z.detach().clone().requires_grad_()
    elu(z).sum().backward()
    nn.functional.elu(z_ref).sum().backward()
    torch.testing.assert_close(elu(z.detach()), nn.functional.elu(z_ref.detach()), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-6, atol=1e-7)


def test_ensemble_linear_is_nn_linear_per_member() -> None:
    torch.manual_seed(2)
    layer = EnsembleLinear(6, 4, 3)
    x = torch.randn(3, 5, 6)
    y = layer(x)
    bound = 1 / math.sqrt(6)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    for e in range(3):
        torch.testing.assert_close(y[e], x[e] @ layer.weight[e] + layer.bias[e, 0])
    with pytest.raises(ValueError, match="EnsembleLinear expects"):
        layer(torch.randn(2, 5, 6))


def test_output_init_scale_is_small_variance_scaling() -> None:
    torch.manual_seed(3)
    q = QEnsemble(10, 3, hidden=(64, 64), output_init_scale=1e-2)
    last = q.layers[-1]
    limit = math.sqrt(3 * 1e-2 / 64)
    assert last.weight.abs().max() <= limit and last.weight.abs().max() > 0.5 * limit
    assert torch.all(last.bias == 0)
    pi = TanhGaussianPolicy(10, 3, hidden=(64, 64), output_init_scale=1e-2)
    assert pi.net[-1].weight.abs().max() <= limit


def _reference_log_prob(mean: torch.Tensor, log_std: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Change of variables in float64: log N(atanh a; mean, std) - sum log(1 - a^2)."""
    mean, log_std, a = mean.double(), log_std.double(), a.double()
    u = torch.atanh(a)
    std = log_std.exp()
    log_n = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return log_n - torch.log1p(-(a**2)).sum(-1)


@pytest.mark.parametrize("mode", ["state", "misa"])
def test_policy_log_prob_matches_change_of_variables(mode: str) -> None:
    torch.manual_seed(4)
    pi = TanhGaussianPolicy(5, 3, hidden=(32, 32), log_std_mode=mode)
    obs = torch.randn(8, 5)
    dist = pi(obs)
    assert isinstance(dist, TanhDiagGaussian)
    g = torch.Generator().manual_seed(0)
    a = pi.sample(obs, 4, g)
    assert a.shape == (8, 4, 3) and a.abs().max() < 1
    ref = _reference_log_prob(dist.mean.unsqueeze(1), dist.log_std.unsqueeze(1), a)
    torch.testing.assert_close(pi.log_prob(obs, a).double(), ref, rtol=1e-4, atol=1e-3)
    ref1 = _reference_log_prob(dist.mean, dist.log_std, a[:, 0])
    torch.testing.assert_close(pi.log_prob(obs, a[:, 0]).double(), ref1, rtol=1e-4, atol=1e-3)
    # the SAC path (log-prob from the pre-squash draw) agrees with it
    acts, logp = pi.sample_with_log_prob(obs, 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(acts.detach(), a)
    torch.testing.assert_close(logp.detach().double(), ref, rtol=1e-4, atol=1e-3)


def test_policy_misa_log_std_head() -> None:
    torch.manual_seed(5)
    pi = TanhGaussianPolicy(4, 2, hidden=(16,), log_std_mode="misa", log_std_bounds=(-5, 2))
    obs = torch.randn(3, 4)
    raw = pi.net(obs).chunk(2, -1)[1]
    torch.testing.assert_close(pi(obs).log_std, (raw - 1.0).clamp(-5, 2))
    with torch.no_grad():
        pi.log_std_multiplier.fill_(100.0)
    ls = pi(obs).log_std
    assert ls.min() >= -5 and ls.max() <= 2
    assert {n for n, _ in pi.named_parameters()} >= {"log_std_multiplier", "log_std_offset"}


def test_policy_sampling_is_seeded_and_rsample_has_gradients() -> None:
    torch.manual_seed(6)
    pi = TanhGaussianPolicy(4, 2, hidden=(16, 16))
    obs = torch.randn(5, 4)
    s1 = pi.sample(obs, 3, torch.Generator().manual_seed(7))
    s2 = pi.sample(obs, 3, torch.Generator().manual_seed(7))
    s3 = pi.sample(obs, 3, torch.Generator().manual_seed(8))
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    r = pi.rsample(obs, 3, torch.Generator().manual_seed(7))
    assert r.shape == (5, 3, 2) and r.requires_grad
    r.sum().backward()
    assert pi.net[0].weight.grad is not None


def test_policy_act_numpy() -> None:
    torch.manual_seed(7)
    pi = TanhGaussianPolicy(4, 2, hidden=(16,))
    o = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    a = pi.act(o)
    assert a.shape == (3, 2) and a.dtype == np.float32
    np.testing.assert_allclose(a, torch.tanh(pi(torch.from_numpy(o)).mean).detach().numpy(), rtol=1e-6)
    assert pi.act(o[0]).shape == (2,)
    st = pi.act(o, deterministic=False, generator=torch.Generator().manual_seed(0))
    assert st.shape == (3, 2) and np.all(np.abs(st) < 1) and not np.allclose(st, a)
    with pytest.raises(ValueError, match="obs must have shape"):
        pi(torch.randn(3, 5))


def test_lecun_hidden_init_is_flax_default_dense_init() -> None:
    """flax's default Dense init (the official MISA networks): truncated normal at +-2 std with variance 1/fan_in,
    zero biases; the last layer keeps its variance scaling."""
    torch.manual_seed(0)
    q = QEnsemble(11, 3, (256, 256), 2, activation="elu", output_init_scale=1e-2, hidden_init="lecun")
    pi = TanhGaussianPolicy(
        11, 3, (256, 256), log_std_mode="misa", output_init_scale=1e-2, hidden_init="lecun"
    )
    first = torch.cat([q.w_obs, q.w_act], 1)  # [E, 14, 256], fan-in 14
    hidden = [(first, q.b0, 14), (q.layers[0].weight, q.layers[0].bias, 256)]
    linears = [m for m in pi.net if isinstance(m, nn.Linear)]
    hidden += [(linears[0].weight, linears[0].bias, 11), (linears[1].weight, linears[1].bias, 256)]
    for w, b, fan_in in hidden:
        w, b, std = w.detach(), b.detach(), 1.0 / math.sqrt(fan_in)
        assert float(w.var()) == pytest.approx(std**2, rel=0.1)
        assert float(w.abs().max()) <= 2.0 * std / 0.87962566103423978 + 1e-6  # truncated at 2 sigma
        assert float(w.abs().max()) > 1.5 * std  # and not a uniform of the same variance (bound sqrt(3) std)
        assert torch.count_nonzero(b) == 0
    last = q.layers[-1].weight.detach()
    assert float(last.abs().max()) <= math.sqrt(3 * 1e-2 / 256) + 1e-7
    # the default is unchanged: nn.Linear's uniform init with non-zero biases
    torch.manual_seed(0)
    q_torch = QEnsemble(11, 3, (256, 256), 2)
    assert float(q_torch.w_obs.detach().abs().max()) <= 1 / math.sqrt(14)
    assert torch.count_nonzero(q_torch.b0) > 0
    with pytest.raises(ValueError, match="hidden_init must be one of"):
        QEnsemble(11, 3, (256,), 2, hidden_init="xavier")
    with pytest.raises(ValueError, match="hidden_init must be one of"):
        TanhGaussianPolicy(11, 3, (256,), hidden_init="xavier")
