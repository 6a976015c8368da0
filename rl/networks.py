"""Networks shared by every agent of the RL layer: a stacked Q ensemble and a tanh-Gaussian policy.

Shapes follow DESIGN.md ("Speed by design"):

* `EnsembleLinear` holds `E` linear layers as one stacked weight `[E, in, out]` and runs them with one
  `torch.baddbmm`, so a twin Q (or an ensemble of any size) costs one call per layer.
* `QEnsemble(obs [B, do], act [B, K, da]) -> [E, B, K]` computes the state part of the first layer `W_s s` once per
  state and broadcasts it over the `K` actions; the `K` actions are one `[B*K, .]` batch through the rest. It keeps
  the stacked `[E, in, out]` weights but runs each member as 2-D matmuls (faster backward on the CPU). With many
  actions per state on the CPU (MISA's 50, CQL's 30) and a gradient to compute it takes the *wide pass*
  (`_WideQ`): forward and backward written by hand and run a cache-sized chunk of states at a time.
* ELU is `elu`: `exp2`-based, with a backward from its output (`F.elu`'s recomputes `exp`).
* `TanhGaussianPolicy(obs) -> TanhDiagGaussian` (from `mi_estimators.proposals`): the mean and scale at a state are
  computed once and reused for all samples; it also serves as a conditional proposal (`sample`, `rsample`,
  `log_prob`) for the MI estimators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from mi_estimators.proposals import TanhDiagGaussian

__all__ = [
    "EnsembleLinear",
    "QEnsemble",
    "TanhGaussianPolicy",
    "elu",
    "elu_and_derivative",
    "mlp",
    "variance_scaling_",
]

_LOG2_E = 1.0 / math.log(2.0)


def elu_and_derivative(z: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`(elu(z), elu'(z))`, elementwise, same shape as `z` (`elu(z)` written into `out` when given).

    `d = exp(min(z, 0))` is `elu'(z)`, and `elu(z) = max(z, d - 1)` because `e^z - 1 >= z`. Measured on this CPU
    (AVX2, fp32): `exp2` of a pre-scaled argument is ~2x faster than `exp`, and this form beats `F.elu` (which
    computes `expm1` on every element) by 1.1-2x from 128 to 12.8k rows of 256; `torch.where` is slower still."""
    d = torch.mul(z, _LOG2_E).clamp_max_(0.0).exp2_()
    return torch.add(d, -1.0, out=out).clamp_min_(z), d


