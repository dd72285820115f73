"""One raster file: open it, describe it, say what it holds, read it onto a grid.

The layer under :mod:`rsfm_core.io`'s readers; every failure is a :class:`RasterError`
naming the file and saying what to do.

- :func:`open_info` / :class:`FileMeta`: cheap metadata (no pixel reads).
- :func:`dates_for`, :data:`DATE_TAGS`: acquisition dates, given or from tags.
- :func:`file_bands`: which sensor band each file band is (``bands=``, descriptions, or
  the sensor's order).
- :func:`read_onto`: bands of one file on a target grid — a plain boundless read when
  the file is pixel-aligned with it, else a windowed read and a GDAL warp with the
  :data:`RESAMPLING` policy. Validity is per pixel over all bands read.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..sample import Grid, to_days
from ..sensors import Sensor, SensorError
from .tiling import grid_bounds, overlaps, pixel_offset, same_crs, source_window

log = logging.getLogger(__name__)


class RasterError(ValueError):
    """Bad raster input or output; the message names the file and says what to do."""


class ImplausibleValuesWarning(UserWarning):
    """A file's data type or values do not fit its sensor (e.g. 8-bit data for a sensor
    coded as reflectance x 10000): it reads, but probably wrongly. Once per file."""


class BandOrderWarning(UserWarning):
    """A file's bands were taken to be in the sensor's order because it has the sensor's
    band count and neither ``bands=`` nor band descriptions say otherwise. Once per file;
    ``warnings.simplefilter("error", BandOrderWarning)`` makes it an error."""


_WARNED: set[tuple[str, str]] = set()  # (file, what): each warning once per file


def warn_once(path, what: str, message: str, category: type[Warning]) -> None:
    key = (str(path), what)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, category, stacklevel=4)


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


# ---------------------------------------------------------------------------- reading: files

_PLACEHOLDER_CRS = "EPSG:3857"  # stands in for "no CRS" on both sides of a pure-affine warp


def _is_remote(path: str | os.PathLike) -> bool:
    s = str(path)
    return s.startswith("/vsi") or "://" in s


@contextmanager
def open_raster(path: str | os.PathLike):
    """rasterio.open with every failure turned into a RasterError naming the file."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    if not _is_remote(path):
        p = Path(path)
        if not p.exists():
            raise RasterError(f"{p}: file not found; check the path")
        if p.is_dir():
            raise RasterError(f"{p}: is a folder, not a raster; pass the raster file inside it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioError as e:
        raise RasterError(
            f"{path}: not a readable raster ({e}); check that it is a complete GeoTIFF "
            "(re-download or re-export it)"
        ) from e
    with ds:
        yield ds


def read_pixels(ds, path, indexes: list[int], window: tuple[int, int, int, int]) -> np.ndarray:
    """``ds.read`` of a (row, col, height, width) window; a truncated or corrupt file
    often opens fine and fails only here."""
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    r, c, h, w = window
    try:
        return ds.read(indexes, window=Window(c, r, w, h))
    except RasterioError as e:
        cause = e.__cause__ or e
        raise RasterError(
            f"{path}: reading pixels failed ({cause}); the file is truncated or corrupt — "
            "re-download or re-export it"
        ) from e


def open_info(path: str | os.PathLike) -> dict:
    """Cheap metadata of a raster (no pixel reads): ``count``, ``dtype``, ``grid`` (and its
    ``crs``, ``res``, ``bounds``), ``nodata``, ``descriptions``, ``tags``,
    ``block_shape`` (rows, cols), ``tiled``, ``compression``, ``overviews``, ``driver``,
    ``has_transform`` (False: GDAL found no geotransform and gave the identity, i.e.
    1-unit pixels at (0, 0)), ``gcps`` (ground control points instead). A geotransform
    with a zero pixel size raises."""
    with open_raster(path) as ds:
        grid = grid_from_dataset(ds)
        t = ds.transform
        if t.a * t.e - t.b * t.d == 0:
            raise RasterError(
                f"{path}: its geotransform {tuple(round(v, 6) for v in grid.transform)} has a "
                "zero pixel size, so pixels have no extent on the ground; fix it "
                "(gdal_edit.py -a_gt X0 DX 0 Y0 0 -DY) or re-export the file"
            )
        return {
            "has_transform": not t.is_identity,
            "gcps": bool(ds.gcps[0]),
            "path": str(path),
            "driver": ds.driver,
            "count": ds.count,
            "dtype": ds.dtypes[0],
            "grid": grid,
            "crs": grid.crs,
            "res": grid.res,
            "bounds": grid_bounds(grid),
            "nodata": ds.nodata,
            "descriptions": tuple(ds.descriptions),
            "tags": ds.tags(),
            "block_shape": tuple(ds.block_shapes[0]),
            "tiled": bool(ds.profile.get("tiled", False)),
            "compression": ds.compression.value if ds.compression else None,
            "overviews": ds.overviews(1),
        }


@dataclass(frozen=True)
class FileMeta:
    """What :func:`open_info` says about one file, kept while its modality is read."""

    path: Path | str
    grid: Grid
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple
    tags: dict
    has_transform: bool = True
    gcps: bool = False

    @staticmethod
    def of(path) -> FileMeta:
        i = open_info(path)
        return FileMeta(
            _as_path(path),
            i["grid"],
            i["count"],
            i["dtype"],
            i["nodata"],
            i["descriptions"],
            i["tags"],
            i["has_transform"],
            i["gcps"],
        )


# ---------------------------------------------------------------------------- reading: dates

DATE_TAGS = (
    "RSFM_DATE",
    "ACQUISITION_DATE",
    "DATE_ACQUIRED",
    "SENSING_TIME",
    "DATE",
    "DATETIME",
    "TIFFTAG_DATETIME",  # last: often the file's creation time, not the acquisition
)


def _as_days(d) -> int:
    if isinstance(d, np.datetime64):
        d = str(d.astype("datetime64[D]"))
    if isinstance(d, np.integer):
        d = int(d)
    return to_days(d)


def _tag_date(meta: FileMeta) -> int | None:
    tags = {k.upper(): v for k, v in meta.tags.items()}
    for key in DATE_TAGS:
        if key in tags:
            v = str(tags[key]).strip()
            if re.match(r"^\d{4}:\d{2}:\d{2}", v):  # TIFF's 'YYYY:MM:DD HH:MM:SS'
                v = v[:10].replace(":", "-")
            try:
                return _as_days(v)
            except (ValueError, TypeError):
                raise RasterError(
                    f"{meta.path}: tag {key}={tags[key]!r} is not a date; pass dates=[...] "
                    "(ISO strings, datetime.date or int days since 1970-01-01)"
                ) from None
    return None


def dates_for(dates, files: list[list[FileMeta]], timeless_ok: bool) -> list[int]:
    """One date (days since 1970) per time step: given, or read from the files' tags."""
    if dates is None:
        out = []
        for group in files:
            d = next((x for m in group if (x := _tag_date(m)) is not None), None)
            if d is None and not timeless_ok:
                raise RasterError(
                    f"{group[0].path}: no acquisition date in its tags (looked for "
                    f"{', '.join(DATE_TAGS)}); pass dates=[...] with one date per time step"
                )
            out.append(0 if d is None else d)  # labels/masks (sensor=None) may be timeless
        return out
    if isinstance(dates, (str, int, _dt.date, np.datetime64)):
        dates = [dates]
    dates = list(dates)
    if len(dates) != len(files):
        raise RasterError(
            f"{files[0][0].path}: {len(dates)} dates for {len(files)} time steps in paths; "
            "give one date per entry of paths"
        )
    out = []
    for group, d in zip(files, dates):
        try:
            out.append(_as_days(d))
        except (ValueError, TypeError) as e:
            raise RasterError(f"{group[0].path}: bad date {d!r} ({e}); fix dates=") from None
    return out


# ---------------------------------------------------------------------------- reading: bands


def _as_path(p) -> Path | str:
    return str(p) if _is_remote(p) else Path(p)  # Path() would fold 's3://' to 's3:/'


def normalise_paths(paths) -> list[list[Path | str]]:
    """``paths`` as one list of files per date (a bare path: one date, one file)."""
    if isinstance(paths, (str, os.PathLike)):
        return [[_as_path(paths)]]
    out = [
        [_as_path(e)] if isinstance(e, (str, os.PathLike)) else [_as_path(p) for p in e]
        for e in paths
    ]
    if not out or not all(out):
        raise RasterError(
            f"read_modality: paths {paths!r} has an empty entry; give >= 1 file per date"
        )
    return out


def normalise_bands(bands, n_files: int, where: Path) -> list[list | None]:
    """``bands=`` as one list of names per file of a date (None: from the file)."""
    if bands is None:
        return [None] * n_files
    if isinstance(bands, str):
        bands = [bands]
    flat = all(b is None or isinstance(b, str) for b in bands)
    if n_files == 1 and (flat or len(bands) == 1):
        return [list(bands)] if flat else [list(bands[0])]
    if (
        n_files > 1 and flat and len(bands) == n_files
    ):  # one band per file (BigEarthNet-style layout)
        return [[b] for b in bands]
    if n_files > 1 and len(bands) == n_files:
        return [[b] if isinstance(b, str) else list(b) for b in bands]
    raise RasterError(
        f"{where}: bands= must give one list of names per file of a date ({n_files} files), "
        f"or one name per file for single-band files; got {bands!r}"
    )


def _resolve(sensor: Sensor | None, name: str, path: Path) -> str:
    if sensor is None:
        return str(name)
    try:
        return sensor.resolve(name)
    except SensorError as e:
        raise RasterError(f"{path}: {e}; fix bands= (or the file's band descriptions)") from None


def file_bands(meta: FileMeta, given, sensor: Sensor | None, single: bool) -> list[str | None]:
    """Band names of one file in file order (None = skip that band): ``bands=`` if given,
    else the file's band descriptions, else the sensor's order when the counts match."""
    if given is not None:
        if len(given) != meta.count:
            raise RasterError(
                f"{meta.path}: bands= names {len(given)} bands but the file has {meta.count}; "
                "give one name per file band, in file order (None skips a band)"
            )
        return [None if b is None else _resolve(sensor, b, meta.path) for b in given]
    desc = meta.descriptions
    if all(desc):
        try:
            names = [_resolve(sensor, d, meta.path) for d in desc]
            if len(set(names)) == len(names):
                return names  # descriptions are explicit metadata: they win over the count
        except RasterError:
            pass
    if sensor is None:
        return [f"band{i + 1}" for i in range(meta.count)]
    if single and meta.count == len(sensor.bands):
        if meta.count > 1:
            warn_once(
                meta.path, "band order",
                f"{meta.path}: no bands= and no band descriptions: its {meta.count} bands are "
                f"taken to be {sensor.name}'s, in its order ({', '.join(sensor.band_names)}). "
                "If the file stores them in another order (EuroSAT-MS keeps B8A last), pass "
                "bands=[...] (rsfm embed: --bands NAME=B1,B2,...)",
                BandOrderWarning,
            )  # fmt: skip
        return list(sensor.band_names)
    raise RasterError(
        f"{meta.path}: {meta.count} bands, but sensor {sensor.name!r} has {len(sensor.bands)} "
        f"({', '.join(sensor.band_names)}) and the file's band descriptions {desc} do not name "
        "them; pass bands=[...] with one name per file band, in file order"
    )


# ---------------------------------------------------------------------------- reading: one file

# Resampling per kind of values: (upsampling or equal pixel size, downsampling).
# SAR is resampled in linear power (dB -> power -> warp -> dB): averaging dB would
# average log-speckle, which biases dark. "raw" = labels and other categorical rasters.
RESAMPLING = {
    "optical": ("bilinear", "average"),
    "hyperspectral": ("bilinear", "average"),
    "sar": ("bilinear", "average"),
    "raw": ("nearest", "mode"),
    "mask": ("nearest", "max"),  # cloud/QA rasters: a target pixel is cloudy if any source is
}


def _resampling(method):
    from rasterio.enums import Resampling

    if isinstance(method, Resampling):
        return method
    try:
        return Resampling[str(method).lower()]
    except KeyError:
        raise ValueError(
            f"resampling={method!r} is not a GDAL method; use one of "
            f"{', '.join(r.name for r in Resampling)}"
        ) from None


@dataclass(frozen=True)
class ReadHow:
    """How to read the files of one modality."""

    kind: str  # a key of RESAMPLING
    nodatas: tuple = ()  # raw values that mark nodata (NaN/inf always do)
    resampling: object = None  # None: RESAMPLING[kind]
    linear: tuple | None = None  # (to, from) linear domain for warping (SAR in dB)


def _to_float(raw: np.ndarray, nodatas: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``[n, H, W]`` as float32 with NaN at invalid pixels, and validity ``[H, W]``:
    a pixel is invalid when ANY of its bands is nodata, NaN or inf."""
    x = raw.astype(np.float32)
    bad = ~np.isfinite(x)
    for nd in nodatas:
        if nd is not None and not np.isnan(nd):
            bad |= raw == nd  # compared in the file's dtype (upcast), not after float32
    bad_px = bad.any(axis=0)
    x[:, bad_px] = np.nan
    return x, ~bad_px


def _read_aligned(ds, path, idx, off: tuple[int, int], dst: Grid):
    """Plain (boundless) read: ``dst`` pixel (0, 0) is source pixel ``off``."""
    dr, dc = off
    r0, r1 = max(dr, 0), min(dr + dst.height, ds.height)
    c0, c1 = max(dc, 0), min(dc + dst.width, ds.width)
    raw = np.zeros((len(idx), dst.height, dst.width), dtype=ds.dtypes[0])
    covered = np.zeros((dst.height, dst.width), dtype=bool)
    if r1 > r0 and c1 > c0:
        part = (slice(r0 - dr, r1 - dr), slice(c0 - dc, c1 - dc))
        raw[(slice(None), *part)] = read_pixels(ds, path, idx, (r0, c0, r1 - r0, c1 - c0))
        covered[part] = True
    return raw, covered


def _warp(src, src_grid: Grid, dst: Grid, method, fill: float) -> np.ndarray:
    from rasterio.warp import reproject

    src_crs = src_grid.crs or dst.crs or _PLACEHOLDER_CRS  # no CRS: same as the other side
    out = np.full((src.shape[0], dst.height, dst.width), fill, dtype=src.dtype)
    nd = np.nan if np.isnan(fill) else None
    reproject(
        src,
        out,
        src_transform=affine_of(src_grid),
        src_crs=src_crs,
        src_nodata=nd,
        dst_transform=affine_of(dst),
        dst_crs=dst.crs or src_crs,
        dst_nodata=nd,
        resampling=_resampling(method),
        init_dest_nodata=False,
    )
    return out


def _read_warped(ds, meta: FileMeta, idx, dst: Grid, how: ReadHow):
    """Resample the part of the file under ``dst`` (read with a kernel margin) onto it.
    A target pixel is valid when its resampled value is finite and at least half of its
    footprint is valid source (nearest source pixel when upsampling)."""
    win, scale = source_window(meta.grid, dst, margin=3)
    down = scale > 1.2  # source pixels clearly finer than the target: area-average them
    method = how.resampling or RESAMPLING[how.kind][down]
    if win is None:
        empty = np.full((len(idx), dst.height, dst.width), np.nan, dtype=np.float32)
        return empty, np.zeros((dst.height, dst.width), dtype=bool), method
    x, ok = _to_float(read_pixels(ds, meta.path, idx, win), how.nodatas)
    src = meta.grid.window(*win)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = how.linear[0](x) if how.linear else x
        vals = _warp(x, src, dst, method, np.nan)
        vals = how.linear[1](vals) if how.linear else vals
    frac = _warp(ok.astype(np.float32)[None], src, dst, "average" if down else "nearest", 0.0)
    good = (frac[0] >= 0.5) & np.isfinite(vals).all(axis=0)
    if down:  # GDAL's average also fills target pixels that only touch the source's edge
        inside = _warp(np.ones((1, *ok.shape), np.float32), src, dst, "nearest", 0.0)
        good &= inside[0] > 0.5
    vals[:, ~good] = np.nan
    return vals, good, method


def read_onto(meta: FileMeta, idx: list[int], dst: Grid, how: ReadHow):
    """Bands ``idx`` (1-based) of one file on ``dst``: float32 raw units ``[n, H, W]`` (NaN
    where invalid), validity ``[H, W]``, and the resampling used ("none": plain read)."""
    with open_raster(meta.path) as ds:
        off = pixel_offset(dst, meta.grid)
        if off is None:
            vals, good, method = _read_warped(ds, meta, idx, dst, how)
            log.debug("%s: resampled onto the reference grid with %s", meta.path, method)
            return vals, good, str(getattr(method, "name", method))
        raw, covered = _read_aligned(ds, meta.path, idx, off, dst)
    x, ok = _to_float(raw, how.nodatas)
    x[:, ~covered] = np.nan
    return x, ok & covered, "none"


# ---------------------------------------------------------------------------- reading: checks


def _short(crs: str | None) -> str:
    s = str(crs)
    return s if len(s) <= 60 else s[:57] + "..."


def _fmt(b: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def check_georeferenced(meta: FileMeta, allow_no_crs: bool) -> None:
    """A file GDAL found no geotransform in (it reads as 1-unit pixels at (0, 0)) is
    refused unless ``allow_no_crs`` takes pixel coordinates as they are."""
    crs = meta.grid.crs
    if not meta.has_transform and not allow_no_crs:
        if meta.gcps:
            raise RasterError(
                f"{meta.path}: georeferenced by ground control points only (no geotransform); "
                "warp it onto a grid first (gdalwarp -t_srs EPSG:...)"
            )
        if crs is not None:
            raise RasterError(
                f"{meta.path}: has a CRS ({_short(crs)}) but no geotransform, so its pixels would "
                "be taken as 1-unit squares at (0, 0) and land in the wrong place; set one "
                "(gdal_edit.py -a_ullr ULX ULY LRX LRY, or -a_gt) or pass allow_no_crs=True "
                "to use pixel coordinates as they are"
            )


def check_against(
    meta: FileMeta, ref: Grid, ref_name: str, *, allow_no_crs: bool, reproject: bool
) -> None:
    """CRS and overlap of one file against the reference grid."""
    check_georeferenced(meta, allow_no_crs)
    crs = meta.grid.crs
    if crs is None and not allow_no_crs:
        raise RasterError(
            f"{meta.path}: has no CRS (not georeferenced); set one (gdal_edit.py -a_srs "
            "EPSG:...) or pass allow_no_crs=True to take its transform as is"
        )
    if crs and ref.crs and not same_crs(crs, ref.crs) and not reproject:
        raise RasterError(
            f"{meta.path}: CRS {_short(crs)} differs from {ref_name} ({_short(ref.crs)}); "
            "pass reproject=True to reproject on read, or warp the file first (gdalwarp -t_srs)"
        )
    fb = grid_bounds(meta.grid, ref.crs if crs and ref.crs else None)
    rb = grid_bounds(ref)
    if not overlaps(fb, rb):
        raise RasterError(
            f"{meta.path}: does not overlap {ref_name}: bounds {_fmt(fb)} vs {_fmt(rb)} "
            f"(CRS {_short(ref.crs)}); check that the files show the same place"
        )


def check_dtype(meta: FileMeta, sensor: Sensor | None) -> None:
    kind = np.dtype(meta.dtype).kind
    if kind == "c":
        raise RasterError(
            f"{meta.path}: complex {meta.dtype} pixels (SLC?) are not supported; convert to "
            "backscatter in dB first, or pass dtype_check=False"
        )
    if sensor is not None and sensor.is_sar and not sensor.to_db and sensor.scale == 1.0:
        if kind in "iub":
            raise RasterError(
                f"{meta.path}: {meta.dtype} integers for {sensor.name!r}, which expects "
                "backscatter in dB as floats; for linear power use 'sentinel1_grd_linear', for "
                "scaled dB a sensor with that scale, or pass dtype_check=False"
            )


def check_scaled(x: np.ndarray, ok: np.ndarray, sensor: Sensor, metas: list[FileMeta]) -> None:
    """Float files for an integer-coded optical sensor (reflectance x 10000) that hold
    values already in 0..1 would come out 10000x too dark: refuse them."""
    if sensor.is_sar or sensor.scale >= 0.01:
        return
    if not any(np.dtype(m.dtype).kind == "f" for m in metas):
        return
    vals = x[:, ok]
    if vals.size == 0:
        return
    if np.nanpercentile(vals[:, :: max(1, vals.shape[1] // 4096)], 99) < 1.5:
        raise RasterError(
            f"{metas[0].path}: float values look like reflectance already in 0..1, but sensor "
            f"{sensor.name!r} expects integers x {1 / sensor.scale:g}; use a sensor with scale 1 "
            "(dataclasses.replace(sensor, scale=1.0)) or pass dtype_check=False"
        )


_SAMPLE = 8192  # values looked at per file for the plausibility check


def check_plausible(meta: FileMeta, raw: np.ndarray, sensor: Sensor) -> None:
    """Warn (:class:`ImplausibleValuesWarning`, once per file) when the file's values
    cannot be right for ``sensor``: optical reflectance x 10000 that reads almost black
    (8-bit data: ~40 x too dark) or far above 1, brightness above 1 (16-bit data for an
    8-bit sensor), SAR "dB" that is never negative (linear power), linear power that is
    negative (dB). ``raw``: file values ``[n, H, W]``, NaN where invalid."""
    if (str(meta.path), "values") in _WARNED:
        return
    flat = raw.reshape(-1)
    vals = flat[:: max(1, flat.size // _SAMPLE)]
    vals = vals[np.isfinite(vals)]
    if vals.size < 16:
        return  # nothing (valid) to judge in this window
    p1, p99 = (float(v) for v in np.percentile(vals, [1, 99]))
    s, why = sensor, None
    kind = np.dtype(meta.dtype)
    if s.is_sar and s.to_db:
        if p1 < 0:
            why = (f"holds negative values ({p1:.3g} at the 1st percentile), but {s.name!r} expects "
                   "linear power (>= 0); for backscatter in dB use 'sentinel1_grd'")  # fmt: skip
    elif s.is_sar:
        db = vals * s.scale + s.offset
        if float(np.mean(db >= 0)) > 0.95:
            why = (f"has {float(np.mean(db >= 0)):.0%} non-negative values, but {s.name!r} expects "
                   "backscatter in dB (mostly negative); for linear power use "
                   "'sentinel1_grd_linear'")  # fmt: skip
        elif p99 * s.scale + s.offset > 40 or p1 * s.scale + s.offset < -80:
            why = f"ranges {p1:.3g}..{p99:.3g}, far outside backscatter in dB"
    elif kind.kind == "f" and s.scale < 0.01 and p99 < 1.5:
        return  # reflectance already in 0..1: check_scaled refuses it with its own message
    else:
        lo, hi = p1 * s.scale + s.offset, p99 * s.scale + s.offset
        unit = "reflectance" if s.units == "reflectance" else s.units
        coded = f" x {1 / s.scale:g}" if s.scale < 0.01 else ""
        if s.units == "reflectance" and hi < 0.03:
            bits = f"{kind.name} data " if kind.itemsize == 1 else ""
            why = (f"{bits}reads as {unit} below {hi:.3g} for 99% of valid pixels: too dark for "
                   f"{s.name!r}, which expects {unit}{coded} (8-bit data reads ~40 x too dark); "
                   "rescale the file or use a sensor with its scale")  # fmt: skip
        elif lo > 1.5 or hi > 2.5:
            why = (f"reads as {unit} up to {hi:.3g}: too bright for {s.name!r} ({unit}{coded}); "
                   f"the file holds another scale ({kind.name} data?): rescale it or use a "
                   "sensor with its scale")  # fmt: skip
    if why is not None:
        warn_once(meta.path, "values", f"{meta.path}: {why}", ImplausibleValuesWarning)
