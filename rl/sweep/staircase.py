"""The estimator suite's staircase protocol (f-DIME's, Poole et al.'s): what a sweep's staircase trial runs.

True MI steps through `LEVELS` (2, 4, 6, 8, 10 nats); each training step draws a fresh batch of that step's level.
The tasks are named by `parse_task` (`gauss-d5`, `gauss-cubic-d5`, `student-t3-d5`, ...) and held as `TaskSpec`s.
A trial is `run_protocol(estimator, task, critic, steps_per_level, batch_size, seed)`: one `mie.estimate` run over
the whole staircase (one Adam), a held-out estimate at the end of each level on samples from a generator of its
own (`heldout_seed`), and per level the bias, variance and MSE of the training estimate (`summarise`).
`recipe_arguments` turns a sweep's estimator recipe into `run_protocol`'s keyword arguments; `run` is the plain
training that `benchmarks/staircase.py` (Poole et al.'s table, every bound and two critics) runs.

Only `torch` and `mi_estimators` are needed here, so `benchmarks/staircase.py` imports it without the `rl` extra.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import mi_estimators as mie
from mi_estimators.estimate import CRITICS
from mi_estimators.tasks import STAIRCASE_BASES, TRANSFORMS, staircase_task

LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)
DEFAULT_ESTIMATORS = ["dv", "mine", "nwj", "infonce", "js", "tuba", "smile", "interpolated"]
#: the estimator suite (f-DIME's protocol): Poole et al.'s bounds and the f-DIME family
SUITE_ESTIMATORS = [*DEFAULT_ESTIMATORS, "kl-dime", "gan-dime", "hd-dime"]
#: Poole et al. use 256-wide critics; the concat critic is (128, 128) here because it evaluates all N x N pairs
#: and a CPU run of every estimator must fit in under an hour.
CRITIC_OPTIONS: dict[str, dict[str, Any]] = {
    "separable": {"embed_dim": 32, "hidden": (256,)},
    "concat": {"hidden": (128, 128)},
    "hybrid": {"hidden": (128, 128), "separable_hidden": (256,), "embed_dim": 32},  # the two above, summed
}
LR = 5e-4


def code_fingerprint() -> str:
    """12 hex digits of sha256 over the torch version and the `mi_estimators` sources: what the numbers depend on
    besides the settings and the thread count."""
    h = hashlib.sha256(torch.__version__.encode())
    for path in sorted(Path(mie.__file__).parent.rglob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def run(
    estimator: str, critic: str, steps_per_level: int, dim: int, batch_size: int, seed: int
) -> list[float]:
    """The per-step estimates of one staircase run on `CorrelatedGaussian(dim)` (what docs/benchmarks.md's tables
    were made with)."""
    schedule = functools.partial(staircase_task, dim=dim, steps_per_level=steps_per_level, levels=LEVELS)
    hist = mie.estimate(
        estimator,
        schedule,
        critic=critic,
        critic_options=CRITIC_OPTIONS[critic],
        steps=steps_per_level * len(LEVELS),
        batch_size=batch_size,
        lr=LR,
        seed=seed,
        progress=False,
    )
    return hist.estimates


# ------------------------------------------------------------------------------------------------------------
# Tasks of the suite
# ------------------------------------------------------------------------------------------------------------
_BASE_NAMES = {"gauss": "gaussian", "student-t": "student_t"}
_TASK_NAME = re.compile(
    r"(?P<base>gauss|student-t(?P<df>\d+(?:\.\d+)?))(?:-(?P<transform>[a-z_-]+?))?-d(?P<dim>\d+)"
)
TASK_KEYS = ("name", "base", "dim", "transform", "df")


@dataclass(frozen=True)
class TaskSpec:
    """One staircase family: `staircase_task(step, dim, steps_per_level, LEVELS, base=, transform=, df=)`.

    Attributes:
        name: the task's label in trial ids and tables (letters, digits, `_ . -`).
        base: `"gaussian"` (CorrelatedGaussian) or `"student_t"` (Student-t with `df` degrees of freedom).
        dim: the dimension of x and of y.
        transform: None or a name from `mi_estimators.tasks.TRANSFORMS`, applied to x and y (MI unchanged).
        df: the Student-t degrees of freedom (None for a Gaussian base).
    """

    name: str
    base: str = "gaussian"
    dim: int = 20
    transform: str | None = None
    df: float | None = None

    def task(self, step: int, steps_per_level: int) -> Any:
        """The task of training step `step` (its `.mi` is the level)."""
        return staircase_task(
            step,
            self.dim,
            steps_per_level,
            LEVELS,
            base=self.base,
            transform=self.transform,
            **({"df": self.df} if self.df is not None else {}),
        )

    def level_task(self, index: int) -> Any:
        """The task of level `index` (0-based)."""
        return self.task(index, 1)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        law = f"CorrelatedGaussian(dim={self.dim})"
        if self.base == "student_t":
            law = f"Student-t(df={self.df:g}, dim={self.dim})"
        return f"{self.transform}({law})" if self.transform else law


def task_name(base: str, dim: int, transform: str | None = None, df: float | None = None) -> str:
    """The canonical name: `gauss-d5`, `gauss-cubic-d5`, `student-t3-d5`, `student-t3-asinh-d5`."""
    head = "gauss" if base == "gaussian" else f"student-t{df:g}"
    return head + (f"-{transform.replace('_', '-')}" if transform else "") + f"-d{dim}"


def parse_task(value: str | Mapping[str, Any]) -> TaskSpec:
    """A `TaskSpec` from a name (`<base>[-<transform>]-d<dim>`, base `gauss` or `student-t<df>`, e.g. `gauss-d5`,
    `gauss-cubic-d5`, `gauss-half-cube-d5`, `student-t3-d5`) or a mapping with keys `name` (optional), `base`
    (`gaussian`, `student_t`), `dim`, `transform`, `df`. Raises ValueError naming the problem; every level's task
    is built once here, so a Student-t level below its df correction fails now, not in a trial."""
    if isinstance(value, str):
        m = _TASK_NAME.fullmatch(value)
        if m is None:
            raise ValueError(
                f"task name {value!r} is not <base>[-<transform>]-d<dim> with base gauss or student-t<df> (e.g. "
                "gauss-d5, gauss-cubic-d5, student-t3-d5); or give a mapping {name, base, dim, transform, df}"
            )
        base = "student_t" if m["df"] else "gaussian"
        fields: dict[str, Any] = {
            "name": value,
            "base": base,
            "dim": int(m["dim"]),
            "transform": m["transform"].replace("-", "_") if m["transform"] else None,
            "df": float(m["df"]) if m["df"] else None,
        }
    elif isinstance(value, Mapping):
        unknown = [k for k in value if k not in TASK_KEYS]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; known keys: {', '.join(TASK_KEYS)}")
        fields = {k: value.get(k) for k in TASK_KEYS}
        fields["base"] = fields["base"] or "gaussian"
    else:
        raise ValueError(f"a task is a name or a mapping; got {type(value).__name__} {value!r}")
    base, dim, transform, df = fields["base"], fields["dim"], fields["transform"], fields["df"]
    if base not in STAIRCASE_BASES:
        raise ValueError(f"base must be one of {', '.join(STAIRCASE_BASES)}; got {base!r}")
    base = "gaussian" if base == "correlated_gaussian" else base
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1; got {dim!r}")
    if transform is not None and transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; available: {', '.join(sorted(TRANSFORMS))}")
    if base == "student_t":
        df = 3.0 if df is None else df
        if isinstance(df, bool) or not isinstance(df, int | float) or not math.isfinite(df) or df <= 0:
            raise ValueError(f"df must be a positive number; got {df!r}")
        df = float(df)
    elif df is not None:
        raise ValueError(f"df applies to base student_t only; got df={df!r} with base {base!r}")
    name = fields["name"] or task_name(base, dim, transform, df)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name must be letters, digits, '_', '.', '-'; got {name!r}")
    spec = TaskSpec(name=name, base=base, dim=dim, transform=transform, df=df)
    for i in range(len(LEVELS)):
        spec.level_task(i)  # ValueError for an impossible level (Student-t below its df correction)
    return spec


# ------------------------------------------------------------------------------------------------------------
# One trial of the suite: training estimates and a held-out estimate at the end of each level
# ------------------------------------------------------------------------------------------------------------
def heldout_seed(seed: int, level_index: int) -> int:
    """The seed of the generator of level `level_index`'s held-out samples in the trial of training seed `seed`:
    the first 8 bytes of sha256("heldout/<seed>/<level>"), a stream distinct from every training generator (those
    are seeded with the small integer `seed` itself)."""
    digest = hashlib.sha256(f"heldout/{seed}/{level_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def critic_options(critic: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The suite's options of `critic` (`CRITIC_OPTIONS`) with a recipe's `overrides` on top."""
    return {**CRITIC_OPTIONS[critic], **(overrides or {})}


