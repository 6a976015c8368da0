"""Where a sweep's trials keep their run folders: Ray Tune's storage, a URI (a local path, an NFS mount, or
`s3://` / `gs://` / any filesystem that `pyarrow.fs` reads), so that nodes need no shared disk.

A trial works in a scratch folder of its own node and hands its files over through Ray's checkpoint API only: after
each chunk it reports a *tree*, a folder laid out as the sweep's output folder is (`runs/<id>/...` for each run it
trains, `logs/<id>.log`), plus `sweep-state.json`, which says how far each run got and the size of every file in
the tree. Ray copies the tree to `<storage>/ray/<experiment>/<id>/checkpoint_NNNNNN/`. From those trees alone:

- a trial that Ray restarts (on any node) resumes from its last tree (`tune.get_checkpoint()`);
- the driver mirrors each run's best tree into its output folder (`mirror`: the tables, `--list-carry` and git read
  that folder as before), and a rerun after a kill of the driver resumes each unfinished run from its best tree;
- a run folder that only the output folder has (carried in git from another machine, or written by an older
  runner) is handed to its trial as a tree uploaded to `<storage>/handoff/<id>/` (`hand_off`).

A tree whose files do not have the sizes its state file lists (a copy cut short by a kill) is ignored. The best
tree of a run is the finished one, else the one furthest along; among equals, the latest. Without `--storage` the
storage is the output folder itself (Ray's experiments under `<out>/ray/`, as before).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

STATE = "sweep-state.json"
RAY = "ray"
HANDOFF = "handoff"
INDEX = ".mirror.json"
#: files of a run folder that are not data: the lock of the process writing it (its PID and host mean nothing on
#: another node)
SKIP = (".rl-run.lock",)


@dataclass(frozen=True)
class Tree:
    """A trial's tree in storage: its path (relative to the storage root), the runs it holds, `{id: (finished,
    step)}`, and its order among the trees of one run (experiment name, checkpoint folder name)."""

    path: str
    runs: dict[str, tuple[bool, int]]
    order: tuple[str, str]


class Storage:
    """A sweep's storage, `uri` (a local path or a `pyarrow.fs` URI), with the few operations the runner needs.

    Paths given to its methods are POSIX paths relative to the storage root.
    """

    def __init__(self, uri: str | os.PathLike) -> None:
        import pyarrow.fs as pafs

        text = str(uri)
        if "://" not in text:
            text = str(Path(text).expanduser().resolve())
        try:
            self.fs, root = pafs.FileSystem.from_uri(text)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad or unreachable URI
            raise ValueError(
                f"--storage {uri}: not a storage pyarrow can open ({type(e).__name__}: {e})"
            ) from e
        self.root = root.rstrip("/") or "/"
        self.uri = text
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def _abs(self, rel: str) -> str:
        return str(PurePosixPath(self.root) / rel) if rel else self.root

    @property
    def ray_path(self) -> str:
        """Ray Tune's `storage_path`: `<storage>/ray` (as a URI where the storage is not local)."""
        return self.uri.rstrip("/") + "/" + RAY

    def is_output(self, out: Path) -> bool:
        """Whether the storage root is the local folder `out` (the default)."""
        return self.local and Path(self.root) == Path(out).resolve()

    # -- trees --------------------------------------------------------------------------------------------------
    def trees(self) -> list[Tree]:
        """Every complete tree under `<storage>/ray`, from one listing."""
        sizes = self._sizes(RAY)
        found = (self._read_tree(PurePosixPath(p).parent, sizes) for p in sorted(sizes))
        return [t for t in found if t is not None]

    def tree(self, rel: str) -> Tree | None:
        """The tree at `rel` (a checkpoint folder), or None where it is incomplete or not a tree."""
        return self._read_tree(PurePosixPath(rel), self._sizes(rel))

    def relative(self, path: str) -> str:
        """A path of this storage's filesystem (as Ray gives a checkpoint's) relative to the storage root."""
        return str(PurePosixPath(path).relative_to(self.root))

    def _sizes(self, rel: str) -> dict[str, int]:
        import pyarrow.fs as pafs

        base = self._abs(rel)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return {}
        return {
            self.relative(info.path): info.size
            for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
            if info.type == pafs.FileType.File
        }

    def _read_tree(self, folder: PurePosixPath, sizes: dict[str, int]) -> Tree | None:
        if str(folder / STATE) not in sizes:
            return None
        try:
            with self.fs.open_input_stream(self._abs(str(folder / STATE))) as f:
                state = json.loads(f.read().decode())
            runs = {k: (bool(v["finished"]), int(v["step"])) for k, v in state["runs"].items()}
            files = dict(state["files"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable: a copy cut short, or not ours
        if any(sizes.get(str(folder / name)) != size for name, size in files.items()):
            return None  # a file missing or of another size: the copy was cut short
        parts = folder.parts  # ray/<experiment>/<trial>/checkpoint_N
        order = (parts[-3], parts[-1]) if len(parts) >= 4 else ("", "")
        return Tree(str(folder), runs, order)

    def best_trees(self) -> dict[str, Tree]:
        """Each run's best tree (finished first, then furthest along, then the latest)."""
        best: dict[str, Tree] = {}
        for tree in self.trees():
            for rid, (finished, step) in tree.runs.items():
                cur = best.get(rid)
                key = (finished, step, tree.order)
                if cur is None or key >= (*cur.runs[rid], cur.order):
                    best[rid] = tree
        return best

    def prune(self, best: dict[str, Tree], keep_experiment: str | None = None) -> int:
        """Delete the trees under `ray/` that are no run's best (superseded copies from earlier drivers), except
        those of `keep_experiment` (Ray manages the running experiment's own); returns how many."""
        keep = {t.path for t in best.values()}
        gone = 0
        for tree in self.trees():
            if tree.path in keep or (keep_experiment and tree.order[0] == keep_experiment):
                continue
            self.fs.delete_dir(self._abs(tree.path))
            gone += 1
        return gone

    # -- copies -------------------------------------------------------------------------------------------------
    def download_runs(self, tree: str, ids: Iterable[str], dest: Path) -> None:
        """Copy `runs/<id>` and `logs/<id>.log` of each id from the tree at `tree` into the local folder `dest`
        (laid out the same way); what `dest` had of those runs is replaced."""
        import pyarrow.fs as pafs

        for rid in ids:
            src = self._abs(str(PurePosixPath(tree) / "runs" / rid))
            if self.fs.get_file_info(src).type != pafs.FileType.Directory:
                continue
            target = Path(dest) / "runs" / rid
            incoming = target.with_name(f".{rid}.incoming")
            shutil.rmtree(incoming, ignore_errors=True)
            incoming.mkdir(parents=True)
            pafs.copy_files(src, str(incoming), source_filesystem=self.fs, destination_filesystem=_local())
            for name in SKIP:
                (incoming / name).unlink(missing_ok=True)
            # Storage keeps the tree, so a stop between these two lines loses nothing: the next mirror copies again.
            shutil.rmtree(target, ignore_errors=True)
            incoming.rename(target)
            log = self._abs(str(PurePosixPath(tree) / "logs" / f"{rid}.log"))
            if self.fs.get_file_info(log).type == pafs.FileType.File:
                (Path(dest) / "logs").mkdir(parents=True, exist_ok=True)
                pafs.copy_files(
                    log,
                    str(Path(dest) / "logs" / f"{rid}.log"),
                    source_filesystem=self.fs,
                    destination_filesystem=_local(),
                )

    def upload(self, local: Path, rel: str) -> None:
        """Copy the local folder `local` to `<storage>/<rel>` (replacing what was there)."""
        import pyarrow.fs as pafs

        dest = self._abs(rel)
        if self.fs.get_file_info(dest).type != pafs.FileType.NotFound:
            self.fs.delete_dir(dest)
        self.fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(local), dest, source_filesystem=_local(), destination_filesystem=self.fs)


def mirror(storage: Storage, best: dict[str, Tree], out: Path, ids: Iterable[str] | None = None) -> list[str]:
    """Copy the best tree of each run (of `ids`, default all in `best`) into the output folder `out`, unless `out`
    has that tree's copy already (`<out>/.mirror.json` records which tree each run folder came from); returns the
    ids copied."""
    from rl._atomic import atomic_write

    index_path = Path(out) / INDEX
    try:
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
    except ValueError:
        index = {}  # damaged: copy everything again
    copied = []
    for rid in best if ids is None else ids:
        tree = best.get(rid)
        if tree is None or (index.get(rid) == tree.path and (Path(out) / "runs" / rid).is_dir()):
            continue
        storage.download_runs(tree.path, [rid], Path(out))
        index[rid] = tree.path
        copied.append(rid)
    if copied:
        text = json.dumps(index, indent=1, sort_keys=True) + "\n"
        atomic_write(index_path, lambda tmp: Path(tmp).write_text(text))
    return copied


def _local() -> Any:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def stage_tree(work: Path, runs: dict[str, tuple[bool, int]], staging: Path) -> Path:
    """A snapshot of the trial's scratch folder `work` in `staging` (hard links where the filesystem allows: the
    run folders' files are replaced by rename, never written in place), without lock files, with its
    `sweep-state.json` (`runs`: `{id: (finished, step)}`, and each file's size). What the trial reports to Ray."""
    shutil.rmtree(staging, ignore_errors=True)
    files: dict[str, int] = {}
    for src in sorted(Path(work).rglob("*")):
        if not src.is_file() or src.name in SKIP:
            continue
        rel = src.relative_to(work)
        dst = staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        files[rel.as_posix()] = dst.stat().st_size
    staging.mkdir(parents=True, exist_ok=True)
    state = {"runs": {k: {"finished": f, "step": s} for k, (f, s) in runs.items()}, "files": files}
    (staging / STATE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    return staging
