"""The policy's tilted law `pi(a|s) e^{min_e Q_e(s,a)} / Z(s)` and a fast gradient of its log density wrt the action.

This is the hot loop of MISA (DESIGN.md, "Speed by design"): HMC evaluates `grad_a [log pi(a|s) + min Q(s,a)]` on
256 rows about 110 times per update. `TiltedDensity` therefore

* takes the policy's law at the states (`TanhDiagGaussian`, mean and log-std computed ONCE per update) and the Q
  ensemble's first-layer state part `W_s s + b` (computed once), both detached;
* differentiates only wrt the action, by a hand-written backward pass of the Q MLP (checked against autograd in
  the tests): no autograd graph, no weight gradients, no host sync;
* uses cheap elementwise forms: for ELU, `rl.networks.elu_and_derivative` (`exp2`, no `F.elu` or `torch.where`);
* optionally runs under `torch.compile` (`compile=True`), which fuses the elementwise work (same numbers within
  float tolerance; the tests check it).

Coordinates: `value_and_grad(a)` is the density of the action itself (as the official MISA code samples `a`): the
tanh-Gaussian's log density with its log-Jacobian, NaN/-inf outside (-1, 1) so that the sampler rejects such
proposals. `q_value_and_grad(a)` is the critic part alone, for `mi_estimators.samplers.sample_tilted`, which runs in
the unconstrained space `u = atanh(a)` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mi_estimators.proposals import TanhDiagGaussian
from rl.networks import QEnsemble, elu_and_derivative

__all__ = ["TiltedDensity", "q_value_and_grad"]

_LOG_2PI = math.log(2.0 * math.pi)


def _activation_and_derivative(z: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """`(act(z), act'(z))` for "elu" or "relu"."""
    if activation == "elu":
        return elu_and_derivative(z)
    return torch.relu(z), (z > 0).to(z.dtype)


def q_value_and_grad(
    a: Tensor,
    hs: Tensor,
    w_act: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    activation: str,
    split: bool = False,
) -> tuple[Tensor, Tensor]:
    """`min_e Q_e(s, a)` and its gradient wrt `a`, by a hand-written backward pass.

    Args:
        a: `[R, da]` actions, one per row (rows = states x chains, matching `hs`).
        hs: `[E, R, h0]` first-layer state part `W_s s + b0` per row.
        w_act: `[E, da, h0]` first-layer action weights.
        weights, biases: the remaining `EnsembleLinear` layers, `[E, in, out]` and `[E, 1, out]`; the last has
            `out = 1`.
        activation: "elu" or "relu".
        split: run each member as 2-D matmuls and backpropagate each row through its argmin member only
            (`_split`; half the backward matmuls; needs the group sizes on the host: CPU, eager).

    Returns:
        `(q [R], dq/da [R, da])`. With ties between members the first is taken, as `torch.min`'s backward does.
    """
    if split:
        return _split(a, hs, w_act, weights, biases, activation)
    e, r, da = hs.shape[0], a.shape[0], a.shape[1]
    z = torch.baddbmm(hs, a.unsqueeze(0).expand(e, r, da), w_act)
    derivs = []
    for w, b in zip(weights, biases):
        h, d = _activation_and_derivative(z, activation)
        derivs.append(d)
        z = torch.baddbmm(b, h, w)
    q = z.squeeze(-1)  # [E, R]
    q_min, idx = q.min(0)
    sel = (torch.arange(e, device=a.device).unsqueeze(1) == idx).to(a.dtype).unsqueeze(-1)  # [E, R, 1]
    g = weights[-1].transpose(1, 2) * sel  # [E, R, h_last]: d q_min / d h_last
    for i in range(len(weights) - 1, 0, -1):
        g = torch.bmm(g * derivs[i], weights[i - 1].transpose(1, 2))
    g = torch.bmm(g * derivs[0], w_act.transpose(1, 2))  # [E, R, da]
    return q_min, g.sum(0)


def _split(
    a: Tensor, hs: Tensor, w_act: Tensor, weights: list[Tensor], biases: list[Tensor], activation: str
) -> tuple[Tensor, Tensor]:
    """`q_value_and_grad` member by member: 2-D matmuls forward (the last layer a matrix-vector product), then
    the rows are grouped by their argmin member and each group is backpropagated through that member alone (the
    masked batched form multiplies zeros for the other members)."""
    e = hs.shape[0]
    qs, derivs = [], []
    for m in range(e):
        z = torch.addmm(hs[m], a, w_act[m])
        member = []
        for w, b in zip(weights[:-1], biases[:-1]):
            h, d = _activation_and_derivative(z, activation)
            member.append(d)
            z = torch.addmm(b[m], h, w[m])
        h, d = _activation_and_derivative(z, activation)
        member.append(d)
        qs.append(torch.addmv(biases[-1][m, 0], h, weights[-1][m, :, 0]))
        derivs.append(member)
    q_min, idx = torch.stack(qs).min(0)
    out = torch.empty_like(a)
    for m in range(e):
        rows = (idx == m).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        g = derivs[m][-1].index_select(0, rows) * weights[-1][m, :, 0]  # [c, h_last]
        for i in range(len(weights) - 1, 0, -1):
            g = torch.mm(g, weights[i - 1][m].t()).mul_(derivs[m][i - 1].index_select(0, rows))
        out.index_copy_(0, rows, torch.mm(g, w_act[m].t()))
    return q_min, out


_compiled: dict[str, Callable] = {}


def _get_q_vg(compile: bool) -> Callable:
    if not compile:
        return q_value_and_grad
    if "q" not in _compiled:
        _compiled["q"] = torch.compile(q_value_and_grad, dynamic=False)
    return _compiled["q"]


class TiltedDensity:
    """`log pi(a|s) + min_e Q_e(s, a)` at fixed states, with its gradient wrt the action (see the module docstring).

    Args:
        law: the policy's `TanhDiagGaussian` at the N states (`mean`, `log_std` `[N, da]`); detached here.
        critic: the Q ensemble (read, never modified; no gradient reaches it).
        obs: `[N, do]` the states (already normalised if the agent normalises).
        compile: run the critic's value-and-gradient under `torch.compile`.

    Chain states may be `[N, da]` or `[N, C, da]` (C chains per state); values are `[N]` / `[N, C]`.
    """

    def __init__(self, law: TanhDiagGaussian, critic: QEnsemble, obs: Tensor, compile: bool = False) -> None:
        if critic.activation not in ("elu", "relu"):
            raise ValueError(f"TiltedDensity supports ELU and ReLU critics; got {critic.activation!r}")
        with torch.no_grad():
            self.mean, self.log_std = law.mean.detach(), law.log_std.detach()
            self.inv_std = torch.exp(-self.log_std)
            self.log_norm = (-self.log_std - 0.5 * _LOG_2PI).sum(-1)  # [N]
            e, n = critic.ensemble_size, obs.shape[0]
            self.hs = torch.baddbmm(
                critic.b0, obs.detach().unsqueeze(0).expand(e, n, critic.obs_dim), critic.w_obs
            )
            self.w_act = critic.w_act.detach()
            self.weights = [layer.weight.detach() for layer in critic.layers]
            self.biases = [layer.bias.detach() for layer in critic.layers]
        self.activation = critic.activation
        self._qvg = _get_q_vg(compile)
        # On the CPU the eager path backpropagates through the selected member only (fewer FLOPs; one host sync,
        # which costs nothing there). Compiled or on an accelerator, the sync-free masked form is used.
        self.split = obs.device.type == "cpu" and not compile
        self._hs_rows: dict[int, Tensor] = {}

    def _rows(self, a: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """Flatten chains into rows: `a [N, (C,) da] -> [N*C, da]` and the matching `hs [E, N*C, h]`."""
        n = self.mean.shape[0]
        c = 1 if a.dim() == 2 else a.shape[1]
        hs = self._hs_rows.get(c)
        if hs is None:
            hs = self.hs if c == 1 else self.hs.repeat_interleave(c, dim=1)
            self._hs_rows[c] = hs
        return a.reshape(n * c, a.shape[-1]), hs, tuple(a.shape[:-1])

    def q_value_and_grad(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """`(min Q(s, a) [N(, C)], d/da [N(, C), da])` for actions in the box."""
        rows, hs, batch = self._rows(a)
        q, g = self._qvg(rows, hs, self.w_act, self.weights, self.biases, self.activation, self.split)
        return q.reshape(batch), g.reshape(a.shape)

    def value_and_grad(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """`(log pi(a|s) + min Q(s, a), gradient wrt a)` in action coordinates; non-finite outside (-1, 1)^da
        (`log1p` of a value below -1 is NaN), which the samplers treat as a rejection."""
        mean, inv_std, log_norm = self.mean, self.inv_std, self.log_norm
        if a.dim() == 3:
            mean, inv_std, log_norm = mean.unsqueeze(1), inv_std.unsqueeze(1), log_norm.unsqueeze(1)
        l1p, l1m = torch.log1p(a), torch.log1p(-a)
        z = (0.5 * (l1p - l1m) - mean) * inv_std  # u = atanh(a), whitened
        # log pi(a) = log N(atanh a; mean, std) - sum log(1 - a^2)
        log_pi = (-0.5 * z.square() - l1p - l1m).sum(-1) + log_norm
        # d/da: (-(u - mean)/std^2 + 2a) / (1 - a^2)
        grad_pi = (2.0 * a - z * inv_std) / (1.0 - a.square())
        q, grad_q = self.q_value_and_grad(a)
        return log_pi + q, grad_pi + grad_q
