"""Offline agents on the shared networks: the MI-regularised actor-critic (MISA = `estimator: misa`) and the
CQL, IQL, TD3+BC and BC baselines.

    from rl.agents import MIAgent, MIConfig, make_agent, train_config
    agent = MIAgent(11, 3, MIConfig(estimator="nwj"), seed=0)                  # an algorithm's config alone
    agent = make_agent(train_config("mi", estimator="nwj"), obs_dim=11, act_dim=3)  # or a run's whole config
    logs = agent.update(dataset.sample(256, generator))

A run's whole config is a `TrainConfig(algo=..., run=RunConfig(...), agent=<algo>Config(...))` (`rl.config` holds
`RunConfig` and the YAML reading and checking): the run's settings apart from the algorithm's, as d3rlpy keeps
`fit()`'s arguments apart from an algorithm's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rl.agents.base import AgentConfig, OfflineAgent, frozen
from rl.agents.bc import BCAgent, BCConfig
from rl.agents.cql import CQLAgent, CQLConfig
from rl.agents.iql import IQLAgent, IQLConfig
from rl.agents.mi import MIAgent, MIConfig
from rl.agents.td3bc import TD3BCAgent, TD3BCConfig
from rl.config import ConfigError, RunConfig, build, drop_retired, field_names, to_dict

__all__ = [
    "ALGOS",
    "AgentConfig",
    "BCAgent",
    "BCConfig",
    "CQLAgent",
    "CQLConfig",
    "IQLAgent",
    "IQLConfig",
    "MIAgent",
    "MIConfig",
    "OfflineAgent",
    "TD3BCAgent",
    "TD3BCConfig",
    "TrainConfig",
    "config_class",
    "config_keys",
    "frozen",
    "make_agent",
    "train_config",
]

#: algorithm name -> agent class (`misa` is the MI actor-critic, whose default estimator is misa)
ALGOS: dict[str, type[OfflineAgent]] = {
    "mi": MIAgent,
    "misa": MIAgent,
    "cql": CQLAgent,
    "iql": IQLAgent,
    "td3bc": TD3BCAgent,
    "bc": BCAgent,
}


def _agent_class(algo: str) -> type[OfflineAgent]:
    """The agent class of `algo` (`ConfigError`, a `ValueError`, naming the choices for an unknown name)."""
    if not isinstance(algo, str) or algo not in ALGOS:
        raise ConfigError(f"unknown algo {algo!r}; available: {', '.join(sorted(ALGOS))}")
    return ALGOS[algo]


def config_class(algo: str) -> type[AgentConfig]:
    """The config dataclass of `algo` (`ConfigError` for an unknown name, as `_agent_class`)."""
    return _agent_class(algo).config_cls


@dataclass
class TrainConfig:
    """One training run's config: `algo`, its run settings and its algorithm's hyperparameters.

    `TrainConfig("iql")` is IQL's defaults; `TrainConfig.from_dict({"algo": "iql", "steps": 5000, "beta": 10})` (or
    `train_config("iql", steps=5000, beta=10)`) sorts flat keys into their parts, `cfg.replace(seed=3, beta=1.0)`
    likewise; `cfg.to_dict()` is the flat form (what `rl.train` writes into `config.yaml` and checkpoints).

    Attributes:
        algo: algorithm name (`mi`/`misa`, `cql`, `iql`, `td3bc`, `bc`).
        run: the run's settings (`RunConfig`; None: the algorithm's defaults, `AgentConfig.RUN_DEFAULTS`).
        agent: the algorithm's config (`config_class(algo)`; None: its defaults).
    """

    algo: str = "mi"
    run: RunConfig | None = None
    agent: Any = None

    def __post_init__(self) -> None:
        cls = config_class(self.algo)
        if self.run is None:
            self.run = RunConfig(**cls.RUN_DEFAULTS)
        elif not isinstance(self.run, RunConfig):
            raise ConfigError(f"TrainConfig.run must be a RunConfig; got {type(self.run).__name__}")
        if self.agent is None:
            self.agent = cls()
        elif type(self.agent) is not cls:
            raise ConfigError(
                f"TrainConfig.agent must be a {cls.__name__} for algo {self.algo!r}; got {type(self.agent).__name__}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> TrainConfig:
        """From the flat mapping (or one with `run:`/`agent:` sections) of a file; an unknown, misplaced or retired
        key or a value of the wrong type raises `ConfigError` naming it."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping of keys to values; got {type(data).__name__}")
        flat = flat_config(data, where)
        algo = flat.pop("algo", "mi")
        agent_cls = config_class(algo)
        run_names, agent_names = set(field_names(RunConfig)), set(field_names(agent_cls))
        flat = cls.drop_retired(algo, flat, where)
        parts: dict[str, dict[str, Any]] = {"run": {}, "agent": {}}
        for key, value in flat.items():
            section = "run" if key in run_names else "agent" if key in agent_names else None
            if section is None:
                raise ConfigError(
                    f"{where}: unknown key {key!r} for algo {algo!r}; run keys: {', '.join(sorted(run_names))}; "
                    f"{agent_cls.__name__} keys: {', '.join(sorted(agent_names))}"
                )
            parts[section][key] = value
        run = build(RunConfig, {**agent_cls.RUN_DEFAULTS, **parts["run"]}, where)
        return cls(algo, run, build(agent_cls, parts["agent"], where))

    @staticmethod
    def drop_retired(algo: str, flat: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
        """The flat config `flat` of `algo` without the retired keys of its algorithm and of the run at their old
        defaults (what an earlier version wrote); a retired key at another value is a `ConfigError`."""
        return drop_retired(RunConfig, drop_retired(config_class(algo), dict(flat), where), where)

    def to_dict(self) -> dict[str, Any]:
        """The flat form: `algo`, the run's fields, the algorithm's (plain data: lists, not tuples)."""
        return {"algo": self.algo, **to_dict(self.run), **to_dict(self.agent)}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with flat `changes` (run or algorithm fields, by name) applied and checked."""
        run_names, agent_names = field_names(RunConfig), field_names(type(self.agent))
        unknown = [k for k in changes if k not in run_names and k not in agent_names]
        if unknown:
            raise ConfigError(f"TrainConfig.replace: unknown field {unknown[0]!r} for algo {self.algo!r}")
        run = {k: v for k, v in changes.items() if k in run_names}
        agent = {k: v for k, v in changes.items() if k in agent_names}
        return TrainConfig(
            self.algo,
            dataclasses.replace(self.run, **run) if run else self.run,
            dataclasses.replace(self.agent, **agent) if agent else self.agent,
        )

    def resume_refusal(self, saved: Mapping[str, Any]) -> str | None:
        """Why a run saved with the flat config `saved` cannot go on under this one beyond the field by field
        comparison (the algorithm's hook, `AgentConfig.resume_refusal`; None: nothing more)."""
        return self.agent.resume_refusal(saved, self.run)


def train_config(algo: str = "mi", **fields: Any) -> TrainConfig:
    """The `TrainConfig` of `algo` from flat fields (run and algorithm settings by name: `train_config("iql",
    steps=5000, beta=10.0)`), checked as a file's are."""
    return TrainConfig.from_dict({"algo": algo, **fields}, where="train_config")


def flat_config(data: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """A `TrainConfig` mapping in its flat form: the keys of `run:` and `agent:` sections (where given) lifted to
    the top, each checked to be a setting of its section (`ConfigError` naming a misplaced or doubled key)."""
    flat = dict(data)
    sections = {s: flat.pop(s) for s in ("run", "agent") if isinstance(flat.get(s), Mapping)}
    if not sections:
        return flat
    agent_cls = config_class(flat.get("algo", "mi"))
    owner = {**{n: "agent" for n in field_names(agent_cls)}, **{n: "run" for n in field_names(RunConfig)}}
    for section, entries in sections.items():
        for key, value in entries.items():
            if owner.get(key, section) != section:
                raise ConfigError(
                    f"{where}: {section}.{key} is not one of the {section} settings; it belongs in {owner[key]}:"
                )
            if key in flat:
                raise ConfigError(f"{where}: {key} is given twice (at the top and in the {section}: section)")
            flat[key] = value
    return flat


def config_keys(algo: str) -> list[str]:
    """Every flat key of `algo`'s `TrainConfig`: `algo`, the run's fields, the algorithm's."""
    return ["algo", *field_names(RunConfig), *field_names(config_class(algo))]


def make_agent(cfg: TrainConfig, obs_dim: int, act_dim: int, device: Any = None) -> OfflineAgent:
    """The agent of `cfg.algo` with `cfg.agent`, seeded, placed and sized by `cfg.run` (its `seed`, `device`
    unless `device` is given, `fast` and `steps`)."""
    run = cfg.run
    return _agent_class(cfg.algo)(
        obs_dim,
        act_dim,
        cfg.agent,
        seed=run.seed,
        device=device or run.device,
        fast=run.fast,
        total_steps=run.steps,
    )
