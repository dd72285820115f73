"""Raster writers: GeoTIFF/COG files, and the embedding products' streamed intermediate.

- :func:`write_geotiff` writes an array on a grid as a GeoTIFF or, with ``cog=True``, a
  Cloud-Optimized GeoTIFF (internal tiles + overviews, through GDAL's COG driver); the
  CRS/transform, nodata, band descriptions and tags are kept.
- The embedder streams finished token rows into an *intermediate* (:class:`TiffSink`):
  an uncompressed, tiled, sparse float32 GeoTIFF on the token grid (NaN = nodata) plus a
  uint16 mask of which modalities were valid (uncompressed so that windowed row writes
  never rewrite compressed blocks). The run's output sink pools chips per strip
  (:func:`chips_of_strip`) and :func:`write_cog` / :func:`write_npz` make the products:

  - dense map: COG (DEFLATE, overviews by averaging), one band per feature, in the
    source CRS with the transform scaled to the token grid (or warped bilinearly to the
    pixel grid), as float32, float16 (``NBITS=16`` half floats) or int8 (per-band linear
    quantisation, ``value = q * scale + offset``, stored as GDAL band scale/offset and in
    tags; -128 is nodata);
  - ``.npz``: ``embedding`` (D, h, w), ``valid``, ``transform``, ``crs`` and the chips,
    from a ``.npy`` written with plain writes (:class:`NpyWriter`, never a writable map).

Every file is written under a temporary name and renamed only when complete
(:mod:`rsfm_core.files`); GeoParquet chips are in :mod:`.geoparquet`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cliutil import glibc
from ..files import atomic_path, remove_quietly, temp_path
from ..sample import Grid
from .cog import INT8_NODATA, cog_blocksize, overview_levels, quantize_int8
from .raster import RasterError, affine_of

log = logging.getLogger(__name__)

_BLOCK = 64  # intermediate block side (tokens); pixel-interleaved, so D * 64 * 64 * 4 bytes


# ---------------------------------------------------------------------------- paths


def check_writable(path: str | os.PathLike | None) -> Path | None:
    """The output path, or a RasterError naming it when it cannot be written."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise RasterError(f"{p}: is a folder; give a file name for the output")
    if not p.parent.is_dir():
        raise RasterError(f"{p}: folder {p.parent} does not exist; create it first")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise RasterError(f"{p}: folder {p.parent} is not writable; choose another output path")
    if p.exists() and not os.access(p, os.W_OK):
        raise RasterError(f"{p}: exists and is not writable; remove it or choose another path")
    return p


# ---------------------------------------------------------------------------- GeoTIFF


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
    check_writable(path)
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
    with atomic_path(path) as tmp:
        if cog:  # plain tiled GeoTIFF first, then GDAL's COG driver lays it out
            plain = temp_path(path, "gtiff", ".tif")
            try:
                _write_plain(plain, arr, profile, band_descriptions, tags, band_tags)
                with rasterio.open(plain) as ds:
                    cog_copy(ds, tmp, compress, blocksize)
            finally:
                remove_quietly(plain)
        else:
            _write_plain(tmp, arr, profile, band_descriptions, tags, band_tags)
    return path


def _write_plain(path, arr, profile, band_descriptions, tags, band_tags) -> None:
    import rasterio

    with rasterio.open(path, "w", **profile) as ds:
        ds.write(arr.astype(profile["dtype"], copy=False))
        if band_descriptions is not None:
            for i, d in enumerate(band_descriptions, start=1):
                ds.set_band_description(i, str(d))
        if tags:
            ds.update_tags(**{k: str(v) for k, v in tags.items()})
        if band_tags:
            for i, bt in enumerate(band_tags, start=1):
                ds.update_tags(i, **{k: str(v) for k, v in bt.items()})


def _overviews(h: int, w: int, block: int) -> dict:
    """GDAL COG driver options for :func:`cog.overview_levels`' count (the streaming
    writer's rule, so both paths make the same pyramid)."""
    levels = overview_levels(h, w, block)
    return {"overview_count": levels} if levels else {"overviews": "NONE"}


_M_PERTURB = -6  # glibc mallopt parameter: fill malloc'd memory with a fixed byte
_PERTURB_BYTE = 0x5A
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for its dynamic mmap threshold (64-bit)


@contextmanager
def defined_padding():
    """Make GDAL's float16 tiles byte-reproducible (issue 16, item 10).

    GDAL up to 3.10 writes Float32 + ``NBITS=16`` (our float16 COG) through its "odd
    bits" band, which converts the *whole* block buffer to half floats, including the
    padding of edge tiles (past the raster's right/bottom edge). That padding is never
    initialised: it holds whatever the heap held, so two runs on the same inputs gave
    different bytes (same pixel values). While the COG is written, glibc's ``M_PERTURB``
    fills every ``malloc``'d chunk with one fixed byte, so the padding is the same in
    every run; raising the dynamic mmap threshold to its ceiling first keeps GDAL's block
    buffers on the (perturbed) heap whatever the process did before. Scoped: the
    perturbation is switched off again afterwards. Elsewhere than glibc this does nothing
    (float16 output is then reproducible in its pixel values, not its bytes); float32 and
    int8 never needed it. GDAL 3.11 writes Float16 natively and would make this moot."""
    libc = glibc()
    if libc is None:
        yield
        return
    block = libc.malloc(_MMAP_THRESHOLD_MAX - 4096)  # freed mmap chunk: threshold -> max
    libc.free(block)
    libc.mallopt(_M_PERTURB, _PERTURB_BYTE)
    try:
        yield
    finally:
        libc.mallopt(_M_PERTURB, 0)


