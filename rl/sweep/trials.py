"""Running one trial to its end, in a Ray worker or in-process (tests): `run_trial` and the Tune trainable.

An RL trial is an `rl.train.Trainer` in its run folder, resumed from its checkpoint when there is one and trained
in chunks up to each evaluation, each chunk reported. A staircase trial is one `rl.sweep.staircase.run_protocol`
call; `pack` turns a grid cell's unfinished seeds into one trial of kind `PACK`, whose single call trains them as
one stacked `estimate(seeds=...)` and writes each seed's own `result.json`. Every trial ends by writing
`<out>/runs/<id>/result.json` atomically (what makes it finished, `rl.sweep.folders`); one that raises leaves its
traceback in `<out>/errors/<id>.txt`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import rl.sweep.staircase as sc
from rl._atomic import atomic_write
from rl.sweep.folders import RESULT, run_dir, trial_config, trial_status, write_json

#: the kinds of a packed trial: a grid cell's seeds in one stacked run (`pack`)
PACK = "staircase-pack"
RL_PACK = "rl-pack"


def run_trial(
    trial: dict[str, Any], out: str | os.PathLike, report: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) one trial to its end and write `<out>/runs/<id>/result.json`; returns the result.

    RL: an `rl.train.Trainer` in `<out>/runs/<id>`, resumed from its checkpoint when there is one, trained in chunks
    up to each evaluation; `report(metrics)` after each chunk. Staircase: `rl.sweep.staircase`'s
    `run_protocol` (training over the staircase, per-level bias/variance/MSE, a held-out estimate at each level's
    end) on one thread count, `settings["threads"]`. A failure writes `<out>/errors/<id>.txt` and re-raises.
    """
    out = Path(out).resolve()
    err = out / "errors" / f"{trial['id']}.txt"
    err.unlink(missing_ok=True)
    report = report or (lambda metrics: None)
    try:
        if trial["kind"] == "rl":
            return _run_rl(trial, out, report)
        if trial["kind"] == PACK:
            return _run_staircase_pack(trial, out, report)
        if trial["kind"] == RL_PACK:
            return _run_rl_pack(trial, out, report)
        return _run_staircase(trial, out, report)
    except Exception:  # not KeyboardInterrupt/SystemExit: an interrupted trial is unfinished, not failed
        text = f"trial {trial['id']} failed:\n{traceback.format_exc()}"
        atomic_write(err, lambda tmp: Path(tmp).write_text(text))
        raise


def _run_rl(trial: dict[str, Any], out: Path, report: Callable) -> dict[str, Any]:
    from rl.train import Trainer

    cfg = trial_config(trial, out)
    d = Path(cfg.run.run_dir)
    status, why = trial_status(trial, out)
    if status == "changed":
        raise RuntimeError(why)
    if status == "finished":
        return json.loads((d / RESULT).read_text())
    # A trial killed before its first checkpoint starts afresh (the trainer voids the logs it left).
    resume = (d / "checkpoint.pt").exists()
    t0 = time.perf_counter()
    with Trainer(cfg, resume=resume, quiet=True) as trainer:  # its run dir's lock is released at the end
        return _train_trial(trial, trainer, resume, out, report, t0)


def _train_trial(
    trial: dict[str, Any], trainer: Any, resume: bool, out: Path, report: Callable, t0: float
) -> dict[str, Any]:
    """`_run_rl`'s training of a trial by `trainer` (chunk by chunk, each reported) and its result.json."""
    from rl.train import TrainingError

    cfg = trainer.cfg
    start = trainer.step
    tlog = _trial_logger(out, trial["id"])
    tlog.info("%s %s at step %d of %d", "resumed" if resume else "started", trial["id"], start, cfg.run.steps)
    every = cfg.run.eval_every or cfg.run.checkpoint_every
    diverged = None
    try:
        for _ in _stretches(trainer, cfg.run.steps, every):
            last = trainer.evals[-1] if trainer.evals else {}
            metrics = {
                "step": trainer.step,
                "normalized_score": last.get("normalized_score"),
                "return_mean": last.get("return_mean"),
                "eval_step": last.get("step"),
            }
            tlog.info("%s step %d: %s", trial["id"], trainer.step, metrics)
            report(metrics)
    except TrainingError as err:
        # A NaN or a term past `max_abs_loss` is what the algorithm does on this seed, not a fault to retry: resume
        # is exact, so a rerun from the checkpoint replays the same updates and diverges at the same step.
        diverged = str(err)
        tlog.info("%s diverged: %s", trial["id"], diverged)
        report({"step": trainer.step, "normalized_score": None, "diverged": diverged})
    result = _rl_result(trial, trainer, start, time.perf_counter() - t0, diverged)
    tlog.info("finished %s: %s", trial["id"], result["final"])
    # resumed after the last checkpoint but before result.json: nothing left to train
    if start == cfg.run.steps:
        report({"step": trainer.step, "normalized_score": result["final"].get("normalized_score")})
    return result


