"""Networks shared by every agent of the RL layer: a stacked Q ensemble and a tanh-Gaussian policy.

What each piece is for (the measurements: docs/rl.md, "Speed"):

* `EnsembleLinear` holds `E` linear layers as one stacked weight `[E, in, out]` and runs them with one
  `torch.baddbmm`, so a twin Q (or an ensemble of any size) costs one call per layer.
* `QEnsemble(obs [B, do], act [B, K, da]) -> [E, B, K]` computes the state part of the first layer `W_s s` once per
  state and broadcasts it over the `K` actions; the `K` actions are one `[B*K, .]` batch through the rest. Plain
  autograd; `QEnsemble.input_gradient(obs)` is the one entry point for `a -> (min_e Q_e(s, a), d/da)`.
  `fast=True` routes the wide critic pass (many actions per state, with a gradient) and the input gradient
  through the hand-written paths of the private `rl._fast` (same function, float rounding aside).
* ELU is `rl._activations.elu`: `exp2`-based, with a backward from its output (`F.elu`'s recomputes `exp`).
* `TanhGaussianPolicy(obs) -> TanhDiagGaussian` (from `mi_estimators.proposals`): the mean and scale at a state are
  computed once and reused for all samples; it also serves as a conditional proposal (`sample`, `rsample`,
  `log_prob`) for the MI estimators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mi_estimators.options import require_sizes
from mi_estimators.proposals import TanhDiagGaussian
from rl._activations import elu

__all__ = [
    "EnsembleLinear",
    "QEnsemble",
    "TanhGaussianPolicy",
    "mlp",
    "variance_scaling_",
]

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


class QEnsemble(nn.Module):
    """Ensemble of `E` Q-networks `Q_e(s, a)`, MLP on `[s, a]`, stacked weights.

    `forward(obs [B, do], act [B, da]) -> [E, B]`; `forward(obs [B, do], act [B, K, da]) -> [E, B, K]`.
    The first layer's weight is split into a state block `[E, do, h]` and an action block `[E, da, h]`, so
    `W_s s + b` is computed once per state and broadcast over the `K` actions (no copy of `obs` K times).
    `output_init_scale` re-initialises the last layer with variance scaling (official MISA: 1e-2); `hidden_init`
    ("torch" or "lecun", see `HIDDEN_INITS`) initialises the others. `fast=True` takes the hand-written paths of
    `rl._fast` where they serve (the CPU, an ELU or ReLU network; see `forward` and `input_gradient`).
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
        fast: bool = False,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1; got obs_dim={obs_dim}, act_dim={act_dim}")
        if hidden_init not in HIDDEN_INITS:
            raise ValueError(f"hidden_init must be one of {HIDDEN_INITS}; got {hidden_init!r}")
        hidden = require_sizes("hidden", hidden, nonempty=True)
        self.obs_dim, self.act_dim, self.ensemble_size = obs_dim, act_dim, ensemble_size
        self.hidden, self.activation = hidden, activation
        self._act = _activation(activation)
        self.fast = bool(fast)
        self._scratch: dict[tuple, list[Tensor]] = {}  # spent activation buffers of the fast wide pass
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
            if self.fast:
                from rl import _fast

                if _fast.takes_wide_pass(self, b * k, k, obs, a):
                    return _fast.wide_q(self, obs, a, k).view(self.ensemble_size, b, k)
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
        return {**state, "_scratch": {}}

    def input_gradient(self, obs: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """`a -> (min_e Q_e(s, a), d/da)` at the fixed states `obs [N, do]`, for actions `a [N, da]` -> `[N]`,
        `[N, da]` or `a [N, C, da]` -> `[N, C]`, `[N, C, da]`: what an MCMC chain on the actions evaluates every
        step. No gradient reaches the weights (they are read as constants). Plain autograd; with `fast=True` (ELU
        or ReLU) the hand-written backward pass of `rl._fast.InputGradient` (checked against this one)."""
        self._check(obs, torch.empty(obs.shape[0], self.act_dim, device=obs.device))
        if self.fast and self.activation in ("elu", "relu"):
            from rl import _fast

            return _fast.InputGradient(self, obs)
        obs = obs.detach()

        def q_sum(a: Tensor) -> tuple[Tensor, Tensor]:
            q = self.q_min(obs, a)
            return q.sum(), q

        # torch.func's gradient rather than autograd.grad: the same numbers, and it also runs under vmap (the
        # stacked seeds of rl.seeds), where a tensor cannot be made to require grad.
        grad_and_value = torch.func.grad(q_sum, has_aux=True)

        def value_and_grad(a: Tensor) -> tuple[Tensor, Tensor]:
            g, q = grad_and_value(a.detach())
            return q.detach(), g

        return value_and_grad

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
        hidden = require_sizes("hidden", hidden, nonempty=True)
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
