"""rsfm: an open multimodal remote-sensing foundation model.

``import rsfm_core as rs``; submodules and the main entry points load lazily so that
``rsfm --help`` and ``import rsfm_core`` stay fast and pull in no rasterio/torch work
until used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"sensors", "io", "synthetic", "landcover", "model", "inference", "cli", "data"}
_ATTRS = {
    # name -> (module, attribute)
    "ModalityData": ("rsfm_core.data", "ModalityData"),
    "Grid": ("rsfm_core.data", "Grid"),
    "build_model": ("rsfm_core.model", "build_model"),
    "load_pretrained": ("rsfm_core.model", "load_pretrained"),
    "Embedder": ("rsfm_core.inference", "Embedder"),
    "RasterInput": ("rsfm_core.inference", "RasterInput"),
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"rsfm_core.{name}")
    if name in _ATTRS:
        mod, attr = _ATTRS[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'rsfm_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | set(_ATTRS))