def _stretches(
    runner: Any, steps: int, every: int, going: Callable[[], bool] = lambda: True
) -> Iterator[None]:
    """Train `runner` (a `Trainer` or a `SeedGroup`) to `steps` in stretches that end at the multiples of `every`
    (its evaluations, else its checkpoints), yielding after each while `going()`; then the final evaluation that a
    run killed inside it lacks (a no-op otherwise)."""
    while going() and runner.step < steps:
        runner.train(until=min(steps, (runner.step // every + 1) * every))
        yield
    if going():
        runner.train()


def _rl_result(
    trial: dict[str, Any], trainer: Any, start: int, seconds: float, diverged: str | None
) -> dict[str, Any]:
    """An RL trial's result.json, written into its run folder (what makes it finished); returns it."""
    from rl.config import to_dict

    final = trainer.evals[-1] if trainer.evals and diverged is None else {}
    result = {
        "id": trial["id"],
        "kind": "rl",
        "params": trial["params"],
        "step": trainer.step,
        "steps": trainer.cfg.run.steps,
        "final": final,
        "evals": trainer.evals,
        "resumed_from": start,
        "seconds_last_attempt": round(seconds, 1),
        "config": to_dict(trainer.cfg),
    }
    if diverged is not None:
        result["diverged"] = diverged  # `step`: the last good update; the message names the one that diverged
    write_json(Path(trainer.run_dir) / RESULT, result)
    return result


def _run_rl_pack(trial: dict[str, Any], out: Path, report: Callable) -> dict[str, Any]:
    """A grid cell's RL seeds as one `rl.train.SeedGroup` (one stacked update for all), each seed in its own run
    folder `<out>/runs/<id>` (resumed from its checkpoint where it has one), trained chunk by chunk up to each
    evaluation, each chunk reported; each seed's result.json as its own trial writes it."""
    from rl.train import SeedGroup

    members = _unfinished_members(trial, out)
    if not members:
        return {"id": trial["id"], "kind": RL_PACK, "members": []}
    cfgs = {m["id"]: trial_config(m, out) for m in members}
    first = next(iter(cfgs.values()))
    group_cfg = first.replace(seeds=tuple(c.run.seed for c in cfgs.values()), run_dir=None)
    run_dirs = {c.run.seed: c.run.run_dir for c in cfgs.values()}
    resume = {c.run.seed: (Path(c.run.run_dir) / "checkpoint.pt").exists() for c in cfgs.values()}
    by_seed = {c.run.seed: m for m, c in zip(members, cfgs.values(), strict=True)}
    t0 = time.perf_counter()
    with SeedGroup(group_cfg, resume=resume, quiet=True, run_dirs=run_dirs) as group:
        starts = {t.cfg.run.seed: t.step for t in group.trainers}
        for t in group.trainers:
            _trial_logger(out, by_seed[t.cfg.run.seed]["id"]).info(
                "%s %s at step %d of %d in %s",
                *("resumed" if resume[t.cfg.run.seed] else "started", by_seed[t.cfg.run.seed]["id"], t.step),
                *(first.run.steps, trial["id"]),
            )
        every = first.run.eval_every or first.run.checkpoint_every

        def live() -> list[Any]:
            return [t for t in group.trainers if t.cfg.run.seed not in group.failures]

        def progress() -> dict[str, Any]:
            scores = [t.evals[-1].get("normalized_score") for t in live() if t.evals]
            scores = [s for s in scores if s is not None]
            return {
                "step": group.step,
                "normalized_score": sum(scores) / len(scores) if scores else None,
                "member_steps": {by_seed[t.cfg.run.seed]["id"]: t.step for t in group.trainers},
            }

        trained = False
        for _ in _stretches(group, first.run.steps, every, going=lambda: bool(live())):
            report(progress())
            trained = True
        if not trained:  # resumed after the last checkpoints but before the result.json files
            report(progress())
        results = []
        for t in group.trainers:
            member = by_seed[t.cfg.run.seed]
            err = group.failures.get(t.cfg.run.seed)
            res = _rl_result(
                member, t, starts[t.cfg.run.seed], time.perf_counter() - t0, None if err is None else str(err)
            )
            _trial_logger(out, member["id"]).info("finished %s: %s", member["id"], res["final"])
            results.append(res["id"])
    return {"id": trial["id"], "kind": RL_PACK, "members": results}


def _run_staircase(trial: dict[str, Any], out: Path, report: Callable) -> dict[str, Any]:
    status, why = trial_status(trial, out)
    if status == "changed":
        raise RuntimeError(why)
    if status == "finished":
        return json.loads((run_dir(out, trial) / RESULT).read_text())
    return _protocol(trial["id"], [trial], out, report)[0]


def pack(todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials of `todo` with their grid cell's other seeds as one trial. Staircase (same estimator, task,
    critic, settings): kind `PACK`, whose `run_protocol` call trains them as one stacked `estimate(seeds=...)`.
    RL (same variant, dataset and overrides): kind `RL_PACK`, one `rl.train.SeedGroup`. Each seed still writes its
    own run folder and `result.json`, as its own trial does, with its numbers to float32 rounding. A cell with one
    seed to run stays as it is."""
    cells: dict[str, list[dict[str, Any]]] = {}
    out: list[Any] = []
    for t in todo:
        if t["kind"] not in ("staircase", "rl"):
            out.append(t)
            continue
        p = {k: v for k, v in t["params"].items() if k != "seed"}
        if t["kind"] == "rl":
            overrides = {k: v for k, v in t["overrides"].items() if k != "seed"}
            key = json.dumps(["rl", p, t["config_data"], overrides], sort_keys=True, default=str)
        else:
            key = json.dumps([p, t["settings"]], sort_keys=True)
        if key not in cells:
            cells[key] = []
            out.append(cells[key])  # the cell keeps the place of its first seed
        cells[key].append(t)
    packed = []
    for item in out:
        if isinstance(item, dict) or len(item) == 1:
            packed.append(item if isinstance(item, dict) else item[0])
            continue
        prefix = item[0]["id"].rsplit("__s", 1)[0]
        seeds = "+".join(str(t["params"]["seed"]) for t in item)
        kind = RL_PACK if item[0]["kind"] == "rl" else PACK
        packed.append({"id": f"{prefix}__s{seeds}", "kind": kind, "members": item})
    return packed


def _unfinished_members(trial: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """A pack's members still to run: a rerun after a kill does not run again the members that finished; one
    whose folder holds other settings stops the pack."""
    todo = []
    for member in trial["members"]:
        status, why = trial_status(member, out)
        if status == "changed":
            raise RuntimeError(why)
        if status != "finished":
            todo.append(member)
    return todo


def _run_staircase_pack(trial: dict[str, Any], out: Path, report: Callable) -> dict[str, Any]:
    todo = _unfinished_members(trial, out)
    results = _protocol(trial["id"], todo, out, report) if todo else []
    return {"id": trial["id"], "kind": PACK, "members": [r["id"] for r in results]}


def _protocol(tid: str, trials: list[dict[str, Any]], out: Path, report: Callable) -> list[dict[str, Any]]:
    """`run_protocol` for the seeds of `trials` (one grid cell: the same estimator, task, critic and settings),
    stacked when there are several; writes each trial's `result.json` and returns them as a rerun reads them."""
    first = trials[0]
    p, s = first["params"], first["settings"]
    torch.set_num_threads(s["threads"])
    tlog = _trial_logger(out, tid)
    tlog.info("started %s on %d thread(s)", tid, torch.get_num_threads())
    t0 = time.perf_counter()
    recipe = s.get("recipe")
    seeds = [t["params"]["seed"] for t in trials]
    runs = sc.run_protocol(
        recipe["estimator"] if recipe else p["estimator"],
        sc.TaskSpec(**s["task"]),
        p["critic"],
        s["steps_per_level"],
        s["batch_size"],
        seeds if len(trials) > 1 else seeds[0],
        heldout_samples=s["heldout_samples"],
        device=first.get("device", "cpu"),
        **sc.recipe_arguments(recipe),
    )
    seconds = (time.perf_counter() - t0) / len(trials)  # each seed's share of the run
    results = []
    for trial, run in zip(trials, runs if len(trials) > 1 else [runs], strict=True):
        est = run["estimates"]
        if run["stopped_at"] is not None:
            tlog.info("%s stopped at step %d: %s", trial["id"], run["stopped_at"], run["error"])
        result = {
            "id": trial["id"],
            "kind": "staircase",
            "params": trial["params"],
            "settings": trial["settings"],
            "step": len(est),
            "steps": s["steps_per_level"] * len(sc.LEVELS),
            "stopped_at": run["stopped_at"],
            "error": run["error"],
            "negatives": run["negatives"],
            "levels": run["levels"],
            "heldout": run["heldout"],
            "estimates_every": s["record_every"],
            "estimates": est[:: s["record_every"]],
            "seconds": round(seconds, 2),
            "threads": torch.get_num_threads(),
            "device": first.get("device", "cpu"),
            "torch": torch.__version__,
            "code": sc.code_fingerprint(),
            **({"packed_seeds": seeds} if len(trials) > 1 else {}),
        }
        d = run_dir(out, trial)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / RESULT, result)
        mse = [r["mse"] for r in run["levels"] if math.isfinite(r["mse"])]
        report({"step": len(est), "mean_mse": statistics.fmean(mse) if mse else None})
        results.append(
            json.loads((d / RESULT).read_text())
        )  # as a rerun reads it (non-finite floats: strings)
    tlog.info("finished %s in %.1f s", tid, seconds * len(trials))
    return results


def _trial_logger(out: Path, trial_id: str) -> logging.Logger:
    lg = logging.getLogger(f"sweep.trial.{trial_id}")
    path = (out / "logs" / f"{trial_id}.log").resolve()
    for h in list(lg.handlers):  # one worker may run a trial twice (Ray's retry), each time in another folder
        if Path(getattr(h, "baseFilename", "")) != path:
            lg.removeHandler(h)
            h.close()
    if not lg.handlers:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    return lg


def ray_trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial in a scratch folder of the node it runs on, its files handed over
    through Ray's checkpoint API only (`rl.sweep.storage`): after each chunk, and once more at the end, the
    folder's tree is reported as a checkpoint, which Ray copies to its storage. It starts from Ray's last
    checkpoint of this trial when Ray restarts it (a worker or node lost), else from the tree the driver names
    (`resume_from[id]`, relative to the storage root `storage`), else afresh. Tune pickles the function by reference,
    so each node imports it from the installed package."""
    import tempfile

    from ray import tune

    from rl.sweep.storage import STATE, Storage, stage_tree

    trial = config["trial"]
    work = Path(tempfile.mkdtemp(prefix=f"misa-sweep-{trial['id'][:60]}-"))
    staging = work.with_name(work.name + ".report")
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        last.clear()
        last.update(metrics)
        tree = stage_tree(work, runs_progress(trial, work, metrics), staging)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(tree)))

    try:
        start, origin = tune.get_checkpoint(), "afresh"
        if start is not None:  # Ray restarted this trial
            start.to_directory(str(work))
            (work / STATE).unlink(missing_ok=True)
            origin = f"from Ray's checkpoint {start.path}"
        else:
            trees = {
                rid: config["resume_from"][rid] for rid in member_ids(trial) if rid in config["resume_from"]
            }
            if trees:
                store = Storage(config["storage"])
                for rid, tree in trees.items():
                    store.download_runs(tree, [rid], work)
                origin = "from the storage's " + ", ".join(
                    sorted({t or "run folder" for t in trees.values()})
                )
        _trial_logger(work, trial["id"]).info("working in %s on %s, %s", work, os.uname().nodename, origin)
        run_trial(trial, work, report=report)
        report({**last, "sweep_finished": True})  # the tree with result.json
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def member_ids(trial: dict[str, Any]) -> list[str]:
    """The ids of the run folders a trial writes: its own, or its members' (a pack)."""
    return [m["id"] for m in trial["members"]] if trial["kind"] in (PACK, RL_PACK) else [trial["id"]]


def runs_progress(trial: dict[str, Any], work: Path, metrics: dict[str, Any]) -> dict[str, tuple[bool, int]]:
    """`{id: (finished, step)}` of each run folder of `trial` in `work`, from the metrics just reported: finished
    when its result.json exists; the step an RL run's trainer reached (its checkpoint's: a chunk ends with one;
    a pack reports each seed's), a staircase run's 0 or its end."""
    out = {}
    steps = metrics.get("member_steps") or {}
    for rid in member_ids(trial):
        finished = (work / "runs" / rid / RESULT).exists()
        if trial["kind"] == "rl":
            step = metrics.get("step") or 0
        elif trial["kind"] == RL_PACK:
            step = steps.get(rid, 0)
        else:
            step = int(finished)
        out[rid] = (finished, int(step))
    return out
