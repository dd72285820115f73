"""GeoTIFF reading and writing (rasterio): grids, validity masks, windows, tiles.

Writers keep the source CRS/transform, nodata, band descriptions and tags; ``cog=True``
writes a Cloud-Optimized GeoTIFF (internal tiles + overviews) through GDAL's COG driver.
Files are written to a temporary name in the target folder and renamed when complete, so
a partial file never looks finished.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .data import Grid


class RasterError(ValueError):
    """Bad raster input or output; the message names the file and says what to do."""


# ---------------------------------------------------------------------------- grids


def grid_from_dataset(ds) -> Grid:
    """The :class:`Grid` of an open rasterio dataset (``crs`` None if it has none)."""
    t = ds.transform
    crs = ds.crs.to_string() if ds.crs is not None else None
    return Grid(crs, (t.a, t.b, t.c, t.d, t.e, t.f), ds.height, ds.width)


def affine_of(grid: Grid):
    from affine import Affine

    a, b, c, d, e, f = grid.transform
    return Affine(a, b, c, d, e, f)


# ---------------------------------------------------------------------------- writing


def write_geotiff(
    path: str | os.PathLike,
    array: np.ndarray,
    grid: Grid,
    *,
    nodata: float | None = None,
    band_descriptions: Sequence[str] | None = None,
    tags: Mapping[str, object] | None = None,
    band_tags: Sequence[Mapping[str, object]] | None = None,
    cog: bool = False,
    compress: str = "deflate",
    blocksize: int = 256,
) -> Path:
    """Write ``array`` ``[C, H, W]`` (or ``[H, W]``) on ``grid`` to a GeoTIFF (or COG).

    Written to a temporary file in the same folder and renamed on success.
    """
    import rasterio

    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise RasterError(f"{path}: write_geotiff needs [C, H, W] or [H, W], got shape {arr.shape}")
    c, h, w = arr.shape
    if (h, w) != (grid.height, grid.width):
        raise RasterError(f"{path}: array is {h}x{w} but the grid is {grid.height}x{grid.width}")
    if band_descriptions is not None and len(band_descriptions) != c:
        raise RasterError(f"{path}: {len(band_descriptions)} band descriptions for {c} bands")
    if not path.parent.exists():
        raise RasterError(f"{path}: folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise RasterError(
            f"{path}: folder {path.parent} is not writable; choose another output path"
        )
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": c,
        "dtype": arr.dtype.name if arr.dtype != np.bool_ else "uint8",
        "crs": grid.crs,
        "transform": affine_of(grid),
        "nodata": nodata,
        "compress": compress,
    }
    if not cog and h >= blocksize and w >= blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        target = tmp + ".gtiff" if cog else tmp
        with rasterio.open(target, "w", **profile) as ds:
            ds.write(arr.astype(profile["dtype"], copy=False))
            if band_descriptions is not None:
                for i, d in enumerate(band_descriptions, start=1):
                    ds.set_band_description(i, str(d))
            if tags:
                ds.update_tags(**{k: str(v) for k, v in tags.items()})
            if band_tags:
                for i, bt in enumerate(band_tags, start=1):
                    ds.update_tags(i, **{k: str(v) for k, v in bt.items()})
        if cog:
            _translate_to_cog(target, tmp, compress, blocksize)
            os.remove(target)
        os.replace(tmp, path)
    except BaseException:
        for p in (tmp, tmp + ".gtiff"):
            if os.path.exists(p):
                os.remove(p)
        raise
    return path


def _translate_to_cog(src: str, dst: str, compress: str, blocksize: int) -> None:
    """GDAL's COG driver: tiled layout, overviews, IFDs at the front of the file."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    with rasterio.open(src) as ds:
        rio_copy(
            ds,
            dst,
            driver="COG",
            compress=compress.upper(),
            blocksize=blocksize,
            overviews="AUTO",
            resampling="average",
        )
