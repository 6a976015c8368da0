"""Many seeds of `estimate` in one pass: `estimate(..., seeds=S)` trains S independent critics as one stacked network.

Each seed keeps everything that makes it that seed (`estimate._Run`): its generator, its split of fixed samples, its
batches and derangements, its network initialisation, its validation reads and early stopping, its non-finite
stop. What is shared is the arithmetic: the S critics' (and estimators') parameters are stacked into `[S, ...]`
tensors (`torch.func.stack_module_state`), one `torch.func.vmap` of `functional_call` scores all S batches, and
one Adam steps the stacked parameters. Adam is elementwise, so the stacked optimiser is S optimisers; gradient
clipping is per seed. A seed differs from its one-seed run only by the rounding of batched matmuls.

What cannot be stacked runs its seeds one after another through the same `_Run`s, with the same numbers as
`seeds=None` at each seed: proposal-based estimators (their scores draw proposal samples and MCMC chains inside the
estimator), critics without parameters, and estimators whose loss branches on tensor values in Python, which
`vmap` refuses (found at the first step; MINE's moving average is a select, and stacks).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from .critics import derangement, score_matrix
from .scores import Scores

if TYPE_CHECKING:
    from .estimate import _Run

__all__ = ["train_stacked"]


class _Pair(nn.Module):
    """One seed's critic and estimator as one module, so that one `functional_call` swaps both's parameters.
    `forward(x [B, dx], y [B, dy], sigma [B])` -> `(loss, value, positive [B], negative [B, K])`; with
    `read=True` -> `(value, positive, negative)` without the loss (the averaged critic's estimate)."""

    def __init__(self, critic: nn.Module, est: nn.Module, kind: str) -> None:
        super().__init__()
        self.critic, self.est, self.kind = critic, est, kind

    def forward(self, x: Tensor, y: Tensor, sigma: Tensor, read: bool = False) -> tuple[Tensor, ...]:
        if self.kind == "all-pairs":
            m = score_matrix(self.critic, x, y)
            n = m.shape[0]
            # as `Scores.from_matrix`, without its finiteness check (a tensor-valued branch vmap refuses)
            positive, negative = m.diagonal(), m.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)
        else:  # derangement: as `derangement_scores`, with the derangement drawn outside
            positive, negative = self.critic(x, y), self.critic(x, y.index_select(0, sigma)).unsqueeze(1)
        s = Scores(positive, negative, validate=False)
        if read:
            return self.est.bound(s), positive, negative
        loss = self.est.loss(s)
        with torch.no_grad():
            value = self.est.bound(s)
        return loss, value, positive, negative


def train_stacked(runs: list[_Run], steps: int, show: bool) -> bool:
    """Train every run for `steps` steps (or until it stops) as one stacked pass; False (nothing trained, every
    generator as it was) when the runs cannot be stacked (module docstring)."""
    first = runs[0]
    if first.kind == "proposal" or not isinstance(first.net, nn.Module) or not first.params:
        return False
    states = [run.generator.get_state() for run in runs]
    try:
        _Stacked(runs).train(steps, show)
    except _NotVectorisable:
        for run, state in zip(runs, states):  # refused at the first step, before any update
            run.generator.set_state(state)
        return False
    return True


class _NotVectorisable(Exception):
    """`vmap` refused the estimator's loss at the first step (before any update)."""


