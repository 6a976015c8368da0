"""Shared machinery of the offline actor-critics: networks, targets, entropy temperature, optimisers, one update.

Every agent of `rl.agents` is an `OfflineAgent`: a tanh-Gaussian policy (`rl.networks.TanhGaussianPolicy`), a Q
ensemble (`rl.networks.QEnsemble`, twin Q by default) with a Polyak-averaged target copy, an automatically tuned
entropy temperature `alpha = exp(log_alpha)`, one Adam per parameter group, and one `update(batch)` skeleton:

1. `prepare(batch)`: observation normalisation, reward scaling, dataset actions clipped into the open box (so that
   `log pi(a_D|s)` is finite, as the official MISA code clips to +-0.999);
2. for each *phase* (most agents have one; TD3+BC has two, critic then actor, as in its paper): the algorithm's
   `losses(batch) -> (objectives, logs)` computes every loss of the phase from the same pre-update parameters;
   `objectives` maps an optimiser name to the loss it minimises. Each loss only reaches its own parameters (the
   critic's loss sees detached policy samples; the actor's loss runs the critic under `frozen(...)`; the
   temperature's loss sees a detached `log pi`), so one backward pass of their sum routes every gradient to the
   right place, and every optimiser steps;
3. `after_update()`: Polyak targets (and anything else an agent keeps, e.g. IQL's learning-rate schedule).

An algorithm file (`mi.py`, `cql.py`, ...) holds its hyperparameters and its losses, nothing else.

Shapes: `B` batch, `do`/`da` observation/action dims, `E` ensemble size, `K` sampled actions per state.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from rl.common import make_adam, soft_update_
from rl.networks import HIDDEN_INITS, QEnsemble, TanhGaussianPolicy

if TYPE_CHECKING:
    from rl.config import RunConfig

__all__ = ["AgentConfig", "OfflineAgent", "Batch", "Losses", "frozen"]

Batch = dict[str, Tensor]
#: (objectives: optimiser name -> loss to minimise, or None if the phase already backpropagated it;
#:  logs: name -> detached 0-d tensor)
Losses = tuple[dict[str, Tensor | None], dict[str, Tensor]]


@dataclass
class AgentConfig:
    """Hyperparameters every offline agent shares (the algorithm configs add theirs and change defaults). The run's
    settings (data, steps, seed, device, logging) are `rl.config.RunConfig`'s, beside this in a `TrainConfig`.

    Attributes:
        hidden_q: hidden layer widths of each Q network (`[256, 256]`: two layers of 256).
        hidden_pi: hidden layer widths of the policy network.
        q_activation: activation of the Q networks' hidden layers, "relu", "elu", "tanh", "gelu" or "silu".
        pi_activation: activation of the policy's hidden layers (the same choices).
        output_init_scale: variance scaling of the last layers (official MISA / CQL-JAX: 1e-2; None: nn.Linear's).
        hidden_init: initialisation of the other layers, "torch" (nn.Linear's default) or "lecun" (flax's default,
            which the official MISA code uses: truncated-normal weights of variance 1/fan_in, zero biases).
        log_std_mode: policy log-std head, "state" (SAC) or "misa" (`m * raw + c`, CQL-JAX and MISA).
        ensemble_size: Q networks in the ensemble (2: twin Q with the clipped double-Q minimum).
        gamma: discount.
        tau: Polyak rate of the target networks.
        lr_q: Adam learning rate of the critic (the Q ensemble, and an estimator's own parameters).
        lr_pi: Adam learning rate of the policy.
        lr_alpha: Adam learning rate of the entropy temperature `log_alpha`.
        auto_alpha: tune `log_alpha` towards `target_entropy`; else alpha stays `exp(init_log_alpha)`.
        init_log_alpha: the entropy temperature's initial log.
        target_entropy: the policy entropy `auto_alpha` aims at (None: `-|A|`, the action dimension).
        action_clip: dataset actions are clipped to `[-action_clip, action_clip]` before any `log pi(a_D|s)`.
        normalize_observations: standardise observations with the dataset's mean and std (+1e-3), as TD3+BC.
        normalize_rewards: scale rewards by `1000 / (max episode return - min episode return)` (IQL, CORL).
        reward_scale: factor on the rewards after any `normalize_rewards` (`r <- reward_scale * r + reward_bias`).
        reward_bias: added to the rewards after `reward_scale` (`r <- reward_scale * r + reward_bias`).
    """

    #: run settings whose default this algorithm changes (`RunConfig` field -> default), e.g. MISA's seed 42
    RUN_DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: keys of earlier configs that moved: key -> (the value that meant the default, where the setting lives now)
    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {}

    hidden_q: tuple[int, ...] = (256, 256)
    hidden_pi: tuple[int, ...] = (256, 256)
    q_activation: str = "relu"
    pi_activation: str = "relu"
    output_init_scale: float | None = None
    hidden_init: str = "torch"
    log_std_mode: str = "state"
    ensemble_size: int = 2
    gamma: float = 0.99
    tau: float = 5e-3
    lr_q: float = 3e-4
    lr_pi: float = 3e-4
    lr_alpha: float = 3e-4
    auto_alpha: bool = True
    init_log_alpha: float = 0.0
    target_entropy: float | None = None
    action_clip: float = 0.999
    normalize_observations: bool = False
    normalize_rewards: bool = False
    reward_scale: float = 1.0
    reward_bias: float = 0.0

    def resume_refusal(self, saved: Mapping[str, Any], run: RunConfig) -> str | None:
        """Why a run saved with the flat config `saved` cannot go on as `run` with this config, beyond the field by
        field comparison of `rl.train --resume` (None: nothing more). An algorithm whose state was laid over a run
        setting says so here (IQL's cosine schedule over `steps`)."""
        return None

    def run_tag(self) -> str:
        """What the default run folder's last part starts with, before `seed<k>` (the MI agent's estimator)."""
        return ""

    def __post_init__(self) -> None:
        self.hidden_q = tuple(int(h) for h in self.hidden_q)
        self.hidden_pi = tuple(int(h) for h in self.hidden_pi)
        if self.hidden_init not in HIDDEN_INITS:
            raise ValueError(f"hidden_init must be one of {HIDDEN_INITS}; got {self.hidden_init!r}")
        if not 0.0 < self.action_clip <= 1.0:
            raise ValueError(f"action_clip must be in (0, 1]; got {self.action_clip}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1]; got {self.tau}")


#: Set while a caller routes each optimiser's gradient itself (`rl.seeds.StackedAgents`: `autograd.grad` of each
#: loss over its own optimiser's parameters), where `frozen` has nothing to do (and a vmapped parameter slice
#: cannot change its `requires_grad`).
_ROUTED_GRADIENTS: ContextVar[bool] = ContextVar("routed_gradients", default=False)


@contextmanager
def routed_gradients() -> Iterator[None]:
    """Inside: each optimiser's gradient is taken from its own loss alone, so `frozen(...)` is a no-op."""
    token = _ROUTED_GRADIENTS.set(True)
    try:
        yield
    finally:
        _ROUTED_GRADIENTS.reset(token)


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily `requires_grad_(False)` on the modules' parameters: a loss computed inside reaches the inputs
    (actions) but accumulates nothing into these weights (the actor's view of the critic)."""
    if _ROUTED_GRADIENTS.get():
        yield
        return
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class OfflineAgent:
    """Twin-Q, tanh-Gaussian offline actor-critic skeleton; subclasses define `losses` (and optionally `build`,
    `phases`, `after_update`, `describe`)."""

    config_cls: type[AgentConfig] = AgentConfig
    #: whether the agent has a Q ensemble (BC has none)
    uses_critic = True
    #: whether the agent has an entropy temperature
    uses_alpha = True

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        cfg: AgentConfig,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        fast: bool = True,
        total_steps: int | None = None,
    ) -> None:
        """`seed`: network initialisation (`torch.manual_seed`) and `self.generator` (every later draw); `fast`:
        the hand-written CPU paths of `rl._fast` (plain autograd when False); `total_steps`: the updates the run
        will make (for schedules laid over the run, IQL's cosine)."""
        if not isinstance(cfg, self.config_cls):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_cls.__name__}; got {type(cfg).__name__}"
            )
        self.cfg, self.obs_dim, self.act_dim = cfg, int(obs_dim), int(act_dim)
        self.seed, self.fast, self.total_steps = int(seed), bool(fast), total_steps
        self.device = torch.device(device)
        torch.manual_seed(self.seed)  # network initialisation; every later draw uses self.generator
        self.policy = TanhGaussianPolicy(
            obs_dim,
            act_dim,
            cfg.hidden_pi,
            activation=cfg.pi_activation,
            log_std_mode=cfg.log_std_mode,
            output_init_scale=cfg.output_init_scale,
            hidden_init=cfg.hidden_init,
        ).to(self.device)
        self.modules: dict[str, nn.Module] = {"policy": self.policy}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if self.uses_critic:
            self.critic = QEnsemble(
                obs_dim,
                act_dim,
                cfg.hidden_q,
                cfg.ensemble_size,
                activation=cfg.q_activation,
                output_init_scale=cfg.output_init_scale,
                hidden_init=cfg.hidden_init,
                fast=self.fast,
            ).to(self.device)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
            self.modules.update(critic=self.critic, critic_target=self.critic_target)
        self.log_alpha = torch.tensor(
            float(cfg.init_log_alpha), device=self.device, requires_grad=cfg.auto_alpha
        )
        self.target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)
        # Dataset statistics (set by `fit_dataset_stats`): observation mean/std and the reward factor.
        self.obs_mean = torch.zeros(obs_dim, device=self.device)
        self.obs_std = torch.ones(obs_dim, device=self.device)
        self.reward_factor = torch.tensor(1.0, device=self.device)
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        self.num_updates = 0
        self.build()
        self.optimizers.setdefault("actor", make_adam(self.policy.parameters(), cfg.lr_pi))
        if self.uses_critic:
            self.optimizers.setdefault("critic", make_adam(self.critic_parameters(), cfg.lr_q))
        if self.uses_alpha and cfg.auto_alpha:
            self.optimizers.setdefault("alpha", make_adam([self.log_alpha], cfg.lr_alpha))

    # -- hooks ------------------------------------------------------------------------------------------------
    def build(self) -> None:
        """Extra networks and optimisers of an algorithm (IQL's value net, TD3+BC's target policy, an estimator)."""

    def critic_parameters(self) -> list[nn.Parameter]:
        """What the "critic" optimiser trains (the Q ensemble, plus e.g. an estimator's learned baseline)."""
        return list(self.critic.parameters())

    def phases(self) -> tuple[Callable[[Batch], Losses], ...]:
        """The loss functions run in order; each one's objectives are stepped before the next is computed."""
        return (self.losses,)

    def losses(self, batch: Batch) -> Losses:
        raise NotImplementedError

    def after_update(self) -> None:
        if self.uses_critic:
            soft_update_(self.critic_target, self.critic, self.cfg.tau)

    def describe(self, key: str) -> str:
        """How a logged term is named in error messages (`"critic term 'misa'"`)."""
        return f"term {key!r}"

    # -- the update -------------------------------------------------------------------------------------------
    @property
    def alpha(self) -> Tensor:
        """Entropy temperature `exp(log_alpha)`, detached (the actor and critic losses treat it as a constant)."""
        return self.log_alpha.detach().exp()

    def prepare(self, batch: Batch) -> Batch:
        """Normalised observations, scaled rewards, clipped actions; keys observations, actions, rewards,
        next_observations, dones (`terminals` is accepted for dones)."""
        cfg = self.cfg
        obs, nobs = self.normalize(batch["observations"]), self.normalize(batch["next_observations"])
        rew = batch["rewards"]
        if cfg.normalize_rewards or cfg.reward_scale != 1.0 or cfg.reward_bias != 0.0:
            rew = cfg.reward_scale * (rew * self.reward_factor) + cfg.reward_bias
        act = batch["actions"]
        if cfg.action_clip < 1.0:
            act = act.clamp(-cfg.action_clip, cfg.action_clip)
        dones = batch["dones"] if "dones" in batch else batch["terminals"]
        return {
            "observations": obs,
            "actions": act,
            "rewards": rew,
            "next_observations": nobs,
            "dones": dones,
        }

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One gradient update on a raw minibatch (see the module docstring). Returns detached 0-d tensors (no
        `.item()`: the caller decides when to synchronise).

        Gradients are cleared before each phase, so a phase may backpropagate part of its objectives itself (MISA
        does, to overlap the critic's backward pass with its MCMC chain) and name them with `None`: those
        optimisers still step."""
        batch = self.prepare(batch)
        logs: dict[str, Tensor] = {}
        for phase in self.phases():
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            objectives, info = phase(batch)
            pending = [loss for loss in objectives.values() if loss is not None]
            if pending:
                sum(pending).backward()
            for name in objectives:
                self.optimizers[name].step()
            logs.update(info)
        self.after_update()
        self.num_updates += 1
        return logs

    # -- data statistics and acting ---------------------------------------------------------------------------
    def fit_dataset_stats(self, dataset: Any) -> None:
        """Observation mean/std (std + 1e-3, TD3+BC's epsilon) and the IQL reward factor from an `OfflineDataset`."""
        obs = np.asarray(dataset.observations, np.float64)
        self.obs_mean = torch.as_tensor(obs.mean(0), dtype=torch.float32, device=self.device)
        self.obs_std = torch.as_tensor(obs.std(0) + 1e-3, dtype=torch.float32, device=self.device)
        if self.cfg.normalize_rewards:
            returns = dataset.episode_returns
            returns = np.asarray(returns() if callable(returns) else returns, np.float64)
            spread = float(returns.max() - returns.min()) if returns.size else 0.0
            factor = 1000.0 / spread if spread > 0 else 1.0
            self.reward_factor = torch.tensor(factor, dtype=torch.float32, device=self.device)

    def normalize(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_mean) / self.obs_std if self.cfg.normalize_observations else obs

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, deterministic: bool = True, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """Environment action(s) in (-1, 1)^da for raw `obs [do]` or `[B, do]` (what `rl.evaluation.evaluate` calls)."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        single = x.dim() == 1
        x = self.normalize(x.unsqueeze(0) if single else x)
        dist = self.policy(x)
        a = torch.tanh(dist.mean) if deterministic else dist.sample(1, generator).squeeze(1)
        out = a.float().cpu().numpy()
        return out[0] if single else out

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, Tensor]:
        return {
            "log_alpha": self.log_alpha,
            "obs_mean": self.obs_mean,
            "obs_std": self.obs_std,
            "reward_factor": self.reward_factor,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: networks, targets, optimisers, temperature, dataset statistics,
        the generator's state and the update count."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "tensors": {k: t.detach().clone() for k, t in self._tensors().items()},
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(sd["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(sd["optimizers"][k])
        with torch.no_grad():
            self.log_alpha.copy_(sd["tensors"]["log_alpha"])
        self.obs_mean = sd["tensors"]["obs_mean"].to(self.device)
        self.obs_std = sd["tensors"]["obs_std"].to(self.device)
        self.reward_factor = sd["tensors"]["reward_factor"].to(self.device)
        self.generator.set_state(sd["generator"])
        self.num_updates = int(sd["num_updates"])


def check_finite_logs(logs: dict[str, Tensor], max_abs: float = math.inf) -> str | None:
    """The first logged term that is NaN/inf or above `max_abs` in magnitude, or None (one host sync)."""
    if not logs:
        return None
    values = torch.stack([v.detach().float().reshape(()) for v in logs.values()])
    ok = torch.isfinite(values) & (values.abs() <= max_abs)
    if bool(ok.all()):
        return None
    return list(logs)[int((~ok).nonzero()[0])]
