"""Reading modalities from GeoTIFFs onto one grid: :func:`read_modality`, :func:`read_sample`.

- :func:`read_modality` reads one sensor's files of one place — one entry per date, each
  a file or a list of band-group files — into an unbatched :class:`ModalityData`:
  pixels ``[T, C, H, W]`` float32 in physical units (``Sensor.to_physical``), the C axis
  in the SENSOR's band order whatever the file order, valid ``[T, H, W]``, dates ``[T]``.
- Validity is per pixel over all bands: a pixel is invalid when ANY band of that date is
  nodata (the ``nodata=`` override, else the file's and the sensor's nodata), NaN/inf,
  outside the file, or cloudy; invalid pixels hold 0.0.
- The reference grid is ``grid=`` or the finest file grid. Files pixel-aligned with it
  are read plainly (boundless: outside = invalid); others (20/60 m bands, shifted or
  other-CRS files with ``reproject=True``) are resampled by the :data:`RESAMPLING`
  policy (``resampling=`` overrides). Only the window's part of each file is read.
- :func:`read_sample` reads several modalities onto one ground grid; a modality whose
  pixels are a whole multiple of the reference pixel keeps them when that divides the
  window (same extent, fewer pixels), else it is resampled onto the reference grid.
- :func:`block_windows` gives block-aligned read windows for streaming.

Every bad input raises :class:`RasterError` naming the file and saying what to do; the
per-file work (opening, band identification, warping, checks) is in :mod:`.raster`.
Details, tables and examples: docs/io.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .. import sensors
from ..sample import Grid, ModalityData
from ..sensors import Sensor, SensorError
from .qa import decoder as qa_decoder
from .raster import (
    FileMeta,
    RasterError,
    ReadHow,
    check_against,
    check_dtype,
    check_georeferenced,
    check_plausible,
    check_scaled,
    dates_for,
    file_bands,
    normalise_bands,
    normalise_paths,
    open_info,
    read_onto,
)
from .tiling import Window, block_aligned_windows, same_crs

log = logging.getLogger(__name__)

__all__ = ["block_windows", "read_modality", "read_sample"]


def block_windows(path: str | os.PathLike, target: int = 512) -> list[Window]:
    """Read windows ``(row, col, height, width)`` of ``path`` aligned to its internal
    blocks, each a multiple of the block size near ``target`` pixels a side (see
    :func:`rsfm_core.io.tiling.block_aligned_windows`)."""
    info = open_info(path)
    g = info["grid"]
    return block_aligned_windows(g.height, g.width, info["block_shape"], target)


# ---------------------------------------------------------------------------- reading: modalities


@dataclass(frozen=True)
class _Opts:
    resampling: object = None
    reproject: bool = False
    nodata: float | None = None
    dtype_check: bool = True
    require_valid: bool = False
    allow_no_crs: bool = False


@dataclass
class _Spec:
    """One modality, normalised: files ``[T][F]``, band names per file band, output bands."""

    files: list[list[FileMeta]]
    layout: list[list[list[str | None]]]
    sensor: Sensor | None
    bands: tuple[str, ...]
    dates: list[int]
    clouds: list
    opts: _Opts

    @property
    def metas(self) -> list[FileMeta]:
        return [m for group in self.files for m in group]

    def how(self, meta: FileMeta) -> ReadHow:
        """How to read ``meta``: nodata is the ``nodata=`` override, else the file's AND the
        sensor's (S2's 0 is nodata even where a file does not say so)."""
        s, o = self.sensor, self.opts
        if o.nodata is not None:
            nodatas = (o.nodata,)
        else:
            nodatas = (meta.nodata, s.nodata if s else None)
        linear = None
        if s is not None and s.is_sar and not s.to_db:
            linear = (
                lambda x: 10.0 ** ((x * s.scale + s.offset) / 10.0),
                lambda y: (10.0 * np.log10(y) - s.offset) / s.scale,
            )
        return ReadHow(s.kind if s else "raw", nodatas, o.resampling, linear)


def _band_order(files, layout, sensor: Sensor | None) -> tuple[str, ...]:
    """Output bands: the sensor's order (never the files'); every date must give the same set."""
    sets = []
    for group, names in zip(files, layout):
        seen: list[str] = []
        for meta, file_names in zip(group, names):
            for n in file_names:
                if n is not None and n in seen:
                    raise RasterError(
                        f"{meta.path}: band {n} is given twice for one date; fix bands="
                    )
                seen += [n] if n is not None else []
        sets.append(seen)
    for group, seen in zip(files, sets):
        if set(seen) != set(sets[0]):
            raise RasterError(
                f"{group[0].path}: this date has bands {sorted(seen)}, the first date "
                f"{sorted(sets[0])}; every date must give the same bands"
            )
    if not sets[0]:
        raise RasterError(f"{files[0][0].path}: no bands selected (all None in bands=)")
    if sensor is None:
        return tuple(sets[0])
    return tuple(b for b in sensor.band_names if b in sets[0])


def _make_spec(paths, sensor, dates, bands, cloud_masks, opts: _Opts) -> _Spec:
    files = [[FileMeta.of(p) for p in group] for group in normalise_paths(paths)]
    for group in files:
        for m in group:
            check_georeferenced(m, opts.allow_no_crs)
    first = files[0][0].path
    try:
        sens = None if sensor is None else sensors.get(sensor)
    except SensorError as e:
        raise RasterError(f"{first}: {e}") from None
    layout = []
    for group in files:
        given = normalise_bands(bands, len(group), group[0].path)
        layout.append([file_bands(m, g, sens, len(group) == 1) for m, g in zip(group, given)])
        for m in group:
            if opts.dtype_check:
                check_dtype(m, sens)
    out = _band_order(files, layout, sens)
    T = len(files)
    if cloud_masks is None or callable(cloud_masks):
        clouds = [cloud_masks] * T
    elif isinstance(cloud_masks, (str, os.PathLike, tuple, Mapping)) and T == 1:
        clouds = [cloud_masks]
    else:
        clouds = list(cloud_masks)
        if len(clouds) != T:
            raise RasterError(
                f"{first}: {len(clouds)} cloud masks for {T} dates; give one per date"
            )
    return _Spec(files, layout, sens, out, dates_for(dates, files, sens is None), clouds, opts)


def _cloudy(entry, phys: np.ndarray, dst: Grid, ref: Grid, ref_name: str, opts: _Opts):
    """Cloud mask of one date on ``dst``: a callable on the physical pixels ``[C, H, W]``
    (NaN where invalid), a raster path (nonzero = cloudy; band 1), or ``(path, fn)`` with
    ``fn(qa [H, W] float32) -> bool`` for QA codes, or the name of a decoder of
    :mod:`.qa` (also as ``{"path": ..., "qa": name}``). Pixels outside the raster are
    cloudy."""
    if callable(entry):
        with np.errstate(invalid="ignore"):
            cloudy, where = np.asarray(entry(phys), dtype=bool), repr(entry)
    else:
        if isinstance(entry, Mapping):  # {path, qa}: the YAML-friendly form
            entry = (entry.get("path"), entry.get("qa"))
        path, fn = entry if isinstance(entry, (tuple, list)) else (entry, None)
        if isinstance(fn, str):
            try:
                fn = qa_decoder(fn)
            except ValueError as e:
                raise RasterError(f"{path}: {e}") from None
        meta = FileMeta.of(path)
        check_against(meta, ref, ref_name, allow_no_crs=opts.allow_no_crs, reproject=opts.reproject)
        qa, inside, _ = read_onto(meta, [1], dst, ReadHow("mask"))
        qa = np.nan_to_num(qa[0], nan=0.0)
        cloudy = np.asarray(fn(qa), dtype=bool) if fn else qa != 0
        cloudy, where = cloudy | ~inside, str(path)
    if cloudy.shape != (dst.height, dst.width):
        raise RasterError(
            f"{where}: cloud mask has shape {cloudy.shape}, expected {(dst.height, dst.width)}"
        )
    return cloudy


def _read_frame(spec: _Spec, t: int, dst: Grid, ref: Grid, ref_name: str, methods: dict):
    """Date ``t`` on ``dst``: physical pixels ``[C, H, W]`` (0 where invalid), valid ``[H, W]``."""
    index = {b: i for i, b in enumerate(spec.bands)}
    x = np.full((len(spec.bands), dst.height, dst.width), np.nan, dtype=np.float32)
    ok = np.ones((dst.height, dst.width), dtype=bool)
    for meta, names in zip(spec.files[t], spec.layout[t]):
        pairs = [(i + 1, index[n]) for i, n in enumerate(names) if n is not None]
        if pairs:
            idx, how = [p[0] for p in pairs], spec.how(meta)
            vals, good, methods[str(meta.path)] = read_onto(meta, idx, dst, how)
            if spec.sensor is not None and spec.opts.dtype_check:
                check_plausible(meta, vals, spec.sensor)
            x[[p[1] for p in pairs]] = vals
            ok &= good
    if spec.sensor is not None and spec.opts.dtype_check:
        check_scaled(x, ok, spec.sensor, spec.files[t])
    with np.errstate(invalid="ignore", divide="ignore"):
        phys = spec.sensor.to_physical(x) if spec.sensor is not None else x
    ok &= np.isfinite(phys).all(axis=0)
    if spec.clouds[t] is not None:
        ok &= ~_cloudy(spec.clouds[t], phys, dst, ref, ref_name, spec.opts)
    phys[:, ~ok] = 0.0
    return phys, ok


def _read_on_grid(spec: _Spec, ref: Grid, ref_name: str, dst: Grid, window) -> ModalityData:
    for meta in spec.metas:
        check_against(
            meta, ref, ref_name, allow_no_crs=spec.opts.allow_no_crs, reproject=spec.opts.reproject
        )
    methods: dict[str, str] = {}
    frames = [_read_frame(spec, t, dst, ref, ref_name, methods) for t in range(len(spec.files))]
    pixels = torch.from_numpy(np.stack([f[0] for f in frames]))  # (T, C, H, W)
    valid = torch.from_numpy(np.stack([f[1] for f in frames]))  # (T, H, W)
    if spec.opts.require_valid and not bool(valid.any()):
        names = ", ".join(str(m.path) for m in spec.metas[:4])
        raise RasterError(
            f"all-nodata window {tuple(window)} in file {names}: every pixel is nodata, NaN or "
            "cloudy; choose another window or pass require_valid=False"
        )
    return ModalityData(
        pixels=pixels,
        valid=valid,
        dates=torch.tensor(spec.dates, dtype=torch.int64),
        sensor=spec.sensor.name if spec.sensor is not None else "raw",
        bands=spec.bands,
        grid=dst,
        meta={
            "paths": [[str(m.path) for m in g] for g in spec.files],
            "window": tuple(window),
            "reference": ref_name,
            "resampling": methods,
        },
    )


def _reference(metas: list[FileMeta], grid: Grid | None) -> tuple[Grid, str]:
    """``grid`` if given, else the finest grid among the files in the first file's CRS."""
    if grid is not None:
        return grid, "the reference grid (grid=)"
    cands = [m for m in metas if same_crs(m.grid.crs, metas[0].grid.crs)]
    finest = min(m.grid.res[0] * m.grid.res[1] for m in cands)
    best = next(m for m in cands if m.grid.res[0] * m.grid.res[1] <= finest * (1 + 1e-6))
    return best.grid, str(best.path)  # ties (within float noise): the first file


