"""Short renderings of numbers and rows for error messages (shared by the dataset checks and the exporters)."""

from __future__ import annotations

import numpy as np

__all__ = ["_fmt_num", "_fmt_row"]


def _fmt_num(x: float) -> str:
    return f"{float(x):.6g}"


def _fmt_row(row: np.ndarray, limit: int = 6) -> str:
    """A short, readable rendering of one row for error messages: ``[1.3, 0.2, ...]``."""
    row = np.asarray(row).reshape(-1)
    items = ", ".join(_fmt_num(v) for v in row[:limit])
    return f"[{items}{', ...' if row.size > limit else ''}]"
