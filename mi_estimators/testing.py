"""Property testing for any estimator: hypothesis strategies, and `check_estimator`, the contract in one call.

    from mi_estimators.testing import check_estimator
    check_estimator("my-bound", kind="lower", shift_invariant=True, below=["dv"])

`check_estimator` runs every property that holds for the estimator's kind and raises `EstimatorCheckError` (an
`AssertionError`, so it fails a pytest test) naming each failing property with its minimal example; with
`raise_on_failure=False` it returns the `Report`. It needs hypothesis (`pip install misa-toolkit[testing]`), which
only this module imports.

Properties (names as reported):

- `contract`: `bound(s)` and `loss(s)` are 0-d tensors of the scores' dtype (float16, bfloat16, float32, float64).
- `finite`: on scores where every bound's true value fits the dtype (|T| <= 50 in float32/64, <= 8 in half
  precision) the bound, the loss and the loss's gradients wrt the scores are finite.
- `no-nan`: on scores up to +-1e4 nothing is NaN (a bound may be +-inf where its true value overflows).
- `permutation`: permuting the rows of the batch (jointly), or the negatives within each row, leaves the bound.
- `shift` (with `shift_invariant=True`, the DV-type bounds): adding a constant to every score leaves the bound.
- `ordering`: on the same scores the bound is at most each estimator in `below`, at least each in `above`, and at
  most `ceiling(s)` (InfoNCE's `log(K + 1)`).
- `closed-form`: on 1024 samples of a 2-d Gaussian with MI 1 nat and its optimal critic (`log r + critic_shift`
  for score-based estimators, the true conditional as proposal for proposal-based ones, `log p(y|x)` as CLUB's
  critic for an upper bound) the value is within 0.15 nats of the MI; a lower bound does not exceed it, an upper
  bound does not fall below it, beyond 3 standard errors; a score-based lower bound also stays below it at two
  worse critics (`0.5 log r`, `log r - 0.5`).
- `gradient`: in float64 the gradient of `bound` wrt the scores matches finite differences
  (`torch.autograd.gradcheck`).
"""

from __future__ import annotations

import copy
import math
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - the extra is installed with [dev]
    raise ImportError(
        "mi_estimators.testing needs hypothesis: pip install 'misa-toolkit[testing]' (or hypothesis>=6.80)"
    ) from e

from .critics import BilinearCritic, ConcatCritic, HybridCritic, SeparableCritic
from .estimate import evaluate
from .registry import Estimator, make
from .scores import Scores
from .tasks import CorrelatedGaussian

__all__ = [
    "EstimatorCheckError",
    "Failure",
    "Report",
    "check_estimator",
    "critics",
    "gaussian_tasks",
    "optimal_scores",
    "scores",
]

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
HALF = (torch.bfloat16, torch.float16)
KINDS = ("lower", "upper", "two-sided")


# ------------------------------------------------------------------------------------------------------------
# strategies


