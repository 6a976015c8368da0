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
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mi_estimators.proposals import TanhDiagGaussian
from rl.networks import QEnsemble, elu_and_derivative

__all__ = ["MemberHelper", "TiltedDensity", "q_value_and_grad"]

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
    helper: MemberHelper | None = None,
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
        helper: with `split`, a `MemberHelper` that may run other members' share in another thread.

    Returns:
        `(q [R], dq/da [R, da])`. With ties between members the first is taken, as `torch.min`'s backward does.
    """
    if split:
        return _split(a, hs, w_act, weights, biases, activation, helper)
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
    a: Tensor,
    hs: Tensor,
    w_act: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    activation: str,
    helper: MemberHelper | None = None,
) -> tuple[Tensor, Tensor]:
    """`q_value_and_grad` member by member: 2-D matmuls forward (the last layer a matrix-vector product), then
    the rows are grouped by their argmin member and each group is backpropagated through that member alone (the
    masked batched form multiplies zeros for the other members). A `helper` may run the other members' forward
    and backward passes in its thread meanwhile (the same operations either way)."""
    e = hs.shape[0]

    def forward(m: int) -> tuple[Tensor, list[Tensor]]:
        z = torch.addmm(hs[m], a, w_act[m])
        derivs = []
        for w, b in zip(weights[:-1], biases[:-1]):
            h, d = _activation_and_derivative(z, activation)
            derivs.append(d)
            z = torch.addmm(b[m], h, w[m])
        h, d = _activation_and_derivative(z, activation)
        derivs.append(d)
        return torch.addmv(biases[-1][m, 0], h, weights[-1][m, :, 0]), derivs

    members = _run_members(helper, [partial(forward, m) for m in range(e)])
    q_min, idx = torch.stack([q for q, _ in members]).min(0)

    def backward(m: int) -> tuple[Tensor, Tensor] | None:
        rows = (idx == m).nonzero().squeeze(1)
        if rows.numel() == 0:
            return None
        derivs = members[m][1]
        g = derivs[-1].index_select(0, rows) * weights[-1][m, :, 0]  # [c, h_last]
        for i in range(len(weights) - 1, 0, -1):
            g = torch.mm(g, weights[i - 1][m].t()).mul_(derivs[i - 1].index_select(0, rows))
        return rows, torch.mm(g, w_act[m].t())

    out = torch.empty_like(a)
    for group in _run_members(helper, [partial(backward, m) for m in range(e)]):
        if group is not None:
            out.index_copy_(0, *group)
    return q_min, out


def _run_members(helper: MemberHelper | None, fns: list[Callable[[], Any]]) -> list[Any]:
    if helper is None or len(fns) < 2:
        return [fn() for fn in fns]
    return helper.run(fns[0], fns[1:])


class MemberHelper:
    """A second thread's share of the chain's per-member work, for the time that thread has nothing else to do.

    MISA's chain runs in a worker thread beside the critic's update; the main thread finishes first and would
    wait. Each chain evaluation computes every ensemble member's forward pass, then backpropagates each row
    through its minimising member: independent pieces. The chain's thread calls `run(own, rest)`: it offers
    `rest`, runs `own`, then runs `rest` itself unless the helper claimed it meanwhile (then it waits for the
    helper's results). The free thread calls `serve()`, which returns once `close()` is called. Every piece runs
    the same operations on the same inputs whichever thread runs it, so the numbers do not depend on timing.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._offer: _Task | None = None
        self._serving = False
        self._closed = False

    def run(self, own: Callable[[], Any], rest: list[Callable[[], Any]]) -> list[Any]:
        """`[own(), *(fn() for fn in rest)]`, `rest` possibly run by the serving thread."""
        if not self._serving:  # nobody to help (yet): no offer, no synchronisation
            return [own()] + [fn() for fn in rest]
        task = _Task(rest)
        with self._cv:
            self._offer = task
            self._cv.notify()
        first = own()
        if task.claim():  # not taken: withdraw the offer and run it here
            with self._cv:
                if self._offer is task:
                    self._offer = None
            return [first] + [fn() for fn in rest]
        return [first] + task.wait()

    def serve(self) -> None:
        """Run offered work in the calling thread until `close()`."""
        with self._cv:
            self._serving = not self._closed
        try:
            while True:
                with self._cv:
                    while self._offer is None and not self._closed:
                        self._cv.wait()
                    if self._closed:
                        return
                    task, self._offer = self._offer, None
                if task.claim():
                    task.run()
        finally:
            self._serving = False

    def close(self) -> None:
        """No more offers: `serve()` returns (also if it has not started yet)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class _Task:
    """Callables run in order by whichever thread claims them first."""

    def __init__(self, fns: list[Callable[[], Any]]) -> None:
        self.fns = fns
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._out: list[Any] = []
        self._error: BaseException | None = None

    def claim(self) -> bool:
        return self._lock.acquire(blocking=False)

    def run(self) -> None:
        try:
            self._out = [fn() for fn in self.fns]
        except BaseException as exc:  # handed to the waiting chain thread, which raises it
            self._error = exc
        finally:
            self._done.set()

    def wait(self) -> list[Any]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._out


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
        helper: a `MemberHelper` through which another thread may take ensemble members' share of each
            evaluation (eager CPU path only).

    Chain states may be `[N, da]` or `[N, C, da]` (C chains per state); values are `[N]` / `[N, C]`.
    """

    def __init__(
        self,
        law: TanhDiagGaussian,
        critic: QEnsemble,
        obs: Tensor,
        compile: bool = False,
        helper: MemberHelper | None = None,
    ) -> None:
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
        self.helper = helper if self.split else None
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
        q, g = self._qvg(
            rows, hs, self.w_act, self.weights, self.biases, self.activation, self.split, self.helper
        )
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
