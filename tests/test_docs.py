"""The docs as a newcomer meets them: every committed plot is on a page, every pasted table is the one its result
file holds (`benchmarks/docs_tables.py`), and the README's and tutorials' Python snippets run as scripts and print."""

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
sys.path.insert(0, str(ROOT / "benchmarks"))
import docs_tables  # noqa: E402


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


def test_every_docs_table_is_the_one_its_result_file_holds(capsys):
    assert docs_tables.main(["--check"]) == 0, capsys.readouterr().out
    pasted = [
        m.group(1)
        for p in docs_tables.pages(ROOT)
        if p.is_file()
        for m in docs_tables.BLOCK.finditer(p.read_text())
    ]
    expected = {
        "fdime",
        "search",
        "torch-mist",
        "misa-parity",
        "hopper-medium-50k",
        "locomotion-10k",
        "misa-cost",
    }
    assert expected | {"estimators-best", "estimators-reduced-best", "heavy-tails-best"} <= set(pasted)


def _tree(tmp_path, source: str, page: str):
    (tmp_path / "benchmarks" / "results" / "sweeps" / "s" / "runs" / "t").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "sweeps" / "s" / "results.md").write_text(source)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(page)
    return tmp_path / "docs" / "page.md"


def test_docs_tables_fill_check_and_name_what_is_wrong(tmp_path, capsys):
    src = "# report\n<!-- table:t -->\n| a |\n|---|\n| 2 |\n<!-- /table:t -->\nmore\n"
    page = _tree(tmp_path, src, "intro\n<!-- table:t -->\n| a |\n|---|\n| 1 |\n<!-- /table:t -->\nend\n")
    assert docs_tables.main(["--check"], root=tmp_path) == 1
    assert "stale: docs/page.md: t (from benchmarks/results/sweeps/s/results.md)" in capsys.readouterr().out
    assert "| 1 |" in page.read_text()  # --check changes nothing
    assert docs_tables.main([], root=tmp_path) == 0
    assert page.read_text() == "intro\n<!-- table:t -->\n| a |\n|---|\n| 2 |\n<!-- /table:t -->\nend\n"
    assert docs_tables.main(["--check"], root=tmp_path) == 0
    # a run folder's files are not sources (its result files are trials', not tables for the docs)
    (tmp_path / "benchmarks/results/sweeps/s/runs/t/x.md").write_text(
        "<!-- table:t -->\nno\n<!-- /table:t -->\n"
    )
    assert docs_tables.main(["--check"], root=tmp_path) == 0
    for page_text, source_extra, message in (
        ("<!-- table:u -->\n<!-- /table:u -->\n", "", "docs/page.md: table 'u' has no source"),
        ("<!-- table:t -->\n| a |\n", "", "<!-- table:t --> has no closing <!-- /table:t -->"),
        ("", "<!-- table:t -->\nx\n<!-- /table:t -->\n", "table 't' is defined twice"),
    ):
        page.write_text(page_text)
        (tmp_path / "benchmarks/results/other.md").write_text(source_extra)
        capsys.readouterr()
        assert docs_tables.main([], root=tmp_path) == 2
        assert message in capsys.readouterr().err
