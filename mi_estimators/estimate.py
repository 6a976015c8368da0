"""`estimate`: train a critic (and proposal) with any estimator on a task or on samples; return the history."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .critics import BilinearCritic, ConcatCritic, SeparableCritic, all_pairs_scores
from .registry import Estimator, make

CRITICS: dict[str, type[nn.Module]] = {
    "separable": SeparableCritic,
    "concat": ConcatCritic,
    "bilinear": BilinearCritic,
}


@dataclass
class History:
    """What `estimate` returns: per-step estimates (nats) on the training batch, and the truth when known."""

    estimator: str
    estimates: list[float] = field(default_factory=list)
    true_mi: list[float] | None = None
    critic: nn.Module | None = None
    module: Estimator | None = None

    def final(self, window: int = 100) -> float:
        """Mean estimate over the last `window` steps (nats): the number to quote for a converged run."""
        if not self.estimates:
            raise ValueError("the history is empty: no step was run")
        tail = self.estimates[-window:]
        return sum(tail) / len(tail)


def _make_critic(critic: nn.Module | Callable | str, x_dim: int, y_dim: int, options: dict[str, Any]) -> Any:
    if isinstance(critic, str):
        if critic not in CRITICS:
            raise ValueError(f"unknown critic {critic!r}; available: {sorted(CRITICS)} (or pass a module)")
        return CRITICS[critic](x_dim, y_dim, **options)
    if options:
        raise ValueError("critic_options only apply when critic is given by name")
    if not callable(critic):
        raise TypeError(f"critic must be a name, an nn.Module or a callable; got {type(critic).__name__}")
    return critic


def estimate(
    estimator: str | Estimator,
    task: Any = None,
    *,
    x: Tensor | None = None,
    y: Tensor | None = None,
    critic: nn.Module | Callable | str = "separable",
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 5e-4,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    critic_options: dict[str, Any] | None = None,
    estimator_options: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> History:
    """Train a critic with `estimator` and return the history of its estimates (nats).

    Data comes from `task` (an object with `.sample(n, generator=)`, `.mi`, `.dim_x`, `.dim_y`, and optionally
    `.entropy_y`), from a callable `task(step) -> task` (a schedule such as the MI staircase), or from fixed samples
    `x [M, dx]`, `y [M, dy]` drawn from in minibatches. Score-based estimators see the all-pairs `[B, B]` matrix of
    each minibatch; proposal-based ones (`needs_proposal`) build their own scores with `estimator.scores(...)`.

    Args:
        estimator: a registered name or an `Estimator`.
        critic: "separable" | "concat" | "bilinear", a module, or any callable critic (a fixed critic trains
            nothing but the estimator's own parameters, if any).
        steps, batch_size, lr: Adam on all parameters of critic and estimator.
        seed / generator: network initialisation uses `seed`, every data draw the generator (seeded by `seed` when
            not given); the same seed gives the same history, and the global RNG is left untouched. `seed=None`
            draws fresh entropy.
        progress: tqdm bar; default on only when stderr is a terminal.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (negatives come from the batch); got {batch_size}")
    if (task is None) == (x is None or y is None):
        raise ValueError("give either a task (or a schedule step -> task) or both x and y")
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # fresh entropy: seed=None asks for a non-reproducible run
        else:
            generator.manual_seed(seed)

    schedule = task if callable(task) and not hasattr(task, "sample") else None
    first = schedule(0) if schedule is not None else task
    if first is not None:
        x_dim, y_dim = first.dim_x, first.dim_y
    else:
        if x.shape[0] != y.shape[0] or x.dim() != 2 or y.dim() != 2:  # type: ignore[union-attr]
            raise ValueError(
                f"x and y must be [M, dx] and [M, dy] with the same M; got {tuple(x.shape)} and {tuple(y.shape)}"  # type: ignore[union-attr]
            )
        x_dim, y_dim = x.shape[1], y.shape[1]  # type: ignore[union-attr]

    if estimator_options and not isinstance(estimator, str):
        raise ValueError("estimator_options only apply when estimator is given by name")
    # Networks are initialised from `seed` without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        est = make(estimator, **(estimator_options or {})) if isinstance(estimator, str) else estimator
        if est.needs_proposal:
            ensure = getattr(est, "ensure_proposal", None)
            if callable(ensure):
                ensure(x_dim, y_dim)
        net = _make_critic(critic, x_dim, y_dim, critic_options or {})
    modules = [m for m in (net, est) if isinstance(m, nn.Module)]
    for m in modules:
        m.to(device)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if params else None

    history = History(estimator=est.name, true_mi=[] if first is not None else None, critic=net, module=est)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(range(steps), disable=not show, desc=f"estimate[{est.name}]", leave=False)
    for step in bar:
        current = schedule(step) if schedule is not None else task
        if current is not None:
            xb, yb = current.sample(batch_size, generator=generator)
            history.true_mi.append(float(current.mi))  # type: ignore[union-attr]
        else:
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)  # type: ignore[union-attr]
            xb, yb = x[idx], y[idx]  # type: ignore[index]
        xb, yb = xb.to(device), yb.to(device)
        if est.needs_proposal:
            entropy = getattr(current, "entropy_y", None) if current is not None else None
            s = est.scores(xb, yb, net, generator=generator, marginal_entropy=entropy)  # type: ignore[attr-defined]
        else:
            s = all_pairs_scores(net, xb, yb)
        loss = est.loss(s)
        with torch.no_grad():  # the reported estimate is the bound on this batch, before the step
            value = float(est.bound(s))
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.estimates.append(value)
        if show and step % 50 == 0:
            bar.set_postfix(mi=f"{value:.3f}")
    bar.close()
    return history
