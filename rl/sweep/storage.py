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
  runner) is handed to its trial as a tree uploaded to `<storage>/handoff/<id>/` (`Storage.upload_runs`).

A tree whose files do not have the sizes its state file lists (a copy cut short by a kill) is ignored. The best
tree of a run is the finished one, else the one furthest along; among equals, the latest. Without `--storage` the
storage is the output folder itself (Ray's experiments under `<out>/ray/`, as before).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rl.run_dir import CHECKPOINT, LOCK, MARKER

STATE = "sweep-state.json"
RAY = "ray"
HANDOFF = "handoff"
INDEX = ".mirror.json"
#: files of a run folder that are not data: the lock of the process writing it (its PID and host mean nothing on
#: another node)
SKIP = (LOCK,)
#: files written whole and put in place by rename (so a hard link to one is a snapshot)
REPLACED = (CHECKPOINT, "config.yaml", MARKER, "result.json")


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
        """Ray Tune's `storage_path`: `<storage>/ray`, as a URI where the storage is not local (its query, such as
        `?endpoint_override=...`, kept)."""
        return str(Path(self.root) / RAY) if self.local else join_uri(self.uri, RAY)

    def is_output(self, out: Path) -> bool:
        """Whether the storage root is the local folder `out` (the default)."""
        return self.local and Path(self.root) == Path(out).resolve()

    # -- trees --------------------------------------------------------------------------------------------------
    def trees(self, sweep: str) -> list[Tree]:
        """Every complete tree of the sweep named `sweep` under `<storage>/ray` (its experiments are
        `<sweep>-YYYYmmdd-HHMMSS`: one storage may hold several sweeps), from one listing."""
        sizes = self._sizes(RAY)
        own = re.compile(re.escape(sweep) + r"-\d{8}-\d{6}")
        found = (self._read_tree(PurePosixPath(p).parent, sizes) for p in sorted(sizes))
        return [t for t in found if t is not None and own.fullmatch(t.order[0])]

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

    def best_trees(self, sweep: str) -> dict[str, Tree]:
        """Each run's best tree of the sweep `sweep` (finished first, then furthest along, then the latest)."""
        best: dict[str, Tree] = {}
        for tree in self.trees(sweep):
            for rid, (finished, step) in tree.runs.items():
                cur = best.get(rid)
                key = (finished, step, tree.order)
                if cur is None or key >= (*cur.runs[rid], cur.order):
                    best[rid] = tree
        return best

    def prune(self, sweep: str, best: dict[str, Tree]) -> int:
        """Delete the sweep's trees that are no run's best (superseded copies from earlier drivers; call it while
        no trial of the sweep runs); returns how many."""
        keep = {t.path for t in best.values()}
        gone = 0
        for tree in self.trees(sweep):
            if tree.path not in keep:
                self.fs.delete_dir(self._abs(tree.path))
                gone += 1
        return gone

    def drop_run(self, sweep: str, rid: str) -> None:
        """Remove the run `rid` from every tree of the sweep (a run folder the user removed from `--out` to run it
        again): a tree that holds no other run is deleted, a pack's tree loses that run's files."""
        import pyarrow.fs as pafs

        for tree in self.trees(sweep):
            if rid not in tree.runs:
                continue
            if set(tree.runs) == {rid}:
                self.fs.delete_dir(self._abs(tree.path))
                continue
            state_path = self._abs(str(PurePosixPath(tree.path) / STATE))
            with self.fs.open_input_stream(state_path) as f:
                state = json.loads(f.read().decode())
            gone = (f"runs/{rid}/", f"logs/{rid}.log")
            state["runs"].pop(rid, None)
            state["files"] = {k: v for k, v in state["files"].items() if not k.startswith(gone)}
            with self.fs.open_output_stream(state_path) as f:  # first: the tree stays whole at every point
                f.write((json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
            for sub in gone:
                path = self._abs(str(PurePosixPath(tree.path) / sub.rstrip("/")))
                info = self.fs.get_file_info(path)
                if info.type == pafs.FileType.Directory:
                    self.fs.delete_dir(path)
                elif info.type == pafs.FileType.File:
                    self.fs.delete_file(path)

    # -- copies -------------------------------------------------------------------------------------------------
    def download_runs(self, tree: str, ids: Iterable[str], dest: Path, logs: Iterable[str] = ()) -> None:
        """Copy `runs/<id>` and `logs/<id>.log` of each id (and `logs/<name>.log` of each of `logs`: a pack's own)
        from the tree at `tree` into the local folder `dest` (laid out the same way); what `dest` had of those runs
        is replaced."""
        import pyarrow.fs as pafs

        for name in logs:
            self._download_log(tree, name, Path(dest))
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
            self._download_log(tree, rid, Path(dest))

    def _download_log(self, tree: str, name: str, dest: Path) -> None:
        import pyarrow.fs as pafs

        log = self._abs(str(PurePosixPath(tree) / "logs" / f"{name}.log"))
        if self.fs.get_file_info(log).type == pafs.FileType.File:
            (dest / "logs").mkdir(parents=True, exist_ok=True)
            pafs.copy_files(
                log,
                str(dest / "logs" / f"{name}.log"),
                source_filesystem=self.fs,
                destination_filesystem=_local(),
            )

    def upload_runs(self, local: Path, ids: Iterable[str], rel: str) -> None:
        """Copy `runs/<id>` and `logs/<id>.log` of each id from the local folder `local` (laid out as an output
        folder) to the tree `<storage>/<rel>` (replacing what was there): `download_runs` the other way."""
        import pyarrow.fs as pafs

        dest = self._abs(rel)
        if self.fs.get_file_info(dest).type != pafs.FileType.NotFound:
            self.fs.delete_dir(dest)
        for rid in ids:
            for sub in (f"runs/{rid}", f"logs/{rid}.log"):
                if (Path(local) / sub).exists():
                    self.fs.create_dir(str((PurePosixPath(dest) / sub).parent), recursive=True)
                    pafs.copy_files(
                        str(Path(local) / sub),
                        str(PurePosixPath(dest) / sub),
                        source_filesystem=_local(),
                        destination_filesystem=self.fs,
                    )


def mirrored(out: Path) -> dict[str, str]:
    """Which tree each run folder of `out` was mirrored from (`<out>/.mirror.json`)."""
    path = Path(out) / INDEX
    try:
        return dict(json.loads(path.read_text())) if path.exists() else {}
    except (ValueError, TypeError):
        return {}  # damaged: every run is compared afresh


def _write_index(out: Path, index: dict[str, str]) -> None:
    from rl._atomic import atomic_write

    text = json.dumps(index, indent=1, sort_keys=True) + "\n"
    atomic_write(Path(out) / INDEX, lambda tmp: Path(tmp).write_text(text))


def join_uri(uri: str, name: str) -> str:
    """`uri` with `/name` added to its path, its query kept (`s3://b/x?endpoint_override=h` ->
    `s3://b/x/ray?endpoint_override=h`)."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def forget_removed(storage: Storage, sweep: str, out: Path, ids: Iterable[str]) -> list[str]:
    """The runs of `ids` whose folder `out` had from a tree (`.mirror.json` says so) and has no more: the user
    removed them to run them again, so their trees go too (`Storage.drop_run`); returns their ids."""
    index = mirrored(out)
    gone = [rid for rid in ids if rid in index and not (Path(out) / "runs" / rid).is_dir()]
    for rid in gone:
        storage.drop_run(sweep, rid)
        del index[rid]
    if gone:
        _write_index(out, index)
    return gone


def mirror(
    storage: Storage,
    best: dict[str, Tree],
    out: Path,
    ids: Iterable[str] | None = None,
    local: Callable[[str], tuple[bool, int] | None] | None = None,
) -> list[str]:
    """Copy the best tree of each run (of `ids`, default all in `best`) into the output folder `out`, unless `out`
    has that tree's copy already (`<out>/.mirror.json` records which tree each run folder came from) or, where
    `local(id)` gives the folder's own (finished, step), unless the folder is finished or further along than the
    tree (carried in git from a machine that went on). A pack's own log (`logs/<pack id>.log`) comes along.
    Returns the ids copied."""
    index = mirrored(out)
    copied = []
    for rid in best if ids is None else ids:
        tree = best.get(rid)
        if tree is None or (index.get(rid) == tree.path and (Path(out) / "runs" / rid).is_dir()):
            continue
        mine = local(rid) if local is not None and (Path(out) / "runs" / rid).is_dir() else None
        if mine is not None and not tree_is_ahead(tree.runs[rid], mine):
            continue
        trial = PurePosixPath(tree.path).parent.name  # ray/<experiment>/<trial id>/checkpoint_N
        storage.download_runs(tree.path, [rid], Path(out), logs=[trial] if trial != rid else [])
        index[rid] = tree.path
        copied.append(rid)
    if copied:
        _write_index(out, index)
    return copied


def tree_is_ahead(tree: tuple[bool, int], folder: tuple[bool, int]) -> bool:
    """Whether a tree's (finished, step) of a run replaces a folder's: never a finished folder; a finished tree;
    else the tree at the folder's step or beyond."""
    if folder[0]:
        return False
    return tree[0] or tree[1] >= folder[1]


def _local() -> Any:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def stage_tree(work: Path, runs: dict[str, tuple[bool, int]], staging: Path) -> Path:
    """A snapshot of the trial's scratch folder `work` in `staging`, without lock files, with its
    `sweep-state.json` (`runs`: `{id: (finished, step)}`, and each file's size). What the trial reports to Ray.
    The files `rl.train` replaces by rename (the checkpoint, the config, result.json) are hard links where the
    filesystem allows; the ones appended to (logs, CSVs, TensorBoard's events) are copies, so that a write while
    Ray copies the snapshot cannot change it."""
    shutil.rmtree(staging, ignore_errors=True)
    files: dict[str, int] = {}
    for src in sorted(Path(work).rglob("*")):
        if not src.is_file() or src.name in SKIP:
            continue
        rel = src.relative_to(work)
        dst = staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            if src.name not in REPLACED:
                raise OSError("appended to: copied")
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        files[rel.as_posix()] = dst.stat().st_size
    staging.mkdir(parents=True, exist_ok=True)
    state = {"runs": {k: {"finished": f, "step": s} for k, (f, s) in runs.items()}, "files": files}
    (staging / STATE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    return staging