def _window(window, ref: Grid) -> Window:
    if window is None:
        return (0, 0, ref.height, ref.width)
    if len(window) != 4 or not all(isinstance(v, (int, np.integer)) for v in window):
        raise ValueError(f"window must be (row, col, height, width) ints, got {window!r}")
    r, c, h, w = (int(v) for v in window)
    if h <= 0 or w <= 0:
        raise ValueError(f"window {window!r}: height and width must be positive")
    return (r, c, h, w)


def read_modality(
    paths,
    sensor: str | Sensor | None,
    dates=None,
    *,
    bands=None,
    window: Window | None = None,
    grid: Grid | None = None,
    resampling=None,
    reproject: bool = False,
    cloud_masks=None,
    nodata: float | None = None,
    dtype_check: bool = True,
    require_valid: bool = False,
    allow_no_crs: bool = False,
) -> ModalityData:
    """Read one modality of one place: unbatched ``ModalityData`` with pixels
    ``[T, C, H, W]`` float32 in physical units, valid ``[T, H, W]``, dates ``[T]``.

    ``paths``: one entry per date, each a path or a list of paths (band groups such as
    S2 10/20/60 m files, or one file per band). ``bands``: names per file band, nested
    like one date's file list (None entries skip a file band); omitted: the file's band
    descriptions, else the sensor's order when a single file has the sensor's band count.
    The C axis follows the sensor's band order. ``sensor=None`` reads labels/masks as
    they are (no scaling, nearest/mode resampling, timeless dates allowed).
    ``dates``: date-likes, one per entry of ``paths``; None reads them from the tags
    (:data:`DATE_TAGS`). ``window``: (row, col, height, width) in pixels of the reference
    grid (``grid``, else the finest file grid); parts past the edge come back invalid.
    See docs/io.md for validity, resampling and the errors raised (all RasterError).
    """
    opts = _Opts(resampling, reproject, nodata, dtype_check, require_valid, allow_no_crs)
    spec = _make_spec(paths, sensor, dates, bands, cloud_masks, opts)
    ref, ref_name = _reference(spec.metas, grid)
    win = _window(window, ref)
    return _read_on_grid(spec, ref, ref_name, ref.window(*win), win)


