"""Lazy package exports (PEP 562): names resolved from their modules on first use, so that
importing a package (``rsfm --help`` imports the CLI modules' packages) stays cheap.

    __getattr__, __dir__ = lazy_exports(__name__, {"Embedder": "rsfm_core.inference.embedder"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, attrs: Mapping[str, str], submodules: frozenset[str] = frozenset()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``attrs`` maps a name to the module that
    defines it; ``submodules`` are names imported as ``package.<name>``."""

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        if name in attrs:
            return getattr(importlib.import_module(attrs[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(attrs) | set(submodules))

    return __getattr__, __dir__
