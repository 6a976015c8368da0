"""`rl.sweep.storage` on a local folder: the trees trials report (their state, sizes and order), one sweep's trees
apart from another's, the mirror into the output folder (never over a finished or further folder, a removed
folder not brought back), the snapshot a trial reports, and URIs with a query."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rl.sweep.storage import STATE, Storage, forget_removed, join_uri, mirror, mirrored, stage_tree


def _tree(storage: Path, experiment: str, trial: str, n: int, runs: dict[str, tuple[bool, int]]) -> Path:
    """A tree as a trial reports it: `runs/<id>/eval.csv` (the step) and `logs/<trial>.log` per run."""
    work = storage / "work" / f"{experiment}-{trial}-{n}"
    for rid, (finished, step) in runs.items():
        (work / "runs" / rid).mkdir(parents=True, exist_ok=True)
        (work / "runs" / rid / "eval.csv").write_text(f"step\n{step}\n")
        if finished:
            (work / "runs" / rid / "result.json").write_text(json.dumps({"step": step}))
        (work / "runs" / rid / ".rl-run.lock").write_text("1234\n")
        (work / "logs").mkdir(exist_ok=True)
        (work / "logs" / f"{rid}.log").write_text(f"{rid} at {step}\n")
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / f"{trial}.log").write_text(f"pack {trial}\n")
    return stage_tree(work, runs, storage / "ray" / experiment / trial / f"checkpoint_{n:06d}")


def test_best_tree_per_run_scoped_to_its_sweep_and_whole(tmp_path):
    st = tmp_path / "storage"
    _tree(st, "s-20261201-000000", "a", 0, {"a": (False, 10)})
    _tree(st, "s-20261201-000000", "a", 1, {"a": (False, 20)})
    _tree(st, "s-20261202-000000", "a", 0, {"a": (False, 20)})  # the same step, a later driver: it wins
    cut = _tree(st, "s-20261203-000000", "a", 0, {"a": (False, 90)})
    (cut / "runs" / "a" / "eval.csv").write_text("st")  # a copy cut short: its size is not the state's
    _tree(st, "other-20261201-000000", "a", 0, {"a": (True, 99)})  # another sweep in the same storage
    _tree(st, "s-20261201-000000", "p", 0, {"b": (True, 1), "c": (False, 0)})
    store = Storage(st)
    best = store.best_trees("s")
    assert best["a"].path == "ray/s-20261202-000000/a/checkpoint_000000" and best["a"].runs["a"] == (
        False,
        20,
    )
    assert best["b"] is best["c"] and best["b"].runs == {"b": (True, 1), "c": (False, 0)}
    assert store.best_trees("other")["a"].runs["a"] == (True, 99)
    assert store.prune("s", best) == 2  # the two older trees of run a; the cut one is no tree
    assert sorted(t.path for t in store.trees("s")) == sorted({best["a"].path, best["b"].path})
    assert store.best_trees("other")  # untouched


def test_the_mirror_keeps_a_finished_or_further_folder_and_copies_the_packs_log(tmp_path):
    st, out = tmp_path / "storage", tmp_path / "out"
    _tree(st, "s-20261201-000000", "p", 0, {"b": (False, 30), "c": (False, 30)})
    store = Storage(st)
    best = store.best_trees("s")
    (out / "runs" / "b").mkdir(parents=True)
    (out / "runs" / "b" / "result.json").write_text("{}")  # finished here (carried in git)
    progress = {"b": (True, 0)}
    assert mirror(store, best, out, ["b", "c"], local=progress.get) == ["c"]
    assert (out / "runs" / "b" / "result.json").read_text() == "{}"
    assert (out / "runs" / "c" / "eval.csv").read_text() == "step\n30\n"
    assert not (out / "runs" / "c" / ".rl-run.lock").exists()  # the lock means nothing here
    assert (out / "logs" / "p.log").read_text() == "pack p\n" and (out / "logs" / "c.log").exists()
    assert mirrored(out) == {"c": best["c"].path}
    # further along here than the tree: kept; behind it: replaced
    _tree(st, "s-20261202-000000", "c", 0, {"c": (False, 40)})
    best = store.best_trees("s")
    assert mirror(store, best, out, ["c"], local=lambda rid: (False, 50)) == []
    assert mirror(store, best, out, ["c"], local=lambda rid: (False, 35)) == ["c"]
    assert (out / "runs" / "c" / "eval.csv").read_text() == "step\n40\n"


def test_a_folder_removed_from_the_output_is_not_brought_back(tmp_path):
    st, out = tmp_path / "storage", tmp_path / "out"
    _tree(st, "s-20261201-000000", "a", 0, {"a": (True, 50)})
    _tree(st, "s-20261201-000000", "p", 0, {"b": (True, 1), "c": (True, 1)})
    store = Storage(st)
    assert sorted(mirror(store, store.best_trees("s"), out)) == ["a", "b", "c"]
    for rid in ("a", "b"):
        for p in sorted((out / "runs" / rid).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (out / "runs" / rid).rmdir()
    assert sorted(forget_removed(store, "s", out, ["a", "b", "c"])) == ["a", "b"]
    best = store.best_trees("s")
    assert sorted(best) == ["c"] and best["c"].runs == {"c": (True, 1)}  # the pack's tree lost b only
    assert mirror(store, best, out) == [] and not (out / "runs" / "a").exists()
    assert sorted(mirrored(out)) == ["c"]


def test_the_snapshot_links_replaced_files_and_copies_appended_ones(tmp_path):
    work = tmp_path / "work"
    (work / "runs" / "a").mkdir(parents=True)
    for name in ("checkpoint.pt", "eval.csv", ".rl-run.lock"):
        (work / "runs" / "a" / name).write_text(name)
    tree = stage_tree(work, {"a": (False, 5)}, tmp_path / "staged")
    state = json.loads((tree / STATE).read_text())
    assert state == {
        "runs": {"a": {"finished": False, "step": 5}},
        "files": {"runs/a/checkpoint.pt": 13, "runs/a/eval.csv": 8},
    }
    same = os.path.samefile
    assert same(tree / "runs/a/checkpoint.pt", work / "runs/a/checkpoint.pt")
    assert not same(tree / "runs/a/eval.csv", work / "runs/a/eval.csv")
    (work / "runs" / "a" / "eval.csv").write_text("appended after the snapshot")
    assert (tree / "runs/a/eval.csv").read_text() == "eval.csv"


def test_uris_keep_their_query_and_local_paths_are_the_output_folder(tmp_path):
    assert join_uri("s3://b/x?endpoint_override=h:9000&scheme=http", "ray") == (
        "s3://b/x/ray?endpoint_override=h:9000&scheme=http"
    )
    assert join_uri("gs://b/sweeps/", "ray") == "gs://b/sweeps/ray"
    store = Storage(tmp_path)
    assert store.ray_path == str(tmp_path / "ray") and store.is_output(tmp_path)
    assert Storage(f"file://{tmp_path}").is_output(tmp_path)


def test_a_folder_only_the_output_has_is_handed_over_and_back_unchanged(tmp_path):
    """`upload_runs` (the driver's hand-over of a git-carried run folder) and `download_runs` (the trial's start)
    are each other's inverse: the run's files and its log arrive as they were."""
    out, work = tmp_path / "out", tmp_path / "work"
    (out / "runs" / "a" / "tb").mkdir(parents=True)
    (out / "runs" / "a" / "eval.csv").write_text("step\n25\n")
    (out / "runs" / "a" / "tb" / "events").write_bytes(b"\x00\x01")
    (out / "logs").mkdir()
    (out / "logs" / "a.log").write_text("started a\n")
    (out / "runs" / "b").mkdir()  # another run: not handed over
    store = Storage(tmp_path / "storage")
    store.upload_runs(out, ["a"], "handoff/a")
    store.download_runs("handoff/a", ["a", "b"], work)
    files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    assert files == ["logs/a.log", "runs/a/eval.csv", "runs/a/tb/events"]
    for f in files:
        assert (work / f).read_bytes() == (out / f).read_bytes()
    store.upload_runs(out, ["a"], "handoff/a")  # again: replaces what was there
    assert sorted(p.name for p in (tmp_path / "storage" / "handoff" / "a" / "runs").iterdir()) == ["a"]
