"""One run folder scheme for every trainer (`rl.train` and the behaviour-policy SAC, `rl.collect.sac`).

A run folder holds the marker `.rl-run.json` (which tool made it), the lock `.rl-run.lock` of the process that
writes it (its PID and host; `rl._atomic.acquire_lock`), the checkpoint `checkpoint.pt` (written atomically), and
append-only CSV logs whose sizes every checkpoint records. What a resume must redo is then exact:

- a folder that holds files but no marker, or the marker of another tool, is never written to;
- a second start in a folder whose lock a live process holds is refused, naming that PID; the lock of a process
  that died (`kill -9`) is taken over;
- a start without resume over a checkpoint is refused, and a resume of a folder without one is refused;
- the claim removes the temp files of killed atomic writes, and cuts each log back to the size the checkpoint
  recorded (rows logged after it are redone), or, on a fresh start, removes the logs of a run that never reached
  a checkpoint.

Every check runs before the first write (`check`), so a start that fails leaves the folder as it was.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import torch

from rl._atomic import FileLock, LockError, acquire_lock, atomic_write, check_lock, remove_stale_temps
from rl._safe_load import CheckpointError, load_torch_file

__all__ = ["RunDir", "RunDirError", "RunFolderOwner", "MARKER", "LOCK", "CHECKPOINT"]

MARKER = ".rl-run.json"
LOCK = ".rl-run.lock"
CHECKPOINT = "checkpoint.pt"


class RunDirError(RuntimeError):
    """A run folder that cannot be used as asked (not ours, in use, already holding a run, nothing to resume)."""


class RunDir:
    """The run folder `path` of one run of `tool`, with the CSV logs `logs` (file names in it).

    Args:
        path: the folder (made by `claim`).
        tool: the writer's name (`"rl.train"`), recorded in the marker and the lock; a folder another tool made is
            refused.
        logs: the append-only CSV files, cut back to the checkpoint's `offsets` on resume.
        own_files: a regex of the files the tool writes atomically there (their stale temps are removed at the
            claim); the marker and the checkpoint are always included.
        fresh_clears: folders in it that a fresh start over a checkpoint-less run removes with the logs (`tb`).
        option: the command-line option that names the folder, for messages (`--run-dir`).

    `offsets` holds each log's size after its last row; `save_checkpoint` stores it with the blob and `check`
    returns it from the checkpoint, so a resumed run appends where its checkpoint left off.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tool: str,
        logs: Sequence[str] = (),
        own_files: str = "",
        fresh_clears: Sequence[str] = (),
        option: str = "--run-dir",
    ) -> None:
        self.path, self.tool, self.option = Path(path), tool, option
        self.logs, self.fresh_clears = tuple(logs), tuple(fresh_clears)
        self._own = "|".join(filter(None, (r"checkpoint\.pt|\.rl-run\.json", own_files)))
        self.offsets: dict[str, int] = dict.fromkeys(self.logs, 0)
        self._lock: FileLock | None = None
        self._checked = False  # a checkpoint was read by `check`: `offsets` are its

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, tool={self.tool!r})"

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    # -- before the first write ------------------------------------------------------------------------------------
    def check(
        self, resume: bool, required: Sequence[str] = (), sizes_recorded: bool = True
    ) -> dict[str, Any] | None:
        """Refuse a folder that is a file, in use, not this tool's, a fresh start over a checkpoint, and a resume of
        nothing; reads but writes nothing. Returns the checkpoint to resume (weights-only loaded, holding the keys
        `required` and, with `sizes_recorded`, the logs' `offsets`, which are taken from it), or None for a fresh
        start. Without `sizes_recorded`, a checkpoint written before the scheme recorded them keeps its logs
        whole."""
        d, opt = self.path, self.option
        if d.exists() and not d.is_dir():
            raise RunDirError(f"{opt} {d} is a file, not a directory")
        try:  # first: another run's files are in flux, and what they say is its business
            check_lock(d / LOCK, what=f"{opt} {d}")
        except LockError as err:
            raise RunDirError(str(err)) from None
        maker = self._maker()
        # a lock alone is what a start killed before it wrote the marker leaves
        if d.exists() and any(p.name != LOCK for p in d.iterdir()) and maker is None:
            hint = ""
            if self.checkpoint.exists():  # a run of this tool from before the marker, perhaps
                marker = json.dumps({"tool": self.tool})
                hint = (
                    f" (a run of {self.tool} from before folders were marked resumes once {d / MARKER} holds "
                    f"{marker})"
                )
            raise RunDirError(
                f"{d} holds files that are not from {self.tool} (no {MARKER}); choose another {opt}{hint}"
            )
        if maker is not None and maker != self.tool:
            raise RunDirError(f"{d} holds a run of {maker}, not of {self.tool}; choose another {opt}")
        if not resume:
            if self.checkpoint.exists():
                raise RunDirError(
                    f"{d} already holds a run; pass --resume to continue it or choose another {opt}"
                )
            return None
        if maker is None:
            raise RunDirError(f"--resume: {d} holds no run (no {MARKER}); start one without --resume")
        if not self.checkpoint.exists():
            raise RunDirError(
                f"--resume: {d} holds a run that stopped before its first checkpoint; start it again without --resume"
            )
        keys = (*required, "offsets") if sizes_recorded else tuple(required)
        blob = load_torch_file(self.checkpoint, required=keys, map_location="cpu")
        self.offsets = self._saved_offsets(blob.get("offsets"))
        self._checked = True
        return blob

    def _maker(self) -> str | None:
        """The tool the marker names (None: no marker)."""
        p = self.path / MARKER
        if not p.exists():
            return None
        try:
            tool = json.loads(p.read_text()).get("tool")
        except (OSError, ValueError, AttributeError):
            raise RunDirError(f"{p} is damaged (not the JSON object a run folder's marker holds)") from None
        return str(tool) if tool else self.tool  # a marker that names no tool: taken as this tool's

    def _saved_offsets(self, saved: Any) -> dict[str, int]:
        if saved is None:  # a checkpoint from before the logs' sizes were recorded: the logs are kept whole
            return {
                name: (self.path / name).stat().st_size if (self.path / name).exists() else 0
                for name in self.logs
            }
        if not isinstance(saved, Mapping):
            raise CheckpointError(
                f"{self.checkpoint}: its 'offsets' is a {type(saved).__name__}, not a mapping"
            )
        out = dict.fromkeys(self.logs, 0)
        for name, off in saved.items():
            if name not in out or not isinstance(off, int) or off < 0:
                raise CheckpointError(
                    f"{self.checkpoint}: offsets[{name!r}] = {off!r} is not a size of one of {self.logs}"
                )
            out[name] = off
        return out

    # -- the claim ---------------------------------------------------------------------------------------------------
    def claim(self, fresh: bool, about: Mapping[str, Any] | None = None) -> None:
        """Make the folder, take its lock, remove stale temps, write the marker (with `about`, plain data, when it is
        new), and cut the logs back to `offsets` (`fresh`: remove them, and `fresh_clears`). The lock is held until
        `close()`. A resume (not `fresh`) must have been `check`ed: the sizes come from its checkpoint."""
        if not fresh and not self._checked:
            raise RuntimeError(f"RunDir.claim(fresh=False) of {self.path}: call check(resume=True) first")
        d = self.path
        d.mkdir(parents=True, exist_ok=True)
        try:
            self._lock = acquire_lock(d / LOCK, self.tool, what=f"{self.option} {d}")
        except LockError as err:  # another start got there between the check and now
            raise RunDirError(str(err)) from None
        try:
            remove_stale_temps(d, self._own)
            if not (d / MARKER).exists():
                text = json.dumps({"tool": self.tool, **(about or {}), "created": time.time()})
                atomic_write(d / MARKER, lambda tmp: Path(tmp).write_text(text))
            if fresh:  # a fresh start over a run that never reached a checkpoint: its logs are void
                for name in self.logs:
                    (d / name).unlink(missing_ok=True)
                for sub in self.fresh_clears:
                    if (d / sub).is_dir():
                        shutil.rmtree(d / sub)
                self.offsets = dict.fromkeys(self.logs, 0)
            else:  # drop rows logged after the checkpoint: they will be redone
                for name, off in self.offsets.items():
                    p = d / name
                    if p.exists() and p.stat().st_size > off:  # never padded: a shorter log stays as it is
                        with open(p, "r+b") as f:
                            f.truncate(off)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (a second call does nothing); `RunFolderOwner` calls it at a trainer's close."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- writes ------------------------------------------------------------------------------------------------------
    def append_csv(self, name: str, row: Mapping[str, Any]) -> None:
        """Append `row` to the log `name` (its header first when the file is new) and record the log's size."""
        if name not in self.offsets:
            raise KeyError(f"{name!r} is not one of this run folder's logs {self.logs}")
        p = self.path / name
        new = not p.exists() or p.stat().st_size == 0
        with open(p, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        self.offsets[name] = p.stat().st_size

    def save_checkpoint(self, blob: Mapping[str, Any]) -> None:
        """Write `blob` plus the logs' `offsets` to `checkpoint.pt`, atomically."""
        full = {**blob, "offsets": dict(self.offsets)}
        atomic_write(self.checkpoint, lambda tmp: torch.save(full, tmp))


class RunFolderOwner:
    """What a trainer that writes a `RunDir` (its `folder`) shares: the claim with the trainer's first writes, the
    lock's release (`close()`, or a `with` block's end), and no training once closed."""

    folder: RunDir
    _closed: bool = False

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def ckpt_path(self) -> Path:
        return self.folder.checkpoint

    def claim_folder(
        self, fresh: bool, write: Callable[[], None], about: Mapping[str, Any] | None = None
    ) -> None:
        """`RunDir.claim`, then `write()` (the trainer's config file); the lock is released if either fails."""
        self.folder.claim(fresh, about)
        try:
            write()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder's lock (a second call does nothing); the trainer trains no more afterwards."""
        self._closed = True
        self.folder.close()

    def require_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"this {type(self).__name__} of {self.folder.path} is closed (its lock released); make a new one"
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