def cog_copy(src, dst: str | os.PathLike, compress: str, blocksize: int, **extra) -> None:
    """Copy the open dataset ``src`` to ``dst`` with GDAL's COG driver: internal tiles,
    overviews by averaging, IFDs at the front of the file. float16 (``nbits=16``) copies
    run under :func:`defined_padding` so that their bytes are reproducible."""
    from rasterio.shutil import copy as rio_copy

    blocksize = cog_blocksize(src.height, src.width, blocksize)  # small map: one small tile
    with defined_padding() if int(extra.get("nbits", 0)) == 16 else nullcontext():
        rio_copy(
            src, dst, driver="COG", compress=compress.upper(), blocksize=blocksize,
            resampling="average", bigtiff="IF_SAFER", num_threads="ALL_CPUS",
            **_overviews(src.height, src.width, blocksize), **extra,
        )  # fmt: skip


# ---------------------------------------------------------------------------- intermediate


def create_intermediate(path: Path, grid: Grid, dim: int, dtype: str, nodata) -> None:
    import rasterio

    with rasterio.open(
        path, "w", driver="GTiff", width=grid.width, height=grid.height, count=dim,
        dtype=dtype, crs=grid.crs, transform=affine_of(grid), nodata=nodata, tiled=True,
        blockxsize=_BLOCK, blockysize=_BLOCK, interleave="pixel", sparse_ok=True,
        bigtiff="IF_SAFER",
    ):  # fmt: skip
        pass


class TiffSink:
    """Writes flushed token rows (``rows.row``, ``rows.dense`` (D, n, w), ``rows.bits``
    (n, w); :class:`rsfm_core.inference.stitching.Rows`) into the intermediate pair."""

    def __init__(self, data: Path, mask: Path, grid: Grid, dim: int, create: bool = True):
        import rasterio

        if create:
            create_intermediate(data, grid, dim, "float32", float("nan"))
            create_intermediate(mask, grid, 1, "uint16", None)
        self.data = rasterio.open(data, "r+")
        self.mask = rasterio.open(mask, "r+")

    def write(self, rows) -> None:
        from rasterio.windows import Window

        n, w = rows.bits.shape
        win = Window(0, rows.row, w, n)
        self.data.write(rows.dense, window=win)
        self.mask.write(rows.bits[None], window=win)

    def close(self) -> None:
        self.data.close()
        self.mask.close()


def copy_rows(src: Path, dst, row: int, n: int, step: int = 256) -> None:
    """Copy token rows [row, row + n) of ``src`` into the open dataset ``dst``."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as s:
        for r in range(row, row + n, step):
            win = Window(0, r, s.width, min(step, row + n - r))
            dst.write(s.read(window=win), window=win)


# ---------------------------------------------------------------------------- scan


@dataclass
class Scan:
    """The per-band range of the streamed rows (for int8 quantisation)."""

    band_min: np.ndarray
    band_max: np.ndarray


def chips_of_strip(dense, bits, row0: int, chip: int) -> list[dict]:
    """Pooled vectors of the chips in one strip of token rows ``dense`` (D, n, W)."""
    D, n, W = dense.shape
    out = []
    for c0 in range(0, W, chip):
        block = dense[:, :, c0 : c0 + chip].reshape(D, -1)  # (D, n*w)
        ok = ~np.isnan(block[0])
        if not ok.any():
            continue  # all-nodata chip: no row
        out.append(
            {
                "tok": (row0, c0, n, block.shape[1] // n),
                "vector": block[:, ok].mean(axis=1, dtype=np.float64).astype(np.float32),
                "valid_fraction": float(ok.mean()),
                "bits": int(np.bitwise_or.reduce(bits[:, c0 : c0 + chip].ravel())),
            }
        )
    return out


class NpyWriter:
    """A ``(D, h, w)`` ``.npy`` file filled strip by strip with plain positioned writes.

    Not a memory map: a mapped write that finds the disk full kills the process with
    SIGBUS (no message, temporaries left); a plain write raises ``OSError(ENOSPC)``,
    which the run turns into "no space left on <folder>" and cleans up after."""

    def __init__(self, path: Path, dtype, shape: tuple[int, int, int]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}  # fmt: skip
        with open(self.path, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            self.offset = f.tell()
        self._fd = os.open(self.path, os.O_RDWR)
        os.ftruncate(self._fd, self.offset + int(np.prod(self.shape)) * self.dtype.itemsize)

    def write_rows(self, row: int, block: np.ndarray) -> None:
        """Token rows ``[row, row + n)`` from ``block`` (D, n, w)."""
        D, h, w = self.shape
        data = np.ascontiguousarray(block, dtype=self.dtype)
        item = self.dtype.itemsize
        for d in range(D):
            view = memoryview(data[d]).cast("B")
            pos, done = self.offset + (d * h * w + row * w) * item, 0
            while done < len(view):  # pwrite may write less than asked
                done += os.pwrite(self._fd, view[done:], pos + done)

    def array(self) -> np.ndarray:
        """The written array, read-only (a read-only map cannot SIGBUS on a full disk)."""
        return np.load(self.path, mmap_mode="r")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# ---------------------------------------------------------------------------- COG


INT8_NOTE = (
    "int8 linear per band: value = q * scale + offset (GDAL band scale/offset); -128 = nodata"
)


def int8_params(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (scale, offset) mapping [lo, hi] onto [-127, 127]."""
    lo = np.where(np.isfinite(lo), lo, 0.0)
    hi = np.where(np.isfinite(hi), hi, 0.0)
    scale = np.maximum(hi - lo, 1e-12) / 254.0
    return scale.astype(np.float64), ((hi + lo) / 2).astype(np.float64)


