"""The repo's alias of the sweep runner, `python -m rl.sweep` (`misa-sweep`): the same command, flags and outputs,
so every command written in the docs and in committed result files (`python benchmarks/sweep.py SPEC --out DIR`)
still works. The runner is the package `rl.sweep` (docs/sweeps.md).
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/sweep.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from rl.sweep.__main__ import main  # noqa: E402
from rl.sweep.spec import load_spec  # noqa: E402 - benchmarks/peer_fdime.py loads this file for it

__all__ = ["load_spec", "main"]

if __name__ == "__main__":
    raise SystemExit(main(prog="python benchmarks/sweep.py"))
