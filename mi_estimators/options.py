"""Declarative checks of estimator options, by type and range.

Each estimator class declares its options once, as a mapping from option name to an `Option`:

    options = {"tau": number(low=0.0, low_open=True, allow_inf=True, what="a positive number")}

and `Estimator` checks every option given to its constructor against that mapping (so `make(name, **options)` and
direct construction behave alike). A bad value raises

    ValueError: estimator 'smile' option tau must be a positive number; got 'abc'

Conventions: booleans are never numbers (`True` is not 1); counts are Python ints, not floats; NaN is never a
number here, and +-inf only where the option says so; numpy floats and one-element real tensors count as numbers.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "Option",
    "check_options",
    "choice",
    "flag",
    "from_signature",
    "integer",
    "number",
    "require_generator",
    "require_int",
    "require_number",
    "require_sizes",
    "sizes",
]


@dataclass(frozen=True)
class Option:
    """One option's check: `accepts(value) -> bool`, and `what` describes the accepted values for the message."""

    what: str
    accepts: Callable[[Any], bool]

    def check(self, estimator: str, name: str, value: Any) -> None:
        if not self.accepts(value):
            raise ValueError(f"estimator {estimator!r} option {name} must be {self.what}; got {value!r}")


def check_options(estimator: str, spec: Mapping[str, Option], options: Mapping[str, Any]) -> None:
    """Check each of `options` that `spec` declares (undeclared names are the caller's concern)."""
    for name, value in options.items():
        if name in spec:
            spec[name].check(estimator, name, value)


def _real(value: Any) -> float | None:
    """`value` as a float when it is a real number (not a bool), or a one-element real tensor; else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        if value.is_complex():
            return None
        return float(value.detach().reshape(()).item())
    return None


def _optional(accepts: Callable[[Any], bool], optional: bool) -> Callable[[Any], bool]:
    return (lambda v: v is None or accepts(v)) if optional else accepts


def number(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
    optional: bool = False,
    what: str,
) -> Option:
    """A real number in [low, high] (each end open when asked); NaN never, +-inf only with `allow_inf`."""

    def accepts(v: Any) -> bool:
        x = _real(v)
        if x is None or math.isnan(x) or (math.isinf(x) and not allow_inf):
            return False
        above = x > low if low_open else x >= low
        below = x < high if high_open else x <= high
        return above and below

    return Option(what + (" or None" if optional else ""), _optional(accepts, optional))


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def require_int(name: str, value: Any, low: int, error: type[Exception] = ValueError) -> int:
    """`value` as an int when it is an integer (a Python or numpy int, not a bool) >= `low`; else `error` naming
    `name`: the one count check of the package's functions (steps, batch sizes, chain lengths, sample counts)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise error(f"{name} must be an int >= {low}; got {value!r}")
    return int(value)


def _range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """`a number in (0, 1]`, `a number > 0`, `a finite number`: the words for a range of `number`."""
    if math.isfinite(low) and math.isfinite(high):
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if math.isfinite(low):
        return f"a number {'>' if low_open else '>='} {low:g}"
    if math.isfinite(high):
        return f"a number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def require_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    what: str | None = None,
) -> float | None:
    """`value` as a float when it is a finite real number (not a bool; a one-element tensor counts) in the range;
    None when `optional` and it is None; else `ValueError("NAME must be WHAT; got VALUE")`, `what` defaulting to
    the range in words (`a number in (0, 1)`, `a number >= 0`): the one real-number check of the package's
    functions (learning rates, fractions, decays, task parameters)."""
    if optional and value is None:
        return None
    words = what or _range(low, high, low_open, high_open)
    if not number(low, high, low_open=low_open, high_open=high_open, what=words).accepts(value):
        raise ValueError(f"{name} must be {words}{' or None' if optional else ''}; got {value!r}")
    return _real(value)


def require_generator(generator: Any, name: str = "generator") -> torch.device:
    """The device of `generator`, a `torch.Generator` or None (the global RNG: the CPU); else `TypeError` naming
    `name`: the one generator check of the package's functions."""
    if generator is None:
        return torch.device("cpu")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None; got {type(generator).__name__}")
    return generator.device


