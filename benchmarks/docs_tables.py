"""Paste the benchmark scripts' tables into the docs, so that a docs table is always one a committed command made.

A result file under `benchmarks/results` (a sweep's `results.md`, `fdime.md`, `fdime_screen.md`, ...) marks each
table meant for the docs as a named block:

    <!-- table:NAME -->
    | ... |
    <!-- /table:NAME -->

and a page of `docs/` (or README.md) marks where it goes with the same two comments. This script replaces every
such block of the pages with the source's block of the same name:

    python benchmarks/docs_tables.py            # fill the docs from the committed results
    python benchmarks/docs_tables.py --check    # exit 1 and name each stale block; change nothing

Run it after a sweep's report (`benchmarks/sweep.py ... --report-only`) or a peer script has rewritten its results;
the test suite runs `--check`, so a docs table that disagrees with its source fails CI.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- table:([A-Za-z0-9_.-]+) -->\n(.*?)<!-- /table:\1 -->", re.S)


class DocsTableError(ValueError):
    """A block without a source, a name that two sources define, or an unclosed marker."""


def sources(results: Path) -> dict[str, tuple[Path, str]]:
    """Every named block of the result files under `results` (run folders excluded): name -> (file, text)."""
    found: dict[str, tuple[Path, str]] = {}
    for path in sorted(results.rglob("*.md")):
        if "runs" in path.relative_to(results).parts:
            continue
        for m in BLOCK.finditer(path.read_text()):
            name = m.group(1)
            if name in found:
                raise DocsTableError(f"table {name!r} is defined twice: in {found[name][0]} and in {path}")
            found[name] = (path, m.group(2))
    return found


def _unclosed(text: str) -> list[str]:
    opened = re.findall(r"<!-- table:([A-Za-z0-9_.-]+) -->", text)
    return [n for n in opened if f"<!-- /table:{n} -->" not in text]


def fill(page: Path, blocks: dict[str, tuple[Path, str]]) -> tuple[str, list[str]]:
    """The text of `page` with each named block replaced by its source's, and the names that changed."""
    text = page.read_text()
    bad = _unclosed(text)
    if bad:
        raise DocsTableError(f"{page}: <!-- table:{bad[0]} --> has no closing <!-- /table:{bad[0]} -->")
    changed: list[str] = []

    def put(m: re.Match) -> str:
        name = m.group(1)
        if name not in blocks:
            raise DocsTableError(
                f"{page}: table {name!r} has no source (no result file under benchmarks/results defines it; "
                f"known: {', '.join(sorted(blocks)) or 'none'})"
            )
        body = blocks[name][1]
        if body != m.group(2):
            changed.append(name)
        return f"<!-- table:{name} -->\n{body}<!-- /table:{name} -->"

    return BLOCK.sub(put, text), changed


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 naming each stale block")
    args = p.parse_args(argv)
    sys.path.insert(0, str(root))
    from rl._atomic import atomic_write

    try:
        blocks = sources(root / "benchmarks" / "results")
        stale = []
        for page in pages(root):
            if not page.is_file():
                continue
            text, changed = fill(page, blocks)
            stale += [
                f"{page.relative_to(root)}: {name} (from {blocks[name][0].relative_to(root)})"
                for name in changed
            ]
            if changed and not args.check:
                atomic_write(page, lambda tmp, t=text: Path(tmp).write_text(t))
    except DocsTableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in stale:
        print(("stale: " if args.check else "updated: ") + line)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