class _ELU(torch.autograd.Function):
    """ELU whose backward reads its output (`elu'(z) = h + 1` where `h <= 0`): `F.elu`'s backward recomputes
    `exp` from the input, which cost as much as the forward (8.5 ms per 12.8k x 256 tensor here, against 1.5 ms),
    and the output is kept anyway as the next layer's input."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        h = elu_and_derivative(z)[0]
        ctx.save_for_backward(h)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        return _activation_grad(grad, h, "elu")


def elu(z: Tensor) -> Tensor:
    """`F.elu(z)` (alpha 1) with the faster forward and backward of `elu_and_derivative` (first-order gradients
    only: a second derivative raises)."""
    if torch.is_grad_enabled() and z.requires_grad:
        return _ELU.apply(z)
    return elu_and_derivative(z)[0]


_ACTIVATIONS = {"relu": F.relu, "elu": elu, "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu}
_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    hidden = tuple(int(h) for h in hidden)
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive layer widths; got {hidden!r}")
    return hidden


def _linear_init_(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)


#: Hidden-layer initialisations: "torch" (nn.Linear's default) or "lecun" (flax's default Dense init, which the
#: official MISA and CQL-JAX code use: weights of variance 1/fan_in, zero biases).
HIDDEN_INITS = ("torch", "lecun")


def lecun_normal_(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """Flax's default Dense init: `lecun_normal` = JAX `variance_scaling(1, "fan_in", "truncated_normal")` (a normal
    truncated at +-2 standard deviations, rescaled so that the variance is 1/fan_in), zeros for the bias."""
    # 0.8796... is the standard deviation of a unit normal truncated to [-2, 2] (JAX's constant).
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    with torch.no_grad():
        nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)
        if bias is not None:
            bias.zero_()


def init_hidden_(weight: Tensor, bias: Tensor | None, fan_in: int, scheme: str) -> None:
    """Initialise a hidden layer by `scheme` (one of `HIDDEN_INITS`)."""
    if scheme == "torch":
        _linear_init_(weight, bias, fan_in)
    elif scheme == "lecun":
        lecun_normal_(weight, bias, fan_in)
    else:
        raise ValueError(f"hidden_init must be one of {HIDDEN_INITS}; got {scheme!r}")


def variance_scaling_(weight: Tensor, bias: Tensor | None, fan_in: int, scale: float) -> None:
    """JAX `variance_scaling(scale, "fan_in", "uniform")` for the weight, zeros for the bias (as the official MISA)."""
    if scale <= 0:
        raise ValueError(f"output_init_scale must be > 0; got {scale}")
    limit = math.sqrt(3.0 * scale / fan_in)
    with torch.no_grad():
        weight.uniform_(-limit, limit)
        if bias is not None:
            bias.zero_()


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    output_init_scale: float | None = None,
    hidden_init: str = "torch",
) -> nn.Sequential:
    """Plain MLP `sizes[0] -> ... -> sizes[-1]` with `activation` between layers and none at the end; layers
    initialised by `hidden_init` (`HIDDEN_INITS`), the last one by `output_init_scale` when given."""
    act = _ACTIVATION_MODULES.get(activation)
    if act is None:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATION_MODULES)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if hidden_init != "torch":
            init_hidden_(layers[-1].weight, layers[-1].bias, a, hidden_init)
        if i < len(sizes) - 2:
            layers.append(act())
    if output_init_scale is not None:
        last = layers[-1]
        assert isinstance(last, nn.Linear)
        variance_scaling_(last.weight, last.bias, last.in_features, output_init_scale)
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """`E` independent linear layers stored as one weight `[E, in, out]` and bias `[E, 1, out]`.

    `forward(x [E, B, in]) -> [E, B, out]` is one `torch.baddbmm`. Each member is initialised like `nn.Linear`
    (`U(-1/sqrt(in), 1/sqrt(in))`); member `e` computes `x[e] @ weight[e] + bias[e]`, i.e. `nn.Linear` with
    `linear.weight = weight[e].T`.
    """

    def __init__(self, in_features: int, out_features: int, ensemble_size: int) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1 or ensemble_size < 1:
            raise ValueError(
                "in_features, out_features and ensemble_size must be >= 1; got "
                f"{in_features}, {out_features}, {ensemble_size}"
            )
        self.in_features, self.out_features, self.ensemble_size = in_features, out_features, ensemble_size
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        _linear_init_(self.weight, self.bias, in_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[0] != self.ensemble_size or x.shape[2] != self.in_features:
            raise ValueError(
                f"EnsembleLinear expects input [E={self.ensemble_size}, B, {self.in_features}]; "
                f"got shape {tuple(x.shape)}"
            )
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, ensemble_size={self.ensemble_size}"


#: States per chunk of the wide pass are chosen so that a chunk holds about this many rows (state-action pairs):
#: a [1024, 256] fp32 activation is 1 MB, so a chunk's activations, its gradients and one 256 x 256 weight stay
#: in the caches between the matmul and the elementwise passes (measured on this CPU: 512-1024 at one thread).
WIDE_CHUNK_ROWS = 1024
#: `QEnsemble` takes the wide pass from this many rows (B x K) up, with K >= 2 actions per state.
WIDE_MIN_ROWS = 2048


def _activation_grad(grad: Tensor, h: Tensor, activation: str) -> Tensor:
    """`grad * act'(z)` from the activation's output `h = act(z)`, one fused pass: `elu'(z) = h + 1` where
    `h <= 0` (else 1), `relu'(z) = [h > 0]` (multiplying by a boolean mask instead converts it to float first:
    ~8x slower here)."""
    if activation == "elu":
        return torch.ops.aten.elu_backward(grad, 1.0, 1, 1, True, h)
    return torch.ops.aten.threshold_backward(grad, h, 0.0)


class _WideQ(torch.autograd.Function):
    """`QEnsemble` on `K` actions per state (`[B*K]` rows), forward and backward by hand, a chunk of whole states
    at a time.

    Autograd runs each layer over all `B*K` rows before the next (12.8k x 256 fp32 = 13 MB per activation for
    MISA's 50 actions per state), so every elementwise pass and matmul output streams through memory; here a
    chunk's pre-activations, activations and gradients stay in the caches, only the post-activations are kept
    (for the weight gradients; the activation's derivative is recomputed from them) and the weight gradients
    accumulate over chunks. Measured for MISA's 12.8k-row pass (2 members, 256-256 ELU) forward + backward:
    223 -> 162 ms at one thread, 149 -> 102 ms at two. Same values as the autograd path up to float rounding (summation order).

    Inputs: the ensemble, `obs [B, do]`, `act [B*K, da]`, `k`, then the parameters in `QEnsemble._params()`
    order. Output: `q [E, B*K]`. First-order gradients only.
    """

    @staticmethod
    def forward(ctx: Any, net: QEnsemble, obs: Tensor, act: Tensor, k: int, *params: Tensor) -> Tensor:
        w_obs, w_act, b0, *layers = params
        weights, biases = layers[0::2], layers[1::2]
        e, b, rows = net.ensemble_size, obs.shape[0], act.shape[0]
        widths = net.hidden
        per_chunk = max(1, WIDE_CHUNK_ROWS // k)
        hs = [torch.addmm(b0[m], obs, w_obs[m]) for m in range(e)]  # [B, h0] per member: the state part
        # post-activations of every hidden layer, per member: [rows, width]
        acts = [[net._buffer(rows, w, act) for w in widths] for _ in range(e)]
        q = act.new_empty(e, rows)
        for m in range(e):
            for s0 in range(0, b, per_chunk):
                s1 = min(b, s0 + per_chunk)
                r0, r1 = s0 * k, s1 * k
                z = torch.mm(act[r0:r1], w_act[m]).view(s1 - s0, k, -1).add_(hs[m][s0:s1].unsqueeze(1))
                z = z.view(r1 - r0, -1)
                for i in range(len(widths)):
                    h = _activation_into(z, net.activation, acts[m][i][r0:r1])
                    if i + 1 < len(widths):
                        z = torch.addmm(biases[i][m], h, weights[i][m])
                torch.addmv(biases[-1][m, 0], h, weights[-1][m, :, 0], out=q[m, r0:r1])
        ctx.net, ctx.k, ctx.acts = net, k, acts
        ctx.save_for_backward(obs, act, *params)
        return q

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_q: Tensor) -> tuple[Tensor | None, ...]:
        net, k, acts = ctx.net, ctx.k, ctx.acts
        if acts is None:
            raise RuntimeError(
                "QEnsemble's wide pass (K actions per state on the CPU) supports one backward pass per forward; "
                "for retain_graph=True, set rl.networks.WIDE_MIN_ROWS above the row count"
            )
        ctx.acts = None
        obs, act, w_obs, w_act, b0, *layers = ctx.saved_tensors
        weights, biases = layers[0::2], layers[1::2]
        e, b = net.ensemble_size, obs.shape[0]
        n_hidden = len(net.hidden)
        need = ctx.needs_input_grad  # (net, obs, act, k, w_obs, w_act, b0, W1, b1, ...)
        per_chunk = max(1, WIDE_CHUNK_ROWS // k)
        # A frozen critic (the actor's view) needs only the input gradients: skip a third of the backward matmuls.
        params = any(need[4:])
        d_w_obs, d_w_act, d_b0 = torch.zeros_like(w_obs), torch.zeros_like(w_act), torch.zeros_like(b0)
        d_weights = [torch.zeros_like(w) for w in weights]
        d_biases = [torch.zeros_like(v) for v in biases]
        d_obs = torch.zeros_like(obs) if need[1] else None
        d_act = torch.zeros_like(act) if need[2] else None
        for m in range(e):
            d_hs = obs.new_empty(b, w_act.shape[-1])  # gradient wrt the state part, summed over the K actions
            for s0 in range(0, b, per_chunk):
                s1 = min(b, s0 + per_chunk)
                r0, r1 = s0 * k, s1 * k
                g = grad_q[m, r0:r1]
                h = acts[m][-1][r0:r1]
                if params:
                    d_weights[-1][m, :, 0].addmv_(h.t(), g)
                    d_biases[-1][m, 0] += g.sum()
                gz = _activation_grad(torch.outer(g, weights[-1][m, :, 0]), h, net.activation)
                for i in range(n_hidden - 1, 0, -1):
                    h_in = acts[m][i - 1][r0:r1]
                    if params:
                        d_weights[i - 1][m].addmm_(h_in.t(), gz)
                        d_biases[i - 1][m, 0] += gz.sum(0)
                    gz = _activation_grad(torch.mm(gz, weights[i - 1][m].t()), h_in, net.activation)
                if params:
                    d_w_act[m].addmm_(act[r0:r1].t(), gz)
                if d_act is not None:
                    d_act[r0:r1].addmm_(gz, w_act[m].t())
                if params or d_obs is not None:
                    torch.sum(gz.view(s1 - s0, k, -1), dim=1, out=d_hs[s0:s1])
            if params:
                d_w_obs[m] = obs.t() @ d_hs
                d_b0[m, 0] = d_hs.sum(0)
            if d_obs is not None:
                d_obs.addmm_(d_hs, w_obs[m].t())
        grads = [d_w_obs, d_w_act, d_b0]
        for dw, db in zip(d_weights, d_biases):
            grads += [dw, db]
        grads = [g if n else None for g, n in zip(grads, need[4:])]
        for member in acts:  # the activations are spent: later forward passes reuse their memory
            net._release(member)
        return (None, d_obs, d_act, None, *grads)


def _activation_into(z: Tensor, activation: str, out: Tensor) -> Tensor:
    """`act(z)` written into `out` (same shape) and returned; "elu" as `elu_and_derivative`, or "relu"."""
    if activation == "elu":
        return elu_and_derivative(z, out)[0]
    return torch.clamp_min(z, 0.0, out=out)


class QEnsemble(nn.Module):
    """Ensemble of `E` Q-networks `Q_e(s, a)`, MLP on `[s, a]`, stacked weights.

    `forward(obs [B, do], act [B, da]) -> [E, B]`; `forward(obs [B, do], act [B, K, da]) -> [E, B, K]`.
    The first layer's weight is split into a state block `[E, do, h]` and an action block `[E, da, h]`, so
    `W_s s + b` is computed once per state and broadcast over the `K` actions (no copy of `obs` K times).
    `output_init_scale` re-initialises the last layer with variance scaling (official MISA: 1e-2); `hidden_init`
    ("torch" or "lecun", see `HIDDEN_INITS`) initialises the others.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        ensemble_size: int = 2,
        activation: str = "relu",
        output_init_scale: float | None = None,
        hidden_init: str = "torch",
    ) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1; got obs_dim={obs_dim}, act_dim={act_dim}")
        if hidden_init not in HIDDEN_INITS:
            raise ValueError(f"hidden_init must be one of {HIDDEN_INITS}; got {hidden_init!r}")
        hidden = _check_hidden(hidden)
        self.obs_dim, self.act_dim, self.ensemble_size = obs_dim, act_dim, ensemble_size
        self.hidden, self.activation = hidden, activation
        self._act = _activation(activation)
        self._pool: dict[tuple, list[Tensor]] = {}  # spent activation buffers of the wide pass (`_buffer`)
        e, h0 = ensemble_size, hidden[0]
        # First layer, split: initialised over the full fan-in do + da.
        self.w_obs = nn.Parameter(torch.empty(e, obs_dim, h0))
        self.w_act = nn.Parameter(torch.empty(e, act_dim, h0))
        self.b0 = nn.Parameter(torch.empty(e, 1, h0))
        w0 = torch.empty(e, obs_dim + act_dim, h0)
        init_hidden_(w0, self.b0, obs_dim + act_dim, hidden_init)
        with torch.no_grad():
            self.w_obs.copy_(w0[:, :obs_dim])
            self.w_act.copy_(w0[:, obs_dim:])
        sizes = [*hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(a, b, e) for a, b in zip(sizes[:-1], sizes[1:]))
        if hidden_init != "torch":
            for layer in self.layers:
                init_hidden_(layer.weight, layer.bias, layer.in_features, hidden_init)
        if output_init_scale is not None:
            last = self.layers[-1]
            variance_scaling_(last.weight, last.bias, last.in_features, output_init_scale)

    def _check(self, obs: Tensor, act: Tensor) -> None:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape [B, {self.obs_dim}]; got shape {tuple(obs.shape)}")
        b = obs.shape[0]
        ok = (act.dim() == 2 and act.shape[0] == b and act.shape[1] == self.act_dim) or (
            act.dim() == 3 and act.shape[0] == b and act.shape[2] == self.act_dim
        )
        if not ok:
            raise ValueError(
                f"act must have shape [B, {self.act_dim}] or [B, K, {self.act_dim}] with B={b} (the batch of obs); "
                f"got shape {tuple(act.shape)}"
            )

    def forward(self, obs: Tensor, act: Tensor, members: Sequence[int] | None = None) -> Tensor:
        """Q values: `act [B, da]` -> `[E, B]`; `act [B, K, da]` -> `[E, B, K]`. `members` (indices) computes
        only those members, in that order: `[len(members), ...]` (TD3+BC's actor reads `Q_1` alone)."""
        self._check(obs, act)
        single = act.dim() == 2
        b = obs.shape[0]
        k = 1 if single else act.shape[1]
        h0 = self.hidden[0]
        a = act.reshape(b * k, self.act_dim)
        if members is None:
            if self._wide(b * k, k, obs, a):
                return _WideQ.apply(self, obs, a, k, *self._params()).view(self.ensemble_size, b, k)
            members = range(self.ensemble_size)
        elif not all(0 <= int(m) < self.ensemble_size for m in members):
            raise ValueError(
                f"members must index the {self.ensemble_size} ensemble members; got {list(members)}"
            )
        # One 2-D matmul per member and layer rather than one batched matmul: autograd's `mm` backward runs on
        # transposed views without copies, whereas `bmm`'s copies its transposed operands (measured: the
        # 12.8k-row MISA critic pass 323 -> 267 ms, CQL's 7.7k-row pass 139 -> 113 ms per forward+backward).
        w_obs, w_act, b0 = self.w_obs.unbind(0), self.w_act.unbind(0), self.b0.unbind(0)
        layers = [(layer.weight.unbind(0), layer.bias.unbind(0)) for layer in self.layers]
        qs = []
        for m in members:
            hs = torch.addmm(b0[m], obs, w_obs[m])  # [B, h0]: the state part, once per state
            if single:
                h = torch.addmm(hs, a, w_act[m])
            else:  # broadcast over the K actions of each state (out of place: a clean backward, sum over K)
                h = (a @ w_act[m]).view(b, k, h0).add(hs.unsqueeze(1)).view(b * k, h0)
            for weights, biases in layers:
                h = torch.addmm(biases[m], self._act(h), weights[m])
            qs.append(h.squeeze(-1))
        q = torch.stack(qs)  # [E, B*K]
        return q if single else q.view(len(qs), b, k)

    def __getstate__(self) -> dict[str, Any]:
        # Spent activation buffers are scratch memory: a pickled or deep-copied ensemble starts without them.
        state = super().__getstate__()
        return {**state, "_pool": {}}

    def _buffer(self, rows: int, width: int, like: Tensor) -> Tensor:
        """An uninitialised `[rows, width]` tensor for the wide pass's activations, from the pool of ones whose
        backward pass has run: a fresh allocation of this size is a fresh mapping from the OS, and its first
        writes page-faulted (~10 ms per CQL update here)."""
        key = (rows, width, like.dtype, like.device)
        pool = self._pool.get(key)
        return pool.pop() if pool else like.new_empty(rows, width)

    def _release(self, tensors: list[Tensor]) -> None:
        for t in tensors:
            self._pool.setdefault((t.shape[0], t.shape[1], t.dtype, t.device), []).append(t)

    def _params(self) -> list[Tensor]:
        """`w_obs, w_act, b0, W1, b1, ..., WL, bL` (the order `_WideQ` takes them)."""
        out = [self.w_obs, self.w_act, self.b0]
        for layer in self.layers:
            out += [layer.weight, layer.bias]
        return out

    def _wide(self, rows: int, k: int, obs: Tensor, act: Tensor) -> bool:
        """Whether `forward` takes the chunked wide pass (`_WideQ`): K >= 2 actions per state, many rows, a
        gradient to compute, on the CPU (an accelerator prefers whole-batch kernels), in eager mode."""
        if (
            k < 2
            or rows < WIDE_MIN_ROWS
            or obs.device.type != "cpu"
            or self.activation not in ("elu", "relu")
        ):
            return False
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return False
        return obs.requires_grad or act.requires_grad or any(p.requires_grad for p in self.parameters())

    @staticmethod
    def min(q: Tensor) -> Tensor:
        """Minimum over the ensemble axis: `[E, ...] -> [...]` (twin-Q / clipped double Q)."""
        return q.min(dim=0).values

    def q_min(self, obs: Tensor, act: Tensor) -> Tensor:
        """`min_e Q_e(s, a)`: `[B]` or `[B, K]`."""
        return self.min(self(obs, act))


class TanhGaussianPolicy(nn.Module):
    """Tanh-squashed Gaussian policy `pi(a|s)` on `(-1, 1)^da`; `forward(obs [B, do]) -> TanhDiagGaussian`.

    `log_std_mode="state"`: standard SAC, the network outputs mean and log-std, log-std clipped to
    `log_std_bounds`. `log_std_mode="misa"`: the official MISA/CQL-JAX head, `log_std = m * raw + c` with learnable
    scalars `m` (init 1) and `c` (init -1), then clipped. The mean is clipped to `[-mean_clip, mean_clip]`
    (`None`: no clip). `output_init_scale` re-initialises the last layer with variance scaling (MISA: 1e-2);
    `hidden_init` ("torch" or "lecun", see `HIDDEN_INITS`) initialises the others.

    Also a conditional proposal for the MI estimators: `sample(obs, k, generator)`, `rsample(obs, k, generator)`
    -> `[B, K, da]`; `log_prob(obs, act)` with `act [B, da]` -> `[B]`, `[B, K, da]` -> `[B, K]` (nats).
    """

    squashed = True

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        log_std_mode: str = "state",
        log_std_bounds: tuple[float, float] = (-5.0, 2.0),
        mean_clip: float | None = 9.0,
        output_init_scale: float | None = None,
        hidden_init: str = "torch",
    ) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1; got obs_dim={obs_dim}, act_dim={act_dim}")
        if log_std_mode not in ("state", "misa"):
            raise ValueError(f"log_std_mode must be 'state' or 'misa'; got {log_std_mode!r}")
        lo, hi = log_std_bounds
        if not lo < hi:
            raise ValueError(f"log_std_bounds must be (low, high) with low < high; got {log_std_bounds}")
        hidden = _check_hidden(hidden)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.log_std_mode, self.log_std_bounds, self.mean_clip = (
            log_std_mode,
            (float(lo), float(hi)),
            mean_clip,
        )
        self.net = mlp([obs_dim, *hidden, 2 * act_dim], activation, output_init_scale, hidden_init)
        if log_std_mode == "misa":
            self.log_std_multiplier = nn.Parameter(torch.tensor(1.0))
            self.log_std_offset = nn.Parameter(torch.tensor(-1.0))

    def forward(self, obs: Tensor) -> TanhDiagGaussian:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape [B, {self.obs_dim}]; got shape {tuple(obs.shape)}")
        mean, raw = self.net(obs).chunk(2, dim=-1)
        if self.mean_clip is not None:
            mean = mean.clamp(-self.mean_clip, self.mean_clip)
        if self.log_std_mode == "misa":
            raw = self.log_std_multiplier * raw + self.log_std_offset
        log_std = raw.clamp(*self.log_std_bounds)
        return TanhDiagGaussian(mean, log_std)

    # --- proposal interface -------------------------------------------------------------------------------
    def sample(self, obs: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """`k` actions per state, `[B, K, da]`, detached."""
        return self(obs).sample(k, generator)

    def rsample(self, obs: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """`k` reparameterised actions per state, `[B, K, da]`."""
        return self(obs).rsample(k, generator)

    def log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        """`log pi(a|s)`: `act [B, da]` -> `[B]`; `act [B, K, da]` -> `[B, K]`. Nats; `-inf` outside (-1, 1)^da."""
        return self(obs).log_prob(act)

    # --- SAC helpers -------------------------------------------------------------------------------------
    @staticmethod
    def rsample_with_log_prob(
        dist: TanhDiagGaussian, k: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised actions `[B, K, da]` and their exact `log pi` `[B, K]` computed from `u = atanh(a)`.

        `log pi(tanh u) = log N(u; mean, std) - sum log(1 - tanh(u)^2)`, evaluated on the pre-squash draw `u`
        (no round trip through `atanh`, so it stays exact when `tanh(u)` rounds to +-1).
        """
        u = dist.rsample_unconstrained(k, generator)
        return dist.to_constrained(u), dist.log_prob_of_squashed(u)

    def sample_with_log_prob(
        self, obs: Tensor, k: int = 1, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """`(actions [B, K, da], log_prob [B, K])`, reparameterised (gradients reach the policy)."""
        return self.rsample_with_log_prob(self(obs), k, generator)

    def deterministic(self, obs: Tensor) -> Tensor:
        """`tanh(mean)`, `[B, da]`: the evaluation action."""
        return torch.tanh(self(obs).mean)

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, deterministic: bool = True, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """Environment action(s) in (-1, 1)^da for `obs [do]` -> `[da]` or `[B, do]` -> `[B, da]` (float32 numpy).

        `deterministic=True` gives `tanh(mean)`; otherwise one draw from the policy (seeded by `generator`).
        """
        p = next(self.parameters())
        x = torch.as_tensor(np.asarray(obs), dtype=p.dtype, device=p.device)
        single = x.dim() == 1
        if single:
            x = x.unsqueeze(0)
        dist = self(x)
        a = torch.tanh(dist.mean) if deterministic else dist.sample(1, generator).squeeze(1)
        out = a.float().cpu().numpy()
        return out[0] if single else out