class _Stacked:
    """The S runs' critics and estimators as stacked parameters, one vmapped pass and one Adam per step."""

    def __init__(self, runs: list[_Run]) -> None:
        self.runs = runs
        first = runs[0]
        self.kind = first.kind
        pairs = [_Pair(run.net, run.est, run.kind) for run in runs]
        self.base = copy.deepcopy(pairs[0]).to("meta")
        params, self.buffers = stack_module_state(pairs)
        # the trainable ones are stepped; frozen ones (a fixed baseline) ride along as constants
        trainable = {name for name, p in pairs[0].named_parameters() if p.requires_grad}
        self.params = {k: v for k, v in params.items() if k in trainable}
        self.frozen = {k: v.detach() for k, v in params.items() if k not in trainable}
        # Adam is elementwise: one over the stacked parameters is S of them (foreach: one kernel per group)
        self.opt = torch.optim.Adam(list(self.params.values()), lr=first.lr, foreach=True)
        self.max_grad_norm = first.max_grad_norm
        self.averaged: dict[str, Tensor] | None = None
        if first.averaged is not None:
            # the averages of the critics' parameters and buffers, named as the pair's critic entries
            avg, avg_buffers = stack_module_state([run.averaged.average for run in runs])  # type: ignore[union-attr]
            self.averaged = {f"critic.{k}": v.detach() for k, v in avg.items()}
            self.avg_buffers = {f"critic.{k}": v for k, v in avg_buffers.items()}
            self.decay = first.averaged.decay
        self.live = list(range(len(runs)))  # the seeds still training

    # -- one step ---------------------------------------------------------------------------------------------
    def _call(self, x: Tensor, y: Tensor, sigma: Tensor, averaged: bool = False) -> tuple[Tensor, ...]:
        """The S seeds' step on `x [S, B, dx]`, `y [S, B, dy]`, `sigma [S, B]` in one vmapped pass; `averaged`:
        the estimate through the averaged critics (the trained estimators' own parameters and state)."""
        params, buffers = {**self.params, **self.frozen}, self.buffers
        if averaged:
            params, buffers = {**params, **self.averaged}, {**buffers, **self.avg_buffers}  # type: ignore[dict-item]

        def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor, sigma: Tensor) -> Any:
            return functional_call(self.base, (p, b), (x, y, sigma), {"read": averaged})

        with warnings.catch_warnings(), torch.no_grad() if averaged else contextlib.nullcontext():
            # an op without a batching rule (interpolated's scatter_) runs per seed inside vmap: slower, correct
            warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
            return vmap(one)(params, buffers, x, y, sigma)

    def train(self, steps: int, show: bool) -> None:
        runs = self.runs
        bar = tqdm(
            range(steps), disable=not show, desc=f"estimate[{runs[0].est.name} x{len(runs)}]", leave=False
        )
        for step in bar:
            # every seed draws its batch and derangement from its own generator, as its one-seed run does
            drawn = [run.batch(step) for run in runs]
            x = torch.stack([d[0] for d in drawn])
            y = torch.stack([d[1] for d in drawn])
            b = x.shape[1]
            if self.kind == "derangement":
                sigma = torch.stack([derangement(b, run.generator).to(x.device) for run in runs])
            else:
                sigma = torch.zeros(len(runs), b, dtype=torch.long, device=x.device)
            try:
                loss, value, positive, negative = self._call(x, y, sigma)
                if self.averaged is not None:
                    value, avg_pos, avg_neg = self._call(x, y, sigma, averaged=True)
            except RuntimeError as e:
                if step == 0 and "vmap" in str(e):
                    raise _NotVectorisable(str(e)) from e
                raise
            problems = _score_problems(positive, negative)
            if self.averaged is not None:
                problems = [p or q for p, q in zip(problems, _score_problems(avg_pos, avg_neg))]
            values, losses = value.tolist(), loss.detach().tolist()
            for s, (v, lo, bad) in enumerate(zip(values, losses, problems)):
                if bad is None and not math.isfinite(v):
                    problems[s] = f"non-finite estimate {v}"
                elif bad is None and not math.isfinite(lo):
                    problems[s] = f"non-finite loss {lo}"
            self.opt.zero_grad(set_to_none=True)
            # seeds that already stopped (or stop now) take no part in the gradient
            keep = torch.tensor([s in self.live and problems[s] is None for s in range(len(runs))])
            torch.where(keep, loss, torch.zeros_like(loss)).sum().backward()
            for s, bad in enumerate(_gradient_problems(self.params, len(runs))):
                if problems[s] is None and bad is not None:
                    problems[s] = bad
            stopping = [s for s in self.live if problems[s] is not None]
            for s in stopping:  # before this step's update, as the one-seed run stops
                self._put_back(s)
                runs[s].stop(step, steps, problems[s])  # type: ignore[arg-type]
            self.live = [s for s in self.live if problems[s] is None]
            if not self.live:
                break
            if self.max_grad_norm is not None:
                _clip_per_seed(self.params, len(runs), self.max_grad_norm)
            self.opt.step()
            if self.averaged is not None:
                self._update_averages()
            if show and step % 50 == 0:
                bar.set_postfix(mi=f"{sum(values[s] for s in self.live) / len(self.live):.3f}")
            done = []
            for s in self.live:
                if runs[s].reads_modules(step):
                    self._put_back(s)  # a validation read or a callback uses the seed's own modules
                if runs[s].record(step, values[s], drawn[s][2]):
                    done.append(s)  # patience exhausted
            self.live = [s for s in self.live if s not in done]
            if not self.live:
                break
        bar.close()
        for s in self.live:
            self._put_back(s)

    # -- bookkeeping --------------------------------------------------------------------------------------------
    def _put_back(self, s: int) -> None:
        """Seed `s`'s slice of the stacked state into its own critic, estimator (and average)."""
        run = self.runs[s]
        pair = _Pair(run.net, run.est, run.kind)
        stacked = {**self.params, **self.frozen}
        with torch.no_grad():
            for name, t in pair.named_parameters():
                t.copy_(stacked[name][s])
            for name, t in pair.named_buffers():
                t.copy_(self.buffers[name][s])
            if self.averaged is not None:
                for name, t in run.averaged.average.named_parameters():  # type: ignore[union-attr]
                    t.copy_(self.averaged[f"critic.{name}"][s])

    @torch.no_grad()
    def _update_averages(self) -> None:
        """`AveragedCritic.update` for every seed at once: each average moves toward its trained critic."""
        for name, avg in self.averaged.items():  # type: ignore[union-attr]
            trained = self.params.get(name)
            avg.lerp_(self.frozen[name] if trained is None else trained.detach(), 1.0 - self.decay)


def _score_problems(positive: Tensor, negative: Tensor) -> list[str | None]:
    """Per seed, what is non-finite among its scores `positive [S, B]`, `negative [S, B, K]` (None: all finite)."""
    n = positive.shape[0]
    fields = (("positive", positive.detach()), ("negative", negative.detach()))
    finite = torch.stack([torch.isfinite(t).reshape(n, -1).all(1) for _, t in fields], 1)  # [S, 2]
    if bool(finite.all()):
        return [None] * n
    out: list[str | None] = [None] * n
    for s in range(n):
        for f, (name, t) in enumerate(fields):
            if out[s] is None and not bool(finite[s, f]):
                idx = tuple(int(i) for i in (~torch.isfinite(t[s])).nonzero()[0])
                out[s] = (
                    f"non-finite critic scores: Scores.{name} has a non-finite value {t[s][idx].item()} at index {idx}"
                )
    return out


def _gradient_problems(params: dict[str, Tensor], n: int) -> list[str | None]:
    """Per seed, the first parameter (by position) whose gradient is non-finite, or None."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    if not grads:
        return [None] * n
    finite = torch.stack([torch.isfinite(g).reshape(n, -1).all(1) for g in grads], 1)  # [S, P]
    if bool(finite.all()):
        return [None] * n
    return [
        None
        if bool(row.all())
        else f"non-finite gradient in parameter {int((~row).nonzero()[0])} (of {len(grads)} with gradients)"
        for row in finite
    ]


@torch.no_grad()
def _clip_per_seed(params: dict[str, Tensor], n: int, max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_` for each seed's slice: its global L2 norm over its own gradients."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(n, -1), 2, dim=1) for g in grads], 1)  # [S, P]
    coef = torch.clamp(max_norm / (torch.linalg.vector_norm(norms, 2, dim=1) + 1e-6), max=1.0)  # [S]
    for g in grads:
        g.mul_(coef.view(n, *([1] * (g.dim() - 1))))
