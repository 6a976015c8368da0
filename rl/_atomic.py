"""Atomic writes (temp name in the same directory, then rename) and JSON-safe metadata."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import shutil
import tempfile
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
