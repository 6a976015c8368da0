"""The sweep driver on Ray Tune: `run_sweep` decides from each trial's folder what to skip, resume or start,
submits the rest as Tune trials (`rl.sweep.trials.ray_trainable`), and writes the report.

Without an address it starts a local Ray instance and stops it at the end; with one it joins that cluster. A lock
file `<out>/.sweep.lock` keeps a second driver off the same folder. The console gets a few lines (what is skipped,
resumed and started, one line per finished or failed trial, the files written); Ray's and Tune's own logging goes
to `<out>/sweep.log`. A trial that raises is not fatal: Tune marks it errored, the others go on, and its
traceback is in `<out>/errors/<id>.txt`.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

from rl._atomic import atomic_write
from rl.sweep.behaviour import ensure_behaviour
from rl.sweep.folders import divergence_headline, first_error_line, folder_progress, trial_status
from rl.sweep.report import display, write_report
from rl.sweep.spec import Spec
from rl.sweep.storage import HANDOFF, Storage, Tree, forget_removed, mirror, mirrored
from rl.sweep.trials import PACK, RL_PACK, member_ids, pack, ray_trainable

log = logging.getLogger("sweep")


class SweepError(RuntimeError):
    """The sweep cannot run at all (Ray cannot be started or reached)."""


def run_sweep(
    spec: Spec,
    out: str | os.PathLike,
    address: str | None = None,
    num_cpus: int | None = None,
    max_concurrent: int | None = None,
    storage: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run the trials of `spec` that are not finished on Ray Tune, then gather the report.

    Returns `{"skipped": [ids], "resumed": {id: step}, "started": [ids], "errors": {id: message}, "files": [...]}`.
    A Ray instance that is already initialised (tests) is used as it is; otherwise `address` (an existing cluster)
    or a new local instance with `num_cpus` CPUs (default: all), shut down at the end. `storage`: where the
    trials' files travel (`rl.sweep.storage`; a local path or a URI; default `out` itself).
    """
    out = Path(out).resolve()
    try:
        store = Storage(storage if storage is not None else out)
    except ValueError as e:
        raise SweepError(str(e)) from None
    lock = _lock(out)
    handler = _setup_logging(out)
    try:
        return _run_sweep(spec, out, store, address, num_cpus, max_concurrent, handler)
    finally:
        log.removeHandler(handler)
        handler.close()
        lock.release()


def _lock(out: Path) -> Any:
    """The lock file `<out>/.sweep.lock` for this driver's lifetime (`rl._atomic.acquire_lock`, as `rl.train`
    locks a run dir: it holds the driver's PID and host; a driver killed by kill -9 leaves it stale, and the next
    one takes it over), so that two drivers never train the same trials at once."""
    from rl._atomic import LockError, acquire_lock

    try:
        return acquire_lock(out / ".sweep.lock", "another sweep driver", what=f"the sweep folder {out}")
    except LockError as err:
        raise SweepError(str(err)) from None


def _run_sweep(spec, out, store, address, num_cpus, max_concurrent, handler) -> dict[str, Any]:
    summary: dict[str, Any] = {"skipped": [], "resumed": {}, "started": [], "errors": {}}
    ids = [rid for t in spec.trials for rid in member_ids(t)]
    for rid in forget_removed(store, spec.name, out, ids):
        log.info(
            "%s: its run folder was removed from %s, so its checkpoints go from %s too", rid, out, store.uri
        )
    best = mirror_sweep(spec, out, store)
    gone = store.prune(spec.name, best)
    if gone:
        log.info("removed %d superseded checkpoint(s) from %s", gone, store.uri)
    todo = []
    for t in spec.trials:
        status, detail = trial_status(t, out)
        if status == "finished":
            summary["skipped"].append(t["id"])
        elif status == "changed":
            summary["errors"][t["id"]] = detail
            _write_error(out, t["id"], detail)
        else:
            if status == "resume":
                summary["resumed"][t["id"]] = int(detail.split()[-1])
            else:
                summary["started"].append(t["id"])
            todo.append(t)
    resumed = ", ".join(f"{k} (evaluated up to step {v})" for k, v in summary["resumed"].items())
    _console(
        f"sweep {spec.name}: {len(spec.trials)} trials; {len(summary['skipped'])} finished (skipped), "
        f"{len(summary['resumed'])} to resume{': ' + resumed if resumed else ''}, {len(summary['started'])} new; "
        f"{len(summary['errors'])} refused; log: {display(out / 'sweep.log')}"
    )
    for tid, msg in summary["errors"].items():
        _console(f"  refused {tid}: {msg}")
    if todo:
        ensure_behaviour(spec, out, make=True)
        if spec.pack_seeds:
            todo = pack(todo)
        payloads = [_payload(t, out, store, best) for t in todo]
        summary["errors"].update(
            _tune(spec, out, store, payloads, address, num_cpus, max_concurrent, handler)
        )
        mirror_sweep(spec, out, store)
    else:
        ensure_behaviour(spec, out, make=False)
    summary["files"] = write_report(spec, out)
    _console(f"wrote {', '.join(display(p) for p in summary['files'])}")
    return summary