def require_sizes(name: str, value: Any, *, nonempty: bool = False) -> tuple[int, ...]:
    """`value` as a tuple of ints >= 1 (layer widths; Python or numpy ints, not bools); else `ValueError` naming
    `name`."""
    try:
        items = list(value)
    except TypeError:
        items = None
    if (
        items is None
        or isinstance(value, str)
        or (nonempty and not items)
        or any(isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 1 for n in items)
    ):
        raise ValueError(
            f"{name} must be a {'non-empty ' if nonempty else ''}sequence of positive integers; got {value!r}"
        )
    return tuple(int(n) for n in items)


def integer(low: int, *, optional: bool = False) -> Option:
    """A Python int (not a bool, not a float, not a numpy integer: the partition functions and samplers take
    Python ints) >= low."""
    return Option(
        f"an int >= {low}" + (" or None" if optional else ""),
        _optional(lambda v: _int(v) and v >= low, optional),
    )


def flag(*, optional: bool = False) -> Option:
    """True or False (not 0/1, not a string)."""
    return Option(
        "True or False" + (" or None" if optional else ""),
        _optional(lambda v: isinstance(v, (bool, np.bool_)), optional),
    )


def choice(*values: Any, types: tuple[type, ...] = (), what: str | None = None) -> Option:
    """One of `values` (compared by equality, strings case-sensitively), or an instance of one of `types`."""

    def accepts(v: Any) -> bool:
        if types and isinstance(v, types):
            return True
        return any(v is c or (type(v) is type(c) and v == c) for c in values)

    return Option(what or "one of " + ", ".join(repr(v) for v in values), accepts)


def sizes(what: str = "a tuple of ints >= 1 (layer widths)") -> Option:
    """A tuple or list of positive ints (possibly empty)."""
    return Option(what, lambda v: isinstance(v, (tuple, list)) and all(_int(w) and w >= 1 for w in v))


def text(*, optional: bool = False) -> Option:
    """A string."""
    return Option(
        "a string" + (" or None" if optional else ""), _optional(lambda v: isinstance(v, str), optional)
    )


def _from_type(kind: Any) -> Option | None:
    """The check of an annotation: float (a real number: an int is one), int, bool, str, and each of them or None;
    None for any other annotation (a tensor, a module, a union of several types: not ours to judge)."""
    optional = False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(members) != 1:
            return None
        kind, optional = members[0], True
    if kind is bool:
        return flag(optional=optional)
    if kind is int:
        return Option(
            "an int" + (" or None" if optional else ""),
            _optional(lambda v: isinstance(v, int) and not isinstance(v, bool), optional),
        )
    if kind is float:
        return number(allow_inf=True, optional=optional, what="a number")
    if kind is str:
        return text(optional=optional)
    return None


def _from_default(default: Any) -> Option | None:
    """The check of an unannotated parameter, from its default: a bool default wants a bool, a number default a
    real number (an int default takes a float too: the default's type is weaker evidence than an annotation), a
    string default a string; None or any other default checks nothing."""
    if isinstance(default, bool):
        return flag()
    if isinstance(default, numbers.Real):
        return number(allow_inf=True, what="a number")
    if isinstance(default, str):
        return text()
    return None


def from_signature(fn: Callable[..., Any], skip: int = 1) -> dict[str, Option]:
    """Checks for the keyword options of `fn` (after its first `skip` parameters: the scores of a bound function,
    self of a constructor) from its annotations, or from its defaults where a parameter has no annotation that
    `_from_type` reads. A registered function `fn(scores, scale: float = 1.0)` then refuses `scale="abc"` by name,
    as the declared options of the built-in estimators do."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # annotations naming what the module cannot resolve (local classes): use the defaults
        hints = {}
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):
        return {}
    spec: dict[str, Option] = {}
    for p in params:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        # an annotation we do not read (a tensor, a union) overrides what the default's type suggests
        if p.name in hints:
            check = _from_type(hints[p.name])
        else:
            check = _from_default(p.default) if p.default is not p.empty else None
        if check is not None:
            spec[p.name] = check
    return spec