_ENTRY_KEYS = {
    "paths", "sensor", "dates", "bands", "resampling", "reproject", "cloud_masks", "nodata",
    "dtype_check", "require_valid", "allow_no_crs",
}  # fmt: skip


def _entry(name: str, entry, reproject: bool, allow_no_crs: bool) -> _Spec:
    """A read_sample entry (dict of read_modality arguments, or (paths, sensor[, dates]))."""
    if isinstance(entry, Mapping):
        kw = dict(entry)
    elif isinstance(entry, (tuple, list)) and len(entry) in (2, 3):
        kw = dict(zip(("paths", "sensor", "dates"), entry))
    else:
        raise ValueError(
            f"read_sample: modality {name!r} must be a dict or (paths, sensor[, dates])"
        )
    unknown = set(kw) - _ENTRY_KEYS
    if unknown or "paths" not in kw or "sensor" not in kw:
        raise ValueError(
            f"read_sample: modality {name!r} needs paths and sensor; unknown keys "
            f"{sorted(unknown)} (window and grid are per sample)"
        )
    opts = _Opts(
        kw.get("resampling"),
        kw.get("reproject", reproject),
        kw.get("nodata"),
        kw.get("dtype_check", True),
        kw.get("require_valid", False),
        kw.get("allow_no_crs", allow_no_crs),
    )
    return _make_spec(
        kw["paths"], kw["sensor"], kw.get("dates"), kw.get("bands"), kw.get("cloud_masks"), opts
    )


