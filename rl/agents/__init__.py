"""Offline agents on the shared networks: the MI-regularised actor-critic (MISA = `estimator: misa`) and the
CQL, IQL, TD3+BC and BC baselines.

    from rl.agents import make_agent, config_class
    cfg = config_class("mi")(estimator="nwj")
    agent = make_agent(cfg, obs_dim=11, act_dim=3)
    logs = agent.update(dataset.sample(256, generator))
"""

from __future__ import annotations

from typing import Any

from rl.agents.base import AgentConfig, OfflineAgent, frozen
from rl.agents.bc import BCAgent, BCConfig
from rl.agents.cql import CQLAgent, CQLConfig
from rl.agents.iql import IQLAgent, IQLConfig
from rl.agents.mi import MIAgent, MIConfig
from rl.agents.td3bc import TD3BCAgent, TD3BCConfig

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
    "config_class",
    "frozen",
    "make_agent",
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
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; available: {', '.join(sorted(ALGOS))}")
    return ALGOS[algo]


def config_class(algo: str) -> type[AgentConfig]:
    """The config dataclass of `algo`."""
    return _agent_class(algo).config_cls


def make_agent(cfg: AgentConfig, obs_dim: int, act_dim: int, device: Any = None) -> OfflineAgent:
    """The agent of `cfg.algo` on `device` (default `cfg.device`)."""
    return _agent_class(cfg.algo)(obs_dim, act_dim, cfg, device=device or cfg.device)
