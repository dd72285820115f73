"""Window and grid arithmetic: overlapping tiles with owned cores, block-aligned read
windows, and how one grid maps onto another.

No file access here (see :func:`rsfm_core.io.block_windows` for the file-backed version).
Windows are ``(row, col, height, width)`` in pixels of one grid.

Tiling (:func:`tiles`): tiles of a fixed size step by ``tile - overlap``. Edge tiles keep
the full tile size and extend past the raster (the reader pads them as nodata), so every
tile has one shape and a model sees no odd sizes. Each tile *owns* a core region: the
cut between two neighbours lies ``overlap // 2`` pixels into their overlap, so the owned
regions partition the raster exactly and every owned pixel has at least
``overlap // 2`` pixels of context on each inner side — stitching by cores is seamless,
and blending can use the rest of the overlap.

Grid geometry (:func:`pixel_offset`, :func:`source_window`, :func:`grid_bounds`) tells
the reader whether a file can be read plainly at a whole-pixel offset or must be
resampled, and which part of it covers a target window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Window = tuple[int, int, int, int]  # (row, col, height, width)


@dataclass(frozen=True)
class Tile:
    """One tile: its window (may extend past the raster) and the core it owns."""

    row: int
    col: int
    height: int
    width: int
    core_row: int
    core_col: int
    core_height: int
    core_width: int

    @property
    def window(self) -> Window:
        return (self.row, self.col, self.height, self.width)

    @property
    def core(self) -> Window:
        """The owned region in raster pixels (always inside the raster)."""
        return (self.core_row, self.core_col, self.core_height, self.core_width)

    @property
    def core_slices(self) -> tuple[slice, slice]:
        """The owned region in the tile's own pixels: ``tile_output[..., *core_slices]``."""
        r0, c0 = self.core_row - self.row, self.core_col - self.col
        return (slice(r0, r0 + self.core_height), slice(c0, c0 + self.core_width))


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    if not (isinstance(a, int) and isinstance(b, int)):
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    return int(a), int(b)


