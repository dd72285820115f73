"""rsfm: an open multimodal remote-sensing foundation model.

``import rsfm_core as rs``; submodules and the main entry points load lazily so that
``rsfm --help`` and ``import rsfm_core`` stay fast and pull in no rasterio/torch work
until used.

Package map (stages, lowest first; a module imports only stages below it; docs/architecture.md):
``sensors`` (band/sensor registry) and ``sample`` (ModalityData, Grid, dates) and
``files`` (atomic writes, SHA-256) -> ``io`` (reading, tiling, writers, GeoParquet) ->
``synthetic`` (scenes) and ``model`` (encoder, registry, checkpoints) -> ``inference``
(Embedder, run loop, stitching) -> ``cli`` / ``demo``.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_SUBMODULES = frozenset(
    {"sensors", "sample", "files", "io", "synthetic", "model", "inference", "cli"}
)
_ATTRS = {  # name -> the module defining it
    "ModalityData": "rsfm_core.sample",
    "Grid": "rsfm_core.sample",
    "build_model": "rsfm_core.model.registry",
    "load_pretrained": "rsfm_core.model.registry",
    "shipped": "rsfm_core.model.checkpoint",
    "Embedder": "rsfm_core.inference.embedder",
    "RasterInput": "rsfm_core.inference.inputs",
    "read_embeddings": "rsfm_core.io.embeddings",
}
__getattr__, __dir__ = lazy_exports(__name__, _ATTRS, _SUBMODULES)