@st.composite
def scores(
    draw: Callable[[st.SearchStrategy[Any]], Any],
    *,
    n: tuple[int, int] = (1, 6),
    k: tuple[int, int] = (1, 6),
    dtypes: Sequence[torch.dtype] = DTYPES,
    max_abs: float | Sequence[float] = (50.0, 1e4),
    all_pairs: bool | None = None,
    proposal: bool | None = False,
    tilted: bool = True,
) -> Scores:
    """`Scores` of random shape and dtype: `positive [N]`, `negative [N, K]` with N, K in the given ranges, entries
    uniform in [-max_abs, max_abs] (one magnitude drawn from `max_abs` when it is a sequence; half precision is
    capped where its range ends).

    Args:
        all_pairs: True builds `Scores.from_matrix` of an `[N, N]` matrix (N >= 2; `k` is ignored), False explicit
            negatives, None either.
        proposal: True adds `log_proposal [N]` (in [-20, 0]), `marginal_entropy` (in [-5, 5]) and, with `tilted`,
            `tilted [N, 3]` (what the proposal-based estimators read); None draws whether to.
    """
    dtype = draw(st.sampled_from(list(dtypes)))
    bound = draw(st.sampled_from(list(max_abs))) if isinstance(max_abs, Sequence) else float(max_abs)
    if dtype in HALF:
        bound = min(bound, 8.0 if dtype is torch.float16 else 1e4)
    pairs = draw(st.booleans()) if all_pairs is None else all_pairs
    low = max(n[0], k[0] + 1) if pairs else n[0]  # an all-pairs batch of N has K = N - 1 negatives
    rows = draw(st.integers(low, max(n[1], low)))
    cols = rows if pairs else draw(st.integers(*k))
    width = 32 if dtype in HALF else 64
    value = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=width)
    if pairs:
        flat = draw(st.lists(value, min_size=rows * rows, max_size=rows * rows))
        matrix = torch.tensor(flat, dtype=torch.float64).reshape(rows, rows).to(dtype)
        from_matrix = Scores.from_matrix(matrix)
        positive, negative = from_matrix.positive, from_matrix.negative
    else:
        positive = torch.tensor(draw(st.lists(value, min_size=rows, max_size=rows)), dtype=torch.float64)
        flat = draw(st.lists(value, min_size=rows * cols, max_size=rows * cols))
        negative = torch.tensor(flat, dtype=torch.float64).reshape(rows, cols)
        positive, negative = positive.to(dtype), negative.to(dtype)
    fields: dict[str, Any] = {}
    if draw(st.booleans()) if proposal is None else proposal:
        log_q = st.floats(-20.0, 0.0, allow_nan=False, width=width)
        fields["log_proposal"] = torch.tensor(draw(st.lists(log_q, min_size=rows, max_size=rows))).to(dtype)
        fields["marginal_entropy"] = draw(st.floats(-5.0, 5.0, allow_nan=False))
        if tilted:
            flat = draw(st.lists(value, min_size=rows * 3, max_size=rows * 3))
            fields["tilted"] = torch.tensor(flat, dtype=torch.float64).reshape(rows, 3).to(dtype)
    return Scores(positive.contiguous(), negative.contiguous(), **fields)


def gaussian_tasks(
    dims: tuple[int, int] = (1, 5), mi: tuple[float, float] = (0.0, 3.0)
) -> st.SearchStrategy[CorrelatedGaussian]:
    """Known-MI tasks: `CorrelatedGaussian(dim, mi)` with dim and MI (nats) in the given ranges."""
    return st.builds(
        CorrelatedGaussian, dim=st.integers(*dims), mi=st.floats(*mi, allow_nan=False, allow_infinity=False)
    )


def optimal_scores(task: Any, n: int, generator: torch.Generator, shift: float = 0.0) -> Scores:
    """The all-pairs `Scores` of `n` joint samples of `task` under its optimal critic `log r(x, y) + shift`
    (`task.log_density_ratio`), float64."""
    x, y = task.sample(n, generator=generator, dtype=torch.float64)
    return Scores.from_matrix(task.log_density_ratio(x[:, None], y[None]) + shift)


