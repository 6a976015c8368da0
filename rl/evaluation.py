"""Running a policy in its gymnasium environment: the env factory, the action scaling and `evaluate`.

Shared by online SAC (`rl.collect.sac`), the offline trainer (`rl.train`) and the dataset factory
(`rl.collect`); kept apart from all of them so that none has to import another's module to evaluate.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

__all__ = ["evaluate", "make_env", "scale_action"]


def make_env(env_id: str) -> gym.Env:
    """`gym.make(env_id)`, with a `ValueError` naming the env if it cannot be made or its spaces are not Box."""
    try:
        env = gym.make(env_id)
    except Exception as exc:  # noqa: BLE001 -- re-raised with the name
        raise ValueError(f"cannot make gymnasium environment {env_id!r}: {exc}") from exc
    if not isinstance(env.action_space, gym.spaces.Box) or not isinstance(
        env.observation_space, gym.spaces.Box
    ):
        raise ValueError(f"SAC needs Box observation and action spaces; {env_id} has {env.action_space}")
    return env


def scale_action(a: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map policy actions in [-1, 1] (`[..., da]`) to the environment's box `[low, high]` (same shape)."""
    return low + (a + 1.0) * 0.5 * (high - low)


@torch.no_grad()
def evaluate(
    policy: Any,
    env_id: str,
    episodes: int = 10,
    seed: int = 1_000_000,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Undiscounted returns of `episodes` episodes, `[episodes]`; episode `i` resets with `seed + i`.

    `policy` is anything with ``act(obs [B, do], deterministic=, generator=) -> [B, da]`` in [-1, 1] (a
    `TanhGaussianPolicy`, an offline agent). Episodes run in lockstep (one batched policy call per step across all
    unfinished episodes).
    """
    envs = [make_env(env_id) for _ in range(episodes)]
    low, high = envs[0].action_space.low, envs[0].action_space.high
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    returns = np.zeros(episodes)
    alive = np.ones(episodes, bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        a = policy.act(obs[idx], deterministic=deterministic, generator=generator)
        for j, i in enumerate(idx):
            o, r, term, trunc, _ = envs[i].step(scale_action(a[j], low, high))
            returns[i] += r
            obs[i] = o
            if term or trunc:
                alive[i] = False
    for e in envs:
        e.close()
    return returns
