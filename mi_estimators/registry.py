"""Estimators by name: `available()`, `make(name, **options)`, `register(name)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from .options import Option, check_options, from_signature
from .scores import Scores

_REGISTRY: dict[str, Callable[..., Estimator]] = {}


class Estimator(nn.Module):
    """An MI estimator: a bound on scores, and the loss that trains the critic (and proposal) through it.

    `bound(s)` is the estimate in nats (a differentiable 0-d tensor); `loss(s)` is what to minimise, `-bound(s)`
    unless the estimator trains with another objective (MINE's debiased gradient, JS). Estimators are
    `nn.Module`s so that their state (MINE's moving average, TUBA's baseline, a proposal) moves with `.to()` and
    round-trips through `state_dict()`.

    A subclass declares the options its constructor takes in `options` (name -> `mi_estimators.options.Option`, a
    type and range check); every option passed to the constructor, by `make()` or directly, is checked against it
    before `__init__` runs, and a bad value raises a `ValueError` naming the estimator and the option. Options it
    does not declare are checked against the constructor's annotations or defaults (`options.from_signature`: a
    `float` takes a real number, an `int` an int, a `bool` a bool, a `str` a string).
    """

    name: str = "estimator"
    #: what the estimator reads from `Scores` beyond positive/negative, and whether it needs a proposal q(y|x)
    needs_proposal: bool = False
    #: the estimator's critic term is a lower bound on MI (False for upper bounds such as CLUB)
    lower_bound: bool = True
    #: the constructor's options and their checks (type and range)
    options: ClassVar[Mapping[str, Option]] = {}
    #: the negatives `estimate` and `evaluate` build for a score-based estimator unless told otherwise:
    #: "all-pairs" (the other N-1 samples of the batch) or "derangement" (one deranged sample, the f-DIME family)
    negatives: ClassVar[str] = "all-pairs"
    #: whether the bound reads critic scores at all (Barber-Agakov's `T = 0` does not)
    needs_critic: ClassVar[bool] = True
    #: whether `scores(..., tilted=False)` may skip an MCMC chain that only the loss needs (the MISA family)
    chain_optional_for_value: ClassVar[bool] = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Estimator:
        # One place checks the options, for make() and direct construction alike. (Unpickling and deepcopy call
        # __new__ without arguments: nothing to check.)
        if (args or kwargs) and cls.__init__ is not nn.Module.__init__:
            bound = inspect.signature(cls.__init__).bind_partial(None, *args, **kwargs).arguments
            check_options(cls.name, _option_checks(cls), dict(list(bound.items())[1:]))  # [0] is self
        return super().__new__(cls)

    def bound(self, s: Scores) -> Tensor:
        raise NotImplementedError

    def loss(self, s: Scores) -> Tensor:
        return -self.bound(s)

    def critic_loss(self, s: Scores) -> Tensor:
        """What a critic trained beside a proposal it does not train minimises (the RL layer's `T = Q`, negatives
        from the policy); `loss(s)` unless the estimator says otherwise (the MISA family's Monte Carlo gradient)."""
        return self.loss(s)

    def forward(self, s: Scores) -> Tensor:
        return self.bound(s)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


_SIGNATURE_CHECKS: dict[type, Mapping[str, Option]] = {}


def _option_checks(cls: type[Estimator]) -> Mapping[str, Option]:
    """The declared `options` of `cls`, and for its other constructor parameters the checks their annotations or
    defaults give (computed once per class)."""
    if cls not in _SIGNATURE_CHECKS:
        _SIGNATURE_CHECKS[cls] = {**from_signature(cls.__init__), **cls.options}
    return _SIGNATURE_CHECKS[cls]


class FunctionEstimator(Estimator):
    """Wraps a pure function `fn(scores, **options) -> Tensor` as an estimator (its loss is `-fn`)."""

    def __init__(self, fn: Callable[..., Tensor], name: str, **options: Any) -> None:
        super().__init__()
        self.fn, self.name, self.options = fn, name, options

    def bound(self, s: Scores) -> Tensor:
        return self.fn(s, **self.options)


def register(name: str) -> Callable[[Any], Any]:
    """Decorator registering an `Estimator` subclass, or a function `fn(scores, **options) -> bound`, under `name`.

    >>> @register("my-dv")
    ... def my_dv(s, scale=1.0): ...
    >>> make("my-dv", scale=2.0)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register needs a non-empty string name; got {name!r}")

    def deco(obj: Any) -> Any:
        if name in _REGISTRY:
            raise ValueError(f"estimator name {name!r} is already registered")
        if inspect.isclass(obj):
            if not issubclass(obj, Estimator):
                raise TypeError(
                    f"register({name!r}) needs an Estimator subclass or a function; got class {obj!r}"
                )
            obj.name = name
            _REGISTRY[name] = obj
        elif callable(obj):
            checks = from_signature(obj)

            def factory(**options: Any) -> Estimator:
                check_options(name, checks, options)
                return FunctionEstimator(obj, name, **options)

            factory.__wrapped__ = obj  # type: ignore[attr-defined]
            _REGISTRY[name] = factory
        else:
            raise TypeError(f"register({name!r}) needs an Estimator subclass or a function; got {obj!r}")
        return obj

    return deco


def unregister(name: str) -> None:
    """Remove a user-registered name (mainly for tests)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; available: {available()}")
    del _REGISTRY[name]


def available() -> list[str]:
    """Sorted names of every registered estimator."""
    return sorted(_REGISTRY)


def _accepted_options(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    target = getattr(factory, "__wrapped__", None)
    if target is not None:
        params = list(inspect.signature(target).parameters.values())[1:]  # first is the scores
    elif factory.__init__ is nn.Module.__init__:  # type: ignore[misc]
        return set(), False  # no own __init__: nn.Module's (*args, **kwargs) would swallow any option
    else:
        params = list(inspect.signature(factory.__init__).parameters.values())[1:]  # type: ignore[misc]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, var_kw


def make(name: str, **options: Any) -> Estimator:
    """Build the estimator registered as `name` with its keyword options.

    Raises:
        ValueError: unknown name (the message lists `available()`), an option the estimator does not take (the
            message names the option, the estimator and the options it does take), or an option value of the wrong
            type or out of range (the message names the estimator, the option and what it must be).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; available: {', '.join(available())}")
    factory = _REGISTRY[name]
    accepted, var_kw = _accepted_options(factory)
    if not var_kw:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(
                f"estimator {name!r} got unknown option(s) {unknown}; it takes: {sorted(accepted) or 'no options'}"
            )
    return factory(**options)
