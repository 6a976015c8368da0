"""Train an offline agent from a YAML config: `python -m rl.train --config configs/misa/hopper-medium-v5.yaml`.

Any config field can be overridden on the command line (`--estimator nwj`, `--steps 5000`, `--run-dir DIR`,
`--device cuda`, `--dataset-size 100000`, `--estimator-options.sampler mala`); an unknown key stops with its name.
Without `--config`, `--algo NAME` starts from that algorithm's defaults.

One `fit` loop serves every algorithm: a tqdm bar with the losses, evaluation every `eval_every` steps (deterministic
policy `tanh(mean)`, `eval_episodes` episodes on the dataset's gymnasium env, D4RL-normalised score via
`rl.data.references.normalized_score`), CSV (`progress.csv`, `eval.csv`) and TensorBoard (`tb/`) logs, and atomic
checkpoints (`checkpoint.pt`: networks, targets, optimisers, temperature, estimator state, generator and global RNG
states, step, logger positions; the last one is written before the final evaluation). `--resume --run-dir DIR`
continues a run exactly where its last checkpoint left it, with the run's own config (only `RESUME_OVERRIDABLE`
fields such as `--steps` may change). Checkpoints are loaded weights-only (`rl._safe_load`). The run folder is
`rl.run_dir.RunDir`'s (the one scheme the SAC trainer shares): a folder that holds files but not our marker
(`.rl-run.json`) is never written to, and one process at a time writes to it, holding the lock `.rl-run.lock` (a
second start is refused, naming that PID; the lock of a run that died is taken over by the next start).
`--import MODULE` (repeatable; a module name or a `.py` path, added to the config's `imports`) runs the user's code
that registers estimators before the config's estimator is looked up.

Every check (config, device, dataset, env, run dir, checkpoint) runs before the first write: a misuse ends in one
`error:` line and exit status 2 with the run dir as it was (`--debug` shows the traceback, `--dry-run` only checks).
A NaN/inf or diverging logged term stops the run with `TrainingError("step 1234: critic term 'misa' is nan")`
(exit status 1); the last good checkpoint stays. docs/faults.md lists what is tried.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import random
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl._safe_load import CheckpointError, load_torch_file
from rl.agents import TrainConfig, config_class, config_keys, flat_config, make_agent
from rl.agents.base import OfflineAgent, check_finite_logs
from rl.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_help,
    load_yaml,
    save_yaml,
    to_dict,
)
from rl.data.references import behaviour_score, first_normalized_score
from rl.evaluation import evaluate
from rl.plugins import import_modules
from rl.run_dir import RunDir, RunDirError, RunFolderOwner

__all__ = [
    "Trainer",
    "TrainingError",
    "RunDirError",
    "CheckpointError",
    "RESUME_OVERRIDABLE",
    "build_config",
    "check_device",
    "check_data_fits",
    "main",
]

LOGS = ("progress.csv", "eval.csv")
#: what a checkpoint holds besides the logs' sizes that `RunDir` adds
CHECKPOINT_KEYS = ("config", "agent", "step", "evals", "log_sums", "log_counts", "rng")
#: the fields a resumed run may change: how long it runs, how often it logs, evaluates and checkpoints, where
#: and on what it computes. Everything else is the run's identity and comes from its checkpoint.
RESUME_OVERRIDABLE = (
    "steps",
    "eval_every",
    "eval_episodes",
    "log_every",
    "checkpoint_every",
    "run_dir",
    "threads",
    "final_eval",
    "max_abs_loss",
    "imports",  # where the estimator's code is found, not what it is: the estimator's name and options stay fixed
    "progress",
    "fast",  # the hand-written CPU passes or autograd: the same numbers to float rounding (a stacked run's is false)
)


class TrainingError(RuntimeError):
    """A NaN/inf or diverging term; the message names the step and the term."""


# ------------------------------------------------------------------------------------------------------------
# Config from YAML + command line
# ------------------------------------------------------------------------------------------------------------
def build_config(
    config: str | Path | None,
    overrides: dict[str, str],
    algo: str | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """The `TrainConfig` from a YAML file (or `base`, or an algorithm's defaults) and `--key value` overrides."""
    where = str(config) if config else "config"
    data = flat_config(load_yaml(config) if config is not None else dict(base or {}), where)
    if algo is not None:
        data["algo"] = algo
    if "algo" in overrides:
        data = apply_overrides(data, {"algo": overrides["algo"]}, ["algo"])
    data = apply_overrides(data, overrides, config_keys(data.get("algo", "mi")))
    return TrainConfig.from_dict(data, where=where)


def _parse_overrides(rest: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument {tok!r}; overrides are --key value")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value")
            value = rest[i + 1]
            i += 2
        out[key] = value
    return out


def check_device(device: str) -> torch.device:
    """`device` as a `torch.device` this process can use; `ConfigError` naming it otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device {device!r} is not a torch device; use 'cpu' or 'cuda' (or 'cuda:N')"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"device {device!r}: only 'cpu' and 'cuda' are supported")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r}: this torch build sees no CUDA device (torch.cuda.is_available() is False); "
            "use --device cpu"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


def check_data_fits(dataset: Any, env_id: str | None, name: str = "the dataset") -> None:
    """Refuse data that the agents or the evaluation env cannot use, before any training.

    The policies act in [-1, 1] (tanh), rescaled to the env's action bounds at evaluation, so actions beyond
    [-1, 1] are refused (a D4RL file's rounding up to 1e-3 is clipped by `action_clip`); with an env, the
    observation and action sizes must be the env's.
    """
    actions = np.asarray(dataset.actions)
    if actions.size and float(np.abs(actions).max()) > 1.0 + 1e-3:
        row, col = np.unravel_index(int(np.abs(actions).argmax()), actions.shape)
        raise ConfigError(
            f"{name}: actions[{row}, {col}] = {float(actions[row, col]):.4g} lies outside [-1, 1], the range of "
            "the agents' tanh policies; rescale the actions to [-1, 1] (the env's bounds are applied at evaluation)"
        )
    if env_id is None:
        return
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except Exception as err:  # noqa: BLE001 - reported with the name
        raise ConfigError(f"cannot make the evaluation env {env_id!r}: {err}") from None
    try:
        obs_shape, act_shape = env.observation_space.shape, env.action_space.shape
    finally:
        env.close()
    for what, have, want in (
        ("observations", dataset.obs_dim, obs_shape),
        ("actions", dataset.act_dim, act_shape),
    ):
        if want is None or int(np.prod(want)) != have:
            raise ConfigError(
                f"{name} has {what} of size {have}, but the evaluation env {env_id} has {what} of shape {want}: "
                "the data does not come from this env (set --env, or use data collected on it)"
            )


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    """`RunDirError` naming the first field, outside `RESUME_OVERRIDABLE`, where `cfg` differs from the config
    saved in the checkpoint (a field the checkpoint predates must be at its default)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where}: its 'config' is a {type(saved).__name__}, not a mapping")
    now = to_dict(cfg)
    defaults = to_dict(TrainConfig(cfg.algo))
    why = cfg.resume_refusal(saved)
    if why:
        raise RunDirError(f"--resume: {where} {why}")
    for key, value in now.items():
        if key in RESUME_OVERRIDABLE:
            continue
        before = saved.get(key, defaults[key])
        if before != value:  # both plain data from to_dict (lists, not tuples); 1 == 1.0
            raise RunDirError(
                f"--resume: {where} was made with {key}={before!r}, but this run asks for {key}={value!r}; "
                f"a resumed run keeps its config except {', '.join(RESUME_OVERRIDABLE)}"
            )


def default_run_dir(cfg: TrainConfig) -> Path:
    name = re.sub(
        r"[^A-Za-z0-9_.-]+",
        "_",
        Path(cfg.run.dataset).stem if cfg.run.dataset.endswith(".hdf5") else cfg.run.dataset,
    )
    return Path("runs") / cfg.algo / name / f"{cfg.agent.run_tag()}seed{cfg.run.seed}"


def _env_id(cfg: TrainConfig, dataset: Any) -> str | None:
    if cfg.run.env:
        return cfg.run.env
    env = getattr(dataset, "metadata", {}).get("env_id")
    if env:
        return str(env)
    try:
        from rl.collect.generate import parse_name

        return parse_name(cfg.run.dataset).env_id
    except Exception:  # noqa: BLE001 - not one of our names
        return None


# ------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Loop:
    """One stretch of `Trainer.train`: where it stops, its progress bar and clock, and the last evaluation."""

    until: int
    bar: Any
    t0: float
    s0: int
    last: dict[str, Any] | None = None


class Trainer(RunFolderOwner):
    """Runs `cfg.run.steps` updates of `cfg.algo` on `dataset` with logs and checkpoints in `run_dir`.

    Args:
        cfg: the agent config (its `run_dir` or `default_run_dir`).
        dataset: an `OfflineDataset` (None: `rl.data.load(cfg.run.dataset)`).
        resume: continue from `run_dir/checkpoint.pt` (required when it exists; an error when it does not), whose
            config must equal `cfg` outside `RESUME_OVERRIDABLE`.
        quiet: no progress bar or prints.
        claim: take the run dir's lock and write its marker and config (False: check and build only, as `--dry-run`
            does).

    Every check (imports, run dir and its lock, device, dataset, env, checkpoint) runs before the first write, so a
    start that fails leaves the run dir as it was; the claim removes temp files that killed writes left behind.
    The lock is held until `close()` (also a `with Trainer(...) as trainer:` block's end, or the process's exit).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Any = None,
        resume: bool = False,
        quiet: bool = False,
        claim: bool = True,
    ) -> None:
        self.cfg, self.quiet = cfg, quiet
        run_dir = Path(cfg.run.run_dir) if cfg.run.run_dir else default_run_dir(cfg)
        self.folder = RunDir(run_dir, "rl.train", LOGS, own_files=r"config\.yaml", fresh_clears=("tb",))
        # First, so that the estimators the user's modules register exist when the agent looks its name up.
        import_modules(cfg.run.imports)
        # Everything is checked and built before the first write: a start that fails leaves the dir as it was.
        blob = self._check_run_dir(resume)
        check_device(cfg.run.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if dataset is None:
            from rl.data import load

            kwargs = {"size": cfg.run.dataset_size} if cfg.run.dataset_size else {}
            dataset = load(cfg.run.dataset, **kwargs)
        self.dataset = dataset
        self.env_id = _env_id(cfg, dataset)
        evaluates = bool(cfg.run.eval_every or cfg.run.final_eval)
        check_data_fits(dataset, self.env_id if evaluates else None, cfg.run.dataset)
        # Python's and numpy's global generators, which nothing of ours draws from, seeded as torch's is (by the
        # agent), so that a user's code that draws from them (an estimator from `imports`) repeats with the seed;
        # a resume restores their states from the checkpoint.
        random.seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)  # noqa: NPY002
        self.agent: OfflineAgent = make_agent(cfg, dataset.obs_dim, dataset.act_dim)
        self.agent.fit_dataset_stats(dataset)
        self.step = 0
        self.checkpoint_step: int | None = None  # the step `checkpoint.pt` holds (None: none written yet)
        self.evals: list[dict[str, Any]] = []
        self._sums: dict[str, torch.Tensor] = {}
        # Counted per key: some terms are logged on some steps only (TD3+BC's delayed actor).
        self._counts: dict[str, int] = {}
        if blob is not None:
            self._restore(blob)
        if claim:
            self._claim_run_dir()

    # -- run directory ---------------------------------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> dict[str, Any] | None:
        """`RunDir.check`, then whether the checkpoint is this run's and not past its steps."""
        blob = self.folder.check(resume, required=CHECKPOINT_KEYS)
        if blob is None:
            return None
        check_resume_config(blob["config"], self.cfg, self.ckpt_path)
        done = blob["step"]
        if isinstance(done, int) and done > self.cfg.run.steps:
            # training would not run, and the config saved with steps < step would misdescribe the checkpoint
            raise RunDirError(
                f"--resume: {self.ckpt_path} is at step {done}, past --steps {self.cfg.run.steps}; a run cannot go "
                f"back: ask for --steps {done} or more (or start a new run)"
            )
        return blob

    def _claim_run_dir(self) -> None:
        self.claim_folder(self.step == 0, self._write_config, about={"algo": self.cfg.algo})

    def _write_config(self) -> None:
        save_yaml(self.cfg, self.run_dir / "config.yaml")

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        blob = {
            "config": to_dict(self.cfg),
            "agent": self.agent.state_dict(),
            "step": self.step,
            "evals": self.evals,
            "log_sums": {k: v.detach().cpu() for k, v in self._sums.items()},
            "log_counts": dict(self._counts),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),  # noqa: NPY002 (the global state, saved for exact resume)
                "python": random.getstate(),
            },
        }
        self.folder.save_checkpoint(blob)
        self.checkpoint_step = self.step

    def _restore(self, blob: dict[str, Any]) -> None:
        try:
            self.agent.load_state_dict(blob["agent"])
            step, evals = int(blob["step"]), list(blob["evals"])
            sums = {k: v.to(self.agent.device) for k, v in blob["log_sums"].items()}
            counts = dict(blob["log_counts"])
            torch.set_rng_state(blob["rng"]["torch"])
            np.random.set_state(blob["rng"]["numpy"])  # noqa: NPY002
            random.setstate(blob["rng"]["python"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.ckpt_path} does not fit this run's agent: {msg}") from None
        self.step, self.evals, self._sums, self._counts = step, evals, sums, counts
        self.checkpoint_step = step

    # -- logging ---------------------------------------------------------------------------------------------------
    def _tb(self):
        if not hasattr(self, "_writer"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._writer = None
        return self._writer

    def _log_row(self, rate: float) -> dict[str, float]:
        means = {k: float(v) / self._counts[k] for k, v in self._sums.items()}
        self._sums, self._counts = {}, {}
        row = {
            "step": self.step,
            **{k: round(v, 6) for k, v in means.items()},
            "updates_per_s": round(rate, 3),
        }
        self.folder.append_csv("progress.csv", row)
        tb = self._tb()
        if tb is not None:
            for k, v in means.items():
                tb.add_scalar(f"train/{k}", v, self.step)
        return means

    def evaluate(self) -> dict[str, Any] | None:
        """Deterministic-policy returns on the env and the normalised score (None when there is no env)."""
        if self.env_id is None:
            return None
        cfg = self.cfg
        rets = evaluate(self.agent, self.env_id, cfg.run.eval_episodes, seed=cfg.run.eval_seed)
        mean = float(rets.mean())
        rec = {
            "step": self.step,
            "return_mean": round(mean, 3),
            "return_std": round(float(rets.std()), 3),
            "normalized_score": first_normalized_score((cfg.run.dataset, self.env_id), mean),
        }
        self.evals.append(rec)
        self.folder.append_csv("eval.csv", rec)
        tb = self._tb()
        if tb is not None:
            tb.add_scalar("eval/return", mean, self.step)
            if rec["normalized_score"] is not None:
                tb.add_scalar("eval/normalized_score", rec["normalized_score"], self.step)
        return rec

    def _fail(self, key: str, logs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> TrainingError:
        value = float(logs[key])
        what = (
            "is nan" if math.isnan(value) else ("is inf" if math.isinf(value) else f"diverged to {value:.3g}")
        )
        msg = f"step {self.step + 1}: {self.agent.describe(key)} {what}"
        for name, t in batch.items():  # say whether the batch itself was bad
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                row = int(bad.reshape(t.shape[0], -1).any(1).nonzero()[0])
                msg += f" (the batch's {name!r} has a non-finite value at row {row})"
                break
        last = "none yet" if self.checkpoint_step is None else f"step {self.checkpoint_step}"
        return TrainingError(f"{msg}; last good checkpoint: {self.ckpt_path} ({last})")

    # -- main loop -------------------------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> dict[str, Any] | None:
        """Update until `until` (default `cfg.run.steps`) steps; returns the last evaluation record (or None)."""
        loop = self.start_loop(until)
        try:
            while self.step < loop.until:
                batch = self.next_batch()
                self.record(loop, self.agent.update(batch), batch)
            self.finish_loop(loop)
        finally:
            self.stop_loop(loop)
        return loop.last

    # The loop's pieces, which `SeedGroup` drives for many trainers at once with one stacked update.
    def start_loop(self, until: int | None = None, show: bool | None = None) -> _Loop:
        """Begin a stretch of training up to `until` (default `cfg.run.steps`): the progress bar and the clock."""
        from tqdm.auto import tqdm

        self.require_open()
        cfg = self.cfg
        until = cfg.run.steps if until is None else min(until, cfg.run.steps)
        if show is None:
            show = (sys.stderr.isatty() if cfg.run.progress is None else cfg.run.progress) and not self.quiet
        bar = tqdm(total=until, initial=self.step, disable=not show, dynamic_ncols=True, desc=cfg.algo)
        return _Loop(until=until, bar=bar, t0=time.perf_counter(), s0=self.step)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next minibatch, drawn with the agent's generator (as every run draws it)."""
        return self.dataset.sample(self.cfg.run.batch_size, self.agent.generator, self.agent.device)

    def record(self, loop: _Loop, logs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        """After one update: the divergence check, logs, checkpoints and evaluations that fall on this step."""
        cfg = self.cfg
        bad = check_finite_logs(logs, cfg.run.max_abs_loss)
        if bad is not None:
            raise self._fail(bad, logs, batch)
        for k, v in logs.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
            self._counts[k] = self._counts.get(k, 0) + 1
        self.step += 1
        loop.bar.update(1)
        if self.step % cfg.run.log_every == 0 or self.step == cfg.run.steps:
            rate = (self.step - loop.s0) / max(time.perf_counter() - loop.t0, 1e-9)
            means = self._log_row(rate)
            loop.bar.set_postfix({k: f"{v:.3g}" for k, v in list(means.items())[:6]}, refresh=False)
        final = self.step == cfg.run.steps
        if final:  # the trained agent is on disk before the final evaluation, which may fail
            self.save_checkpoint()
        if (cfg.run.eval_every and self.step % cfg.run.eval_every == 0) or (final and cfg.run.final_eval):
            loop.last = self._evaluate_and_print(loop.bar)
        if self.step % cfg.run.checkpoint_every == 0 or self.step == loop.until:
            self.save_checkpoint()

    def finish_loop(self, loop: _Loop) -> None:
        """At the end of the stretch: the final evaluation a resume found missing."""
        if self.step == self.cfg.run.steps and self._final_eval_missing():
            # resumed after the last checkpoint but before (or during) the final evaluation
            loop.last = self._evaluate_and_print(loop.bar)
            self.save_checkpoint()

    def stop_loop(self, loop: _Loop) -> None:
        loop.bar.close()
        if getattr(self, "_writer", None) is not None:
            self._writer.flush()

    def _evaluate_and_print(self, bar: Any) -> dict[str, Any] | None:
        rec = self.evaluate()
        if rec is not None and not self.quiet:
            bar.write(self._eval_line(rec))
        return rec

    def _final_eval_missing(self) -> bool:
        """An evaluation is due at this (the last) step but is not recorded: the run stopped inside it."""
        cfg = self.cfg
        due = cfg.run.final_eval or bool(cfg.run.eval_every and self.step % cfg.run.eval_every == 0)
        return due and self.env_id is not None and not (self.evals and self.evals[-1]["step"] == self.step)

    def behaviour_score(self) -> float | None:
        """The behaviour data's D4RL-normalised score: the mean return of the dataset's episodes, normalised as the
        agent's evaluation is (None without episodes or reference returns)."""
        return behaviour_score(self.dataset, (self.cfg.run.dataset, self.env_id))

    def _eval_line(self, rec: dict[str, Any]) -> str:
        score = rec["normalized_score"]
        s = f"normalised score {score:.1f}" if score is not None else "no reference returns for this env yet"
        return f"[{self.cfg.algo} {self.cfg.run.dataset}] step {rec['step']}: return {rec['return_mean']:.1f} ({s})"


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------
def seed_configs(cfg: TrainConfig, run_dirs: Mapping[int, str] | None = None) -> list[TrainConfig]:
    """One config per seed of `cfg.run.seeds`: that seed, its own run folder (`run_dirs[k]`, else `run_dir/seed<k>`,
    else seed k's default folder) and plain autograd (`fast: false`, the stacked update's); each is a one-seed
    run's config."""
    if not cfg.run.seeds:
        raise ConfigError("seed_configs: the config has no seeds (set seeds: [0, 1, 2] or --seeds 0 1 2)")
    out = []
    for k in cfg.run.seeds:
        one = cfg.replace(seed=k, seeds=(), fast=False, run_dir=None)
        if run_dirs is not None and k in run_dirs:
            run_dir = Path(run_dirs[k])
        else:
            run_dir = Path(cfg.run.run_dir) / f"seed{k}" if cfg.run.run_dir else default_run_dir(one)
        out.append(one.replace(run_dir=str(run_dir)))
    return out


class SeedGroup:
    """The seeds of `cfg.run.seeds` trained in one process: one `Trainer` per seed (its run folder, lock, logs,
    checkpoints and evaluations, each exactly a one-seed run's), one stacked update for all of them
    (`rl.seeds.StackedAgents`: seed k follows its one-seed run to float rounding).

    A resume after a kill finds the seeds' checkpoints at the steps they reached (the group writes them one after
    another); the seeds behind catch up first, the seeds ahead riding along unrecorded so that every seed keeps its
    place in the stacked tensors, so the resumed run is the uninterrupted one. A seed whose loss diverges stops
    alone (its `TrainingError` in `failures`; its last good checkpoint stays); the others go on.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Any = None,
        resume: bool | Mapping[int, bool] = False,
        quiet: bool = False,
        claim: bool = True,
        run_dirs: Mapping[int, str] | None = None,
    ) -> None:
        """`resume`: for every seed, or per seed (`{seed: bool}`: the sweep packs seeds that reached different
        points); `run_dirs`: each seed's run folder (`seed_configs`)."""
        self.cfg, self.quiet = cfg, quiet
        self.trainers: list[Trainer] = []
        self.failures: dict[int, TrainingError] = {}
        try:
            for one in seed_configs(cfg, run_dirs):
                again = resume.get(one.run.seed, False) if isinstance(resume, Mapping) else resume
                self.trainers.append(Trainer(one, dataset, resume=again, quiet=quiet, claim=claim))
                dataset = self.trainers[0].dataset  # loaded once, shared
        except BaseException:
            self.close()
            raise

    @property
    def step(self) -> int:
        """The step of the seeds still training (the last seed's, when all stopped)."""
        live = [t.step for t in self.trainers if t.cfg.run.seed not in self.failures]
        return min(live) if live else max(t.step for t in self.trainers)

    def close(self) -> None:
        for t in self.trainers:
            t.close()

    def __enter__(self) -> SeedGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def train(self, until: int | None = None) -> list[dict[str, Any] | None]:
        """Update every seed until `until` (default `cfg.run.steps`); each seed's latest evaluation record (its
        `Trainer.evals[-1]`, whichever stretch made it; None before any)."""
        until = self.cfg.run.steps if until is None else min(until, self.cfg.run.steps)
        while True:
            live = [t for t in self.trainers if t.cfg.run.seed not in self.failures]
            if not any(t.step < until for t in live):
                break
            behind = min(t.step for t in live if t.step < until)
            # Seeds ahead (a kill fell between two seeds' checkpoint writes; ahead up to `until` or past it) ride
            # along, unrecorded and put back afterwards, so that the seeds behind keep their places in the stacked
            # tensors (float rounding of a vectorised kernel depends on where an element sits) and redo their
            # updates bit for bit.
            riders = [t for t in live if t.step > behind]
            stop = min([until, *(t.step for t in riders)])
            self._train_together(live, stop, riders)
        for t in self.trainers:  # a final evaluation that a resume found missing
            if t.cfg.run.seed not in self.failures and t.step == until:
                loop = t.start_loop(until, show=False)
                t.finish_loop(loop)
                t.stop_loop(loop)
        return [t.evals[-1] if t.evals else None for t in self.trainers]

    def _train_together(self, group: list[Trainer], until: int, riders: Sequence[Trainer] = ()) -> None:
        """Train `group` to `until` with one stacked update; `riders` (in `group`) update unrecorded and get their
        states back at the end."""
        from rl.seeds import StackedAgents

        recorded = [t for t in group if t not in riders]
        saved = {t.cfg.run.seed: copy.deepcopy(t.agent.state_dict()) for t in riders}
        for t in riders:  # at the recorded seeds' step (schedules, delayed phases); its numbers are not kept
            t.agent.load_state_dict(copy.deepcopy(recorded[0].agent.state_dict()))
        loops = {
            t.cfg.run.seed: t.start_loop(until, show=None if i == 0 else False)
            for i, t in enumerate(recorded)
        }
        try:
            while group and recorded and recorded[0].step < until:
                stacked = StackedAgents([t.agent for t in group])
                while recorded[0].step < until:
                    batches = [t.next_batch() for t in group]
                    failed = []
                    for t, logs, batch in zip(group, stacked.update(batches), batches):
                        if t in riders:
                            continue
                        try:
                            t.record(loops[t.cfg.run.seed], logs, batch)
                        except TrainingError as err:
                            self.failures[t.cfg.run.seed] = err
                            failed.append(t)
                    if failed:  # the others go on, stacked anew without the diverged seeds
                        group = [t for t in group if t not in failed]
                        recorded = [t for t in recorded if t not in failed]
                        break
        finally:
            for t in riders:
                t.agent.load_state_dict(saved[t.cfg.run.seed])
            for t in self.trainers:
                if t.cfg.run.seed in loops:
                    t.stop_loop(loops[t.cfg.run.seed])


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    ours = (ConfigError, RunDirError, CheckpointError, FileNotFoundError, IsADirectoryError, TrainingError)
    return text if isinstance(err, ours) else f"{type(err).__name__}: {text}"


def _resume_base(rest: dict[str, str], seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """The config saved in `--run-dir`'s checkpoint (empty when there is none: the run-dir check says why); with
    `--seeds`, the first seed's (`RUN_DIR/seed<k>`), whose seed and run folder the group sets per seed anyway."""
    run_dir = rest.get("run-dir", rest.get("run_dir"))
    if run_dir is None:
        raise ConfigError("--resume needs --run-dir DIR (or the --config that made the run)")
    ckpt = Path(run_dir) / (f"seed{seeds[0]}" if seeds else "") / "checkpoint.pt"
    if not ckpt.is_file():
        group = sorted(p.parent.name[4:] for p in Path(run_dir).glob("seed*/checkpoint.pt"))
        if not seeds and group:
            raise ConfigError(
                f"--run-dir {run_dir} holds the run folders of a --seeds run (seeds {', '.join(group)}): resume "
                f"it with --seeds {' '.join(group)}, or one seed alone with --run-dir {run_dir}/seed{group[0]}"
            )
        return {}
    saved = load_torch_file(ckpt, required=CHECKPOINT_KEYS)["config"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"{ckpt}: its 'config' is a {type(saved).__name__}, not a mapping")
    return dict(saved)


def _fields_epilog(argv: Sequence[str] | None) -> str:
    """`--help`'s list of config fields: those of `--algo`'s (or `--config`'s) algorithm, default `mi`."""
    args = list(sys.argv[1:] if argv is None else argv)
    algo = "mi"
    try:
        if "--algo" in args:
            algo = args[args.index("--algo") + 1]
        elif "--config" in args:
            algo = str(load_yaml(args[args.index("--config") + 1]).get("algo", "mi"))
        cls = config_class(algo)
    except Exception:  # noqa: BLE001 - the help must print whatever the other arguments are
        algo, cls = "mi", config_class("mi")
    return (
        "config fields, each settable in the YAML file (flat, or in run: and agent: sections) or as --name value "
        "(values are YAML: 3e-4, true, null, [256, 256]; dict fields also as --name.key value)\n\n"
        f"run settings (RunConfig; the defaults of --algo {algo}):\n"
        + config_help(RunConfig, cls.RUN_DEFAULTS)
        + f"\n\nsettings of --algo {algo} ({cls.__name__}; `--algo NAME --help` lists another algorithm's):\n"
        + config_help(cls)
        + "\n\n--resume --run-dir DIR continues a run with its own config; only "
        + ", ".join(RESUME_OVERRIDABLE)
        + " may change."
    )


def _main_seeds(group: SeedGroup, args: argparse.Namespace) -> int:
    """`main` for `seeds:`, once the group is built: the same exit statuses, 1 when any seed stopped."""
    cfg = group.cfg
    try:
        dirs = ", ".join(str(t.run_dir) for t in group.trainers)
        if args.dry_run:
            print(
                f"ok: {cfg.algo} on {cfg.run.dataset}, seeds {list(cfg.run.seeds)} stacked, into {dirs}; nothing written"
            )
            return 0
        if args.resume and not args.quiet:
            print("resumed " + ", ".join(f"{t.run_dir} at step {t.step}" for t in group.trainers), flush=True)
        try:
            records = group.train()
        except KeyboardInterrupt:
            print(
                f"interrupted at step {group.step}; continue with the same command and --resume",
                file=sys.stderr,
            )
            return 130
        except Exception as e:  # noqa: BLE001
            if args.debug:
                raise
            print(
                f"error at step {group.step}: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr
            )
            return 1
        for t, rec in zip(group.trainers, records):
            if t.cfg.run.seed in group.failures:
                print(f"error: seed {t.cfg.run.seed}: {group.failures[t.cfg.run.seed]}", file=sys.stderr)
            elif not args.quiet:
                if rec is None:
                    score = ""
                elif rec["normalized_score"] is None:  # no reference returns for this env
                    score = f"; return {rec['return_mean']:.1f}"
                else:
                    score = (
                        f"; normalised score {rec['normalized_score']:.1f} (return {rec['return_mean']:.1f})"
                    )
                print(f"done: seed {t.cfg.run.seed}, {t.step} steps{score}; logs: {t.run_dir}")
        return 1 if group.failures else 0
    finally:
        group.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI. Exit status: 0 done, 1 training stopped (a NaN/diverging term, a crash), 2 bad input (caught
    before anything is written; one line on stderr, the traceback with --debug), 130 interrupted."""
    p = argparse.ArgumentParser(
        prog="python -m rl.train",
        description="Train an offline RL agent (MI actor-critic/MISA, CQL, IQL, TD3+BC, BC) from a YAML config.",
        epilog=_fields_epilog(argv),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --seed is a config field, not short for --seeds
    )
    p.add_argument("--config", default=None, help="YAML config (e.g. configs/misa/hopper-medium-v5.yaml)")
    p.add_argument(
        "--algo", default=None, help="algorithm when no --config is given (mi, cql, iql, td3bc, bc)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, device, dataset, env and run dir, say what would run, write nothing to the run dir",
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module name importable from the current directory, or a path to a .py file, imported before the "
        "config is checked so that the estimators it registers (mi_estimators.register) can be named by "
        "--estimator; repeatable; added to the config's imports",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="train these seeds in one process with one stacked update (the config's seeds); seed k's run folder "
        "is RUN_DIR/seed<k>",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no prints but errors")
    args, rest = p.parse_known_args(argv)
    try:
        overrides = _parse_overrides(rest)
        base = (
            _resume_base(overrides, args.seeds)
            if args.resume and args.config is None and args.algo is None
            else None
        )
        cfg = build_config(args.config, overrides, args.algo, base=base)
        if args.imports:  # after the config's own, each once (a resume that repeats them asks for the same)
            cfg = cfg.replace(imports=tuple(dict.fromkeys([*cfg.run.imports, *args.imports])))
        if args.seeds is not None:
            cfg = cfg.replace(seeds=tuple(args.seeds))
        runner = SeedGroup if cfg.run.seeds else Trainer
        trainer = runner(cfg, resume=args.resume, quiet=args.quiet, claim=not args.dry_run)
    except Exception as e:  # noqa: BLE001 - every misuse ends in one line; --debug shows where
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if isinstance(trainer, SeedGroup):  # training errors end in exit status 1 (or the traceback with --debug)
        return _main_seeds(trainer, args)
    if args.dry_run:
        ds = trainer.dataset
        at = f", resuming at step {trainer.step}" if trainer.step else ""
        print(
            f"ok: {cfg.algo} on {cfg.run.dataset} ({len(ds)} transitions, observations {ds.obs_dim}, actions "
            f"{ds.act_dim}; evaluation env {trainer.env_id}) for {cfg.run.steps} steps on {cfg.run.device} into "
            f"{trainer.run_dir}{at}; nothing written"
        )
        return 0
    if args.resume and trainer.step and not args.quiet:
        print(f"resumed {trainer.run_dir} at step {trainer.step}", flush=True)
    try:
        trainer.train()
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted at step {trainer.step}; continue with --resume --run-dir {trainer.run_dir}",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # noqa: BLE001
        if args.debug:
            raise
        last = f"; last checkpoint: {trainer.ckpt_path}" if trainer.ckpt_path.exists() else ""
        print(
            f"error at step {trainer.step}: {_one_line(e)}{last} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        trainer.close()  # the lock goes with the run, whichever way it ended
    rec = trainer.evals[-1] if trainer.evals else None
    where = f"logs: {trainer.run_dir}/progress.csv, eval.csv, tb/ (tensorboard --logdir {trainer.run_dir}/tb)"
    if rec is None:
        why = (
            f"no env for {cfg.run.dataset!r}"
            if trainer.env_id is None
            else f"final_eval is off and no step reached eval_every ({cfg.run.eval_every})"
        )
        print(f"done: {trainer.step} steps, no evaluation ({why}); {where}")
    elif rec["normalized_score"] is None:
        print(
            f"done: {trainer.step} steps; return {rec['return_mean']:.1f} (raw: no reference returns for "
            f"{trainer.env_id} yet, so no normalised score); {where}"
        )
    else:
        score, behaviour = rec["normalized_score"], trainer.behaviour_score()
        if behaviour is None:
            verdict = ""
        elif score > behaviour:
            verdict = f"; above the behaviour data's {behaviour:.1f}"
        else:
            verdict = (
                f"; below the behaviour data's {behaviour:.1f} after {trainer.step} updates (the published runs "
                "take 1M; docs/results.md shows what each algorithm reaches and when)"
            )
        print(
            f"done: {trainer.step} steps; normalised score {score:.1f} (return {rec['return_mean']:.1f})"
            f"{verdict}; {where}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
