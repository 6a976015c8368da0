"""`estimate`: train a critic (and proposal) with any estimator on a task or on samples; return the history.
`evaluate`: the estimate of a trained critic on held-out samples, batch by batch (no gradient).

On fixed samples `estimate` answers on data the critic never saw: it splits off a validation and a test part,
keeps the critic with the lowest validation loss (early stopping with patience), and reports that critic's test
estimate (`History.result`, with its standard error) — a critic trained and read on the same sample memorises it.

A run that meets a non-finite score, estimate, loss or gradient stops at that step without applying it, warns
(`RuntimeWarning`) and returns its `History` so far: `History.stopped_at` is the step (0-based; the history holds
the `stopped_at` steps before it, and the critic their updates), `History.error` says what was non-finite.
"""

from __future__ import annotations

import copy
import math
import numbers
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._samples import (
    EpochBatches,
    as_samples,
    check_samples,
    split_sizes,
    standard_error,
    warn_constant_columns,
)
from .critics import (
    AveragedCritic,
    BilinearCritic,
    ConcatCritic,
    HybridCritic,
    SeparableCritic,
    all_pairs_scores,
    derangement_scores,
    score_matrix,
)
from .options import require_generator, require_int, require_number
from .registry import Estimator, make
from .samplers import NonFiniteChainError
from .scores import NonFiniteScoresError, Scores

#: the negatives a score-based estimator can be trained and evaluated with
NEGATIVES = ("all-pairs", "derangement")

#: fixed samples: the parts held out by default (validation selects the critic, test gives the answer), and the
#: validation estimates without improvement that stop training; torch-mist's defaults are of this size
VALID_FRACTION, TEST_FRACTION, PATIENCE = 0.1, 0.2, 10

#: the delete-a-group jackknife of `evaluate` leaves out one of this many groups of each batch in turn
JACKKNIFE_GROUPS = 16

#: The estimator we recommend by default: `estimate(task=..., **RECOMMENDED)`. GAN-DIME (one derangement per
#: sample) on the hybrid critic, gradients clipped to norm 1, its estimates read through a Polyak average of the
#: critic (decay 0.99). On f-DIME's staircase protocol it is at or below the MSE of f-DIME's own GAN estimator at
#: every level of the Gaussian d=5 and d=20 staircases and of the cubic one (benchmarks/results/fdime.md,
#: docs/benchmarks.md "Against f-DIME"). On heavy-tailed data (Student-t) its separable half overestimates; there use
#: `{**RECOMMENDED, "critic": "concat"}` (docs/benchmarks.md "Which estimator when").
RECOMMENDED: Mapping[str, Any] = MappingProxyType(
    {"estimator": "gan-dime", "critic": "hybrid", "average": 0.99, "max_grad_norm": 1.0}
)

