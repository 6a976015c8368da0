"""Online Soft Actor-Critic (Haarnoja et al. 2018, "SAC v2": twin Q, auto-entropy) for gymnasium MuJoCo.

Trains the behaviour policies from which `rl.collect` makes the D4RL-style datasets. Defaults follow the paper:
twin Q, Polyak tau 5e-3, automatic entropy with target `-|A|`, Adam lr 3e-4, batch 256, gamma 0.99, 256x256 ReLU,
5000 uniform-random start steps, one update per environment step. Timeouts (time-limit truncation) are not
terminal in the TD target; only `terminated` is.

The loss pieces (`td_target`, `critic_loss`, `actor_loss`, `alpha_loss`, `soft_update_`, `make_adam`) live in
`rl.common`, shared with the offline agents; `evaluate` in `rl.evaluation`, the policy snapshots in
`rl.collect.snapshots`.

Everything is seeded: network init by `torch.manual_seed(seed)`, every later draw (random start actions,
exploration noise, minibatch indices) by one `torch.Generator`, environment resets by `reset(seed=...)`.
A checkpoint (written atomically every `checkpoint_every` steps) holds networks, targets, optimisers, log-alpha,
the filled part of the replay buffer (`np.savez`), the generator state, the MuJoCo physics state and the step count,
so `--resume` continues exactly where the run stopped. Every `eval_every` steps, 10 deterministic episodes are run and
a policy-only float32 snapshot (`snapshots/step_XXXXXXX.pt`, a few hundred KB) is saved with its eval return.

CLI::

    python -m rl.collect.sac --env Hopper-v5 --steps 300000 --seed 0 --run-dir runs/sac/Hopper-v5 [--resume]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from rl._atomic import atomic_write, remove_stale_temps
from rl._safe_load import CheckpointError
from rl.collect.snapshots import save_policy_snapshot
from rl.common import actor_loss, alpha_loss, critic_loss, make_adam, soft_update_, td_target
from rl.evaluation import evaluate, make_env, scale_action
from rl.networks import QEnsemble, TanhGaussianPolicy
from rl.run_dir import RunDir, RunDirError, RunFolderOwner

__all__ = ["SACConfig", "SAC", "ReplayBuffer", "Trainer", "main"]


# ----------------------------------------------------------------------------------------------------------------
# Replay buffer
# ----------------------------------------------------------------------------------------------------------------
class ReplayBuffer:
    """Fixed-capacity numpy replay buffer of `(obs, act, rew, next_obs, terminated)`; actions in policy space [-1, 1].

    `sample(batch_size, generator)` draws indices with a torch generator and returns float32 tensors:
    `obs [B, do], act [B, da], rew [B], next_obs [B, do], terminals [B]` (1.0 where terminated).
    """

    FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")

    def __init__(self, obs_dim: int, act_dim: int, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self.capacity, self.size, self.ptr = capacity, 0, 0
        self.observations = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros((capacity,), np.float32)
        self.next_observations = np.zeros((capacity, obs_dim), np.float32)
        self.terminals = np.zeros((capacity,), np.float32)

    def add(
        self, obs: np.ndarray, act: np.ndarray, rew: float, next_obs: np.ndarray, terminated: bool
    ) -> None:
        i = self.ptr
        self.observations[i], self.actions[i], self.rewards[i] = obs, act, rew
        self.next_observations[i], self.terminals[i] = next_obs, float(terminated)
        self.ptr = (self.ptr + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (batch_size,), generator=generator).numpy()
        return {k: torch.from_numpy(getattr(self, k)[idx]) for k in self.FIELDS}

    def state(self) -> dict[str, np.ndarray]:
        """The filled part, for `np.savez`."""
        n = self.size
        out = {k: getattr(self, k)[:n] for k in self.FIELDS}
        out["ptr"] = np.array(self.ptr)
        return out

    def load_state(self, state: Any) -> None:
        n = int(state["rewards"].shape[0])
        if n > self.capacity:
            raise ValueError(f"saved buffer holds {n} transitions, more than the capacity {self.capacity}")
        for k in self.FIELDS:
            getattr(self, k)[:n] = state[k]
        self.size, self.ptr = n, int(state["ptr"])


# ----------------------------------------------------------------------------------------------------------------
# Config and agent
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SACConfig:
    """Hyperparameters of online SAC (defaults: Haarnoja et al. 2018 v2)."""

    env: str = "Hopper-v5"
    steps: int = 300_000
    seed: int = 0
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 5e-3
    start_steps: int = 5_000
    updates_per_step: int = 1
    init_log_alpha: float = 0.0
    target_entropy: float | None = None  # None: -|A|
    buffer_size: int | None = None  # None: steps
    eval_every: int = 10_000
    eval_episodes: int = 10
    checkpoint_every: int = 20_000
    eval_seed: int = 1_000_000
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        for name in (
            "steps",
            "batch_size",
            "eval_every",
            "eval_episodes",
            "checkpoint_every",
            "updates_per_step",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"SACConfig.{name} must be >= 1; got {getattr(self, name)}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"SACConfig.tau must be in (0, 1]; got {self.tau}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"SACConfig.gamma must be in [0, 1]; got {self.gamma}")


def _physics_state(env: gym.Env) -> dict[str, Any] | None:
    """Full MuJoCo integration state + time-limit counter + reset RNG, for exact resume (None if not MuJoCo)."""
    u = env.unwrapped
    if not hasattr(u, "model") or not hasattr(u, "data"):
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    st = np.empty(mujoco.mj_stateSize(u.model, spec), np.float64)
    mujoco.mj_getState(u.model, u.data, st, spec)
    return {
        "mj_state": st,
        "elapsed_steps": getattr(env, "_elapsed_steps", None),
        "np_random": u.np_random.bit_generator.state,
    }


def _restore_physics(env: gym.Env, saved: dict[str, Any]) -> None:
    import mujoco

    u = env.unwrapped
    mujoco.mj_setState(
        u.model, u.data, np.asarray(saved["mj_state"], np.float64), mujoco.mjtState.mjSTATE_INTEGRATION
    )
    mujoco.mj_forward(u.model, u.data)
    if saved.get("elapsed_steps") is not None:
        env._elapsed_steps = saved["elapsed_steps"]
    u.np_random.bit_generator.state = saved["np_random"]


class SAC:
    """Online SAC agent: `policy` (TanhGaussianPolicy), `critic`/`critic_target` (QEnsemble, E=2), `log_alpha`."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig) -> None:
        self.cfg = cfg
        self.obs_dim, self.act_dim = obs_dim, act_dim
        torch.manual_seed(cfg.seed)
        self.policy = TanhGaussianPolicy(
            obs_dim, act_dim, cfg.hidden, log_std_mode="state", log_std_bounds=(-5, 2)
        )
        self.critic = QEnsemble(obs_dim, act_dim, cfg.hidden, ensemble_size=2)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(float(cfg.init_log_alpha), requires_grad=True)
        self.target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)
        self.policy_opt = make_adam(self.policy.parameters(), cfg.lr)
        self.critic_opt = make_adam(self.critic.parameters(), cfg.lr)
        self.alpha_opt = make_adam([self.log_alpha], cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One SAC update (critic, then actor and alpha, then targets). Returns detached losses (no `.item()`)."""
        cfg, g = self.cfg, self.generator
        obs, act, rew = batch["observations"], batch["actions"], batch["rewards"]
        nobs, term = batch["next_observations"], batch["terminals"]
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            na, nlogp = self.policy.sample_with_log_prob(nobs, 1, g)
            nq = self.critic_target.q_min(nobs, na.squeeze(1))
            y = td_target(rew, term, nq, cfg.gamma, nlogp.squeeze(1), alpha)
        q_loss = critic_loss(self.critic(obs, act), y)
        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_opt.step()

        a, logp = self.policy.sample_with_log_prob(obs, 1, g)
        self.critic.requires_grad_(False)
        q_pi = self.critic.q_min(obs, a.squeeze(1))
        self.critic.requires_grad_(True)
        pi_loss = actor_loss(logp.squeeze(1), q_pi, alpha)
        self.policy_opt.zero_grad(set_to_none=True)
        pi_loss.backward()
        self.policy_opt.step()

        a_loss = alpha_loss(self.log_alpha, logp, self.target_entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        a_loss.backward()
        self.alpha_opt.step()

        soft_update_(self.critic_target, self.critic, cfg.tau)
        return {
            "critic_loss": q_loss.detach(),
            "actor_loss": pi_loss.detach(),
            "alpha": alpha,
            "entropy": -logp.detach().mean(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "policy_opt": self.policy_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.policy.load_state_dict(sd["policy"])
        self.critic.load_state_dict(sd["critic"])
        self.critic_target.load_state_dict(sd["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(sd["log_alpha"])
        self.policy_opt.load_state_dict(sd["policy_opt"])
        self.critic_opt.load_state_dict(sd["critic_opt"])
        self.alpha_opt.load_state_dict(sd["alpha_opt"])
        self.generator.set_state(sd["generator"])


# ----------------------------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------------------------
SAC_CHECKPOINT_KEYS = (
    "config",
    "agent",
    "step",
    "episode",
    "ep_return",
    "ep_len",
    "obs",
    "physics",
    "buffer_file",
)


def run_folder(run_dir: str | os.PathLike) -> RunDir:
    """SAC's run folder: its log `train_log.csv`; its snapshots are void on a fresh start, as its log is."""
    return RunDir(
        run_dir,
        "rl.collect.sac",
        ("train_log.csv",),
        own_files=r"config\.json|evals\.json|buffer_\d{8}\.npz",
        fresh_clears=("snapshots",),
    )


def check_resume_config(saved: Any, cfg: SACConfig, where: Path) -> None:
    """`RunDirError` when the config saved in the checkpoint `where` is of another env or seed than `cfg`."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where}: its 'config' is a {type(saved).__name__}, not a mapping")
    for key in ("env", "seed"):
        if saved.get(key) != getattr(cfg, key):
            raise RunDirError(
                f"--resume: checkpoint {where} was made with {key}={saved.get(key)!r}, "
                f"but this run asks for {key}={getattr(cfg, key)!r}"
            )


class Trainer(RunFolderOwner):
    """Runs SAC on one environment with checkpoints, evaluations and snapshots in `run_dir`.

    The run folder is `rl.run_dir.RunDir`'s, as `rl.train`'s is: its marker and lock, a fresh start refused over a
    checkpoint, `resume=True` continuing from `checkpoint.pt` (whose `env` and `seed` must be this config's), and
    `train_log.csv` cut back on resume to the rows before the checkpoint. Every check runs before the first write;
    the lock is held until `close()` (also a `with` block's end, or the process's exit).
    """

    def __init__(
        self, cfg: SACConfig, run_dir: str | os.PathLike, resume: bool = False, quiet: bool = False
    ) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.folder = run_folder(run_dir)
        blob = self.folder.check(resume, required=SAC_CHECKPOINT_KEYS, sizes_recorded=False)
        if blob is not None:
            check_resume_config(blob["config"], cfg, self.ckpt_path)
        self.env = make_env(cfg.env)
        obs_dim = int(np.prod(self.env.observation_space.shape))
        act_dim = int(np.prod(self.env.action_space.shape))
        self.low, self.high = self.env.action_space.low, self.env.action_space.high
        self.agent = SAC(obs_dim, act_dim, cfg)
        self.buffer = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size or cfg.steps)
        self.step = 0
        self.episode = 0
        self.ep_return, self.ep_len = 0.0, 0
        self.obs = self.env.reset(seed=cfg.seed)[0].astype(np.float32)
        self.evals: list[dict[str, Any]] = []
        if blob is not None:
            self._restore(blob)
        self.claim_folder(blob is None, self._write_config)

    def _write_config(self) -> None:
        remove_stale_temps(self.run_dir / "snapshots", r"step_\d{7}\.pt")
        cfg_json = json.dumps(dataclasses.asdict(self.cfg), indent=1)
        atomic_write(self.run_dir / "config.json", lambda tmp: Path(tmp).write_text(cfg_json))

    # -- checkpointing --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Atomic: the buffer file (named by step) first, then the checkpoint that names it, then old buffers go."""
        buf_name = f"buffer_{self.step:08d}.npz"
        buf_state = self.buffer.state()

        def write_npz(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **buf_state)

        atomic_write(self.run_dir / buf_name, write_npz)
        self.folder.save_checkpoint(
            {
                "config": dataclasses.asdict(self.cfg),
                "agent": self.agent.state_dict(),
                "step": self.step,
                "episode": self.episode,
                "ep_return": self.ep_return,
                "ep_len": self.ep_len,
                "obs": self.obs,
                "physics": _physics_state(self.env),
                "buffer_file": buf_name,
                "evals": self.evals,
            }
        )
        for p in self.run_dir.glob("buffer_*.npz"):
            if p.name != buf_name:
                p.unlink()

    def _restore(self, blob: dict[str, Any]) -> None:
        name = blob["buffer_file"]
        if not isinstance(name, str) or not re.fullmatch(r"buffer_\d{8}\.npz", name):
            raise CheckpointError(f"{self.ckpt_path}: buffer_file {name!r} is not a buffer file name")
        self.agent.load_state_dict(blob["agent"])
        try:
            with np.load(self.run_dir / name, allow_pickle=False) as z:
                self.buffer.load_state(z)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise CheckpointError(f"cannot read the replay buffer {self.run_dir / name}: {err}") from None
        self.step, self.episode = blob["step"], blob["episode"]
        self.ep_return, self.ep_len = blob["ep_return"], blob["ep_len"]
        self.obs = np.asarray(blob["obs"], np.float32)
        self.evals = list(blob["evals"])
        if blob["physics"] is not None:
            _restore_physics(self.env, blob["physics"])

    # -- main loop ------------------------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def _evaluate_and_snapshot(self) -> None:
        cfg = self.cfg
        rets = evaluate(self.agent.policy, cfg.env, cfg.eval_episodes, seed=cfg.eval_seed)
        rec = {
            "step": self.step,
            "return_mean": float(rets.mean()),
            "return_std": float(rets.std()),
            "episodes": int(cfg.eval_episodes),
            "time": time.time(),
        }
        self.evals.append(rec)
        meta = {
            "env": cfg.env,
            "seed": cfg.seed,
            "step": self.step,
            "eval_return": rec["return_mean"],
            "eval_return_std": rec["return_std"],
            "eval_episodes": cfg.eval_episodes,
            "eval": f"deterministic tanh(mean), episode i reset with seed {cfg.eval_seed}+i",
        }
        save_policy_snapshot(self.run_dir / "snapshots" / f"step_{self.step:07d}.pt", self.agent.policy, meta)
        evals_json = json.dumps(self.evals, indent=1)
        atomic_write(self.run_dir / "evals.json", lambda tmp: Path(tmp).write_text(evals_json))
        self._log(
            f"[{cfg.env}] step {self.step}: eval return {rec['return_mean']:.1f} +- {rec['return_std']:.1f}"
        )

    def train(self, until: int | None = None) -> None:
        """Run until `until` (default `cfg.steps`) environment steps, checkpointing on the way and at the end."""
        cfg, agent, g = self.cfg, self.agent, self.agent.generator
        until = cfg.steps if until is None else min(until, cfg.steps)
        self.require_open()
        if self.step == 0 and not self.evals:
            self._evaluate_and_snapshot()  # the initial policy, step 0
        t0, s0 = time.time(), self.step
        while self.step < until:
            if self.step < cfg.start_steps:
                a = (torch.rand(agent.act_dim, generator=g) * 2.0 - 1.0).numpy()
            else:
                a = agent.policy.act(self.obs, deterministic=False, generator=g)
            nobs, r, term, trunc, _ = self.env.step(scale_action(a, self.low, self.high))
            nobs = nobs.astype(np.float32)
            self.buffer.add(self.obs, a, float(r), nobs, bool(term))
            self.ep_return += float(r)
            self.ep_len += 1
            self.step += 1
            if term or trunc:
                rate = (self.step - s0) / max(time.time() - t0, 1e-9)
                row = {
                    "step": self.step,
                    "episode": self.episode,
                    "episode_return": f"{self.ep_return:.3f}",
                    "episode_length": self.ep_len,
                    "steps_per_s": f"{rate:.1f}",
                }
                self.folder.append_csv("train_log.csv", row)
                self.episode += 1
                self.ep_return, self.ep_len = 0.0, 0
                nobs = self.env.reset()[0].astype(np.float32)
            self.obs = nobs
            if self.step >= cfg.start_steps:
                for _ in range(cfg.updates_per_step):
                    agent.update(self.buffer.sample(cfg.batch_size, g))
            if self.step % cfg.eval_every == 0:
                self._evaluate_and_snapshot()
            if self.step % cfg.checkpoint_every == 0 or self.step == until:
                self.save_checkpoint()
                rate = (self.step - s0) / max(time.time() - t0, 1e-9)
                self._log(f"[{cfg.env}] step {self.step}/{cfg.steps} checkpoint ({rate:.0f} steps/s)")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl.collect.sac", description=__doc__.split("\n")[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="default runs/sac/<env>")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoint.pt if present")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--checkpoint-every", type=int, default=20_000)
    p.add_argument("--start-steps", type=int, default=5_000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; a misuse (unknown env, bad numbers, an unreadable or foreign checkpoint) is one `error:` line with
    exit status 2 (`--debug` shows the traceback), before anything is written."""
    args = _parse(argv)
    try:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
        run_dir = Path(args.run_dir or f"runs/sac/{args.env}")
        cfg = SACConfig(
            env=args.env,
            steps=args.steps,
            seed=args.seed,
            eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every,
            start_steps=args.start_steps,
        )
        resume = args.resume and (run_dir / "checkpoint.pt").exists()
        # the folder's checks (lock, marker, this run's env and seed) before the finished-stage no-op
        saved = run_folder(run_dir).check(resume, required=SAC_CHECKPOINT_KEYS, sizes_recorded=False)
        if saved is not None:
            check_resume_config(saved["config"], cfg, run_dir / "checkpoint.pt")
            done = saved["step"]
            if isinstance(done, int) and done >= cfg.steps:
                # a staged script reruns earlier stages: nothing to do (and a smaller buffer)
                print(f"{cfg.env}: {run_dir} is already at step {done} >= --steps {cfg.steps}; nothing to do")
                return 0
        trainer = Trainer(cfg, run_dir, resume=resume)
        if resume:
            print(f"resumed {cfg.env} at step {trainer.step}", flush=True)
    except Exception as e:  # noqa: BLE001 - one line per misuse; --debug shows where
        if args.debug:
            raise
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    with trainer:
        trainer.train()
    best = max(trainer.evals, key=lambda r: r["return_mean"]) if trainer.evals else None
    if best is not None:
        print(
            f"[{cfg.env}] done at step {trainer.step}; best eval {best['return_mean']:.1f} at step {best['step']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
