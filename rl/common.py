"""Actor-critic pieces shared by online SAC (`rl.collect.sac`) and the offline agents (`rl.agents`).

Small pure functions: the soft TD target, the critic/actor/temperature losses, Polyak averaging and the optimiser
factory. They live here, below both users, so that the offline agents do not depend on the online trainer's module
(its replay buffer, env loop and CLI).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["td_target", "critic_loss", "actor_loss", "alpha_loss", "soft_update_", "make_adam"]


def td_target(
    rewards: Tensor,
    terminals: Tensor,
    next_q: Tensor,
    gamma: float,
    next_log_prob: Tensor | None = None,
    alpha: Tensor | float | None = None,
) -> Tensor:
    """Soft TD target `r + gamma (1 - d) (Q'(s', a') - alpha log pi(a'|s'))`, `[B]`, no gradient.

    `rewards`, `terminals` (1.0 where terminated; timeouts are NOT terminals) and `next_q` (e.g. the min over
    target critics) are `[B]`; with `next_log_prob=None` or `alpha=None` there is no entropy term (MISA, CQL-JAX).
    """
    with torch.no_grad():
        v = next_q
        if next_log_prob is not None and alpha is not None:
            v = v - alpha * next_log_prob
        return rewards + gamma * (1.0 - terminals) * v


def critic_loss(q: Tensor, target: Tensor) -> Tensor:
    """Sum over ensemble members of the mean squared TD error: `q [E, B]`, `target [B]` -> scalar."""
    if q.dim() != 2 or target.shape != q.shape[1:]:
        raise ValueError(f"q must be [E, B] and target [B]; got {tuple(q.shape)} and {tuple(target.shape)}")
    return (q - target.detach()).square().mean(dim=1).sum()


def actor_loss(log_prob: Tensor, q: Tensor, alpha: Tensor | float) -> Tensor:
    """SAC policy loss `mean(alpha log pi(a~|s) - min Q(s, a~))` over reparameterised actions; `[B]`/`[B, K]`."""
    return (alpha * log_prob - q).mean()


def alpha_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> Tensor:
    """Temperature loss `-mean(log_alpha (log pi + target_entropy))` (log pi detached)."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging in place: `target <- (1 - tau) target + tau source` (one fused foreach call)."""
    tp = [p for p in target.parameters()]
    sp = [p for p in source.parameters()]
    torch._foreach_lerp_(tp, sp, tau)


def make_adam(params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.Adam:
    """Adam with the fused implementation (one kernel for all parameters; ~4x faster on CPU than the default)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused not supported for these tensors/device
        return torch.optim.Adam(params, lr=lr, **kwargs)