CRITICS: dict[str, type[nn.Module]] = {
    "separable": SeparableCritic,
    "concat": ConcatCritic,
    "bilinear": BilinearCritic,
    "hybrid": HybridCritic,
}


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` returns: the estimate of a critic on held-out samples, batch by batch (nats).

    Attributes:
        mean: the mean of the batch estimates (nats) — the number to quote; `float(evaluation)` is this.
        std: their standard deviation across batches (ddof=1; NaN with a single batch).
        values: the per-batch estimates, in batch order.
        batch_size: the samples per batch B.
        negatives: "all-pairs", "derangement", or "proposal" (a proposal-based estimator's own negatives).
        stderr: the standard error of `mean` (nats): the square root of the sum over batches of each batch's
            delete-a-group jackknife variance (`JACKKNIFE_GROUPS` groups; an all-pairs group leaves out its
            samples' rows and columns, a derangement or proposal group its rows), divided by the number of
            batches. Defined with a single batch too (NaN for batches of fewer than 4 samples, or where a
            jackknife replicate is non-finite).
    """

    mean: float
    std: float
    values: tuple[float, ...]
    batch_size: int
    negatives: str
    stderr: float = math.nan

    def __float__(self) -> float:
        return self.mean

    @property
    def n_batches(self) -> int:
        return len(self.values)


@dataclass
class History:
    """What `estimate` returns: per-step estimates (nats) on the training batch, and the truth when known.

    Attributes:
        estimator: the estimator's registered name.
        estimates: `estimates[i]` is the bound on step i's batch, before step i's update (nats).
        true_mi: the task's MI at each step (nats), or None for fixed samples.
        critic, module: the trained critic and estimator (with its proposal, for proposal-based estimators); with
            `estimate(average=...)`, `critic` is the `AveragedCritic` the estimates were read through.
        stopped_at: None for a run that did all its steps; else the step (0-based) whose scores, estimate, loss or
            gradient was non-finite. That step's update was not applied, so `critic` holds the parameters after the
            `stopped_at` finite steps recorded in `estimates`.
        error: what was non-finite at `stopped_at` (None when the run completed).
        negatives: the negatives the training used ("all-pairs", "derangement", or "proposal").
        batch_size: the training batch size (the default batch size of `evaluate` / `heldout`).
        task: the task trained on, when one task (not a schedule or fixed samples) was given.
        result: fixed samples with a test part: the `Evaluation` of the selected critic on the test part, the
            answer (`final()` returns its mean, `result.stderr` its standard error); None otherwise.
        validation: fixed samples with a validation part: `(updates, estimate, loss)` on the validation part after
            every `eval_every` updates (and before the first); the critic with the lowest loss is selected.
        best_step: the number of updates the selected critic had (the critic and estimator hold that state);
            None without a validation part.
        seed: the seed the run was made with (None for `seed=None`).
    """

    estimator: str
    estimates: list[float] = field(default_factory=list)
    true_mi: list[float] | None = None
    critic: nn.Module | None = None
    module: Estimator | None = None
    stopped_at: int | None = None
    error: str | None = None
    negatives: str | None = None
    batch_size: int | None = None
    task: Any = None
    result: Evaluation | None = None
    validation: list[tuple[int, float, float]] = field(default_factory=list)
    best_step: int | None = None
    seed: int | None = None

    def final(self, window: int = 100) -> float:
        """The number to quote (nats): for a run on fixed samples with a test part, the test estimate of the
        selected critic (`result.mean`); otherwise the mean training estimate over the last `window` steps."""
        if self.result is not None:
            return self.result.mean
        if not self.estimates:
            raise ValueError("the history is empty: no step was run")
        tail = self.estimates[-window:]
        return sum(tail) / len(tail)

    def _trained(self) -> tuple[Estimator, Any]:
        if self.module is None or self.critic is None:
            raise ValueError(
                "this History has no trained critic and estimator (History.critic / History.module)"
            )
        return self.module, self.critic

    def evaluate(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int | None = None,
        negatives: str | None = None,
        generator: torch.Generator | None = None,
        estimator: str | Estimator | None = None,
        marginal_entropy: float | Tensor | None = None,
    ) -> Evaluation:
        """`evaluate` the trained critic on held-out samples `x [M, dx]`, `y [M, dy]` (nats).

        Defaults: the trained estimator (or another one, by name or instance, reading the same critic), the training
        batch size and the training negatives, and for proposal-based estimators the training task's `entropy_y` as
        the marginal entropy. See `mie.evaluate` for the arguments."""
        module, critic = self._trained()
        if marginal_entropy is None and self.task is not None:
            marginal_entropy = _entropy_of(self.task)
        if negatives is None and estimator is None and self.negatives in NEGATIVES:
            negatives = self.negatives
        return evaluate(
            module if estimator is None else estimator,
            critic,
            x,
            y,
            batch_size=batch_size or self.batch_size or 256,
            negatives=negatives,
            generator=generator,
            marginal_entropy=marginal_entropy,
        )

    def heldout(
        self,
        task: Any = None,
        n: int = 4096,
        *,
        batch_size: int | None = None,
        negatives: str | None = None,
        generator: torch.Generator | None = None,
        estimator: str | Estimator | None = None,
    ) -> Evaluation:
        """`evaluate` the trained critic on `n` fresh samples of `task` (default: the task trained on), drawn from
        `generator` (fresh entropy when None: a generator seeded like the training one would redraw the training
        batches). The task's `entropy_y`, when it has one, is the marginal entropy of proposal-based estimators.
        A run on fixed samples has no task: without one, its held-out answer is the test part's (`result`)."""
        if task is None and self.result is not None:
            return self.result
        if task is None:
            task = self.task
        if task is None or not hasattr(task, "sample"):
            raise ValueError(
                "heldout needs a task with .sample(n, generator=): pass one (the run was trained on a schedule or "
                f"on fixed samples, or the task has no sample); got {task!r}"
            )
        require_int("n", n, 2)
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        x, y = task.sample(n, generator=generator)
        return self.evaluate(
            x,
            y,
            batch_size=batch_size,
            negatives=negatives,
            generator=generator,
            estimator=estimator,
            marginal_entropy=_entropy_of(task),
        )


def _entropy_of(task: Any) -> float | None:
    """`task.entropy_y` (nats) when the task has a closed form, else None."""
    try:
        return float(task.entropy_y)
    except (AttributeError, TypeError):
        return None


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
    require_int("steps", steps, 1)
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 2:
        raise ValueError(
            f"batch_size must be an int >= 2 (negatives come from the batch); got {batch_size!r}"
        )
    require_number("lr", lr, 0.0, low_open=True, what="a positive finite number")
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise ValueError(f"seed must be an int or None; got {seed!r}")
    require_generator(generator)
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None; got {progress!r}")
    for name, options in (("critic_options", critic_options), ("estimator_options", estimator_options)):
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"{name} must be a dict of keyword options or None; got {type(options).__name__}")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be a torch.device or a device string such as 'cpu'; got {device!r}"
        ) from e
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: this torch build or machine has no CUDA device; use device='cpu'"
        )
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use device='cpu'")
    return chosen


def _check_negatives(negatives: Any, est: Estimator) -> str:
    """The negatives to build for `est`: its own for a proposal-based estimator ("proposal"), else `negatives`
    (checked) or the estimator's default (`Estimator.negatives`)."""
    if negatives is not None and (not isinstance(negatives, str) or negatives not in NEGATIVES):
        raise ValueError(f"negatives must be one of {list(NEGATIVES)} or None; got {negatives!r}")
    if est.needs_proposal:
        if negatives is not None:
            raise ValueError(
                f"negatives={negatives!r} does not apply to {est.name!r}: a proposal-based estimator draws its "
                "negatives from its proposal q(y|x)"
            )
        return "proposal"
    chosen = negatives if negatives is not None else getattr(est, "negatives", "all-pairs")
    if chosen not in NEGATIVES:
        raise ValueError(
            f"estimator {est.name!r} declares negatives={chosen!r}; expected one of {list(NEGATIVES)}"
        )
    return chosen


def _batch_scores(
    est: Estimator,
    critic: Any,
    x: Tensor,
    y: Tensor,
    negatives: str,
    generator: torch.Generator | None,
    marginal_entropy: float | Tensor | None,
    tilted: bool = True,
) -> Scores:
    """The `Scores` of one joint batch `x [B, dx]`, `y [B, dy]` for `est` with the chosen negatives."""
    if negatives == "proposal":
        kwargs: dict[str, Any] = {"generator": generator, "marginal_entropy": marginal_entropy}
        if not tilted and est.chain_optional_for_value:
            kwargs["tilted"] = False
        return est.scores(x, y, critic, **kwargs)  # type: ignore[attr-defined]
    if negatives == "derangement":
        return derangement_scores(critic, x, y, generator=generator)
    return all_pairs_scores(critic, x, y)


def _work_dtype(modules: list[nn.Module]) -> torch.dtype | None:
    return next((p.dtype for m in modules for p in m.parameters() if p.is_floating_point()), None)


def evaluate(
    estimator: str | Estimator,
    critic: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 256,
    negatives: str | None = None,
    generator: torch.Generator | None = None,
    marginal_entropy: float | Tensor | None = None,
) -> Evaluation:
    """The estimate of a trained `critic` on held-out samples, as torch-mist evaluates: the estimator's `bound` on
    consecutive batches of B = `batch_size` samples, without gradients, averaged over the batches (nats).

    Args:
        estimator: a registered name or an `Estimator` (a proposal-based one brings its trained proposal; its
            Monte Carlo value is used, with no MCMC chains).
        critic: `critic(x [..., dx], y [..., dy]) -> [...]`, nats (an `nn.Module` is put in eval mode for the
            evaluation and restored after).
        x: `[M, dx]`, y: `[M, dy]` joint samples (floating, finite, M >= batch_size); they are cast to the critic's
            parameter dtype and device. The M - B floor(M / B) samples after the last full batch are not used.
        batch_size: B >= 2 (the bound of an all-pairs batch depends on B: InfoNCE is capped at log B; use the
            training batch size to compare with the training estimates).
        negatives: "all-pairs" or "derangement" (score-based estimators); None is the estimator's default
            (derangement for the f-DIME family, all pairs otherwise).
        generator: draws the derangements and proposal negatives (fresh entropy when None; the global RNG is not
            touched).
        marginal_entropy: H(Y) in nats, for proposal-based estimators (else their constructor's option).

    Returns:
        `Evaluation(mean, std, values, batch_size, negatives)`; `float(result)` is the mean.

    Raises:
        TypeError / ValueError: bad arguments, named (as `estimate`); `NonFiniteScoresError` (a ValueError) when the
            critic gives a non-finite score on a batch.
    """
    if not isinstance(estimator, (str, Estimator)):
        raise TypeError(
            f"estimator must be a registered name or an Estimator; got {type(estimator).__name__}"
        )
    if not callable(critic):
        raise TypeError(f"critic must be callable (x, y) -> scores; got {type(critic).__name__}")
    x, y = as_samples("x", x), as_samples("y", y)
    check_samples(x, y)
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 2:
        raise ValueError(
            f"batch_size must be an int >= 2 (negatives come from the batch); got {batch_size!r}"
        )
    m = x.shape[0]
    if m < batch_size:
        raise ValueError(
            f"x and y hold {m} samples, fewer than one batch of batch_size={batch_size}; pass more samples or a "
            "smaller batch_size"
        )
    require_generator(generator)
    est = make(estimator) if isinstance(estimator, str) else estimator
    kind = _check_negatives(negatives, est)
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    return _read(est, critic, x, y, int(batch_size), kind, generator, marginal_entropy, stderr=True)[0]


def _read(
    est: Estimator,
    critic: Any,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    kind: str,
    generator: torch.Generator,
    marginal_entropy: float | Tensor | None,
    *,
    stderr: bool = False,
    with_loss: bool = False,
) -> tuple[Evaluation, float]:
    """`evaluate` on checked arguments: with `stderr` the jackknife standard error (else NaN: a validation read
    needs none), with `with_loss` the mean of the estimator's `loss` over the batches (else NaN), which early
    stopping selects the critic by."""
    m = x.shape[0]
    modules = [mod for mod in (critic, est) if isinstance(mod, nn.Module)]
    dtype = _work_dtype(modules) or x.dtype
    device = next((p.device for mod in modules for p in mod.parameters()), x.device)
    training = [(mod, mod.training) for mod in modules]
    values: list[float] = []
    variances: list[float] = []
    losses: list[float] = []
    try:
        for mod in modules:
            mod.eval()
        with torch.no_grad():
            for start in range(0, m - batch_size + 1, batch_size):
                xb = x[start : start + batch_size].to(device=device, dtype=dtype)
                yb = y[start : start + batch_size].to(device=device, dtype=dtype)
                value, variance, loss = _batch_estimate(
                    est, critic, xb, yb, kind, generator, marginal_entropy, stderr, with_loss
                )
                values.append(value)
                variances.append(variance)
                losses.append(loss)
    finally:
        for mod, was_training in training:
            mod.train(was_training)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    evaluation = Evaluation(
        mean=mean,
        std=std,
        values=tuple(values),
        batch_size=batch_size,
        negatives=kind,
        stderr=standard_error(variances),
    )
    return evaluation, sum(losses) / len(losses)


def _batch_estimate(
    est: Estimator,
    critic: Any,
    x: Tensor,
    y: Tensor,
    kind: str,
    generator: torch.Generator,
    marginal_entropy: float | Tensor | None,
    stderr: bool,
    with_loss: bool,
) -> tuple[float, float, float]:
    """The bound on one held-out batch `x [B, dx]`, `y [B, dy]` (nats), with `stderr` its delete-a-group jackknife
    variance, and with `with_loss` the estimator's loss on it (each NaN when not asked for).

    The loss is what the critic trains on (for f-DIME the f-divergence objective, whose readout `bound` is no
    bound at all); its estimator's state (MINE's moving average) is put back after it. A proposal-based
    estimator's loss may need MCMC chains that a held-out read does not run: it reads `-bound` instead.

    A bound is not a mean over rows (DV's and InfoNCE's logs, all-pairs negatives that share every y), so its
    variance comes from leaving out each of G groups of samples in turn: the bound without group g is read from the
    same scores (no new critic pass, no new draw), and `var = (G-1)/G * sum_g (b_g - mean_g b_g)^2`. An all-pairs
    group leaves out its samples' x and y (their rows and columns of the matrix: every row meets every y); with
    derangement or proposal negatives a row meets one or no other sample, and a group leaves out its rows.
    (Dropping every derangement pair that touches a group would drop twice the rows and overstate the standard
    error of f-DIME's readout, a plain mean over rows, by ~50%: 0.139 against a spread of 0.092.)"""
    n = x.shape[0]
    if kind == "all-pairs":
        matrix = score_matrix(critic, x, y)
        s = Scores.from_matrix(matrix)

        def without(keep: Tensor) -> Scores:
            kept = keep.nonzero().squeeze(1)
            return Scores.from_matrix(matrix.index_select(0, kept).index_select(1, kept))

    else:
        s = _batch_scores(est, critic, x, y, kind, generator, marginal_entropy, tilted=False)

        def without(keep: Tensor) -> Scores:
            return s.rows(keep)

    value = float(est.bound(s))
    loss = math.nan
    if with_loss and kind == "proposal":
        loss = -value
    elif with_loss:
        kept = _buffers(est)
        loss = float(est.loss(s))
        _put_back(est, kept)
    if not stderr or n < 4:
        return value, math.nan, loss
    groups = min(n, JACKKNIFE_GROUPS)
    member = torch.arange(n, device=x.device) % groups
    replicates = torch.tensor(
        [float(est.bound(without(member != g))) for g in range(groups)], dtype=torch.float64
    )
    if not bool(torch.isfinite(replicates).all()):
        return value, math.nan, loss
    return value, float((groups - 1) / groups * ((replicates - replicates.mean()) ** 2).sum()), loss


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
    negatives: str | None = None,
    average: float | AveragedCritic | None = None,
    max_grad_norm: float | None = None,
    valid_fraction: float | None = None,
    test_fraction: float | None = None,
    patience: int | None = None,
    eval_every: int | None = None,
    seeds: int | list[int] | None = None,
    callback: Callable[[int, History], None] | None = None,
    callback_every: int | None = None,
) -> History | list[History]:
    """Train a critic with `estimator` and return the history of its estimates (nats).

    Data comes from `task` (an object with `.sample(n, generator=)`, `.mi`, `.dim_x`, `.dim_y`, and optionally
    `.entropy_y`), from a callable `task(step) -> task` (a schedule such as the MI staircase), or from fixed samples
    `x [M, dx]`, `y [M, dy]` drawn from in minibatches. Score-based estimators see each minibatch's all-pairs
    `[B, B]` matrix (`negative [B, B-1]`) or one derangement of it (`negative [B, 1]`, the default of the f-DIME
    family), as `negatives` says; proposal-based ones (`needs_proposal`) build their own scores with
    `estimator.scores(...)`.

    Fixed samples are answered on held-out data, as torch-mist and bmi do: a seeded random split keeps
    `valid_fraction` of them for validation and `test_fraction` for the test; the critic trains on the rest in
    minibatches drawn without replacement (a fresh permutation each epoch); every `eval_every` updates (and before
    the first) its estimate and loss on the validation part are recorded (`History.validation`), the critic with
    the lowest validation loss (the objective it trains on; `-estimate` for proposal-based estimators, whose loss
    needs MCMC chains) is kept, and training stops after `patience` validation reads without improvement. The
    kept critic's estimate on the test part is the answer: `History.result` (an `Evaluation` with `stderr`),
    `History.final()` its mean. The per-step training estimates
    stay in `History.estimates`; on a small sample they climb far above the truth, which is why they are not the
    answer.

    Args:
        estimator: a registered name or an `Estimator`.
        critic: "separable" | "concat" | "hybrid" | "bilinear", a module, or any callable critic (a fixed critic
            trains nothing but the estimator's own parameters, if any).
        steps: the training steps (the most, on fixed samples with early stopping).
        batch_size: the samples per training batch B.
        lr: Adam's learning rate, on all parameters of critic and estimator.
        seed: network initialisation uses `seed`, every data draw `generator` (seeded by `seed` when not given);
            the same seed gives the same history, and the global RNG is left untouched. `seed=None` draws fresh
            entropy.
        generator: the source of every data draw (the split, the batches, the negatives).
        progress: tqdm bar; default on only when stderr is a terminal.
        negatives: "all-pairs" or "derangement" for score-based estimators; None is the estimator's default
            (`Estimator.negatives`: "derangement" for kl-dime, gan-dime, hd-dime, "all-pairs" otherwise). The
            derangements are drawn from the data generator.
        average: read the estimates through an exponential moving average of the critic's parameters
            (`AveragedCritic`): a decay in (0, 1) such as 0.99, or an `AveragedCritic` built on `critic` (to read
            the average during training, e.g. for held-out estimates). The critic trains exactly as without it (same
            loss, same draws); each step's estimate is the bound on the same batch and the same negatives, scored by
            the average as it is before the step. `History.critic` is then the average (`.trained` the critic).
            Score-based estimators only.
        max_grad_norm: clip the gradient of all trained parameters to this global L2 norm before each step
            (`torch.nn.utils.clip_grad_norm_`); None leaves it alone. It tames the rare huge steps that
            heavy-tailed data (a cubed Gaussian) gives a critic.
        valid_fraction: fixed samples only: the part held out to select the critic (default 0.1; 0 trains to the
            last step and reads the test part with the last critic).
        test_fraction: fixed samples only: the part held out for the answer (default 0.2). Both 0: no split, the
            critic trains on every sample and `final()` is the training estimate, memorisation included.
        patience: fixed samples with a validation part: stop after this many validation estimates without
            improvement (default 10).
        eval_every: fixed samples with a validation part: updates between validation estimates (default one
            epoch, `n_train // batch_size` updates).
        seeds: many independent runs in one call: an int S (seeds 0, ..., S-1) or a list of distinct int seeds;
            returns a list of `History`, one per seed, each what `estimate(..., seed=s)` returns up to float32
            rounding (the same draws from its own generator, its own split, early stopping and non-finite stop).
            Score-based estimators train all seeds as one stacked network (`torch.func.vmap` over stacked
            parameters, one Adam): 1.9x the seed-steps per second of one seed per call at S = 8 and 2.7x
            at S = 32 on one CPU thread for InfoNCE, 2.5x and 4.1x on two (benchmarks/results/estimator_seeds.md).
            Proposal-based estimators, fixed critics and losses that branch on tensor values (MINE) run their
            seeds one after another, with the same numbers. Give the estimator by name and leave `seed` and
            `generator` at their defaults.
        callback: `callback(updates, history)` after every `callback_every` updates (before the next step's
            draws), with `history.critic` and `history.module` in their state of that moment, e.g. to read a
            held-out estimate during training; with `seeds`, once per seed (`history.seed` says which). It must
            not change the critic or draw from the run's generator.
        callback_every: the updates between callbacks (needed with `callback`).

    Returns:
        The `History` of the run, or with `seeds` a list of them in the order of the seeds.

    Non-finite values do not lose the run: when a step's scores, estimate, loss or gradient is non-finite (a
    diverging critic, an overflowing NWJ term), `estimate` stops before applying that step's update, warns
    (`RuntimeWarning` naming the step), and returns the history so far with `History.stopped_at` (the step) and
    `History.error` (what was non-finite) set. `History.evaluate(x, y)` / `History.heldout(task)` evaluate the
    trained critic on held-out samples.

    Fixed samples are tensors, numpy arrays or array-likes (a pandas DataFrame) of a floating dtype, `x [M, dx]`,
    `y [M, dy]` (`[M]` is `[M, 1]`) with the same M >= 2 and finite entries; a constant column warns. The
    minibatches are cast to the dtype of the trained networks (float32 for the critics built by name). A
    `batch_size` above the training samples is lowered to their number, with a warning.

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
    holdout = _check_holdout(task is None, valid_fraction, test_fraction, patience, eval_every)
    if task is None:
        x, y = as_samples("x", x), as_samples("y", y)
        check_samples(x, y)
        warn_constant_columns(x, y)
    elif not (hasattr(task, "sample") or callable(task)):
        raise TypeError(
            f"task must have .sample(n, generator=) (or be a schedule step -> task); got {type(task).__name__}"
        )
    if estimator_options and not isinstance(estimator, str):
        raise ValueError("estimator_options only apply when estimator is given by name")
    require_number(
        "max_grad_norm", max_grad_norm, 0.0, low_open=True, optional=True, what="a positive finite number"
    )
    setup = partial(
        _Run.build,
        estimator=estimator,
        task=task,
        x=x,
        y=y,
        critic=critic,
        batch_size=batch_size,
        lr=lr,
        critic_options=critic_options or {},
        estimator_options=estimator_options or {},
        device=device,
        negatives=negatives,
        average=average,
        max_grad_norm=max_grad_norm,
        holdout=holdout,
        patience=patience,
        eval_every=eval_every,
        callback=callback,
        callback_every=callback_every,
    )
    if (callback is None) != (callback_every is None):
        raise ValueError("callback and callback_every go together: give both or neither")
    if callback is not None:
        if not callable(callback):
            raise TypeError(
                f"callback must be callable (updates, history) -> None; got {type(callback).__name__}"
            )
        require_int("callback_every", callback_every, 1)
    show = sys.stderr.isatty() if progress is None else progress
    if seeds is not None:
        if generator is not None or seed != 0:
            raise ValueError(
                "seeds= gives each run its own seed and generator; leave seed and generator at their defaults"
            )
        if not isinstance(estimator, str):
            raise ValueError("seeds= builds one estimator per seed: give the estimator by name")
        from ._stacked import train_stacked

        runs = [setup(seed=s, generator=None) for s in _check_seeds(seeds)]
        if not train_stacked(runs, steps, show):
            for run in runs:  # one after another, the same numbers as seeds=None at each seed
                _train(run, steps, show)
        return [run.finish() for run in runs]
    run = setup(seed=seed, generator=generator)
    _train(run, steps, show)
    return run.finish()