def critics(x_dim: int, y_dim: int) -> st.SearchStrategy[torch.nn.Module]:
    """One small critic of each kind (separable, concat, bilinear, hybrid) for `x [.., x_dim]`, `y [.., y_dim]`,
    initialised from a drawn seed."""

    def build(kind: str, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "separable":
                return SeparableCritic(x_dim, y_dim, hidden=(16,), embed_dim=8)
            if kind == "concat":
                return ConcatCritic(x_dim, y_dim, hidden=(16,))
            if kind == "bilinear":
                return BilinearCritic(x_dim, y_dim)
            return HybridCritic(x_dim, y_dim, hidden=(16,), separable_hidden=(16,), embed_dim=8)

    return st.builds(
        build, st.sampled_from(["separable", "concat", "bilinear", "hybrid"]), st.integers(0, 2**16)
    )


# ------------------------------------------------------------------------------------------------------------
# the check


@dataclass(frozen=True)
class Failure:
    """One failing property: its name, what went wrong, and the minimal example hypothesis found (or the case)."""

    property: str
    message: str
    example: str

    def __str__(self) -> str:
        return f"[{self.property}] {self.message}" + (f"\n    {self.example}" if self.example else "")


@dataclass
class Report:
    """What `check_estimator` found: the properties it checked and the ones that failed."""

    estimator: str
    kind: str
    checked: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures

    def failed(self) -> list[str]:
        """The names of the failing properties, in the order checked."""
        return list(dict.fromkeys(f.property for f in self.failures))

    def __str__(self) -> str:
        head = (
            f"check_estimator({self.estimator!r}, kind={self.kind!r}): {len(self.checked)} properties checked"
        )
        if not self.failures:
            return head + ", all passed"
        return head + f", {len(self.failed())} failed:\n" + "\n".join(f"  {f}" for f in self.failures)


class EstimatorCheckError(AssertionError):
    """`check_estimator` found failures; `.report` holds them."""

    def __init__(self, report: Report) -> None:
        super().__init__(str(report))
        self.report = report


def check_estimator(
    estimator: str | Estimator | Callable[[], Estimator],
    *,
    kind: str = "lower",
    options: dict[str, Any] | None = None,
    proposal: bool | None = None,
    shift_invariant: bool = False,
    below: Iterable[str] = (),
    above: Iterable[str] = (),
    ceiling: Callable[[Scores], float] | None = None,
    critic_shift: float = 0.0,
    min_negatives: int = 1,
    max_examples: int = 40,
    raise_on_failure: bool = True,
) -> Report:
    """Run the estimator contract (the module docstring lists the properties) on `estimator`.

    Args:
        estimator: a registered name (built with `options`), an `Estimator` (each property gets a deep copy), or a
            factory `() -> Estimator`.
        kind: "lower" (a lower bound on MI), "upper", or "two-sided" (an estimate with no side, e.g. f-DIME's
            readout): which side of the closed form the value must keep.
        proposal: whether the scores carry `log_proposal`, `marginal_entropy` and `tilted` (default: the
            estimator's `needs_proposal`).
        shift_invariant: check the `shift` property (DV, InfoNCE, MINE's bound, misa-dv, ...).
        below: registered names the bound must stay at most on the same scores.
        above: registered names the bound must stay at least on the same scores.
        ceiling: `Scores -> float`, a value the bound never exceeds (e.g. `lambda s: math.log(s.k + 1)`).
        critic_shift: the constant c with `log r + c` the estimator's optimal critic (1 for the NWJ family).
        min_negatives: the fewest negatives per row K the estimator takes (2 for alpha-InfoNCE).
        max_examples: hypothesis examples per property (derandomised: the same examples every run).
        raise_on_failure: raise `EstimatorCheckError` listing every failure (else return the `Report`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}; got {kind!r}")
    factory = _factory(estimator, options or {})
    first = factory()
    below, above = tuple(below), tuple(above)
    for name in (*below, *above):
        make(name)  # an unknown name is a ValueError listing the registered ones, before anything runs
    uses_proposal = first.needs_proposal if proposal is None else proposal
    report = Report(getattr(first, "name", type(first).__name__), kind)
    strategy_options: dict[str, Any] = {
        "proposal": uses_proposal,
        "k": (min_negatives, max(6, min_negatives)),
    }
    run = settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        report_multiple_bugs=False,  # one minimal example per property
    )

    def prop(name: str, body: Callable[[], None]) -> None:
        report.checked.append(name)
        try:
            body()
        except Exception as exc:  # an AssertionError of a property or an error raised by the estimator
            notes = [n for n in getattr(exc, "__notes__", []) if not n.startswith("You can")]
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, AssertionError):
                message = f"{type(exc).__name__}: {message} (at {_origin(exc)})"
            report.failures.append(Failure(name, message, " ".join(" ".join(notes).split())))

    @run
    @given(scores(**strategy_options))
    def contract(s: Scores) -> None:
        est = factory()
        for what, value in (("bound", est.bound(s)), ("loss", est.loss(s))):
            assert isinstance(value, Tensor), f"{what} returned {type(value).__name__}, not a tensor"
            assert value.shape == (), f"{what} returned shape {tuple(value.shape)}, not a 0-d tensor"
            assert value.dtype == s.positive.dtype, (
                f"{what} returned {value.dtype} for {s.positive.dtype} scores"
            )

    @run
    @given(scores(max_abs=(50.0,), **strategy_options))
    def finite(s: Scores) -> None:
        est = factory()
        leaves, s = _leaves(s)
        bound, loss = est.bound(s), est.loss(s)
        assert bool(torch.isfinite(bound)), f"bound is {float(bound)} where the true value is finite"
        assert bool(torch.isfinite(loss)), f"loss is {float(loss)} where the true value is finite"
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for g, leaf in zip(grads, ("positive", "negative", "log_proposal")):
            assert g is None or bool(torch.isfinite(g).all()), f"the loss's gradient wrt {leaf} is not finite"

    @run
    @given(scores(max_abs=(1e4,), dtypes=(torch.float32, torch.float64), **strategy_options))
    def no_nan(s: Scores) -> None:
        est = factory()
        leaves, s = _leaves(s)
        bound, loss = est.bound(s), est.loss(s)
        assert not bool(torch.isnan(bound)), "bound is NaN"
        assert not bool(torch.isnan(loss)), "loss is NaN"
        if bool(torch.isfinite(loss)):
            for g in torch.autograd.grad(loss, leaves, allow_unused=True):
                assert g is None or not bool(torch.isnan(g).any()), "the loss's gradient is NaN"

    @run
    @given(
        scores(max_abs=(20.0,), dtypes=(torch.float64,), **strategy_options),
        st.randoms(use_true_random=False),
    )
    def permutation(s: Scores, rng: Any) -> None:
        est = factory()
        value = _value(est.bound(s))
        rows = torch.tensor(rng.sample(range(s.n), s.n))
        assert _same(_value(est.bound(s.rows(rows))), value), "permuting the rows changed the bound"
        cols = torch.stack([torch.tensor(rng.sample(range(s.k), s.k)) for _ in range(s.n)])
        swapped = Scores(
            s.positive,
            s.negative.gather(1, cols),
            log_proposal=s.log_proposal,
            marginal_entropy=s.marginal_entropy,
            tilted=s.tilted,
        )
        assert _same(_value(est.bound(swapped)), value), (
            "permuting the negatives within rows changed the bound"
        )

    @run
    @given(
        scores(max_abs=(20.0,), dtypes=(torch.float64,), **strategy_options),
        st.floats(-100.0, 100.0, allow_nan=False),
    )
    def shift(s: Scores, c: float) -> None:
        est = factory()
        moved = Scores(
            s.positive + c,
            s.negative + c,
            log_proposal=s.log_proposal,
            marginal_entropy=s.marginal_entropy,
            tilted=None if s.tilted is None else s.tilted + c,
        )
        assert _same(_value(est.bound(moved)), _value(est.bound(s))), (
            f"adding {c} to every score changed the bound"
        )

    @run
    @given(scores(max_abs=(50.0,), dtypes=(torch.float64,), **strategy_options))
    def ordering(s: Scores) -> None:
        value = _value(factory().bound(s))
        for name in below:
            other = _value(make(name).bound(s))
            assert value <= other + 1e-9 * max(1.0, abs(other)), f"bound {value} > {name}'s {other}"
        for name in above:
            other = _value(make(name).bound(s))
            assert value >= other - 1e-9 * max(1.0, abs(other)), f"bound {value} < {name}'s {other}"
        if ceiling is not None:
            top = float(ceiling(s))
            assert value <= top + 1e-9 * max(1.0, abs(top)), f"bound {value} > its ceiling {top}"

    @run
    @given(
        scores(
            n=(1, 4),
            k=(min_negatives, max(4, min_negatives)),
            max_abs=(3.0,),
            dtypes=(torch.float64,),
            all_pairs=False,
            proposal=uses_proposal,
            tilted=False,  # the value's gradient: with tilted samples the MISA gradient is the MCMC estimate's
        )
    )
    def gradient(s: Scores) -> None:
        est = factory().double()
        fields = [s.positive, s.negative] + ([s.log_proposal] if s.log_proposal is not None else [])
        leaves = [t.detach().clone().requires_grad_(True) for t in fields]

        def value(*ts: Tensor) -> Tensor:
            lp = ts[2] if len(ts) > 2 else None
            return est.bound(
                Scores(ts[0], ts[1], log_proposal=lp, marginal_entropy=s.marginal_entropy, tilted=s.tilted)
            )

        assert torch.autograd.gradcheck(value, tuple(leaves), raise_exception=False), (
            "the gradient of bound wrt the scores differs from finite differences"
        )

    prop("contract", contract)
    prop("finite", finite)
    prop("no-nan", no_nan)
    prop("permutation", permutation)
    if shift_invariant:
        prop("shift", shift)
    if below or above or ceiling is not None:
        prop("ordering", ordering)
    prop("closed-form", lambda: _closed_form(factory, kind, uses_proposal, critic_shift))
    prop("gradient", gradient)
    if raise_on_failure and report.failures:
        raise EstimatorCheckError(report)
    return report


def _factory(estimator: Any, options: dict[str, Any]) -> Callable[[], Estimator]:
    if isinstance(estimator, str):
        make(estimator, **options)  # unknown names and bad options fail here, by name
        return lambda: make(estimator, **options)
    if options:
        raise ValueError("options apply when the estimator is given by name")
    if isinstance(estimator, Estimator):
        return lambda: copy.deepcopy(estimator)
    if callable(estimator):
        return estimator
    raise TypeError(f"estimator must be a registered name, an Estimator or a factory; got {estimator!r}")


def _leaves(s: Scores) -> tuple[list[Tensor], Scores]:
    """Fresh leaves for the scores' positive, negative (and log_proposal), and the scores built on them."""
    leaves = [
        s.positive.detach().clone().requires_grad_(True),
        s.negative.detach().clone().requires_grad_(True),
    ]
    if s.log_proposal is not None:
        leaves.append(s.log_proposal.detach().clone().requires_grad_(True))
    lp = leaves[2] if len(leaves) > 2 else None
    return leaves, Scores(
        leaves[0], leaves[1], log_proposal=lp, marginal_entropy=s.marginal_entropy, tilted=s.tilted
    )


def _value(t: Tensor) -> float:
    return float(t.detach())


def _same(a: float, b: float) -> bool:
    """Equal up to float64 rounding of a reordered sum (or the same infinity)."""
    return a == b or math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-9)


