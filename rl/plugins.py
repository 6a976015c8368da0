"""User code that registers estimators before a config names one: the modules of `imports:` / `--import`, and the
installed plugin packages.

    python -m rl.train --config configs/misa/hopper-medium-v5.yaml --import my_bounds --estimator tempered-dv

An import is a module name importable from the current directory (or from `sys.path`), or a path to a `.py` file
(loaded as a module named after the file); importing it runs its `mi_estimators.register("name")` calls. A plugin
package registers its estimators the same way from a module it names as an entry point of the group
`mi_estimators.plugins` in its packaging metadata::

    [project.entry-points."mi_estimators.plugins"]
    my-bounds = "my_bounds_pkg.estimators"

Plugins are loaded once per process, when a config names an estimator that is not registered yet (so a broken or slow
plugin costs nothing to runs that do not need it). A failure is a `ConfigError` naming the module or the entry point.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from rl.config import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "import_modules", "is_path", "load_plugins"]

ENTRY_POINT_GROUP = "mi_estimators.plugins"
_plugins_loaded: list[str] | None = None


def is_path(spec: str) -> bool:
    """Whether an `imports` entry is a path to a file (`my_bounds.py`, `lib/bounds.py`) rather than a module name."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def _failure(spec: str, err: BaseException) -> ConfigError:
    msg = " ".join(str(err).split()) or type(err).__name__
    return ConfigError(f"import {spec!r} failed: {type(err).__name__}: {msg}")


def _import_file(spec: str) -> ModuleType:
    path = Path(spec).expanduser()
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise ConfigError(f"import {spec!r}: {what} (give a .py file, or a module name without '/' or '.py')")
    path = path.resolve()
    name = path.stem
    known = sys.modules.get(name)
    if known is not None:
        if getattr(known, "__file__", None) and Path(known.__file__).resolve() == path:
            return known  # imported before (by this name or this path): its registrations already ran
        raise ConfigError(
            f"import {spec!r}: a module named {name!r} is already imported (from "
            f"{getattr(known, '__file__', None) or 'a built-in'}); rename {path.name}"
        )
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"import {spec!r}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # as `import` does, so that the module can import itself and pickling finds it
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's code: reported with the file's name
        del sys.modules[name]
        raise _failure(spec, err) from err
    return module


def _import_name(spec: str) -> ModuleType:
    # "Importable from the current directory", whichever way this process was started: `python -m` puts the
    # current directory first on sys.path, an installed console script does not.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # a module written since the last import (a test, a notebook) is found
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name is not None and (spec == err.name or spec.startswith(err.name + ".")):
            raise ConfigError(
                f"import {spec!r}: no module named {err.name!r} in the current directory ({cwd}) or on sys.path "
                "(a path to a .py file also works)"
            ) from err
        raise _failure(spec, err) from err  # the module was found; something it imports was not
    except Exception as err:  # noqa: BLE001 - the user's code: reported with the module's name
        raise _failure(spec, err) from err


def import_modules(specs: Iterable[str]) -> list[ModuleType]:
    """Import each module name or `.py` path of `specs` (in order; one imported before is not run again), so that
    the estimators they register are available. A failure raises `ConfigError` naming the entry and why."""
    out = []
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"imports: each entry must be a module name or a .py path; got {spec!r}")
        spec = spec.strip()
        out.append(_import_file(spec) if is_path(spec) else _import_name(spec))
    return out


def load_plugins() -> list[str]:
    """Import the module of every entry point of group `mi_estimators.plugins` (once per process); returns the
    entry points' names. A plugin that fails to load raises `ConfigError` naming it and its package."""
    global _plugins_loaded
    if _plugins_loaded is not None:
        return list(_plugins_loaded)
    names = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:  # noqa: BLE001 - a third party's code: reported with its name
            dist = getattr(ep, "dist", None)
            package = f"package {dist.name}, " if dist is not None else ""
            msg = " ".join(str(err).split()) or type(err).__name__
            raise ConfigError(
                f"the estimator plugin {ep.name!r} ({package}entry point {ep.value!r} of group {ENTRY_POINT_GROUP}) "
                f"failed to load: {type(err).__name__}: {msg}"
            ) from err
        names.append(ep.name)
    _plugins_loaded = names
    return list(names)