def _train(run: _Run, steps: int, show: bool) -> None:
    """`run`'s training loop: `steps` steps, or until a non-finite step or exhausted patience stops it."""
    est, net, averaged, kind = run.est, run.net, run.averaged, run.kind
    bar = tqdm(range(steps), disable=not show, desc=f"estimate[{est.name}]", leave=False)
    for step in bar:
        xb, yb, current = run.batch(step)
        entropy = run.entropy(current)
        replay = run.generator.get_state() if averaged is not None else None
        try:
            s = _batch_scores(est, net, xb, yb, kind, run.generator, entropy)
            if averaged is not None:  # the same negatives (the same draws, replayed), scored by the average
                g = torch.Generator(device=run.generator.device)
                g.set_state(replay)
                with torch.no_grad():
                    reported = _batch_scores(est, averaged, xb, yb, kind, g, entropy)
        except (NonFiniteScoresError, NonFiniteChainError) as e:
            run.stop(step, steps, f"non-finite critic scores: {e}")
            break
        # the estimator's own state (MINE's moving average, a baseline) moves in `loss`: keep it to undo a stopped step
        kept = _buffers(est)
        loss = est.loss(s)
        with torch.no_grad():  # the reported estimate is the bound on this batch, before the step
            value = float(est.bound(s if averaged is None else reported))
        problem = _nonfinite(value, loss)
        if problem is None and run.opt is not None:
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            problem = _nonfinite_gradient(run.params)
            if problem is None:
                if run.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(run.params, float(run.max_grad_norm))
                run.opt.step()
                if averaged is not None:
                    averaged.update()
        if problem is not None:
            _put_back(est, kept)
            run.stop(step, steps, problem)
            break
        if show and step % 50 == 0:
            bar.set_postfix(mi=f"{value:.3f}")
        if run.record(step, value, current):
            break  # patience exhausted
    bar.close()


