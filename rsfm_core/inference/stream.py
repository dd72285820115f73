"""The streaming loop of a run: tile rows -> forward -> blend -> owned token rows to a sink.

For each band of tile rows (:mod:`.distributed`), tiles are read a batch at a time along
each tile row (:mod:`.tiles`), tiles without a valid pixel are skipped, the rest go
through ``forward`` (the model, supplied by the caller: :meth:`Embedder.forward_tiles`),
and the outputs are blended (:mod:`.stitching`); token rows that no later tile row can
touch are flushed to the sink. Memory: one tile height of token rows across the width.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..sample import ModalityData
from .options import EmbedOptions
from .stitching import RowBlender, tile_weights
from .tiles import Source, tile_has_data

# samples, token offsets (or None) -> dense (B, D, h, w), valid (B, h, w), bits (B, h, w)
Forward = Callable[
    [Sequence[Mapping[str, ModalityData]], "list[tuple[int, int]] | None"],
    "tuple[np.ndarray, np.ndarray, np.ndarray]",
]


def _band(forward: Forward, dim: int, source: Source, band, sink, opts: EmbedOptions, timer, pbar):
    """Compute one band of tile rows, flush its owned token rows to ``sink``;
    returns (tiles computed, tiles skipped for having no valid pixel)."""
    L, t = source.layout, source.layout.token_px
    blend = RowBlender(
        dim, L.tokens.width, L.tile_tok, L.row_start(band.tile_rows[0]), L.tokens.height
    )
    weight = tile_weights(L.tile_tok, L.tile_tok, L.overlap_tok)
    computed = skipped = 0

    def emit(upto: int) -> None:  # "write" time: blending, flushing, writing rows
        t0 = time.perf_counter()
        rows = blend.flush(upto)
        lo, hi = band.out_start, band.out_end
        if rows is not None and min(rows.row + rows.bits.shape[0], hi) > max(rows.row, lo):
            lo, hi = max(rows.row, lo), min(rows.row + rows.bits.shape[0], hi)
            a, b = lo - rows.row, hi - rows.row
            sink.write(
                dataclasses.replace(rows, row=lo, dense=rows.dense[:, a:b], bits=rows.bits[a:b])
            )
        timer["write"] += time.perf_counter() - t0

    for i in band.tile_rows:
        emit(L.row_start(i))
        row = L.rows[i]
        for j in range(0, len(row), opts.batch):
            chunk = row[j : j + opts.batch]
            t0 = time.perf_counter()
            samples = source.read_tiles(chunk)
            timer["read"] += time.perf_counter() - t0
            keep = [k for k, s in enumerate(samples) if tile_has_data(s)]
            if keep:
                t0 = time.perf_counter()
                offs = [(chunk[k].row // t, chunk[k].col // t) for k in keep]
                pos = offs if opts.positions == "global" else None
                dense, valid, bits = forward([samples[k] for k in keep], pos)
                timer["compute"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                for n, (r, c) in enumerate(offs):
                    blend.add(r, c, dense[n], valid[n], bits[n], weight)
                timer["write"] += time.perf_counter() - t0
            computed += len(keep)
            skipped += len(chunk) - len(keep)
            pbar.update(len(chunk))
    emit(band.out_end)
    return computed, skipped


def stream(
    forward: Forward, dim: int, source: Source, bands, sink, opts: EmbedOptions, timer,
    show_progress: bool = True,
) -> tuple[int, int]:  # fmt: skip
    """Every band in turn (a progress bar when ``opts.progress`` and ``show_progress``);
    returns (tiles computed, tiles skipped)."""
    from tqdm.auto import tqdm

    L = source.layout
    total = sum(len(L.rows[i]) for b in bands for i in b.tile_rows)
    pbar = tqdm(
        total=total, unit="tile", desc="embed", disable=not (opts.progress and show_progress)
    )
    try:
        counts = [_band(forward, dim, source, b, sink, opts, timer, pbar) for b in bands]
        return sum(c for c, _ in counts), sum(s for _, s in counts)
    finally:
        pbar.close()
