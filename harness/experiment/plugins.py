"""Plug-ins from outside the repository: include folders and installed packages (harness.engine.registry).

An include folder (`plugins=[DIR, ...]` on the command line, or REFINERY_PLUGINS=DIR:DIR) holds
Python files that register what they define when imported, e.g.

    # DIR/my_method.py
    from harness.engine.method import Method
    from harness.engine.registry import METHODS

    class MyMethod(Method):
        name = "my_method"
        ...

    METHODS.register("my_method", MyMethod)

and, optionally, `DIR/configs/<group>/<option>.yaml` (e.g. configs/method/my_method.yaml), which
Hydra then finds like the configs in sweeps/. An installed package registers through entry points
(harness.engine.registry) and names its config package in the `refinery.configs` group
(`my_pkg = "my_pkg.configs"`), a package whose folder holds `<group>/<option>.yaml`.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path

from harness.engine.registry import registering_from
from harness.errors import UsageError
from harness.store.files import sha256_hex

ENV = "REFINERY_PLUGINS"
_loaded: dict[Path, list[str]] = {}  # include folder -> its Hydra search path entries


def folders_from(values: list[str] | None) -> list[Path]:
    """Include folders given in config and in the environment, in that order, without repeats."""
    found = [*(values or []), *(p for p in os.environ.get(ENV, "").split(os.pathsep) if p)]
    return list(dict.fromkeys(Path(p).expanduser().resolve() for p in found))


def load_folder(folder: Path) -> list[str]:
    """Import the folder's Python files once (they register their entries); its Hydra search path."""
    if folder in _loaded:
        return _loaded[folder]
    if not folder.is_dir():
        raise UsageError(f"plug-in folder {folder} does not exist; give an existing folder in plugins=[...]")
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"refinery_plugins.{sha256_hex(str(folder))[:12]}.{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with registering_from(f"plug-in {path}"):
                spec.loader.exec_module(module)
        except UsageError:
            raise
        except Exception as exc:  # a plug-in's own error: name the file, keep the one-line contract
            del sys.modules[name]
            raise UsageError(f"plug-in {path} fails to import ({type(exc).__name__}: {exc}); fix it or leave "
                             "its folder out of plugins=[...]") from None
    configs = folder / "configs"
    _loaded[folder] = [f"file://{configs}"] if configs.is_dir() else []
    return _loaded[folder]


@functools.cache
def _package_config_paths() -> tuple[str, ...]:
    return tuple(f"pkg://{point.value}" for point in metadata.entry_points(group="refinery.configs"))


def package_config_paths() -> list[str]:
    """Hydra search path entries of installed packages (entry point group `refinery.configs`), read once
    a process, as the registries read their entry points (reading them costs ~25 ms a time)."""
    return list(_package_config_paths())


def search_path(folders: list[Path]) -> list[str]:
    """Load every include folder; the Hydra search path entries of all plug-ins."""
    return [entry for folder in folders for entry in load_folder(folder)] + package_config_paths()


def config_dirs(entries: list[str]) -> list[Path]:
    """The folders behind search path entries, for listing config options."""
    dirs = []
    for entry in entries:
        scheme, _, rest = entry.partition("://")
        if scheme == "file":
            dirs.append(Path(rest))
        elif scheme == "pkg":
            spec = importlib.util.find_spec(rest.replace("/", "."))
            if spec is not None and spec.submodule_search_locations:
                dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs
