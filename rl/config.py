"""YAML configs as dataclasses: load, save (round-trip), and command-line overrides.

A config file is one flat YAML mapping whose `algo` key picks the dataclass (`rl.agents.config_class(algo)`);
every other key must be a field of that dataclass, or the loader stops naming the key::

    algo: mi
    dataset: hopper-medium-v5
    estimator: misa
    steps: 1000000

Overrides come from the command line as `--name value` (dashes or underscores, `--estimator nwj`,
`--steps 5000`, `--run-dir DIR`) or, for dict fields, `--estimator-options.sampler mala`; values are parsed as
YAML scalars (so `--hidden-q [256,256]`, `--target-entropy null` and `--normalize-observations true` work) and then
coerced to the field's type.

Files and values are read as plain data (`yaml.SafeLoader`: no tags that build objects) with YAML 1.2's numbers:
PyYAML follows YAML 1.1, where `3e-4` and `1e6` are strings; here they are floats, as in every other YAML reader.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

__all__ = [
    "RunConfig",
    "ConfigError",
    "to_dict",
    "from_dict",
    "load_yaml",
    "parse_yaml",
    "save_yaml",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A bad config: an unknown key, a value of the wrong type, an unknown algorithm. The message names it."""


@dataclass
class RunConfig:
    """What every training run has, whatever the algorithm (the agent configs extend it).

    Attributes:
        algo: algorithm name (`mi`/`misa`, `cql`, `iql`, `td3bc`, `bc`).
        dataset: an `rl.data.load` source (`hopper-medium-v5`, a `.hdf5` path, `minari:<id>`, `d4rl:<name>`).
        dataset_size: transitions to generate for the project's own datasets (None: the collector's default).
        env: gymnasium env id for evaluation (None: taken from the dataset's metadata or name).
        steps: gradient updates in total.
        seed: seeds network init (`torch.manual_seed`) and the agent's generator (every later draw).
        device: "cpu" (default) or "cuda".
        batch_size: transitions per update.
        eval_every: steps between evaluations of the deterministic policy; 0 turns periodic evaluation off (the
            final one still runs, see `final_eval`).
        eval_episodes: episodes per evaluation (their mean return is the normalised score's).
        eval_seed: episode i of an evaluation resets the env with seed `eval_seed + i` (every evaluation the same).
        log_every: steps between CSV/TensorBoard rows (losses averaged since the last row).
        checkpoint_every: steps between atomic checkpoints (and one at the end).
        run_dir: where logs and checkpoints go (None: `runs/<algo>/<dataset>/seed<seed>`).
        threads: torch intra-op threads (None: leave torch's default).
        max_abs_loss: a logged term above this in magnitude counts as diverged (stops the run, names the term).
        final_eval: evaluate once more at the end of the run (and print the normalised score).
        imports: modules imported before the config is checked, so that the estimators they register with
            `mi_estimators.register` can be named: module names importable from the current directory, or paths to
            `.py` files (`--import` adds one).
        progress: a progress bar on stderr (None: only when stderr is a terminal, as `mi_estimators.estimate`;
            `--quiet` turns it off).
        seeds: train these seeds in one process, one stacked update for all (`rl.seeds.StackedAgents`; `--seeds
            0 1 2`): seed k's run folder is `run_dir/seed<k>` (without `run_dir`: the default folder of seed k),
            laid out as a one-seed run's and resumable as one; `seed` is then unused. Each seed follows its
            one-seed run to float rounding (plain autograd: a stacked run sets `fast: false`). Empty: one run of
            `seed`.
        fast: take the hand-written CPU paths of `rl._fast` (the Q ensemble's wide pass on many actions per
            state, the MCMC chain's input gradient, the chain run beside the critic's update): the same functions
            up to float rounding; the committed results were made with them. False: plain autograd throughout.
    """

    #: keys of earlier configs that moved: key -> (the value that meant the default, where the setting lives now);
    #: `from_dict` drops such a key at that value and refuses any other value, naming the new place
    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {}

    algo: str = "mi"
    dataset: str = "hopper-medium-v5"
    dataset_size: int | None = None
    env: str | None = None
    steps: int = 1_000_000
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 256
    eval_every: int = 10_000
    eval_episodes: int = 10
    eval_seed: int = 1_000_000
    log_every: int = 1_000
    checkpoint_every: int = 10_000
    run_dir: str | None = None
    threads: int | None = None
    max_abs_loss: float = 1e8
    final_eval: bool = True
    imports: tuple[str, ...] = ()
    progress: bool | None = None
    seeds: tuple[int, ...] = ()
    fast: bool = True

    def resume_refusal(self, saved: Mapping[str, Any]) -> str | None:
        """Why a run saved with the config `saved` (plain data) cannot go on under this one, beyond the field by
        field comparison of `rl.train --resume` (None: nothing more). An algorithm whose state was laid over a run
        setting says so here (IQL's cosine schedule over `steps`)."""
        return None

    def run_tag(self) -> str:
        """What the default run folder's last part starts with, before `seed<k>` (the MI agent's estimator)."""
        return ""

    def __post_init__(self) -> None:
        if isinstance(self.imports, str):  # tuple("my_bounds") would be its letters
            raise ConfigError(
                f"{type(self).__name__}.imports must be a list of module names; got {self.imports!r}"
            )
        self.imports = tuple(self.imports)
        if isinstance(self.seeds, int | str):
            raise ConfigError(f"{type(self).__name__}.seeds must be a list of seeds; got {self.seeds!r}")
        self.seeds = tuple(int(s) for s in self.seeds)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{type(self).__name__}.seeds holds a seed twice: {list(self.seeds)}")
        for name in ("steps", "batch_size", "eval_episodes", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{type(self).__name__}.{name} must be >= 1; got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{type(self).__name__}.threads must be >= 1 or null; got {self.threads}")
        if self.eval_every < 0:
            raise ConfigError(f"{type(self).__name__}.eval_every must be >= 0; got {self.eval_every}")


# ------------------------------------------------------------------------------------------------------------
# YAML as plain data, with YAML 1.2 numbers
# ------------------------------------------------------------------------------------------------------------
class _PlainLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads exponent floats without a dot (`3e-4`, `1E6`, `-2e+3`)."""


class _PlainDumper(yaml.SafeDumper):
    """`yaml.SafeDumper` that quotes the strings `_PlainLoader` would read as floats (`run_dir: '1e3'`)."""


for _cls in (_PlainLoader, _PlainDumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )


def parse_yaml(text: str, where: str = "YAML") -> Any:
    """`text` as plain data (dicts, lists, str, int, float, bool, None); a syntax error raises `ConfigError`
    naming `where`, the line and the column."""
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: invalid YAML{at}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: invalid YAML: {str(err).splitlines()[0]}") from None
    except ValueError as err:  # a scalar that matched a number pattern but is not one (`._e5`)
        raise ConfigError(f"{where}: invalid YAML: {err}") from None


# ------------------------------------------------------------------------------------------------------------
# dict <-> dataclass
# ------------------------------------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (tuples become lists, so it dumps to YAML/JSON and loads back equal)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in fields(cfg)}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """`value` converted to the declared type of field `name` (ints to floats, lists to tuples, ...)."""
    tp = _hints(cls)[name]
    where = f"{cls.__name__}.{name}"

    def conv(tp: Any, v: Any) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if v is None and type(None) in args:
                return None
            errors = []
            for a in args:
                if a is type(None):
                    continue
                try:
                    return conv(a, v)
                except ConfigError as e:
                    errors.append(str(e))
            raise ConfigError(errors[0] if errors else f"{where} cannot be {v!r}")
        if tp is Any:
            return v
        if origin is tuple:
            if not isinstance(v, list | tuple):
                raise ConfigError(f"{where} must be a list; got {v!r}")
            (inner, *_rest) = typing.get_args(tp) or (Any,)
            return tuple(conv(inner, x) for x in v)
        if origin is dict or tp is dict:
            if not isinstance(v, dict):
                raise ConfigError(f"{where} must be a mapping; got {v!r}")
            return dict(v)
        if tp is bool:
            if isinstance(v, bool):
                return v
            raise ConfigError(f"{where} must be true or false; got {v!r}")
        if tp is int:
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or (isinstance(v, float) and not v.is_integer())
            ):
                raise ConfigError(f"{where} must be an integer; got {v!r}")
            return int(v)
        if tp is float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"{where} must be a number; got {v!r}")
            return float(v)
        if tp is str:
            if not isinstance(v, str):
                raise ConfigError(f"{where} must be a string; got {v!r}")
            return v
        return v

    return conv(tp, value)


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build `cls` from a mapping; an unknown key raises `ConfigError` naming it (and the known keys)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values; got {type(data).__name__}")
    names = {f.name for f in fields(cls) if f.init}
    data = drop_retired(cls, data, where)
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} for {cls.__name__} (algo {data.get('algo', '?')!r}); "
            f"known keys: {', '.join(sorted(names))}"
        )
    try:
        return cls(**{k: _coerce(cls, k, v) for k, v in data.items()})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def drop_retired(cls: type, data: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """`data` without the keys `cls.RETIRED` lists, where they hold their old default (what an earlier version
    wrote); any other value of such a key is a `ConfigError` that names where the setting lives now."""
    retired = getattr(cls, "RETIRED", {})
    names = {f.name for f in fields(cls) if f.init}
    kept = {}
    for key, value in data.items():
        if key in retired and key not in names:
            default, now = retired[key]
            if value != default:
                raise ConfigError(
                    f"{where}: key {key!r} was retired; its setting is now {now} (only {key}: {default!r}, "
                    "the old default, is still read, and ignored)"
                )
            continue
        kept[key] = value
    return kept


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    data = parse_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping; got {type(data).__name__}")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write `cfg` as YAML (keys in field order), atomically."""
    from rl._atomic import atomic_write

    text = yaml.dump(to_dict(cfg), Dumper=_PlainDumper, sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def apply_overrides(data: dict[str, Any], overrides: dict[str, str], cls: type) -> dict[str, Any]:
    """`data` updated with command-line overrides `{"estimator": "nwj", "estimator_options.sampler": "mala"}`.

    Values are YAML scalars (`5000`, `true`, `null`, `[256, 256]`); keys may use dashes. A key that is not a field
    of `cls` (or a dotted key into a non-dict field) raises `ConfigError` naming it.
    """
    out = dict(data)
    names = {f.name for f in fields(cls) if f.init}
    for raw_key, raw_value in overrides.items():
        key = raw_key.replace("-", "_")
        value = parse_yaml(raw_value, f"--{raw_key}") if isinstance(raw_value, str) else raw_value
        head, _, sub = key.partition(".")
        if head not in names:
            raise ConfigError(
                f"unknown option --{raw_key} for {cls.__name__}; known: "
                + ", ".join("--" + n.replace("_", "-") for n in sorted(names))
            )
        if sub:
            current = dict(out.get(head) or {})
            if not isinstance(current, dict):
                raise ConfigError(f"--{raw_key}: {head} is not a mapping")
            current[sub] = value
            out[head] = current
        else:
            out[head] = value
    return out


_ENTRY = re.compile(r"^(\w+(?:\s*/\s*\w+)*):\s+(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's meaning, from the `Attributes:` sections of `cls` and its bases (`a / b: text` documents both;
    a subclass's entry wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__") or ""
        if "Attributes:" not in doc:
            continue
        names: list[str] = []
        for line in doc.split("Attributes:", 1)[1].splitlines():
            text = line.strip()
            if not text:
                continue
            m = _ENTRY.match(text) if line.startswith(" " * 8) and not line.startswith(" " * 9) else None
            if m:
                names = [n.strip() for n in m.group(1).split("/")]
                for n in names:
                    out[n] = m.group(2)
            elif names:  # a continuation line
                for n in names:
                    out[n] += " " + text
    return out


def config_help(cls: type) -> str:
    """Every field of config class `cls` as `--name TYPE (default X): meaning`, one per line (for `--help`)."""
    hints, docs, defaults = _hints(cls), field_docs(cls), to_dict(cls())
    lines = []
    for f in fields(cls):
        if not f.init:
            continue
        tp = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
        value = yaml.safe_dump(defaults[f.name], default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(
            f"  --{f.name.replace('_', '-')} {tp} (default {value}): {docs.get(f.name, '')}".rstrip(": ")
        )
    return "\n".join(lines)


def config_fields(cfg: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg)]
