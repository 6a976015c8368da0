"""A training run's settings (`RunConfig`), apart from its algorithm's (`rl.agents.*Config`; together one
`rl.agents.TrainConfig(algo=..., run=..., agent=...)`, as d3rlpy keeps `fit()`'s arguments apart from an
algorithm's config), and the reading, checking and writing of config files. The agents see only their own config
(and the seed, device, `fast` and total steps the trainer hands them); the trainer reads the run's.

A config file is one YAML mapping, flat (every key is a run setting or one of the algorithm's, never both; the form
`rl.train` writes) or in two sections::

    algo: mi                     algo: mi
    dataset: hopper-medium-v5    run: {dataset: hopper-medium-v5, steps: 1000000}
    steps: 1000000               agent: {estimator: misa}
    estimator: misa

Overrides come from the command line as `--name value` (dashes or underscores, `--estimator nwj`, `--steps 5000`,
`--run-dir DIR`) or, for dict fields, `--estimator-options.sampler mala`.

Reading, type checks and writing are OmegaConf's (structured configs over these dataclasses): values are YAML with
YAML 1.2's numbers (`3e-4` and `1e6` are floats), ints are accepted where floats are asked, and a value of the wrong
type, an unknown key or a syntax error raises `ConfigError` naming the key (or the line). Files are plain data: no
tags that build objects, and no `${...}` interpolation (refused, naming the key).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "RunConfig",
    "ConfigError",
    "build",
    "field_names",
    "to_dict",
    "from_dict",
    "load_yaml",
    "parse_yaml",
    "parse_value",
    "save_yaml",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A bad config: an unknown key, a value of the wrong type, an unknown algorithm. The message names it."""


@dataclass
class RunConfig:
    """What a training run is given, whatever the algorithm: data, length, seed, device, logging, checkpoints.

    Attributes:
        dataset: an `rl.data.load` source (`hopper-medium-v5`, a `.hdf5` path, `minari:<id>`, `d4rl:<name>`).
        dataset_size: transitions to generate for the project's own datasets (None: the collector's default).
        env: gymnasium env id for evaluation (None: taken from the dataset's metadata or name).
        steps: gradient updates in total.
        seed: seeds network init (`torch.manual_seed`) and the agent's generator (every later draw); an algorithm may
            change its default (`AgentConfig.RUN_DEFAULTS`: MISA's is the official code's 42).
        device: "cpu" (default) or "cuda".
        batch_size: transitions sampled for each update.
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

    def __post_init__(self) -> None:
        if isinstance(self.imports, str):  # tuple("my_bounds") would be its letters
            raise ConfigError(f"RunConfig.imports must be a list of module names; got {self.imports!r}")
        self.imports = tuple(self.imports)
        if isinstance(self.seeds, int | str):
            raise ConfigError(f"RunConfig.seeds must be a list of seeds; got {self.seeds!r}")
        self.seeds = tuple(int(s) for s in self.seeds)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"RunConfig.seeds holds a seed twice: {list(self.seeds)}")
        for name in ("steps", "batch_size", "eval_episodes", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RunConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"RunConfig.threads must be >= 1 or null; got {self.threads}")
        if self.eval_every < 0:
            raise ConfigError(f"RunConfig.eval_every must be >= 0; got {self.eval_every}")


def fieldfield_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.init]


def field_names(cls: type) -> list[str]:
    """The names of the init fields of config dataclass `cls`, in order."""
    return [f.name for f in fields(cls) if f.init]


# ------------------------------------------------------------------------------------------------------------
# YAML as plain data (OmegaConf's reader: YAML 1.2 numbers, safe tags)
# ------------------------------------------------------------------------------------------------------------
def _yaml_error(err: Exception, where: str) -> ConfigError:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return ConfigError(f"{where}: invalid YAML{at}: {err.problem or err.context}")
    text = str(err).strip().splitlines()
    return ConfigError(f"{where}: invalid YAML: {text[0] if text else type(err).__name__}")


def parse_yaml(text: str, where: str = "YAML") -> dict[str, Any] | list[Any]:
    """The YAML document `text` (a mapping or a list) as plain data: dicts, lists, str, int, float, bool, None.
    A syntax error raises `ConfigError` naming `where`, the line and the column; a document that is neither a
    mapping nor a list (or is empty: `{}`) names what it is."""
    try:
        node = OmegaConf.create(text)
    except (yaml.YAMLError, OmegaConfBaseException, ValueError) as err:
        raise _yaml_error(err, where) from None
    except AssertionError:  # OmegaConf's answer to a scalar document
        raise ConfigError(f"{where} must hold a YAML mapping; got the scalar {text.strip()[:40]!r}") from None
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def parse_value(text: str, where: str = "value") -> Any:
    """One YAML value as plain data (`5000`, `3e-4`, `true`, `null`, `[256, 256]`, `{a: 1}`, a string)."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]), resolve=False)["value"]
    except (yaml.YAMLError, OmegaConfBaseException, ValueError) as err:
        raise _yaml_error(err, where) from None


