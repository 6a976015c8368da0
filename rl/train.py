"""Train an offline agent from a YAML config: `python -m rl.train --config configs/misa/hopper-medium-v5.yaml`.

Any config field can be overridden on the command line (`--estimator nwj`, `--steps 5000`, `--run-dir DIR`,
`--device cuda`, `--dataset-size 100000`, `--estimator-options.sampler mala`); an unknown key stops with its name.
Without `--config`, `--algo NAME` starts from that algorithm's defaults.

One `fit` loop serves every algorithm: a tqdm bar with the losses, evaluation every `eval_every` steps (deterministic
policy `tanh(mean)`, `eval_episodes` episodes on the dataset's gymnasium env, D4RL-normalised score via
`rl.references.normalized_score`), CSV (`progress.csv`, `eval.csv`) and TensorBoard (`tb/`) logs, and atomic
checkpoints (`checkpoint.pt`: networks, targets, optimisers, temperature, estimator state, generator and global RNG
states, step, logger positions). `--resume` continues a run exactly where its last checkpoint left it. A run
directory that holds files but not our marker (`.rl-run.json`) is never written to. A NaN/inf or diverging logged
term stops the run with `TrainingError("step 1234: critic term 'misa' is nan")`; the last good checkpoint stays.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl._atomic import atomic_write
from rl.agents import config_class, make_agent
from rl.agents.base import AgentConfig, OfflineAgent, check_finite_logs
from rl.config import ConfigError, apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from rl.references import behaviour_score, first_normalized_score
from rl.sac import evaluate

__all__ = ["Trainer", "TrainingError", "RunDirError", "build_config", "main"]

MARKER = ".rl-run.json"


class TrainingError(RuntimeError):
    """A NaN/inf or diverging term; the message names the step and the term."""


class RunDirError(RuntimeError):
    """The run directory is not ours, or holds a run and `--resume` was not given."""


# ------------------------------------------------------------------------------------------------------------
# Config from YAML + command line
# ------------------------------------------------------------------------------------------------------------
def build_config(
    config: str | Path | None, overrides: dict[str, str], algo: str | None = None
) -> AgentConfig:
    """The config dataclass from a YAML file (or an algorithm's defaults) and `--key value` overrides."""
    data = load_yaml(config) if config is not None else {}
    if algo is not None:
        data["algo"] = algo
    name = overrides.get("algo", data.get("algo", "mi"))
    try:
        cls = config_class(str(name))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    data = apply_overrides(data, overrides, cls)
    return from_dict(cls, data, where=str(config) if config else "config")


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


def default_run_dir(cfg: AgentConfig) -> Path:
    name = re.sub(
        r"[^A-Za-z0-9_.-]+", "_", Path(cfg.dataset).stem if cfg.dataset.endswith(".hdf5") else cfg.dataset
    )
    tag = f"{cfg.estimator}-" if hasattr(cfg, "estimator") else ""
    return Path("runs") / cfg.algo / name / f"{tag}seed{cfg.seed}"


def _env_id(cfg: AgentConfig, dataset: Any) -> str | None:
    if cfg.env:
        return cfg.env
    env = getattr(dataset, "metadata", {}).get("env_id")
    if env:
        return str(env)
    try:
        from rl.collect import parse_name

        return parse_name(cfg.dataset).env_id
    except Exception:  # noqa: BLE001 - not one of our names
        return None


# ------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------
class Trainer:
    """Runs `cfg.steps` updates of `cfg.algo` on `dataset` with logs and checkpoints in `run_dir`.

    Args:
        cfg: the agent config (its `run_dir` or `default_run_dir`).
        dataset: an `OfflineDataset` (None: `rl.data.load(cfg.dataset)`).
        resume: continue from `run_dir/checkpoint.pt` (required when it exists).
        quiet: no progress bar or prints.
    """

    def __init__(
        self, cfg: AgentConfig, dataset: Any = None, resume: bool = False, quiet: bool = False
    ) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
        self._claim_run_dir(resume)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if dataset is None:
            from rl.data import load

            kwargs = {"size": cfg.dataset_size} if cfg.dataset_size else {}
            dataset = load(cfg.dataset, **kwargs)
        self.dataset = dataset
        self.env_id = _env_id(cfg, dataset)
        self.agent: OfflineAgent = make_agent(cfg, dataset.obs_dim, dataset.act_dim)
        self.agent.fit_dataset_stats(dataset)
        self.step = 0
        self.evals: list[dict[str, Any]] = []
        self.offsets = {"progress.csv": 0, "eval.csv": 0}
        self._sums: dict[str, torch.Tensor] = {}
        # Counted per key: some terms are logged on some steps only (TD3+BC's delayed actor).
        self._counts: dict[str, int] = {}
        if resume and self.ckpt_path.exists():
            self.load_checkpoint()

    # -- run directory ---------------------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _claim_run_dir(self, resume: bool) -> None:
        d = self.run_dir
        if d.exists() and any(d.iterdir()) and not (d / MARKER).exists():
            raise RunDirError(
                f"{d} holds files that are not from rl.train (no {MARKER}); choose another --run-dir"
            )
        if (d / "checkpoint.pt").exists() and not resume:
            raise RunDirError(
                f"{d} already holds a run; pass --resume to continue it or choose another --run-dir"
            )
        d.mkdir(parents=True, exist_ok=True)
        if not (d / MARKER).exists():
            text = json.dumps({"tool": "rl.train", "algo": self.cfg.algo, "created": time.time()})
            atomic_write(d / MARKER, lambda tmp: Path(tmp).write_text(text))
        save_yaml(self.cfg, d / "config.yaml")

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        blob = {
            "config": to_dict(self.cfg),
            "agent": self.agent.state_dict(),
            "step": self.step,
            "evals": self.evals,
            "offsets": dict(self.offsets),
            "log_sums": {k: v.detach().cpu() for k, v in self._sums.items()},
            "log_counts": dict(self._counts),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),  # noqa: NPY002 (the global state, saved for exact resume)
                "python": random.getstate(),
            },
        }
        atomic_write(self.ckpt_path, lambda tmp: torch.save(blob, tmp))

    def load_checkpoint(self) -> None:
        blob = torch.load(self.ckpt_path, map_location=self.agent.device, weights_only=False)
        saved = blob["config"]
        for key in ("algo", "dataset", "seed", "estimator"):
            if key in saved and saved[key] != getattr(self.cfg, key, None):
                raise RunDirError(
                    f"--resume: {self.ckpt_path} was made with {key}={saved[key]!r}, but this run asks for "
                    f"{key}={getattr(self.cfg, key, None)!r}"
                )
        self.agent.load_state_dict(blob["agent"])
        self.step, self.evals, self.offsets = blob["step"], list(blob["evals"]), dict(blob["offsets"])
        self._sums = {k: v.to(self.agent.device) for k, v in blob["log_sums"].items()}
        self._counts = dict(blob["log_counts"])
        torch.set_rng_state(blob["rng"]["torch"])
        np.random.set_state(blob["rng"]["numpy"])  # noqa: NPY002
        random.setstate(blob["rng"]["python"])
        for name, off in self.offsets.items():  # drop rows logged after the checkpoint: they will be redone
            p = self.run_dir / name
            if p.exists():
                with open(p, "r+b") as f:
                    f.truncate(off)

    # -- logging ---------------------------------------------------------------------------------------------------
    def _append_csv(self, name: str, row: dict[str, Any]) -> None:
        p = self.run_dir / name
        new = not p.exists() or p.stat().st_size == 0
        with open(p, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        self.offsets[name] = p.stat().st_size

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
        self._append_csv("progress.csv", row)
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
        rets = evaluate(self.agent, self.env_id, cfg.eval_episodes, seed=cfg.eval_seed)
        mean = float(rets.mean())
        rec = {
            "step": self.step,
            "return_mean": round(mean, 3),
            "return_std": round(float(rets.std()), 3),
            "normalized_score": first_normalized_score((cfg.dataset, self.env_id), mean),
        }
        self.evals.append(rec)
        self._append_csv("eval.csv", rec)
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
        last = f"step {self.step}" if self.ckpt_path.exists() else "none yet"
        return TrainingError(f"{msg}; last good checkpoint: {self.ckpt_path} ({last})")

    # -- main loop -------------------------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> dict[str, Any] | None:
        """Update until `until` (default `cfg.steps`) steps; returns the last evaluation record (or None)."""
        from tqdm.auto import tqdm

        cfg, agent, ds = self.cfg, self.agent, self.dataset
        until = cfg.steps if until is None else min(until, cfg.steps)
        bar = tqdm(total=until, initial=self.step, disable=self.quiet, dynamic_ncols=True, desc=cfg.algo)
        t0, s0 = time.perf_counter(), self.step
        last = None
        try:
            while self.step < until:
                batch = ds.sample(cfg.batch_size, agent.generator, agent.device)
                logs = agent.update(batch)
                bad = check_finite_logs(logs, cfg.max_abs_loss)
                if bad is not None:
                    raise self._fail(bad, logs, batch)
                for k, v in logs.items():
                    self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
                    self._counts[k] = self._counts.get(k, 0) + 1
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                    means = self._log_row(rate)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in list(means.items())[:6]}, refresh=False)
                final = self.step == cfg.steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or (final and cfg.final_eval):
                    last = self.evaluate()
                    if last is not None and not self.quiet:
                        bar.write(self._eval_line(last))
                if self.step % cfg.checkpoint_every == 0 or self.step == until:
                    self.save_checkpoint()
        finally:
            bar.close()
            if getattr(self, "_writer", None) is not None:
                self._writer.flush()
        return last

    def behaviour_score(self) -> float | None:
        """The behaviour data's D4RL-normalised score: the mean return of the dataset's episodes, normalised as the
        agent's evaluation is (None without episodes or reference returns)."""
        return behaviour_score(self.dataset, (self.cfg.dataset, self.env_id))

    def _eval_line(self, rec: dict[str, Any]) -> str:
        score = rec["normalized_score"]
        s = f"normalised score {score:.1f}" if score is not None else "no reference returns for this env yet"
        return (
            f"[{self.cfg.algo} {self.cfg.dataset}] step {rec['step']}: return {rec['return_mean']:.1f} ({s})"
        )


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rl.train",
        description="Train an offline RL agent (MI actor-critic/MISA, CQL, IQL, TD3+BC, BC) from a YAML config.",
        epilog="Any config field can be overridden: --estimator nwj --steps 5000 --run-dir DIR --device cuda",
    )
    p.add_argument("--config", default=None, help="YAML config (e.g. configs/misa/hopper-medium-v5.yaml)")
    p.add_argument(
        "--algo", default=None, help="algorithm when no --config is given (mi, cql, iql, td3bc, bc)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    p.add_argument("--quiet", action="store_true")
    args, rest = p.parse_known_args(argv)
    try:
        cfg = build_config(args.config, _parse_overrides(rest), args.algo)
        trainer = Trainer(cfg, resume=args.resume, quiet=args.quiet)
    except (ConfigError, RunDirError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.resume and trainer.step and not args.quiet:
        print(f"resumed {trainer.run_dir} at step {trainer.step}", flush=True)
    try:
        trainer.train()
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rec = trainer.evals[-1] if trainer.evals else None
    where = f"logs: {trainer.run_dir}/progress.csv, eval.csv, tb/ (tensorboard --logdir {trainer.run_dir}/tb)"
    if rec is None:
        print(f"done: {trainer.step} steps, no evaluation (no env for {cfg.dataset!r}); {where}")
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