def mirror_sweep(spec: Spec, out: Path, store: Storage) -> dict[str, Tree]:
    """Every run of `spec` as the storage has it, into `out` (`rl.sweep.storage.mirror`: never over a finished
    folder or one further along); returns each run's best tree."""
    best = store.best_trees(spec.name)
    ids = [rid for t in spec.trials for rid in member_ids(t)]
    mirror(store, best, out, ids, local=lambda rid: folder_progress(out / "runs" / rid))
    return best


def _payload(trial: dict[str, Any], out: Path, store: Storage, best: dict[str, Tree]) -> dict[str, Any]:
    """What a trial's Tune config carries: the trial, the storage's URI, and where each unfinished RL run of it
    resumes from (`resume_from`, run id -> tree: its best tree in storage, else its folder in `out` handed over
    through storage)."""
    (out / "errors" / f"{trial['id']}.txt").unlink(missing_ok=True)  # from an earlier attempt
    payload: dict[str, Any] = {"trial": copy.deepcopy(trial), "storage": store.uri, "resume_from": {}}
    if trial["kind"] not in ("rl", RL_PACK):
        return payload
    came_from = mirrored(out)
    for rid in member_ids(trial):
        if not (out / "runs" / rid / "checkpoint.pt").exists():
            continue
        if rid in best and came_from.get(rid) == best[rid].path:  # else `out` is further along: hand it over
            payload["resume_from"][rid] = best[rid].path
        elif store.is_output(out):
            payload["resume_from"][rid] = (
                ""  # the storage root is `out`: the run folder is in storage already
            )
        else:  # only `out` has it (carried in git, or an older runner's): hand it over
            store.upload_runs(out, [rid], f"{HANDOFF}/{rid}")
            payload["resume_from"][rid] = f"{HANDOFF}/{rid}"
    return payload


def _write_error(out: Path, tid: str, text: str) -> None:
    atomic_write(out / "errors" / f"{tid}.txt", lambda tmp: Path(tmp).write_text(text + "\n"))


def _setup_logging(out: Path) -> logging.Handler:
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "sweep.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


_NOISY = ("ray", "py.warnings")


def _quiet_ray(path: str) -> logging.Handler:
    """Ray's and Tune's Python logging (and warnings) to the sweep log, not the console. A handler of its own:
    Ray sets the format of the handlers on its loggers."""
    handler = logging.FileHandler(path)
    logging.captureWarnings(True)
    for name in _NOISY:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.addHandler(handler)
        lg.propagate = False
    return handler


def _unquiet(handler: logging.Handler) -> None:
    for name in _NOISY:
        logging.getLogger(name).removeHandler(handler)
    logging.captureWarnings(False)
    handler.close()


def _console(msg: str) -> None:
    print(msg, flush=True)
    log.info(msg)


def _tune(spec, out, store, payloads, address, num_cpus, max_concurrent, handler) -> dict[str, str]:
    import ray.tune  # noqa: F401 - Ray's loggers exist once it is imported; then they are redirected

    ray_log = _quiet_ray(handler.baseFilename)
    try:
        return _tune_run(spec, out, store, payloads, address, num_cpus, max_concurrent)
    finally:
        _unquiet(ray_log)