def _quantize(src: Path, dst: Path, scale, offset) -> None:
    import rasterio

    with rasterio.open(src) as s:
        prof = s.profile | {"dtype": "int8", "nodata": INT8_NODATA}
        with rasterio.open(dst, "w", **prof) as d:
            for _, win in s.block_windows(1):
                x = s.read(window=win)  # (D, h, w)
                d.write(quantize_int8(x, scale[:, None, None], offset[:, None, None]), window=win)
            d.scales = tuple(float(v) for v in scale)
            d.offsets = tuple(float(v) for v in offset)


def _to_pixels(src: Path, dst: Path, pixel_grid: Grid) -> None:
    """Bilinear upsampling of the token map onto the pixel grid (GDAL warp, streamed)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.shutil import copy as rio_copy
    from rasterio.vrt import WarpedVRT

    with rasterio.open(src) as s, WarpedVRT(
        s, crs=s.crs, transform=affine_of(pixel_grid), width=pixel_grid.width,
        height=pixel_grid.height, resampling=Resampling.bilinear, nodata=float("nan"),
    ) as vrt:  # fmt: skip
        rio_copy(
            vrt, dst, driver="GTiff", tiled=True, blockxsize=256, blockysize=256,
            interleave="pixel", bigtiff="IF_SAFER",
        )  # fmt: skip


@dataclass(frozen=True)
class CogSpec:
    dtype: str = "float16"  # float16 | float32 | int8
    resolution: str = "token"  # token | pixel
    blocksize: int = 256
    compress: str = "deflate"


def write_cog(
    data: Path, out: Path, spec: CogSpec, stats: Scan, tags: Mapping, pixel_grid: Grid
) -> Path:
    """The dense COG from the intermediate ``data`` into ``out`` (a temporary name next
    to the final output; the caller renames it, or removes it on failure)."""
    import rasterio

    dst, temps, src = out, [], data
    try:
        if spec.resolution == "pixel":
            src = temp_path(dst, "px", ".tif")
            temps.append(src)
            _to_pixels(data, src, pixel_grid)
        extra = {}
        if spec.dtype == "int8":
            scale, offset = int8_params(stats.band_min, stats.band_max)
            q = temp_path(dst, "q", ".tif")
            temps.append(q)
            _quantize(src, q, scale, offset)
            src = q
            tags = {**tags, "RSFM_QUANTIZATION": INT8_NOTE}
        elif spec.dtype == "float16":
            extra["nbits"] = 16
        with rasterio.open(src, "r+") as ds:
            ds.update_tags(**{k: str(v) for k, v in tags.items()})
            for i in range(1, ds.count + 1):
                ds.set_band_description(i, f"emb_{i - 1:03d}")
        with rasterio.open(src) as s:
            cog_copy(s, out, spec.compress, spec.blocksize, **extra)
        return out
    finally:
        remove_quietly(*temps)


# ---------------------------------------------------------------------------- numpy


def write_npz(tmp: Path, npy: np.ndarray, grid: Grid, chips: Mapping[str, np.ndarray]) -> Path:
    """An uncompressed ``.npz`` streamed from the (D, h, w) array ``npy`` (a read-only
    map of :class:`NpyWriter`'s file) into ``tmp``."""
    with open(tmp, "wb") as f:
        np.savez(
            f,
            embedding=npy,
            valid=~np.isnan(npy[0]),
            transform=np.asarray(grid.transform, dtype=np.float64),
            crs=np.asarray(grid.crs or ""),
            **{f"chip_{k}": v for k, v in chips.items()},
        )
    return tmp
