"""mkdocs hooks: serve the committed benchmark outputs and CHANGELOG.md from where the commands write them.

The pages link to plots and tables as `../benchmarks/results/...` (so the links also work when the Markdown is read
on a forge); here those files join the site as `results-files/...` and the links are rewritten to match.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SERVED = {".png", ".md", ".csv"}
PREFIX = "results-files"
_LINK = re.compile(r"\]\((?:\.\./)+benchmarks/results/")


def _served(path: Path) -> bool:
    rel = path.relative_to(RESULTS).parts
    # a sweep's tables and plots, not its per-trial run folders (checkpoints, logs)
    return path.suffix in SERVED and "runs" not in rel and "ray" not in rel and "errors" not in rel


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and _served(path):
            uri = f"{PREFIX}/{path.relative_to(RESULTS).as_posix()}"
            if path.suffix == ".md":  # a table: served as a file, not built as a page
                uri = uri[: -len(".md")] + ".md.txt"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    files.append(File.generated(config, "changelog.md", abs_src_path=str(ROOT / "CHANGELOG.md")))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if (
        page.file.src_uri == "changelog.md"
    ):  # CHANGELOG.md links docs/x.md from the root; the site serves it beside x.md
        markdown = markdown.replace("](docs/", "](")
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth + PREFIX + "/"
    out = _LINK.sub("](" + prefix, markdown)
    return re.sub(r"(\]\(" + re.escape(prefix) + r"[^)]*?\.md)(\)|#)", r"\1.txt\2", out)