# ------------------------------------------------------------------------------------------------------------
# dict <-> dataclass
# ------------------------------------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (tuples become lists, so it dumps to YAML/JSON and loads back equal); a
    `TrainConfig` flat (`algo`, then the run's fields, then the algorithm's)."""
    if hasattr(cfg, "to_dict"):  # a config with its own flat form (`rl.agents.TrainConfig`)
        return cfg.to_dict()
    return {f.name: _plain(getattr(cfg, f.name)) for f in fields(cfg)}


def _expected(tp: Any) -> str:
    """What a value of type hint `tp` must be, in words."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [_expected(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin is tuple or origin is list:
        return f"a list ({_expected(args[0])} each)" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _refuse_interpolation(data: Any, where: str) -> None:
    if isinstance(data, Mapping):
        for k, v in data.items():
            _refuse_interpolation(v, f"{where}.{k}")
    elif isinstance(data, list | tuple):
        for i, v in enumerate(data):
            _refuse_interpolation(v, f"{where}[{i}]")
    elif isinstance(data, str) and ("${" in data or data == "???"):
        raise ConfigError(f"{where} = {data!r}: configs are plain data (no ${{...}} interpolation, no ???)")


def build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """`cls(**data)` with every value checked against (and converted to) its field's type by OmegaConf."""
    unknown = [k for k in data if k not in field_names(cls)]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} for {cls.__name__}; known keys: {', '.join(sorted(field_names(cls)))}"
        )
    _refuse_interpolation(data, f"{where}: {cls.__name__}")
    data = _whole_floats_as_ints(cls, data)
    schema = OmegaConf.structured(cls, flags={"allow_objects": True})  # a sampler object in estimator_options
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, dict(data)))
    except OmegaConfBaseException as err:
        # OmegaConf names the key for most errors, not for an element of a list; then the value is found here
        head = re.split(r"[.\[]", str(err.full_key or ""), maxsplit=1)[0]
        if head not in data:
            head = next((k for k in data if not _merges(schema, k, data[k])), "")
        if head in data:
            tp = typing.get_type_hints(cls)[head]
            raise ConfigError(
                f"{where}: {cls.__name__}.{head} must be {_expected(tp)}; got {data[head]!r}"
            ) from None
        raise ConfigError(f"{where}: {cls.__name__}: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _whole_floats_as_ints(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with whole floats made ints where `cls` asks for ints (`steps: 1e6`), which OmegaConf refuses."""

    def takes_int(tp: Any) -> bool:
        return tp is int or (
            typing.get_origin(tp) in (typing.Union, types.UnionType) and int in typing.get_args(tp)
        )

    def whole(v: Any) -> Any:
        return int(v) if isinstance(v, float) and v.is_integer() else v

    hints, out = typing.get_type_hints(cls), dict(data)
    for key, value in data.items():
        tp = hints[key]
        if takes_int(tp):
            out[key] = whole(value)
        elif (
            typing.get_origin(tp) is tuple
            and takes_int(typing.get_args(tp)[0])
            and isinstance(value, list | tuple)
        ):
            out[key] = [whole(v) for v in value]
    return out


def _merges(schema: Any, key: str, value: Any) -> bool:
    try:
        OmegaConf.merge(schema, {key: value})
    except OmegaConfBaseException:
        return False
    return True


def from_dict(cls: type, data: Mapping[str, Any], where: str = "config") -> Any:
    """Build the config dataclass `cls` from a mapping; an unknown key, a value of the wrong type or a retired key
    at a new value raises `ConfigError` naming it (a `TrainConfig` has its own `TrainConfig.from_dict`)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values; got {type(data).__name__}")
    return build(cls, drop_retired(cls, dict(data), where), where)


def drop_retired(cls: type, data: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """`data` without the keys `cls.RETIRED` lists, where they hold their old default (what an earlier version
    wrote); any other value of such a key is a `ConfigError` that names where the setting lives now."""
    retired = getattr(cls, "RETIRED", {})
    names = set(field_names(cls))
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
    """The mapping in the YAML file `path`, as plain data (`parse_yaml`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping; got {type(data).__name__}")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write `cfg` as YAML (flat, keys in field order; strings that would read back as another type quoted),
    atomically."""
    from rl._atomic import atomic_write

    text = OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def apply_overrides(
    data: dict[str, Any], overrides: Mapping[str, Any], known: Iterable[str]
) -> dict[str, Any]:
    """`data` updated with command-line overrides `{"estimator": "nwj", "estimator_options.sampler": "mala"}`.

    Values are YAML (`5000`, `true`, `null`, `[256, 256]`; `parse_value`); keys may use dashes. A key whose head
    is not in `known` raises `ConfigError` naming it; a dotted key sets one entry of a dict field.
    """
    out = dict(data)
    known = sorted(known)
    for raw_key, raw_value in overrides.items():
        key = raw_key.replace("-", "_")
        value = parse_value(raw_value, f"--{raw_key}") if isinstance(raw_value, str) else raw_value
        head, _, sub = key.partition(".")
        if head not in known:
            raise ConfigError(
                f"unknown option --{raw_key}; known: " + ", ".join("--" + n.replace("_", "-") for n in known)
            )
        if sub:
            current = out.get(head) or {}
            if not isinstance(current, dict):
                raise ConfigError(f"--{raw_key}: {head} is not a mapping")
            out[head] = {**current, sub: value}
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


def config_help(cls: type, defaults: Mapping[str, Any] | None = None) -> str:
    """Every field of config class `cls` as `--name TYPE (default X): meaning`, one per line (for `--help`);
    `defaults` replaces some of the class's defaults (an algorithm's `RUN_DEFAULTS`)."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    defaults = {**to_dict(cls()), **_plain(dict(defaults or {}))}
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
