"""Blending weights and the row-band accumulator (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from rsfm_core.inference.stitching import RowBlender, ramp, tile_weights
from rsfm_core.inference.tiles import make_layout
from rsfm_core.sample import Grid


@pytest.mark.parametrize("n,o", [(16, 4), (8, 1), (10, 0), (6, 3)])
def test_ramp_is_positive_and_partitions_unity_in_overlaps(n, o):
    w = ramp(n, o)
    assert (w > 0).all() and w.max() <= 1.0
    if o:
        np.testing.assert_allclose(w[n - o :] + w[:o], 1.0, rtol=1e-6)  # neighbour's rise


def _naive(tiles_out, H, W, D):
    acc, ws = np.zeros((D, H, W)), np.zeros((H, W))
    for r, c, x, v, w in tiles_out:
        h, wd = min(x.shape[1], H - r), min(x.shape[2], W - c)
        acc[:, r : r + h, c : c + wd] += x[:, :h, :wd] * (w * v)[:h, :wd]
        ws[r : r + h, c : c + wd] += (w * v)[:h, :wd]
    with np.errstate(invalid="ignore"):
        out = acc / ws
    out[:, ws == 0] = np.nan
    return out


def test_row_blender_matches_whole_accumulation_with_bounded_buffer():
    rng = np.random.default_rng(0)
    grid = Grid(None, (1, 0, 0, 0, -1, 0), 4 * 37, 4 * 29)  # 37 x 29 tokens
    L = make_layout(grid, 4, tile=40, overlap=12)  # 10-token tiles, 3-token overlap
    D, H, W, t = 3, 37, 29, L.tile_tok
    blend = RowBlender(D, W, t, 0, H)
    assert blend.acc.shape == (D, t, W)  # one tile height, whatever the raster height
    weight, outs, got = tile_weights(t, t, L.overlap_tok), [], np.full((D, H, W), np.nan)
    for i, row in enumerate(L.rows):
        rows = blend.flush(L.row_start(i))
        if rows is not None:
            got[:, rows.row : rows.row + rows.bits.shape[0]] = rows.dense
        for tile in row:
            x = rng.normal(size=(D, t, t)).astype(np.float32)
            v = rng.random((t, t)) > 0.2
            outs.append((tile.row // 4, tile.col // 4, x, v, weight))
            blend.add(tile.row // 4, tile.col // 4, x, v, np.ones((t, t), np.uint16), weight)
    rows = blend.flush(H)
    got[:, rows.row :] = rows.dense
    np.testing.assert_allclose(got, _naive(outs, H, W, D), rtol=1e-5, atol=1e-6, equal_nan=True)