def _axis(n: int, t: int, o: int) -> list[tuple[int, int, int]]:
    """(start, own_start, own_end) per tile along one axis of length n."""
    step = t - o
    count = 1 + -(-max(0, n - t) // step)  # minimal count whose last tile reaches n
    starts = [i * step for i in range(count)]
    cuts = [0] + [s + o // 2 for s in starts[1:]] + [n]
    return [(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def tiles(
    height: int, width: int, tile: int | tuple[int, int], overlap: int | tuple[int, int] = 0
) -> list[Tile]:
    """Overlapping tiles covering a ``height x width`` raster, row-major.

    ``tile``/``overlap`` are ints or ``(rows, cols)`` pairs, ``0 <= overlap < tile``.
    Every pixel lies in at least one tile; the tiles' ``core`` regions partition the
    raster exactly (each pixel is owned by one tile).
    """
    th, tw = _pair(tile, "tile")
    oh, ow = _pair(overlap, "overlap")
    if height <= 0 or width <= 0:
        raise ValueError(f"tiles: raster must be non-empty, got {height}x{width}")
    if th <= 0 or tw <= 0:
        raise ValueError(f"tiles: tile size must be positive, got {tile!r}")
    if not (0 <= oh < th and 0 <= ow < tw):
        raise ValueError(f"tiles: need 0 <= overlap < tile, got overlap {overlap!r}, tile {tile!r}")
    out = []
    for r, r0, r1 in _axis(height, th, oh):
        for c, c0, c1 in _axis(width, tw, ow):
            out.append(Tile(r, c, th, tw, r0, c0, r1 - r0, c1 - c0))
    return out


def block_aligned_windows(
    height: int, width: int, block: tuple[int, int], target: int = 512
) -> list[Window]:
    """Read windows whose edges fall on internal block boundaries, each a multiple of the
    block size close to ``target`` pixels a side; the last row/column of windows is cut
    at the raster edge (read windows are never padded).

    Strip-organised files (block width = raster width) give full-width windows, since a
    strip is decompressed whole however much of it is read.
    """
    bh, bw = (max(1, int(b)) for b in block)
    if height <= 0 or width <= 0:
        raise ValueError(f"block_aligned_windows: raster must be non-empty, got {height}x{width}")
    step_r = bh * max(1, round(target / bh))
    step_c = bw * max(1, round(target / bw))
    return [
        (r, c, min(step_r, height - r), min(step_c, width - c))
        for r in range(0, height, step_r)
        for c in range(0, width, step_c)
    ]


# ---------------------------------------------------------------------------- grid geometry
# Grids here are rsfm_core.sample.Grid; CRSs are compared through rasterio (EPSG:n vs WKT).


def same_crs(a: str | None, b: str | None) -> bool:
    """True when both CRSs are equal, or when either is missing (no CRS is read as
    'same as the other': the caller decides whether a missing CRS is allowed)."""
    if a is None or b is None or a == b:
        return True
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def _apply(t: tuple, cols, rows) -> tuple[np.ndarray, np.ndarray]:
    """GDAL-order affine ``t`` applied to pixel (col, row) arrays."""
    a, b, c, d, e, f = t
    cols, rows = np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64)
    return a * cols + b * rows + c, d * cols + e * rows + f


def _inverse(t: tuple) -> tuple:
    from affine import Affine

    inv = ~Affine(*t)
    return (inv.a, inv.b, inv.c, inv.d, inv.e, inv.f)


def _edge_points(height: int, width: int, n: int = 11) -> tuple[list[float], list[float]]:
    """Pixel (col, row) coordinates along the border of a height x width grid."""
    t = [i / (n - 1) for i in range(n)]
    cols = [width * u for u in t] * 2 + [0.0] * n + [float(width)] * n
    rows = [0.0] * n + [float(height)] * n + [height * u for u in t] * 2
    return cols, rows


def grid_bounds(grid, crs: str | None = None) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of ``grid`` — rotated grids included — in ``crs``
    (default: the grid's own; border points are densified when reprojecting)."""
    xs, ys = _apply(grid.transform, *_edge_points(grid.height, grid.width))
    if crs is not None and not same_crs(grid.crs, crs):
        from rasterio.warp import transform

        xs, ys = (np.asarray(v) for v in transform(grid.crs, crs, xs.tolist(), ys.tolist()))
    return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two (left, bottom, right, top) boxes share a positive area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def pixel_offset(dst, src, tol: float = 1e-3) -> tuple[int, int] | None:
    """(row, col) of ``dst``'s top-left pixel in ``src`` when both are north-up grids in
    one CRS with equal pixel size and whole-pixel offsets (a plain read suffices), else
    None (the source must be resampled)."""
    a, b, c, d, e, f = dst.transform
    sa, sb, sc, sd, se, sf = src.transform
    if b or d or sb or sd or not same_crs(dst.crs, src.crs):
        return None
    if abs(a - sa) > 1e-6 * abs(a) or abs(e - se) > 1e-6 * abs(e):
        return None
    col, row = (c - sc) / sa, (f - sf) / se
    if abs(col - round(col)) > tol or abs(row - round(row)) > tol:
        return None
    return int(round(row)), int(round(col))


def source_window(src, dst, margin: int = 0) -> tuple[Window | None, float]:
    """The window of ``src`` pixels that covers ``dst`` (both Grids, CRSs may differ),
    grown by ``margin`` pixels for the resampling kernel and clipped to ``src`` (None if
    empty), and the linear scale ``src pixels per dst pixel`` (> 1: downsampling)."""
    xs, ys = _apply(dst.transform, *_edge_points(dst.height, dst.width))
    if src.crs is not None and dst.crs is not None and not same_crs(src.crs, dst.crs):
        from rasterio.warp import transform

        xs, ys = transform(dst.crs, src.crs, xs.tolist(), ys.tolist())
    sc, sr = _apply(_inverse(src.transform), xs, ys)
    r0, r1, c0, c1 = float(sr.min()), float(sr.max()), float(sc.min()), float(sc.max())
    scale = math.sqrt(max(r1 - r0, 1e-12) * max(c1 - c0, 1e-12) / (dst.height * dst.width))
    top, left = max(math.floor(r0) - margin, 0), max(math.floor(c0) - margin, 0)
    bottom = min(math.ceil(r1) + margin, src.height)
    right = min(math.ceil(c1) + margin, src.width)
    if bottom <= top or right <= left:
        return None, scale
    return (top, left, bottom - top, right - left), scale
