"""`estimate`: train a critic (and proposal) with any estimator on a task or on samples; return the history."""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Mapping
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


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")


def _check_samples(x: Any, y: Any) -> None:
    """Fixed samples: floating tensors `x [M, dx]`, `y [M, dy]`, same M >= 2, dx, dy >= 1, every entry finite."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape [M, d{name}]; got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(
                f"{name} must have a floating dtype (e.g. {name}.float()); got {t.dtype} with shape "
                f"{tuple(t.shape)}"
            )
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must be [M, dx] and [M, dy] with the same M; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    for name, t in (("x", x), ("y", y)):
        if t.shape[0] < 2 or t.shape[1] < 1:
            raise ValueError(
                f"{name} must have at least 2 samples (negatives come from the other samples) and at least one "
                f"feature; got shape {tuple(t.shape)}"
            )
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            idx = tuple(int(i) for i in (~finite).nonzero()[0])
            raise ValueError(f"{name} has a non-finite value {t[idx].item()} at index {idx}")


def _check_arguments(
    estimator: Any,
    steps: Any,
    batch_size: Any,
    lr: Any,
    seed: Any,
    generator: Any,
    progress: Any,
    critic_options: Any,
    estimator_options: Any,
    device: Any,
) -> torch.device:
    """Types and ranges of `estimate`'s scalar arguments; returns the device."""
    if not isinstance(estimator, (str, Estimator)):
        raise TypeError(
            f"estimator must be a registered name or an Estimator; got {type(estimator).__name__}"
        )
    _check_int("steps", steps, 1)
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 2:
        raise ValueError(
            f"batch_size must be an int >= 2 (negatives come from the batch); got {batch_size!r}"
        )
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number; got {lr!r}")
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise ValueError(f"seed must be an int or None; got {seed!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None; got {progress!r}")
    for name, options in (("critic_options", critic_options), ("estimator_options", estimator_options)):
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"{name} must be a dict of keyword options or None; got {type(options).__name__}")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be a torch.device or a device string such as 'cpu'; got {device!r}"
        ) from e


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

    Fixed samples must be floating tensors `x [M, dx]`, `y [M, dy]` with the same M >= 2 and finite entries; the
    minibatches are cast to the dtype of the trained networks (float32 for the critics built by name).

    Raises:
        TypeError: an argument of the wrong type (x or y not a floating tensor, estimator neither a name nor an
            Estimator, a task without `sample`, ...); the message names the argument and the dtype or type found.
        ValueError: a value out of range or of the wrong kind (steps, batch_size, lr, seed, ...), x/y of the wrong
            shape or with a non-finite entry; the message names the argument and the value or shape found.
    """
    device = _check_arguments(
        estimator, steps, batch_size, lr, seed, generator, progress, critic_options, estimator_options, device
    )
    if (task is None) == (x is None or y is None):
        raise ValueError("give either a task (or a schedule step -> task) or both x and y")
    if task is None:
        _check_samples(x, y)
    elif not (hasattr(task, "sample") or callable(task)):
        raise TypeError(
            f"task must have .sample(n, generator=) (or be a schedule step -> task); got {type(task).__name__}"
        )
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # fresh entropy: seed=None asks for a non-reproducible run
        else:
            generator.manual_seed(seed)

    schedule = task if callable(task) and not hasattr(task, "sample") else None
    first = schedule(0) if schedule is not None else task
    if first is not None:
        missing = [a for a in ("sample", "dim_x", "dim_y", "mi") if not hasattr(first, a)]
        if missing:
            what = "the schedule's task at step 0" if schedule is not None else "task"
            raise TypeError(f"{what} lacks {missing} (a task has .sample, .dim_x, .dim_y, .mi)")
        x_dim, y_dim = first.dim_x, first.dim_y
    else:
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
    # minibatches in the networks' dtype (float64 or half samples through float32 networks); a critic without
    # parameters (a fixed callable) sees the data's own dtype
    work_dtype = next((p.dtype for m in modules for p in m.parameters() if p.is_floating_point()), None)
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
        xb, yb = xb.to(device=device, dtype=work_dtype), yb.to(device=device, dtype=work_dtype)
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
