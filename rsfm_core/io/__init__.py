"""Raster input and output: everything that touches a file on disk.

    import rsfm_core as rs
    s2 = rs.io.read_modality(["t0.tif", "t1.tif"], "sentinel2_l2a", dates=["2024-05-01", "2024-06-01"])
    sample = rs.io.read_sample({"s2": (s2_paths, "sentinel2_l2a"), "s1": (s1_paths, "sentinel1_grd")})

Modules, lowest first (each imports only those above it):

- :mod:`.tiling`: window and grid arithmetic, overlapping tiles with owned cores (no I/O);
- :mod:`.raster`: one file through rasterio: opening, metadata, dates, band
  identification, aligned or warped reads onto a grid, input checks (:class:`RasterError`);
- :mod:`.read`: modalities of one place onto one grid (:func:`read_modality`,
  :func:`read_sample`), the public reading API;
- :mod:`.writers`: GeoTIFF/COG writing and the embedding products' intermediate;
- :mod:`.geoparquet`: per-chip embeddings as GeoParquet 1.1.

Details, tables and examples: docs/io.md.
"""

from .raster import (
    DATE_TAGS,
    RESAMPLING,
    BandOrderWarning,
    ImplausibleValuesWarning,
    RasterError,
    affine_of,
    grid_from_dataset,
    open_info,
)
from .read import block_windows, read_modality, read_sample
from .tiling import Tile, tiles
from .writers import write_geotiff

__all__ = [
    "DATE_TAGS",
    "RESAMPLING",
    "BandOrderWarning",
    "ImplausibleValuesWarning",
    "RasterError",
    "Tile",
    "affine_of",
    "block_windows",
    "grid_from_dataset",
    "open_info",
    "read_modality",
    "read_sample",
    "tiles",
    "write_geotiff",
]
