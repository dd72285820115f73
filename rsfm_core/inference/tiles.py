"""The tile-reading side of a run: its token-aligned layout and the sources that hand
out tiles (GeoTIFFs through the io layer, or in-memory tensors).

Decisions:
- The **reference grid** is the finest file grid over all modalities (as in
  :func:`rsfm_core.io.read_sample`); the **token** is ``patch`` reference pixels of the
  modality that owns that grid. Every other modality is read on the grid whose pixel is
  ``token / its patch``: native when the sensor's pixel already fits (S1/S2 at 10 m with
  patch 4, EnMAP at 30 m with its own patch), else resampled by the io policy (logged).
- Reads are one window per batch of tiles along a tile row, snapped outward to the
  reference file's internal blocks (when those are whole tokens), then cut into tiles:
  GDAL decodes each block once per read and never for a sliver.
- All inputs are checked before the first tile (a one-token read of every modality), so
  bad files fail fast with the io layer's message naming the file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .. import sensors
from ..io import RasterError, open_info, read_modality
from ..io.tiling import Tile, same_crs, tiles
from ..sample import Grid, ModalityData, collate
from .inputs import RasterInput, first_path, match_modalities

log = logging.getLogger(__name__)


def token_grid(grid: Grid, token_px: int) -> Grid:
    """The grid of ``token_px``-pixel tokens covering ``grid`` (partial tokens count)."""
    t = token_px
    a, b, c, d, e, f = grid.transform
    return Grid(
        grid.crs, (a * t, b * t, c, d * t, e * t, f), -(-grid.height // t), -(-grid.width // t)
    )


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """The geometry of one run: the reference pixel grid of the embedded region, the
    token size in its pixels, the token grid written out, and the tiles by tile row."""

    grid: Grid
    token_px: int
    tile: int
    overlap: int
    rows: tuple[tuple[Tile, ...], ...]

    @property
    def tokens(self) -> Grid:
        return token_grid(self.grid, self.token_px)

    @property
    def tile_tok(self) -> int:
        return self.tile // self.token_px

    @property
    def overlap_tok(self) -> int:
        return self.overlap // self.token_px

    def row_start(self, i: int) -> int:
        """First token row of tile row ``i``."""
        return self.rows[i][0].row // self.token_px

    def cut(self, i: int) -> int:
        """Token row where tile row ``i`` starts to own the output (halfway into its overlap
        with row ``i - 1``); ``cut(0) = 0``, ``cut(len(rows))`` = the token grid height."""
        if i <= 0:
            return 0
        if i >= len(self.rows):
            return self.tokens.height
        return self.row_start(i) + self.overlap_tok // 2

    @property
    def num_tiles(self) -> int:
        return sum(len(r) for r in self.rows)


def make_layout(grid: Grid, token_px: int, tile: int, overlap: int) -> Layout:
    """Tiles of ``tile`` px stepping ``tile - overlap``; a raster smaller than one tile
    gets one tile of its own size rounded up to whole tokens (no overlap), so a 64 px
    chip costs a 64 px forward pass, not a 256 px one."""
    if tile % token_px or overlap % token_px:
        raise ValueError(
            f"tile {tile} and overlap {overlap} px must be multiples of the token size "
            f"({token_px} px = patch x pixel) so that token grids align; e.g. tile "
            f"{max(1, round(tile / token_px)) * token_px}, overlap "
            f"{round(overlap / token_px) * token_px}"
        )
    side = max(grid.height, grid.width)
    if side < tile:  # smaller than one tile: one tile, shrunk to the raster (issue 17)
        tile, overlap = -(-side // token_px) * token_px, 0
    all_tiles = tiles(grid.height, grid.width, tile, overlap)
    rows: dict[int, list[Tile]] = {}
    for t in all_tiles:
        rows.setdefault(t.row, []).append(t)
    return Layout(grid, token_px, tile, overlap, tuple(tuple(r) for r in rows.values()))


# ---------------------------------------------------------------------------- sources


def _union(ts: Sequence[Tile]) -> tuple[int, int, int, int]:
    r0, c0 = min(t.row for t in ts), min(t.col for t in ts)
    r1, c1 = max(t.row + t.height for t in ts), max(t.col + t.width for t in ts)
    return r0, c0, r1 - r0, c1 - c0


def _crop_padded(d: ModalityData, r: int, c: int, h: int, w: int) -> ModalityData:
    """A window of an unbatched modality; parts outside are invalid zeros."""
    T, C, H, W = d.pixels.shape
    px = d.pixels.new_zeros(T, C, h, w)
    ok = d.valid.new_zeros(T, h, w)
    r0, r1, c0, c1 = max(r, 0), min(r + h, H), max(c, 0), min(c + w, W)
    if r1 > r0 and c1 > c0:
        px[..., r0 - r : r1 - r, c0 - c : c1 - c] = d.pixels[..., r0:r1, c0:c1]
        ok[..., r0 - r : r1 - r, c0 - c : c1 - c] = d.valid[..., r0:r1, c0:c1]
    grid = d.grid.window(r, c, h, w) if d.grid is not None else None
    return replace(d, pixels=px, valid=ok, grid=grid)


@dataclass
class Source:
    """Hands out tiles: ``read_tiles(tiles)`` -> one ``{modality: ModalityData}`` per tile.
    ``scale[m]`` = modality-m pixels per reference pixel (``patch_m / token_px``)."""

    layout: Layout
    scale: dict[str, float]
    dates: dict[str, list[int]]
    sensors: dict[str, str]
    meta: dict = field(default_factory=dict)

    def _read(self, window: tuple[int, int, int, int]) -> dict[str, ModalityData]:
        raise NotImplementedError

    def _aligned(self, window):
        return window

    def read_tiles(self, ts: Sequence[Tile]) -> list[dict[str, ModalityData]]:
        r, c, h, w = self._aligned(_union(ts))
        chunk = self._read((r, c, h, w))
        out = []
        for t in ts:
            one = {}
            for m, d in chunk.items():
                k = self.scale[m]
                win = [round(v * k) for v in (t.row - r, t.col - c, t.height, t.width)]
                one[m] = d.crop(*win)
            out.append(one)
        return out


class ArraySource(Source):
    """In-memory modalities (unbatched ``ModalityData``) as a source."""

    def __init__(self, sample: Mapping[str, ModalityData], config, tile: int, overlap: int):
        H = max(d.shape_hw[0] for d in sample.values())
        ref = next(n for n, d in sample.items() if d.shape_hw[0] == H)
        W = sample[ref].shape_hw[1]
        token = config.modalities[ref].patch
        scale = {}
        for n, d in sample.items():
            k = d.shape_hw[0] / H  # modality pixels per reference pixel
            scale[n] = config.modalities[n].patch / token
            if abs(k - scale[n]) > 1e-6 or abs(d.shape_hw[1] - W * k) > 1e-6:
                raise ValueError(
                    f"modality {n!r}: {d.shape_hw} px does not cover the same area at "
                    f"patch {config.modalities[n].patch} as {ref!r} ({H}x{W} px, patch {token})"
                )
        g = sample[ref].grid or Grid(None, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), H, W)
        layout = make_layout(Grid(g.crs, g.transform, H, W), token, tile, overlap)
        super().__init__(
            layout,
            scale,
            {n: d.dates.tolist() for n, d in sample.items()},
            {n: d.sensor for n, d in sample.items()},
        )
        self.sample = dict(sample)

    def _read(self, window):
        return {
            n: _crop_padded(d, *[round(v * self.scale[n]) for v in window])
            for n, d in self.sample.items()
        }


def _finest(infos: list[dict]) -> dict:
    base = infos[0]["crs"]
    cands = [i for i in infos if same_crs(i["crs"], base)]
    area = min(i["res"][0] * i["res"][1] for i in cands)
    return next(i for i in cands if i["res"][0] * i["res"][1] <= area * (1 + 1e-6))


def _modality_grid(ref: Grid, k: float, rows_tok: int, cols_tok: int, patch: int) -> Grid:
    """The reference grid with pixels ``1/k`` times larger, covering the token grid."""
    a, b, c, d, e, f = ref.transform
    s = 1.0 / k
    return Grid(ref.crs, (a * s, b * s, c, d * s, e * s, f), rows_tok * patch, cols_tok * patch)


class RasterSource(Source):
    """GeoTIFF inputs matched to the checkpoint's modalities, checked up front."""

    def __init__(self, config, inputs: Mapping[str, RasterInput], tile: int, overlap: int, region):
        self.inputs = match_modalities(config, inputs)
        for inp in self.inputs.values():
            try:
                sensors.get(inp.sensor)
            except sensors.SensorError as e:
                raise RasterError(f"{first_path(inp)}: {e}") from None
        infos = {n: [open_info(p) for p in _flat_paths(i.paths)] for n, i in self.inputs.items()}
        ref_info = _finest([i for v in infos.values() for i in v])
        ref_mod = next(n for n, v in infos.items() if any(i is ref_info for i in v))
        token = config.modalities[ref_mod].patch
        full = ref_info["grid"]
        r0, c0, h, w = region if region is not None else (0, 0, full.height, full.width)
        if h <= 0 or w <= 0 or r0 < 0 or c0 < 0 or r0 + h > full.height or c0 + w > full.width:
            raise ValueError(
                f"region {tuple(region)} (row, col, height, width) is not inside the reference "
                f"raster {ref_info['path']} ({full.height} x {full.width} px)"
            )
        layout = make_layout(full.window(r0, c0, h, w), token, tile, overlap)
        self.block = ref_info["block_shape"]
        self.offset = (r0, c0)
        tok = layout.tokens
        scale, self.grids = {}, {}
        for n in self.inputs:
            p = config.modalities[n].patch
            scale[n] = p / token
            self.grids[n] = _modality_grid(layout.grid, scale[n], tok.height, tok.width, p)
            own = _finest(infos[n])["res"][0]
            if abs(own - self.grids[n].res[0]) > 1e-3 * own:
                log.info(
                    "%s: %g-unit pixels are resampled to %g to match the token grid "
                    "(patch %d)", n, own, self.grids[n].res[0], p,
                )  # fmt: skip
        super().__init__(layout, scale, {}, {n: i.sensor for n, i in self.inputs.items()})
        self.reference = ref_info["path"]
        self.preflight = self._preflight()
        self.dates = {n: d.dates.tolist() for n, d in self.preflight.items()}

    def _kwargs(self, n: str) -> dict:
        i = self.inputs[n]
        return dict(
            bands=i.bands, nodata=i.nodata, cloud_masks=i.cloud_masks, resampling=i.resampling
        )

    def _preflight(self) -> dict[str, ModalityData]:
        """Every check of the io layer (files, sensor, bands, dates, CRS, overlap) on a
        one-token window, so that a bad input fails before the first tile."""
        out = {}
        for n, i in self.inputs.items():
            p = round(self.scale[n] * self.layout.token_px)
            out[n] = read_modality(
                i.paths,
                i.sensor,
                i.dates,
                grid=self.grids[n],
                window=(0, 0, p, p),
                **self._kwargs(n),
            )
        return out

    def _aligned(self, window):
        """Snap a read window outward to the reference file's blocks when blocks are whole
        tokens, no larger than the window (strip files would be re-read whole otherwise)
        and the region starts on a token; never past the raster's edge."""
        r, c, h, w = window
        (bh, bw), t, (r0, c0) = self.block, self.layout.token_px, self.offset
        if bh % t or bw % t or r0 % t or c0 % t:
            return window
        g = self.layout.grid
        R, H = _snap(r + r0, h, bh, t, r0 + g.height)
        C, W = _snap(c + c0, w, bw, t, c0 + g.width)
        return (R - r0, C - c0, H, W)

    def _read(self, window):
        out = {}
        for n, i in self.inputs.items():
            win = tuple(round(v * self.scale[n]) for v in window)
            out[n] = read_modality(
                i.paths, i.sensor, self.dates[n], grid=self.grids[n], window=win, **self._kwargs(n)
            )
        return out