def _origin(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"


#: the closed-form check: 1024 samples of a 2-d Gaussian with 1 nat, within this much of it
CLOSED_FORM_N, CLOSED_FORM_MI, CLOSED_FORM_TOLERANCE = 1024, 1.0, 0.15


def _closed_form(factory: Callable[[], Estimator], kind: str, proposal: bool, critic_shift: float) -> None:
    task = CorrelatedGaussian(dim=2, mi=CLOSED_FORM_MI)
    g = torch.Generator().manual_seed(0)
    x, y = task.sample(CLOSED_FORM_N, generator=g, dtype=torch.float64)
    est = factory().double()

    def read(critic: Callable[[Tensor, Tensor], Tensor]) -> tuple[float, float]:
        if (
            proposal
        ):  # T = 0 and q(y|x) = p(y|x): the bound is E log p(y|x) + H(Y) = MI, whatever the negatives
            zeros = torch.full((CLOSED_FORM_N,), critic_shift, dtype=torch.float64)
            s = Scores(
                zeros,
                zeros.unsqueeze(1).expand(-1, 8).contiguous(),
                log_proposal=task.conditional_log_prob(x, y),
                marginal_entropy=task.entropy_y,
                tilted=zeros.unsqueeze(1).expand(-1, 3).contiguous(),
            )
            value = _value(est.bound(s))
            se = float(s.log_proposal.std() / math.sqrt(CLOSED_FORM_N))  # type: ignore[union-attr]
            return value, se
        ev = evaluate(est, critic, x, y, batch_size=CLOSED_FORM_N, generator=torch.Generator().manual_seed(1))
        return ev.mean, ev.stderr

    optimal = (
        task.conditional_log_prob
        if kind == "upper"
        else (lambda a, b: task.log_density_ratio(a, b) + critic_shift)
    )
    value, se = read(optimal)
    mi = CLOSED_FORM_MI
    assert math.isfinite(value), f"the value at the optimal critic is {value}"
    if kind == "lower":
        assert value <= mi + 3 * se, f"a lower bound reads {value:.4f} > the true MI {mi} + 3 se ({se:.4f})"
    if kind == "upper":
        assert value >= mi - 3 * se, f"an upper bound reads {value:.4f} < the true MI {mi} - 3 se ({se:.4f})"
    else:
        assert abs(value - mi) < CLOSED_FORM_TOLERANCE, (
            f"at the optimal critic it reads {value:.4f}, not within {CLOSED_FORM_TOLERANCE} of the true MI {mi}"
        )
    if kind == "lower" and not proposal:
        for label, worse in (
            ("0.5 log r", lambda a, b: 0.5 * task.log_density_ratio(a, b) + critic_shift),
            ("log r - 0.5", lambda a, b: task.log_density_ratio(a, b) + critic_shift - 0.5),
        ):
            v, se_worse = read(worse)
            assert v <= mi + 3 * se_worse, (
                f"at the critic {label} a lower bound reads {v:.4f} > the true MI {mi}"
            )
