"""The docs as a newcomer meets them: every committed plot is on a page, and the README's and tutorials' Python
snippets run as scripts and print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SNIPPET = re.compile(r"```python\n(.*?)```", re.S)


def _snippets() -> list[tuple[str, str]]:
    out = []
    for page in [ROOT / "README.md", *sorted((DOCS / "tutorials").glob("*.md"))]:
        for i, code in enumerate(SNIPPET.findall(page.read_text())):
            out.append((f"{page.relative_to(ROOT)}#{i}", code))
    return out


def test_every_committed_plot_is_shown_in_the_docs():
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    tracked = subprocess.run(
        ["git", "ls-files", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    plots = [p for p in tracked if p.endswith(".png") and "/runs/" not in p]
    assert plots
    missing = [p for p in plots if f"../{p}" not in pages]
    assert not missing, f"plots no page shows: {missing}"


@pytest.mark.parametrize(("where", "code"), _snippets(), ids=[w for w, _ in _snippets()])
def test_snippets_run_as_scripts_and_print(where, code, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MISA_DATA_DIR": os.environ.get("MISA_DATA_DIR", "")}
    if not env["MISA_DATA_DIR"]:
        del env["MISA_DATA_DIR"]  # the user's cache: what a newcomer's snippet uses
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"{where} failed:\n{res.stderr[-3000:]}"
    assert res.stdout.strip(), f"{where} printed nothing"