def _snap(lo: int, n: int, block: int, t: int, limit: int) -> tuple[int, int]:
    """``[lo, lo + n)`` grown to block edges (ends stop at ``limit``, rounded to tokens)."""
    if block > n:
        return lo, n
    a = lo // block * block
    b = max(lo + n, min(-(-(lo + n) // block) * block, limit))
    if b > lo + n:
        b = -(-b // t) * t
    return a, b - a


def _flat_paths(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    out = []
    for e in paths:
        out += [e] if isinstance(e, (str, os.PathLike)) else list(e)
    return out


def tile_has_data(sample: Mapping[str, ModalityData]) -> bool:
    return any(bool(d.valid.any()) for d in sample.values())


def pixel_area_km2(grid: Grid) -> float:
    """Area of one pixel: metres for projected CRSs; degrees scaled at the grid's centre
    latitude for geographic ones (throughput reporting only)."""
    a, b, _, d, e, _ = grid.transform
    area = abs(a * e - b * d)
    if grid.crs is not None:
        from rasterio.crs import CRS

        crs = CRS.from_user_input(grid.crs)
        if crs.is_geographic:
            lat = (grid.bounds[1] + grid.bounds[3]) / 2
            return area * 111.32 * 110.57 * math.cos(math.radians(lat))
    return area / 1e6


def stack(samples: Sequence[Mapping[str, ModalityData]], device) -> dict[str, ModalityData]:
    """Tiles -> one batched ``ModalityData`` per modality on ``device``."""
    return {m: collate([s[m] for s in samples]).to(device) for m in samples[0]}


__all__ = [
    "ArraySource",
    "Layout",
    "RasterSource",
    "Source",
    "make_layout",
    "pixel_area_km2",
    "stack",
    "tile_has_data",
    "token_grid",
]
