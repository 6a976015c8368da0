"""Where the timing scripts (`estimator_seeds.py`, `agent_seeds.py`) put what they measured: `<out>.csv` (one row
per case) and `<out>.md` (the table with its command), each written atomically (temp file + rename)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def write_results(out: Path, rows: list[dict[str, Any]], lines: list[str]) -> None:
    """`rows` to `out.csv`, `lines` (a markdown page) to `out.md`; prints the page."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out.with_suffix(".csv"))
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out.with_suffix(".md"))
    print("\n".join(lines))