def _check_seeds(seeds: Any) -> list[int]:
    """`seeds=S` (an int >= 1: seeds 0..S-1) or a list of distinct int seeds."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        require_int("seeds", seeds, 1)
        return list(range(int(seeds)))
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ValueError(f"seeds must be an int >= 1 or a non-empty list of int seeds; got {seeds!r}")
    for i, s in enumerate(seeds):
        if not isinstance(s, numbers.Integral) or isinstance(s, bool):
            raise ValueError(f"seeds[{i}] must be an int; got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (a repeated seed is the same run twice); got {list(seeds)}")
    return [int(s) for s in seeds]


@dataclass
class _Run:
    """One seed's run of `estimate`: its generator, data, networks, optimiser and history, and the bookkeeping
    that the one-seed loop and the many-seed pass (`mi_estimators._stacked`) share."""

    est: Estimator
    net: Any
    averaged: AveragedCritic | None
    kind: str
    generator: torch.Generator
    device: torch.device
    work_dtype: torch.dtype | None
    params: list[Tensor]
    opt: torch.optim.Optimizer | None
    history: History
    batch_size: int
    max_grad_norm: float | None
    lr: float
    task: Any = None
    schedule: Callable[[int], Any] | None = None
    samples: tuple[Tensor, Tensor] | None = None
    batches: EpochBatches | None = None
    parts: _Parts | None = None
    selection: _Selection | None = None
    callback: Callable[[int, History], None] | None = None
    callback_every: int | None = None

    @classmethod
    def build(
        cls,
        *,
        seed: int | None,
        generator: torch.Generator | None,
        estimator: str | Estimator,
        task: Any,
        x: Tensor | None,
        y: Tensor | None,
        critic: Any,
        batch_size: int,
        lr: float,
        critic_options: dict[str, Any],
        estimator_options: dict[str, Any],
        device: torch.device,
        negatives: str | None,
        average: Any,
        max_grad_norm: float | None,
        holdout: tuple[float, float],
        patience: int | None,
        eval_every: int | None,
        callback: Callable[[int, History], None] | None = None,
        callback_every: int | None = None,
    ) -> _Run:
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()  # fresh entropy: seed=None asks for a non-reproducible run
            else:
                generator.manual_seed(seed)
        parts = batches = None
        if task is None:
            parts = _Parts(x, y, holdout, generator)  # type: ignore[arg-type]
            x, y = parts.train
            if batch_size > x.shape[0]:
                warnings.warn(
                    f"batch_size={batch_size} is larger than the {x.shape[0]} training samples (of M="
                    f"{parts.m} after the validation/test split); using batch_size={x.shape[0]}",
                    UserWarning,
                    stacklevel=4,
                )
                batch_size = x.shape[0]
            batches = EpochBatches(x.shape[0], batch_size, generator)

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

        # Networks are initialised from `seed` without touching the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            est = make(estimator, **estimator_options) if isinstance(estimator, str) else estimator
            if est.needs_proposal:
                ensure = getattr(est, "ensure_proposal", None)
                if callable(ensure):
                    ensure(x_dim, y_dim)
            net = _make_critic(critic, x_dim, y_dim, critic_options)
        kind = _check_negatives(negatives, est)
        averaged = _averaged(average, net, kind)
        modules = [m for m in (net, est) if isinstance(m, nn.Module)]
        for m in modules:
            m.to(device)
        if averaged is not None:
            averaged.to(device)  # its own copy of the critic, on the critic's device
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        history = History(
            estimator=est.name,
            true_mi=[] if first is not None else None,
            critic=averaged if averaged is not None else net,
            module=est,
            negatives=kind,
            batch_size=int(batch_size),
            task=task if schedule is None else None,
            seed=seed,
        )
        run = cls(
            est=est,
            net=net,
            averaged=averaged,
            kind=kind,
            generator=generator,
            device=device,
            # minibatches in the networks' dtype (float64 or half samples through float32 networks); a critic
            # without parameters (a fixed callable) sees the data's own dtype
            work_dtype=_work_dtype(modules),
            params=params,
            opt=torch.optim.Adam(params, lr=lr) if params else None,
            history=history,
            batch_size=int(batch_size),
            max_grad_norm=max_grad_norm,
            lr=lr,
            task=task,
            schedule=schedule,
            samples=(x, y) if task is None else None,  # type: ignore[arg-type]
            batches=batches,
            parts=parts,
            callback=callback,
            callback_every=callback_every,
        )
        if parts is not None and parts.valid is not None:
            every = eval_every or max(1, x.shape[0] // batch_size)  # type: ignore[union-attr]
            run.selection = _Selection(history, parts, every, patience or PATIENCE)
            run.selection.observe(0)
        return run

    def batch(self, step: int) -> tuple[Tensor, Tensor, Any]:
        """Step `step`'s joint batch `x [B, dx]`, `y [B, dy]` (on the device, in the networks' dtype), drawn from
        this run's generator, and the task it came from (None for fixed samples)."""
        current = self.schedule(step) if self.schedule is not None else self.task
        if current is not None:
            xb, yb = current.sample(self.batch_size, generator=self.generator)
        else:
            idx = next(self.batches)  # type: ignore[arg-type]
            xb, yb = self.samples[0][idx], self.samples[1][idx]  # type: ignore[index]
        return (
            xb.to(device=self.device, dtype=self.work_dtype),
            yb.to(device=self.device, dtype=self.work_dtype),
            current,
        )

    def entropy(self, current: Any) -> Any:
        """The marginal entropy a proposal-based estimator reads (the task's `entropy_y`, when known)."""
        return (
            getattr(current, "entropy_y", None) if self.est.needs_proposal and current is not None else None
        )

    def reads_modules(self, step: int) -> bool:
        """Whether `record(step, ...)` reads the critic and estimator (a validation read or a callback is due)."""
        updates = step + 1
        sel, every = self.selection, self.callback_every
        return (sel is not None and updates % sel.every == 0) or (every is not None and updates % every == 0)

    def record(self, step: int, value: float, current: Any) -> bool:
        """Keep step `step`'s estimate; call back and read the validation part when due. True when patience is
        exhausted."""
        self.history.estimates.append(value)
        if self.history.true_mi is not None:
            self.history.true_mi.append(float(current.mi))
        updates = step + 1
        if self.callback is not None and updates % self.callback_every == 0:  # type: ignore[operator]
            self.callback(updates, self.history)
        sel = self.selection
        return sel is not None and updates % sel.every == 0 and sel.observe(updates)

    def stop(self, step: int, steps: int, reason: str) -> None:
        """Stop at `step` (its update not applied) for `reason`, with a `RuntimeWarning`."""
        self.history.stopped_at, self.history.error = step, reason
        warnings.warn(
            f"estimate[{self.history.estimator}] stopped at step {step} of {steps}: {reason}. The update of that step "
            f"was not applied; the history keeps the {step} steps before it (History.stopped_at, History.error).",
            RuntimeWarning,
            stacklevel=4,
        )

    def finish(self) -> History:
        """The selected critic back in place and the test part read: the `History` to return."""
        if self.selection is not None:
            self.selection.restore()
        if self.parts is not None and self.parts.test is not None:
            self.history.result = self.parts.read(self.history, self.parts.test, stderr=True)[0]
        return self.history


