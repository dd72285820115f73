"""Reading rsfm's embedding products back: :func:`read_embeddings`.

    import rsfm_core as rs
    m = rs.read_embeddings("emb.tif")        # or the run's .npz
    m.values   # (D, h, w) float32, NaN where no valid input was
    m.valid    # (h, w) bool
    m.grid     # rs.Grid of the token map (CRS, transform, size)
    m.tags     # RSFM_* provenance: model, weights SHA-256, version, inputs

int8 COGs are restored with their per-band scale/offset (GDAL band scale/offset, also
described by the ``RSFM_QUANTIZATION`` tag): ``value = q * scale + offset``, -128 =
nodata. float16 COGs read as float32 (GDAL exposes half floats as Float32).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..sample import Grid


@dataclass
class EmbeddingMap:
    """A dense embedding map read from disk (see the module docstring)."""

    values: np.ndarray  # (D, h, w) float32, NaN = nodata
    grid: Grid
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return (
            ~np.isnan(self.values[0])
            if len(self.values)
            else np.zeros((self.grid.height, self.grid.width), bool)
        )

    @property
    def model(self) -> str | None:
        return self.tags.get("RSFM_MODEL")


def read_embeddings(path: str | os.PathLike, window=None) -> EmbeddingMap:
    """The dense embeddings of an rsfm COG (any of float16, float32, int8) or ``.npz`` as
    float32 with NaN for nodata, with the token grid and the file's ``RSFM_*`` tags.
    ``window``: ``(row, col, height, width)`` of the map to read (COG only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such embedding file")
    if path.suffix == ".npz":
        if window is not None:
            raise ValueError(f"{path}: window= is for COGs; slice the npz's array instead")
        with np.load(path) as z:
            v = np.asarray(z["embedding"], dtype=np.float32)
            t = tuple(float(x) for x in z["transform"])
            crs = str(z["crs"]) or None
        return EmbeddingMap(v, Grid(crs, t, v.shape[1], v.shape[2]), {})
    import rasterio
    from rasterio.windows import Window

    from .raster import grid_from_dataset

    with rasterio.open(path) as ds:
        tags = ds.tags()
        win = None if window is None else Window(window[1], window[0], window[3], window[2])
        raw = ds.read(window=win)
        grid = grid_from_dataset(ds)
        if win is not None:
            grid = grid.window(*window)
        nodata = ds.nodata
        scale = np.asarray(ds.scales, np.float64)[:, None, None]
        offset = np.asarray(ds.offsets, np.float64)[:, None, None]
    if raw.dtype.kind == "f":
        v = raw.astype(np.float32, copy=False)
        if nodata is not None and not np.isnan(nodata):
            v[raw == nodata] = np.nan
        if np.any(scale != 1) or np.any(offset != 0):
            v = (v * scale + offset).astype(np.float32)
    else:
        v = (raw * scale + offset).astype(np.float32)
        if nodata is not None:
            v[raw == nodata] = np.nan
    return EmbeddingMap(v, grid, tags)


__all__ = ["EmbeddingMap", "read_embeddings"]