def _native_grid(name: str, spec: _Spec, ref: Grid, base: Grid) -> Grid:
    """``base`` coarsened by the whole factor k between this modality's finest pixel and
    the reference pixel, when k divides the window; else ``base`` (resampled)."""
    own, _ = _reference(spec.metas, None)
    if not same_crs(own.crs, ref.crs) or own.transform[1] or own.transform[3]:
        return base
    k = own.res[0] / ref.res[0]
    kr = int(round(k))
    if kr <= 1 or abs(k - kr) > 1e-3 * k or abs(own.res[1] / ref.res[1] - kr) > 1e-3 * k:
        return base
    if base.height % kr or base.width % kr:
        log.warning(
            "read_sample: %s keeps the reference pixel size: its %gx coarser pixels do not "
            "divide the %dx%d window",
            name, k, base.height, base.width,
        )  # fmt: skip
        return base
    return base.scaled(kr)


def read_sample(
    modalities: Mapping[str, Mapping | tuple],
    *,
    grid: Grid | None = None,
    window: Window | None = None,
    native_resolution: bool = True,
    reproject: bool = False,
    allow_no_crs: bool = False,
) -> dict[str, ModalityData]:
    """Read several modalities of one place onto one ground grid.

    ``modalities``: name -> dict of :func:`read_modality` arguments (``paths``, ``sensor``,
    ``dates``, ``bands``, ...) or a ``(paths, sensor[, dates])`` tuple. The reference grid
    is ``grid``, else the finest file grid of all modalities; ``window`` is in its pixels.
    With ``native_resolution`` a modality whose pixels are a whole multiple k of the
    reference pixels keeps them (same extent, k times fewer pixels) when k divides the
    window; otherwise it is resampled onto the reference grid.
    """
    specs = {n: _entry(n, e, reproject, allow_no_crs) for n, e in modalities.items()}
    if not specs:
        raise ValueError("read_sample: no modalities given")
    ref, ref_name = _reference([m for s in specs.values() for m in s.metas], grid)
    win = _window(window, ref)
    base = ref.window(*win)
    out = {}
    for name, spec in specs.items():
        dst = _native_grid(name, spec, ref, base) if native_resolution else base
        out[name] = _read_on_grid(spec, ref, ref_name, dst, win)
    return out