def _check_holdout(
    fixed: bool, valid_fraction: Any, test_fraction: Any, patience: Any, eval_every: Any
) -> tuple[float, float]:
    """The (validation, test) fractions of a fixed-sample run; the held-out options are refused with a task."""
    given = {
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "patience": patience,
        "eval_every": eval_every,
    }
    if not fixed:
        named = [name for name, value in given.items() if value is not None]
        if named:
            raise ValueError(
                f"{', '.join(named)} apply to fixed samples (x=, y=); a task gives fresh samples: evaluate "
                "the critic on fresh ones with History.heldout()"
            )
        return 0.0, 0.0
    valid = VALID_FRACTION if valid_fraction is None else valid_fraction
    test = TEST_FRACTION if test_fraction is None else test_fraction
    valid = require_number("valid_fraction", valid, 0.0, 1.0, high_open=True)
    test = require_number("test_fraction", test, 0.0, 1.0, high_open=True)
    if valid + test >= 1:
        raise ValueError(
            f"valid_fraction + test_fraction must leave samples to train on; got {valid} + {test} >= 1"
        )
    if valid > 0 and test == 0:
        raise ValueError(
            f"valid_fraction={valid} with test_fraction=0: the validation estimate of the critic it selects is "
            "biased up by that selection; keep a test part (test_fraction > 0) for the answer"
        )
    for name in ("patience", "eval_every"):
        if given[name] is not None:
            require_int(name, given[name], 1)
            if valid == 0:
                raise ValueError(f"{name} needs a validation part to watch; valid_fraction is 0")
    return valid, test


