"""Blending overlapping tile outputs into one token map with bounded memory.

Tiles step by ``tile - overlap``; each tile's output is weighted by a separable
sin^2 ramp over its overlap (1 in the middle), times its token validity, and the map is
``sum(w * x) / sum(w)``. Where two tiles overlap their ramps sum to one (sin^2 + cos^2),
so the blend moves smoothly from one tile to the next: no visible seam, and a tile's
edge tokens (the least context) weigh least. Where only one tile covers a token (raster
edges) its weight cancels. A token no valid tile covers is nodata (NaN).

Memory: :class:`RowBlender` holds one tile height of token rows across the full width,
``(D + 2) x tile_tokens x width_tokens`` numbers. Rows above the next tile row's start
are final: they are flushed (to a file, or an array) and the buffer shifts up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ramp(n: int, overlap: int) -> np.ndarray:
    """(n,) weights: sin^2 rising over the first ``overlap`` entries, 1, then falling.
    Strictly positive, so a lone tile at the raster edge still counts."""
    w = np.ones(n, dtype=np.float64)
    if overlap > 0:
        k = np.arange(overlap, dtype=np.float64)
        up = np.sin(0.5 * np.pi * (k + 0.5) / overlap) ** 2
        w[:overlap] = up
        w[n - overlap :] = np.minimum(w[n - overlap :], up[::-1])
    return w.astype(np.float32)


def tile_weights(h: int, w: int, overlap: int) -> np.ndarray:
    """(h, w) separable blending weights of one tile (token units)."""
    return ramp(h, overlap)[:, None] * ramp(w, overlap)[None, :]


@dataclass
class Rows:
    """Finished token rows ``[row, row + n)`` of the whole width: ``dense`` (D, n, W)
    float32, NaN where no valid tile covered; ``bits`` (n, W) uint16, bit i set where
    modality i had a valid token."""

    row: int
    dense: np.ndarray
    bits: np.ndarray


class RowBlender:
    """Weighted accumulation over token rows ``[base, base + cap)`` x ``[0, width)``."""

    def __init__(self, dim: int, width: int, cap: int, base: int, height: int) -> None:
        self.dim, self.width, self.cap, self.base, self.height = dim, width, cap, base, height
        self.acc = np.zeros((dim, cap, width), dtype=np.float32)  # (D, cap, W)
        self.wsum = np.zeros((cap, width), dtype=np.float32)
        self.bits = np.zeros((cap, width), dtype=np.uint16)

    def add(self, row: int, col: int, dense: np.ndarray, valid: np.ndarray, bits, weight) -> None:
        """Add one tile's output ``dense`` (D, h, w) at token (row, col); parts past the
        token grid are dropped."""
        _, h, w = dense.shape
        r0, r1 = row - self.base, min(row + h, self.height) - self.base
        c1 = min(col + w, self.width)
        if r0 < 0 or r1 > self.cap:
            raise RuntimeError(f"tile rows [{row}, {row + h}) outside the buffer at {self.base}")
        if r1 <= r0 or c1 <= col:
            return
        n, m = r1 - r0, c1 - col
        wv = weight[:n, :m] * valid[:n, :m]  # (n, m); invalid tokens do not count
        self.acc[:, r0:r1, col:c1] += dense[:, :n, :m] * wv[None]
        self.wsum[r0:r1, col:c1] += wv
        self.bits[r0:r1, col:c1] |= bits[:n, :m]

    def flush(self, upto: int) -> Rows | None:
        """Emit rows ``[base, upto)`` (final: no later tile touches them) and shift."""
        n = min(upto, self.base + self.cap) - self.base
        if n <= 0:
            return None
        w = self.wsum[:n]
        with np.errstate(invalid="ignore", divide="ignore"):
            dense = self.acc[:, :n] / w[None]
        dense[:, w <= 0] = np.nan
        out = Rows(self.base, dense, self.bits[:n].copy())
        for a in (self.acc[:, :], self.wsum, self.bits):
            keep = a[..., n:, :].copy()
            a[..., : self.cap - n, :] = keep
            a[..., self.cap - n :, :] = 0
        self.base += n
        return out


class ArraySink:
    """Collects flushed rows into in-memory arrays (the token map of ``Embedder.embed``)."""

    def __init__(self, dim: int, height: int, width: int) -> None:
        self.dense = np.full((dim, height, width), np.nan, dtype=np.float32)
        self.bits = np.zeros((height, width), dtype=np.uint16)

    def write(self, rows: Rows) -> None:
        n = rows.dense.shape[1]
        self.dense[:, rows.row : rows.row + n] = rows.dense
        self.bits[rows.row : rows.row + n] = rows.bits

    def close(self) -> None:
        pass