def _networks(
    estimator: str,
    critic: str,
    dim_x: int,
    dim_y: int,
    seed: int,
    estimator_options: Mapping[str, Any] | None = None,
    critic_overrides: Mapping[str, Any] | None = None,
) -> tuple[Any, Any]:
    """The estimator and critic exactly as `mie.estimate(estimator, critic=<name>, seed=seed)` builds them (the
    same draws of the same seeded RNG, in the same order), but held here so that the held-out estimate can read
    the critic during training."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        est = mie.make(estimator, **(estimator_options or {}))
        if est.needs_proposal:
            ensure = getattr(est, "ensure_proposal", None)
            if callable(ensure):
                ensure(dim_x, dim_y)
        net = CRITICS[critic](dim_x, dim_y, **critic_options(critic, critic_overrides))
    return est, net


def run_protocol(
    estimator: str,
    task: TaskSpec | str | Mapping[str, Any],
    critic: str,
    steps_per_level: int,
    batch_size: int,
    seed: int | list[int],
    *,
    heldout_samples: int = 4096,
    estimator_options: Mapping[str, Any] | None = None,
    critic_overrides: Mapping[str, Any] | None = None,
    lr: float = LR,
    negatives: str | None = None,
    average: float | None = None,
    max_grad_norm: float | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any] | list[dict[str, Any]]:
    """One trial of the suite: train `critic` with `estimator` over the staircase of `task` (one `mie.estimate`
    run, Adam at `lr`, fresh batch of `batch_size` each step, the estimator's default negatives unless `negatives`
    names them) and, at the end of each level, evaluate the critic as it is then with the same estimator on
    `heldout_samples` fresh samples of that level's task (`mie.evaluate`, batches of `batch_size`, the training
    negatives), drawn from a generator seeded with `heldout_seed(seed, level)`: never the training one, and the
    same numbers for the same seed and threads.

    The evaluation is `estimate`'s callback after every `steps_per_level` updates: the critic of level i has had
    exactly the (i+1) * steps_per_level updates of levels <= i. It runs without gradients, puts the critic in eval
    mode and restores it, and draws from its own generators, so the training estimates are those of `run` (tests
    check both). A run that stops on a non-finite step (`History.stopped_at`) has no held-out estimate for the
    level it stopped in, nor after. `seed` a list: the seeds of one grid cell in one call (`estimate(seeds=...)`,
    stacked where the estimator allows), one result per seed, each that of its seed alone up to float32 rounding.

    A recipe (a sweep's estimator entry) changes the rest: `estimator_options` go to `mie.make(estimator, ...)`,
    `critic_overrides` replace keys of `CRITIC_OPTIONS[critic]` (e.g. `{"hidden": (256, 256)}`), `lr` is Adam's
    and `negatives` ("all-pairs" | "derangement") the training and held-out negatives; `average` (a decay) reads
    the training and held-out estimates through an `mie.AveragedCritic` of the critic; `max_grad_norm` clips the
    gradient's norm. `device`: where the critics train and are evaluated (the samples are drawn on the CPU, from
    the same generators, and moved there).

    Returns `{"estimates", "stopped_at", "error", "heldout": [{"mi", "mean", "std", "error"}] per level,
    "levels": summarise(...) with `heldout` and `heldout_std` merged in}` (a list of them for a list of seeds).
    """
    spec = task if isinstance(task, TaskSpec) else parse_task(task)
    seeds = seed if isinstance(seed, list) else [seed]
    heldout = {
        s: [{"mi": mi, "mean": math.nan, "std": math.nan, "error": "level not completed"} for mi in LEVELS]
        for s in seeds
    }

    def evaluate_level(hist: mie.History, i: int) -> None:
        row = heldout[hist.seed][i]  # type: ignore[index]
        if heldout_samples <= 0:
            row["error"] = "held-out estimate off (heldout_samples: 0)"
            return
        level = spec.level_task(i)
        g = torch.Generator().manual_seed(heldout_seed(hist.seed, i))  # type: ignore[arg-type]
        x, y = level.sample(heldout_samples, generator=g)
        est = hist.module
        try:
            ev = mie.evaluate(
                est,
                hist.critic,  # the averaged critic, with `average`
                x,
                y,
                batch_size=batch_size,
                negatives=None if est.needs_proposal else hist.negatives,
                generator=g,
                marginal_entropy=getattr(level, "entropy_y", None) if est.needs_proposal else None,
            )
        except mie.NonFiniteScoresError as e:
            row.update(error=f"non-finite critic scores on the held-out samples: {e}")
            return
        ok = math.isfinite(ev.mean)
        row.update(mean=ev.mean, std=ev.std, error=None if ok else f"non-finite estimate {ev.mean}")

    def level_done(updates: int, hist: mie.History) -> None:
        evaluate_level(hist, updates // steps_per_level - 1)

    with torch.random.fork_rng(devices=[]):  # a look at the estimator's kind, leaving every RNG alone
        if mie.make(estimator, **(estimator_options or {})).needs_proposal:
            negatives = None  # it draws its own (a recipe names the default of score-based ones)
    runs = mie.estimate(
        estimator,
        functools.partial(_task_at, spec, steps_per_level),
        critic=critic,
        critic_options=critic_options(critic, critic_overrides),
        estimator_options=dict(estimator_options or {}),
        steps=steps_per_level * len(LEVELS),
        batch_size=batch_size,
        lr=lr,
        progress=False,
        negatives=negatives,
        average=average,
        max_grad_norm=max_grad_norm,
        callback=level_done,
        callback_every=steps_per_level,
        device=device,
        **({"seeds": seeds} if isinstance(seed, list) else {"seed": seed}),
    )
    results = []
    for hist in runs if isinstance(runs, list) else [runs]:
        levels = summarise(hist.estimates, steps_per_level)
        for row, h in zip(levels, heldout[hist.seed]):  # type: ignore[index]
            row["heldout"], row["heldout_std"] = h["mean"], h["std"]
        results.append(
            {
                "estimates": hist.estimates,
                "stopped_at": hist.stopped_at,
                "error": hist.error,
                "negatives": hist.negatives,
                "heldout": heldout[hist.seed],  # type: ignore[index]
                "levels": levels,
            }
        )
    return results if isinstance(seed, list) else results[0]


def _task_at(spec: TaskSpec, steps_per_level: int, step: int) -> Any:
    return spec.task(step, steps_per_level)


def recipe_arguments(recipe: Mapping[str, Any] | None) -> dict[str, Any]:
    """`run_protocol`'s keyword arguments for a sweep's estimator recipe (`rl.sweep.spec`); {} for none."""
    if not recipe:
        return {}
    return {
        "estimator_options": recipe["options"],
        "critic_overrides": recipe["critic_options"],
        "lr": recipe["lr"],
        "negatives": recipe["negatives"],
        "average": recipe.get("average"),
        "max_grad_norm": recipe.get("max_grad_norm"),
    }


def summarise(estimates: list[float], steps_per_level: int) -> list[dict[str, float]]:
    """Per level: bias, variance and MSE of the estimates over the level's second half (after re-convergence).

    `nonfinite` counts the steps of that window without a finite estimate: non-finite values, and the steps a run
    stopped on a non-finite step (`History.stopped_at`) never ran. A window with no finite estimate gives NaN."""
    rows = []
    for i, mi in enumerate(LEVELS):
        lo, hi = i * steps_per_level + steps_per_level // 2, (i + 1) * steps_per_level
        seg = estimates[lo:hi]
        finite = [v for v in seg if v == v and abs(v) != float("inf")]
        mean = statistics.fmean(finite) if finite else float("nan")
        var = statistics.pvariance(finite) if len(finite) > 1 else float("nan")
        rows.append(
            {
                "mi": mi,
                "bias": mean - mi,
                "variance": var,
                "mse": (mean - mi) ** 2 + var,
                "nonfinite": (hi - lo) - len(finite),
            }
        )
    return rows