class _Parts:
    """Fixed samples split at random (seeded by the run's generator) into train / validation / test parts, and the
    one way the held-out parts are read: as `mie.evaluate` reads, with the run's estimator and negatives and the
    same draws (derangements, proposal negatives) at every reading, so that validation reads differ by the critic
    only."""

    def __init__(
        self, x: Tensor, y: Tensor, fractions: tuple[float, float], generator: torch.Generator
    ) -> None:
        self.m = x.shape[0]
        n_train, n_valid, n_test = split_sizes(self.m, *fractions)
        order = torch.randperm(self.m, generator=generator) if n_valid or n_test else torch.arange(self.m)
        # the held-out reads draw from their own generator (seeded once from the run's), so that how often the
        # validation part is read does not move the training draws
        self._reads = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        self._state = self._reads.get_state()
        ends = (n_train, n_train + n_valid)
        self.train = x[order[: ends[0]]], y[order[: ends[0]]]
        self.valid = (x[order[ends[0] : ends[1]]], y[order[ends[0] : ends[1]]]) if n_valid else None
        self.test = (x[order[ends[1] :]], y[order[ends[1] :]]) if n_test else None

    def read(
        self, history: History, part: tuple[Tensor, Tensor], *, stderr: bool = False, with_loss: bool = False
    ) -> tuple[Evaluation, float]:
        """The `Evaluation` of `part` by the run's critic and estimator, and their mean loss on it (`_read`)."""
        self._reads.set_state(self._state)
        px, py = part
        assert history.module is not None and history.batch_size is not None and history.negatives is not None
        size = min(history.batch_size, px.shape[0])
        est, negatives = history.module, history.negatives
        return _read(
            est,
            history.critic,
            px,
            py,
            size,
            negatives,
            self._reads,
            None,
            stderr=stderr,
            with_loss=with_loss,
        )


