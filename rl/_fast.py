"""The opt-in fast paths of the Q ensemble and of the MISA chain (`fast: true`), behind one switch.

`rl.networks.QEnsemble` is plain autograd; with `fast=True` it routes two hot spots here, and the MI agent runs
its MCMC chain beside the critic's update. Every path computes the same function as the plain one (the tests
check values and gradients against autograd; summation order may differ in the last bits), measured on the 2-core
CPU of docs/rl.md ("Speed"):

* the *wide pass* (`wide_q`): a Q ensemble on K >= 2 actions per state (MISA's 50, CQL's 30), forward and
  backward by hand, a cache-sized chunk of states at a time, activation buffers reused from a pool;
* the *input gradient* (`InputGradient`): `a -> (min_e Q_e(s, a), d/da)` at fixed states, a hand-written backward
  pass that never touches the weights' gradients (the MCMC chain's ~110 evaluations per update); on the CPU each
  row is backpropagated through its minimising member only, and a second thread may take members' shares
  (`MemberHelper`);
* *overlap* (`beside`): the chain runs in a worker thread while the critic's losses and backward pass run, torch
  at one intra-op thread per Python thread meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rl._activations import activation_grad, elu_and_derivative

if TYPE_CHECKING:
    from rl.networks import QEnsemble

#: States per chunk of the wide pass are chosen so that a chunk holds about this many rows (state-action pairs):
#: a [1024, 256] fp32 activation is 1 MB, so a chunk's activations, its gradients and one 256 x 256 weight stay
#: in the caches between the matmul and the elementwise passes (measured on this CPU: 512-1024 at one thread).
WIDE_CHUNK_ROWS = 1024
#: `QEnsemble` takes the wide pass from this many rows (B x K) up, with K >= 2 actions per state.
WIDE_MIN_ROWS = 2048


class _WideQ(torch.autograd.Function):
    """`QEnsemble` on `K` actions per state (`[B*K]` rows), forward and backward by hand, a chunk of whole states
    at a time.

    Autograd runs each layer over all `B*K` rows before the next (12.8k x 256 fp32 = 13 MB per activation for
    MISA's 50 actions per state), so every elementwise pass and matmul output streams through memory; here a
    chunk's pre-activations, activations and gradients stay in the caches, only the post-activations are kept
    (for the weight gradients; the activation's derivative is recomputed from them) and the weight gradients
    accumulate over chunks. Measured for MISA's 12.8k-row pass (2 members, 256-256 ELU) forward + backward:
    223 -> 162 ms at one thread, 149 -> 102 ms at two. Same values as the autograd path up to float rounding (summation order).

    Inputs: the ensemble, `obs [B, do]`, `act [B*K, da]`, `k`, then the parameters in `_params(net)` order. Output: `q [E, B*K]`. First-order gradients only.
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
        acts = [[_buffer(net, rows, w, act) for w in widths] for _ in range(e)]
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
                "QEnsemble's wide pass (fast=True, K actions per state on the CPU) supports one backward pass per "
                "forward; for retain_graph=True, build the ensemble with fast=False"
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
                gz = activation_grad(torch.outer(g, weights[-1][m, :, 0]), h, net.activation)
                for i in range(n_hidden - 1, 0, -1):
                    h_in = acts[m][i - 1][r0:r1]
                    if params:
                        d_weights[i - 1][m].addmm_(h_in.t(), gz)
                        d_biases[i - 1][m, 0] += gz.sum(0)
                    gz = activation_grad(torch.mm(gz, weights[i - 1][m].t()), h_in, net.activation)
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
            _release(net, member)
        return (None, d_obs, d_act, None, *grads)


def _params(net: QEnsemble) -> list[Tensor]:
    """`w_obs, w_act, b0, W1, b1, ..., WL, bL` (the order `_WideQ` takes them)."""
    out = [net.w_obs, net.w_act, net.b0]
    for layer in net.layers:
        out += [layer.weight, layer.bias]
    return out


def _buffer(net: QEnsemble, rows: int, width: int, like: Tensor) -> Tensor:
    """An uninitialised `[rows, width]` tensor for the wide pass's activations, from the ensemble's pool of ones
    whose backward pass has run: a fresh allocation of this size is a fresh mapping from the OS, and its first
    writes page-faulted (~10 ms per CQL update here)."""
    pool = net._scratch.get((rows, width, like.dtype, like.device))
    return pool.pop() if pool else like.new_empty(rows, width)


def _release(net: QEnsemble, tensors: list[Tensor]) -> None:
    for t in tensors:
        net._scratch.setdefault((t.shape[0], t.shape[1], t.dtype, t.device), []).append(t)


def takes_wide_pass(net: QEnsemble, rows: int, k: int, obs: Tensor, act: Tensor) -> bool:
    """Whether `wide_q` serves this call: K >= 2 actions per state, many rows, a gradient to compute, on the CPU
    (an accelerator prefers whole-batch kernels), in eager mode, an ELU or ReLU network."""
    if k < 2 or rows < WIDE_MIN_ROWS or obs.device.type != "cpu" or net.activation not in ("elu", "relu"):
        return False
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    return obs.requires_grad or act.requires_grad or any(p.requires_grad for p in net.parameters())


def wide_q(net: QEnsemble, obs: Tensor, act: Tensor, k: int) -> Tensor:
    """`net`'s Q values `[E, B*K]` for `obs [B, do]` and `act [B*K, da]` (K actions per state) by `_WideQ`."""
    return _WideQ.apply(net, obs, act, k, *_params(net))


def _activation_into(z: Tensor, activation: str, out: Tensor) -> Tensor:
    """`act(z)` written into `out` (same shape) and returned; "elu" as `elu_and_derivative`, or "relu"."""
    if activation == "elu":
        return elu_and_derivative(z, out)[0]
    return torch.clamp_min(z, 0.0, out=out)


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


_thread = (
    threading.local()
)  # `.helper`: the MemberHelper of the chain running in this thread (set by `beside`)


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


class InputGradient:
    """`a -> (min_e Q_e(s, a), d/da)` at fixed states `obs [N, do]`, by the hand-written backward pass of
    `q_value_and_grad`: the first layer's state part `W_s s + b` is computed once, the weights are read detached
    (no graph, no weight gradients, no host sync on an accelerator).

    Actions may be `[N, da]` or `[N, C, da]` (C chains per state); values are `[N]` / `[N, C]`. On the CPU in eager
    mode each row is backpropagated through its minimising member only (fewer FLOPs; one host sync, which costs
    nothing there), and a chain running under `beside` lends members' shares to the waiting thread. `compile=True`
    runs the masked form under `torch.compile` (same numbers within float tolerance; measured slower on this CPU).
    """

    def __init__(self, critic: QEnsemble, obs: Tensor, compile: bool = False) -> None:
        if critic.activation not in ("elu", "relu"):
            raise ValueError(
                f"the fast input gradient supports ELU and ReLU critics; got {critic.activation!r}"
            )
        with torch.no_grad():
            e, n = critic.ensemble_size, obs.shape[0]
            self.hs = torch.baddbmm(
                critic.b0, obs.detach().unsqueeze(0).expand(e, n, critic.obs_dim), critic.w_obs
            )
            self.w_act = critic.w_act.detach()
            self.weights = [layer.weight.detach() for layer in critic.layers]
            self.biases = [layer.bias.detach() for layer in critic.layers]
        self.n, self.activation = n, critic.activation
        self._qvg = _get_q_vg(compile)
        self.split = obs.device.type == "cpu" and not compile
        self._hs_rows: dict[int, Tensor] = {}

    def _rows(self, a: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """Flatten chains into rows: `a [N, (C,) da] -> [N*C, da]` and the matching `hs [E, N*C, h]`."""
        c = 1 if a.dim() == 2 else a.shape[1]
        hs = self._hs_rows.get(c)
        if hs is None:
            hs = self.hs if c == 1 else self.hs.repeat_interleave(c, dim=1)
            self._hs_rows[c] = hs
        return a.reshape(self.n * c, a.shape[-1]), hs, tuple(a.shape[:-1])

    def __call__(self, a: Tensor) -> tuple[Tensor, Tensor]:
        rows, hs, batch = self._rows(a)
        helper = getattr(_thread, "helper", None) if self.split else None
        q, g = self._qvg(rows, hs, self.w_act, self.weights, self.biases, self.activation, self.split, helper)
        return q.reshape(batch), g.reshape(a.shape)


def beside(fn: Callable[[], Any], overlap: bool) -> _Beside:
    """`fn()` run now (`overlap=False`), or in a worker thread while the caller goes on: a handle whose
    `result()` returns `fn()`'s value (the caller lends itself to the worker's `MemberHelper` offers meanwhile)
    and whose `close()` waits for the worker. Overlap pays on the CPU with >= 2 torch threads."""
    if not overlap or torch.get_num_threads() < 2:
        return _Beside(fn, None)
    helper = MemberHelper()

    def job() -> Any:
        _thread.helper = helper
        try:
            return fn()
        finally:
            _thread.helper = None

    return _Beside(job, _executor(), helper)


_executors: list[ThreadPoolExecutor] = []


def _executor() -> ThreadPoolExecutor:
    if not _executors:
        _executors.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="mi-chain"))
    return _executors[0]


class _Beside:
    """`fn` run now, or in a worker thread of `executor` while the caller goes on (`concurrent`). Meanwhile torch
    runs one intra-op thread per Python thread (its thread count is process-wide); the count is restored when the
    job is collected. When the caller collects the result it first serves `helper` (the worker's offers of
    independent pieces of its work) until the job has finished."""

    def __init__(
        self, fn: Callable[[], Any], executor: ThreadPoolExecutor | None, helper: MemberHelper | None = None
    ) -> None:
        self.concurrent = executor is not None
        self._future: Future | None = None
        self._helper = helper if self.concurrent else None
        if executor is None:
            self._value = fn()
            return
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._future = executor.submit(fn)
        if self._helper is not None:
            self._future.add_done_callback(lambda _: self._helper.close())

    def result(self) -> Any:
        if self._future is not None:
            try:
                if self._helper is not None:
                    self._helper.serve()  # returns when the job has finished
                self._value = self._future.result()
            finally:
                self.close()
        return self._value

    def close(self) -> None:
        """Wait for the worker (also when the caller failed) and give torch its threads back; idempotent."""
        if self._future is not None:
            future, self._future = self._future, None
            wait([future])  # a failure surfaces through result()
            torch.set_num_threads(self._threads)
