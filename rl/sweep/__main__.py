"""One sweep runner on Ray Tune for every grid of trials: offline RL (variant x dataset x seed) and the MI estimator
suite on the staircase (estimator x task x critic x seed; or estimator x critic x dim x seed on CorrelatedGaussian).

    python -m rl.sweep benchmarks/sweeps/smoke.yaml                    # local Ray, all cores (or: misa-sweep ...)
    python -m rl.sweep benchmarks/sweeps/hopper-medium-50k.yaml --max-concurrent 2
    python -m rl.sweep SPEC.yaml --address HOST:6379                   # an existing cluster (`ray start`)
    python -m rl.sweep SPEC.yaml --address HOST:6379 --storage s3://b/x  # no shared disk (docs/cluster.md)
    python -m rl.sweep SPEC.yaml --report-only                         # tables and plots only, no Ray

`python benchmarks/sweep.py` is the same command (the repo's alias, which the committed tables name). A grid spec
is a plain YAML file (see docs/sweeps.md and benchmarks/sweeps/). Each trial has a stable, readable id derived
from its grid point (`bc__hopper-medium-v5__s0`) and its own folder `<out>/runs/<id>` (default out:
`runs/sweeps/<name>`); RL trials are `rl.train` runs in that folder, trained in chunks up to the next evaluation,
each chunk reported to Tune. A trial is finished when its `<out>/runs/<id>/result.json` exists (written atomically
at its end; an RL run whose loss turns NaN or passes `max_abs_loss` ends there too, its result.json saying where
it diverged: that is the algorithm's outcome on that seed, which a rerun would replay). Rerunning the same command
after a kill skips finished trials (they are not even submitted to Ray), resumes unfinished RL trials exactly from
their `checkpoint.pt`, and restarts unfinished staircase trials.

Outputs in `<out>`: `results.csv` (one row per trial and evaluation, or per trial and staircase level),
`summary.csv`, `results.md` (mean +- std over seeds), `curves_<dataset>.png` (RL) or `staircase_<task>.png` and
`heldout_<task>.png`, `behaviour.json` (cached behaviour-data scores), `sweep.log` (the driver's log),
`errors/<id>.txt` (tracebacks of failed trials), `ray/` (Ray Tune's own experiment folders). Exit status: 0 when
every trial finished (diverged runs included), 1 when a trial failed or is unfinished, 2 for a bad spec or when Ray
cannot be started or reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rl.sweep.behaviour import ensure_behaviour
from rl.sweep.driver import SweepError, mirror_sweep, run_sweep
from rl.sweep.gather import gather
from rl.sweep.report import carry_files, display, publish, write_report
from rl.sweep.spec import SpecError, load_spec
from rl.sweep.storage import Storage


def _prog() -> str:
    name = Path(sys.argv[0]).name
    return "python -m rl.sweep" if name == "__main__.py" else name


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The sweep command on `argv` (default: the command line); returns its exit status. `prog`: the name the
    usage line shows (default: `misa-sweep`, or `python -m rl.sweep` when run so)."""
    p = argparse.ArgumentParser(
        prog=prog or _prog(),
        description=__doc__.split("\n\n")[0],
        epilog="See docs/sweeps.md.",
    )
    p.add_argument("spec", type=Path, help="grid spec YAML (e.g. benchmarks/sweeps/smoke.yaml)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/sweeps/<name>)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (`ray start --head` prints it)")
    p.add_argument(
        "--storage",
        default=None,
        help="where trials keep their run folders and checkpoints (Ray Tune's storage): a path every node sees, "
        "or a URI (s3://bucket/path, gs://...); default: the output folder",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
    p.add_argument("--report-only", action="store_true", help="only gather results.csv/.md and plots; no Ray")
    p.add_argument(
        "--list-carry",
        action="store_true",
        help="print the checkpoints of unfinished trials (what a later session needs to resume) and exit",
    )
    p.add_argument(
        "--publish",
        type=Path,
        default=None,
        help="also copy the tables and plots into this folder (e.g. benchmarks/results/<name>, to commit)",
    )
    args = p.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = (args.out or Path("runs") / "sweeps" / spec.name).resolve()
    if args.list_carry:
        for path in carry_files(spec, out):
            print(display(path))
        return 0
    if args.report_only:
        # the run folders as the storage has them (trees that a killed driver had not mirrored yet)
        try:
            store = Storage(args.storage if args.storage is not None else out)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        mirror_sweep(spec, out, store)
        ensure_behaviour(spec, out, make=False)
        files = write_report(spec, out)
        print(f"wrote {', '.join(display(f) for f in files)}")
    else:
        try:
            summary = run_sweep(spec, out, args.address, args.num_cpus, args.max_concurrent, args.storage)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if summary["errors"]:
            print(
                f"{len(summary['errors'])} trial(s) failed: {', '.join(summary['errors'])}", file=sys.stderr
            )
    if args.publish is not None:
        publish(write_report(spec, out), args.publish)
    g = gather(spec, out)
    bad = [t for t in g["trials"] if t["status"] not in ("finished", "diverged")]
    if bad:
        counts = {s: sum(t["status"] == s for t in bad) for s in ("error", "unfinished", "pending")}
        print(
            "not finished: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