class _Selection:
    """Early stopping on the validation part, by the loss the critic trains on (as torch-mist does): keeps the
    state of the critic and estimator with the lowest validation loss seen so far."""

    def __init__(self, history: History, parts: _Parts, every: int, patience: int) -> None:
        self.history, self.parts, self.every, self.patience = history, parts, every, patience
        self.modules = [m for m in (history.critic, history.module) if isinstance(m, nn.Module)]
        self.best = math.inf
        self.best_state: list[dict[str, Tensor]] = []
        self.since_best = 0

    def observe(self, updates: int) -> bool:
        """Reads the validation part after `updates` updates; True when patience is exhausted."""
        evaluation, loss = self.parts.read(self.history, self.parts.valid, with_loss=True)  # type: ignore[arg-type]
        self.history.validation.append((updates, evaluation.mean, loss))
        if math.isfinite(loss) and loss < self.best:
            self.best, self.since_best, self.history.best_step = loss, 0, updates
            self.best_state = [copy.deepcopy(m.state_dict()) for m in self.modules]
        else:
            self.since_best += 1
        return self.since_best >= self.patience

    def restore(self) -> None:
        for module, state in zip(self.modules, self.best_state):
            module.load_state_dict(state)


def _averaged(average: Any, net: Any, kind: str) -> AveragedCritic | None:
    """The `AveragedCritic` that `estimate(average=...)` reads estimates through (None without averaging)."""
    if average is None:
        return None
    if kind == "proposal":
        raise ValueError("average applies to score-based estimators (all-pairs or derangement negatives)")
    if isinstance(average, AveragedCritic):
        if average.trained is not net:
            raise ValueError("average is an AveragedCritic of another critic; build it on the critic passed")
        return average
    if not isinstance(net, nn.Module) or not any(True for _ in net.parameters()):
        raise ValueError("average needs a critic with parameters to average")
    if isinstance(average, bool) or not isinstance(average, int | float):
        raise TypeError(f"average must be a decay in (0, 1), an AveragedCritic or None; got {average!r}")
    return AveragedCritic(net, float(average))  # ValueError for a decay outside (0, 1)


def _buffers(est: Estimator) -> list[Tensor]:
    """A copy of the estimator's buffers (MINE's moving average, ...), which its `loss` may move."""
    return [b.detach().clone() for b in est.buffers()]


def _put_back(est: Estimator, kept: list[Tensor]) -> None:
    """Restore the buffers `_buffers` copied."""
    with torch.no_grad():
        for b, before in zip(est.buffers(), kept):
            b.copy_(before)


def _nonfinite(value: float, loss: Tensor) -> str | None:
    """What is non-finite among a step's estimate and loss (None when both are finite)."""
    if not math.isfinite(value):
        return f"non-finite estimate {value}"
    if not bool(torch.isfinite(loss.detach()).all()):
        return f"non-finite loss {float(loss.detach())}"
    return None


def _nonfinite_gradient(params: list[Tensor]) -> str | None:
    """Names the first parameter (by position) whose gradient is non-finite, or None."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    finite = torch.stack([torch.isfinite(g).all() for g in grads])
    if bool(finite.all()):
        return None
    first = int((~finite).nonzero()[0])
    return f"non-finite gradient in parameter {first} (of {len(grads)} with gradients)"