def _tune_run(spec, out, store, payloads, address, num_cpus, max_concurrent) -> dict[str, str]:
    import ray
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no progress tables on the console
    own = not ray.is_initialized()
    if own:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kwargs)
        except Exception as e:  # noqa: BLE001 - reported as one clear line
            where = f"connect to the Ray cluster at {address}" if address else "start a local Ray instance"
            hint = (
                " (a cluster started with token authentication, the default of `ray start` since Ray 2.59, needs "
                "RAY_AUTH_MODE=token in this command's environment too)"
                if address
                else ""
            )
            raise SweepError(f"cannot {where}: {type(e).__name__}: {e}{hint}") from e
    cpus = ray.cluster_resources().get("CPU", 0)
    _console(
        f"Ray {'cluster ' + address if address else 'local'} ({cpus:g} CPUs); {len(payloads)} trials, "
        f"{spec.resources['cpu']:g} CPU each, at most {max_concurrent or spec.max_concurrent or 'all'} at once"
    )
    done: dict[str, str] = {}
    members = {p["trial"]["id"]: member_ids(p["trial"]) for p in payloads}

    class Progress(tune.Callback):
        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            # Mirrored as it lands, so that `out` shows each trial's progress (and can be committed) mid-run.
            try:
                tree = store.tree(store.relative(checkpoint.path))
                if tree is not None:
                    mirror(store, dict.fromkeys(tree.runs, tree), out, members[trial.config["trial"]["id"]])
            except Exception:  # noqa: BLE001 - Ray drops a checkpoint whose callback raised; the end mirrors again
                log.exception("mirroring %s into %s", checkpoint.path, out)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            log.info(
                "%s: %s",
                trial.config["trial"]["id"],
                {k: result.get(k) for k in ("step", "normalized_score")},
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            score = r.get("normalized_score")
            tail = f" score {score:.1f}" if isinstance(score, float) else ""
            if r.get("diverged"):
                tail = f" diverged: {divergence_headline(r['diverged'])}"
            done[trial.config["trial"]["id"]] = "ok"
            _console(
                f"  done  {trial.config['trial']['id']} step {r.get('step')}{tail} ({len(done)}/{len(payloads)})"
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            tid = trial.config["trial"]["id"]
            done[tid] = "error"
            _console(
                f"  error {tid} (see {display(out / 'errors' / (tid + '.txt'))}) ({len(done)}/{len(payloads)})"
            )

    tuner = tune.Tuner(
        tune.with_resources(ray_trainable, {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]}),
        param_space={
            "trial": tune.grid_search([p["trial"] for p in payloads]),
            "storage": store.uri,
            "resume_from": {rid: tree for p in payloads for rid, tree in p["resume_from"].items()},
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or spec.max_concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            reuse_actors=True,  # one worker process runs trial after trial: no torch import per trial
        ),
        run_config=tune.RunConfig(
            storage_path=store.ray_path,
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            verbose=0,
            callbacks=[Progress()],
            # two, so that a copy cut short by a kill always leaves the one before it whole
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        ),
    )
    try:
        grid = tuner.fit()
    finally:
        if own:
            ray.shutdown()
    errors = {}
    for res in grid:
        if res.error is None:
            continue
        trial = (res.config or {}).get("trial", {})
        tid = trial.get("id", "?")
        path = out / "errors" / f"{tid}.txt"
        if not path.exists():  # died without a Python exception (a killed worker): keep Ray's word for it
            _write_error(out, tid, f"trial {tid} failed:\n{res.error}")
        errors[tid] = first_error_line(path)
        if trial.get("kind") in (PACK, RL_PACK):  # the tables read each seed's own error file
            for member in trial["members"]:
                if trial_status(member, out)[0] != "finished":
                    _write_error(out, member["id"], path.read_text().rstrip("\n"))
    return errors


def _trial_name(trial: Any) -> str:
    """Tune's name and folder name of a trial: the sweep's trial id."""
    return trial.config["trial"]["id"]
