"""Reading back the torch files we write (checkpoints, policy snapshots) without executing code.

A checkpoint a user hands us is data. `load_torch_file` checks the zip container and every record's CRC (torch
itself loads a file with flipped data bytes silently), then unpickles with ``weights_only=True`` and an explicit
allow-list of the only non-tensor types our files hold: numpy arrays (the global numpy RNG state, an env's MuJoCo
state and last observation). Anything else in the pickle (a crafted ``__reduce__``) is refused, not run.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "SAFE_GLOBALS", "load_torch_file"]


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint (truncated, corrupted, foreign or unsafe); the message names it."""


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray._reconstruct


#: the non-tensor globals a weights-only load of our files may meet: a numpy array is rebuilt from its
#: class, its dtype (numeric and boolean ones only) and raw bytes, none of which can run code.
SAFE_GLOBALS: list[Any] = [
    _numpy_reconstruct(),
    np.ndarray,
    np.dtype,
    *{
        type(np.dtype(t))
        for t in ("bool", "uint8", "int32", "uint32", "int64", "uint64", "float32", "float64")
    },
]


def _why_refused(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:  # torch names the refused global on one of its lines
        if "got <" in ln or "Unsupported global" in ln or "GLOBAL" in ln:
            return ln
    return lines[0] if lines else type(err).__name__


def load_torch_file(
    path: str | os.PathLike,
    *,
    what: str = "checkpoint",
    required: Iterable[str] = (),
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The dict saved at `path` by ``torch.save``, loaded weights-only.

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: not a torch zip file (empty, truncated, another format), a record whose CRC does not
            match (bit rot, a partial copy), a pickle that names anything but tensors, plain containers and numpy
            arrays (refused, never executed), not a dict, or a dict without one of the `required` keys (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    size = path.stat().st_size
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a {what}: not a torch zip file ({size} bytes; empty, truncated or another format)"
        )
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as err:  # noqa: BLE001 - zipfile meets damaged headers with many exception types
        msg = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"{path} is not a readable {what} ({msg})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupted: the checksum of its record {bad!r} does not match")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} was refused: it holds objects other than tensors, plain data and numpy arrays, which a "
            f"weights-only load does not run ({_why_refused(err)})"
        ) from None
    except Exception as err:  # noqa: BLE001 - any other failure of a file that passed the CRC check
        raise CheckpointError(f"cannot read {path} as a {what}: {type(err).__name__}: {err}") from None
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path} is not a {what}: it holds a {type(blob).__name__}, not a dict")
    missing = [k for k in required if k not in blob]
    if missing:
        raise CheckpointError(f"{path} is not a {what}: missing key {missing[0]!r} (it has {sorted(blob)})")
    return blob
