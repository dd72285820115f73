"""Inference: a checkpoint's encoder turned on rasters and tensors, as georeferenced
embeddings (dense COG, GeoParquet chips, npz) with bounded memory.

    import rsfm_core as rs
    emb = rs.Embedder.from_pretrained("ckpt/")          # verified, never unpickled
    emb.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", s2_paths, s2_dates),
                       "s1": rs.RasterInput("sentinel1_grd", s1_paths, s1_dates)},
                      out="emb.tif", parquet="chips.parquet", npz="emb.npz")
    emb.embed({"s2": modality_data})                     # in-memory tensors -> Embedding

How a raster run goes, module by module (each imports only those listed before it;
details and decisions in docs/inference.md):

1. :mod:`.options` — what was asked (:class:`EmbedOptions`) and what comes back;
2. :mod:`.inputs` — :class:`RasterInput` (by hand, from STAC items or a manifest) matched
   to the checkpoint's modalities;
3. :mod:`.tiles` — the token-aligned layout of the region and the sources that read
   tiles through :mod:`rsfm_core.io` (every input checked first by a one-token read);
4. :mod:`.stitching` — overlapping tile outputs blended with sin^2 ramps into token rows
   (memory: one tile height of token rows across the width, whatever the raster's size);
5. :mod:`.stream` — the loop: read a batch of tiles along a tile row, skip tiles without
   a valid pixel, run the model (a ``forward`` callable), blend, flush finished rows;
6. :mod:`.distributed` — under torchrun, ranks take disjoint bands of tile rows;
7. :mod:`.run` — one ``embed_rasters`` call: stream into a temporary intermediate, merge
   ranks, write every output with :mod:`rsfm_core.io.writers` and
   :mod:`rsfm_core.io.geoparquet`, rename them into place only when all are complete;
8. :mod:`.embedder` — :class:`Embedder`: the model, its device and numerics;
9. :mod:`.cli` — ``rsfm embed``.
"""

from __future__ import annotations

from rsfm_core.lazy import lazy_exports

# Loaded on first use, so that ``rsfm --help`` (which imports .cli for its parser) does
# not import torch and the model.
_ATTRS = {
    "CheckpointError": "rsfm_core.model.checkpoint",
    "CheckpointInfo": "rsfm_core.model.checkpoint",
    "EmbedOptions": "rsfm_core.inference.options",
    "EmbedResult": "rsfm_core.inference.options",
    "Embedder": "rsfm_core.inference.embedder",
    "Embedding": "rsfm_core.inference.options",
    "MissingInputWarning": "rsfm_core.inference.inputs",
    "RasterError": "rsfm_core.io.raster",
    "RasterInput": "rsfm_core.inference.inputs",
    "load_manifest": "rsfm_core.inference.inputs",
}
__all__ = sorted(_ATTRS)
__getattr__, __dir__ = lazy_exports(__name__, _ATTRS)
