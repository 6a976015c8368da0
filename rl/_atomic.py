"""Atomic writes (temp name in the same directory, then rename), lock files, and JSON-safe metadata."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_file",
    "atomic_write",
    "atomic_write_csv",
    "atomic_dir_replace",
    "remove_stale_temps",
    "jsonable",
    "FileLock",
    "LockError",
    "acquire_lock",
    "check_lock",
]

# `.NAME.XXXXXXXX.tmp` (atomic_file) and `.NAME.old.XXXXXXXX` (atomic_dir_replace): mkstemp/mkdtemp's 8 characters
_STALE = r"^\.(?:{names})\.(?:[a-z0-9_]{{8}}\.tmp|old\.[a-z0-9_]{{8}})$"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it onto `path`, on any exception delete it.

    Same directory, so the final ``os.replace`` is a rename on one file system: readers see either the old
    file or the complete new one, never a partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # flush to disk before the rename makes the file visible
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be readable like any other file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, write_fn: Any) -> None:
    """Call `write_fn(tmp_path)` on a temporary file next to `path`, then move it onto `path` (see `atomic_file`)."""
    with atomic_file(Path(path)) as tmp:
        write_fn(str(tmp))


def atomic_write_csv(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]
) -> None:
    """`rows` as a CSV file with the header `fieldnames` (one column per key), written atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fieldnames))
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def atomic_dir_replace(src: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished directory `src` to `dst` (same file system).

    With `overwrite`, an existing `dst` is first renamed aside and deleted only after the new one is in
    place; if the final rename fails, the old one is put back.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.replace(src, dst)
        return
    if not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True to replace it")
    aside = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
    os.replace(dst, aside / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(aside / dst.name, dst)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def remove_stale_temps(directory: str | os.PathLike, names: str) -> list[Path]:
    """Delete what interrupted atomic writes of the files named by the regex `names` left in `directory` (a process
    killed between `mkstemp` and the rename leaves `.NAME.XXXXXXXX.tmp`; one killed inside `atomic_dir_replace`
    leaves `.NAME.old.XXXXXXXX`).

    Only the temp names of the files a tool writes there (`names`, e.g. ``r"checkpoint\\.pt|config\\.yaml"``), and
    only in a directory one process writes to: a user's `.notes.tmp` or a concurrent writer's temp file stays.
    Returns the removed paths (sorted).
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    stale = re.compile(_STALE.format(names=names))
    removed = []
    for p in sorted(d.iterdir()):
        if stale.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def jsonable(value: Any) -> Any:
    """`value` made JSON-serialisable: numpy scalars/arrays become Python numbers/lists, tuples lists,
    paths and unknown objects strings, non-finite floats strings (JSON has no nan)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


# ------------------------------------------------------------------------------------------------------------
# Lock files: one process at a time in a directory (a run dir, a sweep's output folder)
# ------------------------------------------------------------------------------------------------------------
class LockError(RuntimeError):
    """A lock file is held by a live process (or by one on another host, which cannot be checked from here); the
    message names what is locked and the holder's PID. `holder` is what the lock file says (pid, host, tool)."""

    def __init__(self, message: str, path: Path, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.path, self.holder = path, holder


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of `pid` from Linux's /proc (None elsewhere or when gone):
    the start time tells a PID that was reused by a new process from the one that wrote a lock."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()  # the name in parentheses may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _lock_content(tool: str) -> bytes:
    stat = _proc_stat(os.getpid())
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "tool": tool,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "proc_start": stat[1] if stat else None,
        "nonce": uuid.uuid4().hex,  # this acquisition's own: a release removes only the lock it made
    }
    return (json.dumps(info) + "\n").encode()


def _parse_lock(raw: bytes) -> dict[str, Any]:
    """The holder a lock file names: our JSON, or a bare PID (what other tools write); {} when it names none."""
    try:
        text = raw.decode().strip()
        info = json.loads(text) if text.startswith("{") else {"pid": int(text)}
    except (UnicodeDecodeError, ValueError):
        return {}
    pid = info.get("pid") if isinstance(info, dict) else None
    return info if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else {}


def _held(info: dict[str, Any], age: float) -> bool:
    """Whether the holder `info` of a lock (written `age` seconds ago) may still be running."""
    if not info:
        # No PID: a lock between its creation and its write (microseconds), or the leftover of a crash right then
        return age < 10.0
    host = info.get("host")
    if host is not None and host != socket.gethostname():
        return True  # another machine's process: it cannot be checked from here, so it counts as running
    if os.name != "posix":
        return True  # no os.kill(pid, 0) probe (on Windows it would terminate the process)
    pid = int(info["pid"])
    if pid == os.getpid():
        # This very process (a lock an earlier object of this process took and never released, such as a Trainer
        # that was not closed), or a process before it that had the same PID: either way nothing else holds it.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat is None:
        return True
    if stat[0] == "Z":  # exited, not yet reaped by its parent
        return False
    if info.get("proc_start") is not None:
        return info["proc_start"] == stat[1]  # another start time: the PID was reused
    # A bare PID (another tool's lock, or the sweep driver's before this lock): a process that started after the
    # lock was last written is not its writer (1 s for the boot time's whole seconds).
    started = _started_at(stat[1])
    return started is None or started <= time.time() - age + 1.0


def _started_at(ticks: int) -> float | None:
    """The wall-clock time of a process start given in clock ticks since boot (Linux; None elsewhere)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        boot = int(next(line for line in lines if line.startswith("btime ")).split()[1])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _read(path: Path) -> tuple[bytes, float] | None:
    try:
        with open(path, "rb") as f:
            return f.read(), time.time() - os.fstat(f.fileno()).st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None


def _remove_if_unchanged(path: Path, raw: bytes, owner_pid: int | None = None) -> None:
    """Delete the lock file `path` if it still holds `raw`: a stale lock that two processes both judged stale is
    removed once, never the fresh lock one of them created in its place."""
    if owner_pid is not None and os.getpid() != owner_pid:
        return  # a forked child at its exit: the lock is its parent's
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(ImportError, OSError):
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)  # one remover at a time for this file
        try:
            now, mine = os.stat(path), os.fstat(fd)
        except FileNotFoundError:
            return
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            return  # replaced since it was opened: not the file that was judged
        with open(fd, "rb", closefd=False) as f:
            if f.read() != raw:
                return
        os.unlink(path)
    finally:
        os.close(fd)


def _held_error(path: Path, info: dict[str, Any], what: str | None) -> LockError:
    where = what or str(path.parent)
    if not info:
        return LockError(
            f"{where} is being locked by another process just now ({path} names no PID yet); try again, or delete "
            f"{path} if no process uses {where}",
            path,
            info,
        )
    host = info.get("host") or socket.gethostname()
    tool = info.get("tool") or "another process"
    since = f", since {info['since']}" if info.get("since") else ""
    msg = f"{where} is in use by {tool} (pid {info['pid']} on {host}{since}); wait for it to end or stop it"
    if host != socket.gethostname():
        msg += f" (it runs on another host, so it cannot be checked from here: delete {path} if it is gone)"
    return LockError(msg, path, info)


def check_lock(path: str | os.PathLike, what: str | None = None) -> None:
    """Raise `LockError` if the lock file `path` is held by a live process; reads, writes nothing (for checks that
    must leave everything as it was, such as `rl.train --dry-run`)."""
    path = Path(path)
    got = _read(path)
    if got is not None:
        info = _parse_lock(got[0])
        if _held(info, got[1]):
            raise _held_error(path, info, what)


class FileLock:
    """A lock file this process holds (made by `acquire_lock`); `release()` removes it (also at garbage collection
    and at interpreter exit, whichever comes first; a `kill -9` leaves it behind, stale, for the next taker)."""

    def __init__(self, path: Path, content: bytes) -> None:
        self.path = path
        self._finalizer = weakref.finalize(self, _remove_if_unchanged, path, content, os.getpid())

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        self._finalizer()  # runs once

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(path: str | os.PathLike, tool: str, what: str | None = None) -> FileLock:
    """Take the lock file `path` (created atomically with O_CREAT|O_EXCL; it holds this process's PID, host and
    `tool`), or raise `LockError` naming `what` (default: the lock's directory) and the holder's PID.

    A lock whose process has exited on this host (or was left by an earlier object of this process) is stale and
    is taken over; one written on another host counts as held, since its process cannot be checked from here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = _lock_content(tool)
    for _ in range(10):  # each turn removes one stale lock; contention that outlasts this is reported
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            got = _read(path)
            if got is None:
                continue  # released meanwhile
            info = _parse_lock(got[0])
            if _held(info, got[1]):
                raise _held_error(path, info, what) from None
            _remove_if_unchanged(path, got[0])
            continue
        try:
            # one write of ~200 bytes: readers see all of it, or (for microseconds) nothing
            os.write(fd, content)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return FileLock(path, content)
    raise LockError(f"{what or path.parent}: cannot take {path}: other processes keep taking it", path, {})
