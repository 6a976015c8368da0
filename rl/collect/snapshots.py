"""Policy-only snapshots: a few hundred KB `.pt` files holding one `TanhGaussianPolicy` and its metadata.

Written by online SAC (`rl.collect.sac`) during training, shipped in `rl/collect/checkpoints/` by
``python -m rl.collect ship``, and read by the dataset generator (`rl.collect.generate`) to roll out the behaviour
policies. Read back with `rl._safe_load` (no code runs on load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rl._atomic import atomic_write
from rl._safe_load import load_torch_file
from rl.networks import TanhGaussianPolicy

__all__ = ["load_policy_snapshot", "save_policy_snapshot"]


def save_policy_snapshot(
    path: str | os.PathLike,
    policy: TanhGaussianPolicy,
    meta: dict[str, Any],
    dtype: torch.dtype = torch.float32,
) -> None:
    """Policy-only snapshot: `{"state_dict", "obs_dim", "act_dim", "hidden", "log_std_mode", "meta"}`, atomic."""
    sd = {k: v.detach().to(dtype).clone() for k, v in policy.state_dict().items()}
    hidden = [m.out_features for m in policy.net if isinstance(m, nn.Linear)][:-1]
    blob = {
        "state_dict": sd,
        "obs_dim": policy.obs_dim,
        "act_dim": policy.act_dim,
        "hidden": hidden,
        "log_std_mode": policy.log_std_mode,
        "log_std_bounds": list(policy.log_std_bounds),
        "mean_clip": policy.mean_clip,
        "meta": meta,
    }
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_policy_snapshot(path: str | os.PathLike) -> tuple[TanhGaussianPolicy, dict[str, Any]]:
    """Load a policy snapshot (any stored float dtype) into a float32 `TanhGaussianPolicy`; returns `(policy, meta)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"policy snapshot not found: {path}")
    blob = load_torch_file(
        path, what="policy snapshot", required=("state_dict", "obs_dim", "act_dim", "hidden")
    )
    policy = TanhGaussianPolicy(
        blob["obs_dim"],
        blob["act_dim"],
        tuple(blob["hidden"]),
        log_std_mode=blob.get("log_std_mode", "state"),
        log_std_bounds=tuple(blob.get("log_std_bounds", (-5.0, 2.0))),
        mean_clip=blob.get("mean_clip", 9.0),
    )
    policy.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    policy.eval()
    return policy, dict(blob.get("meta", {}))
