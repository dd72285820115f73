"""One ``Embedder.embed_rasters`` run: check inputs and outputs, stream bands of tiles
into per-rank intermediates, merge them (rank 0), and finalize every output.

Failure anywhere (a bad tile, a full disk, Ctrl-C, another rank) removes every
temporary and leaves no output under its final name: outputs are renamed into place
only after all of them were written.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..files import commit, remove_quietly, temp_path
from ..io import RasterError, writers
from ..io.geoparquet import ChipContext, ChipWriter
from ..sample import from_days
from . import distributed
from .inputs import missing_report
from .options import EmbedResult
from .stream import stream
from .tiles import RasterSource, pixel_area_km2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    out: Path | None
    parquet: Path | None
    npz: Path | None

    @staticmethod
    def check(out, parquet, npz) -> Outputs:
        o = Outputs(*(writers.check_writable(p) for p in (out, parquet, npz)))
        if o.near is None:
            raise ValueError("nothing to write: give out= (COG), parquet= and/or npz=")
        return o

    @property
    def near(self) -> Path | None:
        """Where temporaries go: next to the first output (same filesystem)."""
        return next((p for p in (self.out, self.parquet, self.npz) if p is not None), None)


def _tags(emb, source: RasterSource, opts) -> dict[str, str]:
    inputs = {
        n: {
            "sensor": d.sensor,
            "bands": list(d.bands),
            "dates": [from_days(x).isoformat() for x in d.dates.tolist()],
        }
        for n, d in source.preflight.items()
    }
    i = emb.info
    return {
        "RSFM_MODEL": i.name,
        "RSFM_MODEL_SHA256": i.sha256,
        "RSFM_MODEL_VERIFIED": str(i.verified).lower(),
        "RSFM_MODEL_RSFM_VERSION": i.rsfm_version,
        "RSFM_VERSION": __version__,
        "RSFM_FEATURES": str(emb.dim),
        "RSFM_TOKEN_PX": str(source.layout.token_px),
        "RSFM_TILE": str(opts.tile),
        "RSFM_OVERLAP": str(opts.overlap),
        "RSFM_POSITIONS": opts.positions,
        "RSFM_RESOLUTION": opts.resolution,
        "RSFM_INPUTS": json.dumps(inputs, sort_keys=True),
    }


def _chip_context(emb, source: RasterSource, chip_tok: int) -> ChipContext:
    return ChipContext(
        grid=source.layout.grid,
        token_px=source.layout.token_px,
        chip_tok=chip_tok,
        modalities=list(emb.config.modalities),
        sensors=source.sensors,
        dates=source.dates,
    )


class _NpzChips:
    """Collects chip vectors for the npz (in memory: one row per chip)."""

    def __init__(self) -> None:
        self.vectors, self.windows, self.fractions = [], [], []

    def __call__(self, chips: list[dict]) -> None:
        for c in chips:
            self.vectors.append(c["vector"])
            self.windows.append(c["tok"])
            self.fractions.append(c["valid_fraction"])

    def arrays(self, dim: int, token_px: int) -> dict[str, np.ndarray]:
        return {
            "embedding": np.stack(self.vectors) if self.vectors else np.zeros((0, dim), np.float32),
            "window_px": np.asarray(self.windows, dtype=np.int64).reshape(-1, 4) * token_px,
            "valid_fraction": np.asarray(self.fractions, dtype=np.float32),
        }


def finalize(emb, source, data: Path, mask: Path, outs: Outputs, opts, chip_tok: int) -> None:
    """All outputs from the intermediate; renamed into place only when all are written."""
    layout, temps = source.layout, []
    try:
        on_chips, npy, npz_chips, chips = [], None, None, None
        if outs.parquet is not None:
            tmp = temp_path(outs.parquet, "rows", ".parquet")
            temps.append(tmp)
            prov = {
                "model": emb.info.name,
                "sha256": emb.info.sha256,
                "chip_px": chip_tok * layout.token_px,
            }
            chips = ChipWriter(tmp, emb.dim, _chip_context(emb, source, chip_tok), prov)
            on_chips.append(chips.write)
        if outs.npz is not None:
            tmp = temp_path(outs.npz, "npy", ".npy")
            temps.append(tmp)
            dt = np.float32 if opts.dtype == "float32" else np.float16
            shape = (emb.dim, layout.tokens.height, layout.tokens.width)
            npy = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape)
            npz_chips = _NpzChips()
            on_chips.append(npz_chips)
        stats = writers.scan(data, mask, chip_tok, on_chips, npy)
        finals = {}
        for key, path, suffix in (("out", outs.out, ".tif"), ("parquet", outs.parquet, ".parquet"),
                                  ("npz", outs.npz, ".npz")):  # fmt: skip
            if path is not None:
                finals[key] = temp_path(path, "final", suffix)
                temps.append(finals[key])
        if outs.out is not None:
            spec = writers.CogSpec(opts.dtype, opts.resolution, opts.blocksize, opts.compress)
            tags = _tags(emb, source, opts)
            writers.write_cog(data, finals["out"], spec, stats, tags, layout.grid)
        if chips is not None:
            chips.finish(finals["parquet"])
        if npy is not None:
            npy.flush()
            extra = npz_chips.arrays(emb.dim, layout.token_px)
            writers.write_npz(finals["npz"], npy, layout.tokens, extra)
            del npy
        for key in finals:  # all written: now rename each into place
            commit(finals[key], getattr(outs, key))
    finally:
        remove_quietly(*temps)


def _merge(parts: list[tuple[Path, Path]], bands, layout, near: Path, dim: int):
    """Rank 0: every band's owned rows from its owner's part into one intermediate."""
    import rasterio

    data, mask = temp_path(near, "data", ".tif"), temp_path(near, "mask", ".tif")
    writers.create_intermediate(data, layout.tokens, dim, "float32", float("nan"))
    writers.create_intermediate(mask, layout.tokens, 1, "uint16", None)
    with rasterio.open(data, "r+") as d, rasterio.open(mask, "r+") as m:
        for b in bands:
            src = parts[b.index % len(parts)]
            writers.copy_rows(src[0], d, b.out_start, b.out_end - b.out_start)
            writers.copy_rows(src[1], m, b.out_start, b.out_end - b.out_start)
    return data, mask


def _compute(emb, source, d, bands, opts, timer, near):
    part = (temp_path(near, f"part{d.rank}", ".tif"),
            temp_path(near, f"mask{d.rank}", ".tif"))  # fmt: skip
    mine = [b for b in bands if b.index % d.world == d.rank]
    try:
        sink = writers.TiffSink(*part, source.layout.tokens, emb.dim)
        try:
            counts = stream(
                emb.forward_tiles, emb.dim, source, mine, sink, opts, timer, d.rank == 0
            )
        finally:
            sink.close()
    except BaseException:
        remove_quietly(*part)
        raise
    return part, counts


def run(emb, inputs, out, parquet, npz, opts):
    """The body of :meth:`Embedder.embed_rasters`: ``emb`` gives ``forward_tiles``,
    ``dim``, ``config``, ``device`` and ``info``."""
    import rasterio

    t_start = time.perf_counter()
    outs = Outputs.check(out, parquet, npz)
    source = RasterSource(emb.config, inputs, opts.tile, opts.overlap, opts.region)
    layout = source.layout
    notes = missing_report(emb.config, source.preflight)
    chip = opts.chip or opts.tile
    if chip % layout.token_px:
        raise ValueError(
            f"chip {chip} px must be a multiple of the token size {layout.token_px} px"
        )
    timer = {"read": 0.0, "compute": 0.0, "write": 0.0, "finalize": 0.0}
    with (
        distributed.session(opts.distributed, emb.device) as d,
        rasterio.Env(GDAL_CACHEMAX=opts.cache_mb),
    ):
        bands = distributed.plan_bands(layout, d.world, opts.rows_per_band)
        part, counts, err = None, (0, 0), None
        try:
            part, counts = _compute(emb, source, d, bands, opts, timer, outs.near)
        except Exception as e:  # reported to the other ranks, then re-raised
            err = e
        parts = distributed.gather(d, part)
        if not distributed.agree(d, err is None):
            remove_quietly(*(part or ()))
            raise err or RuntimeError("embedding failed on another rank; see its log")
        counts = distributed.gather(d, counts)
        err = None
        if d.rank == 0:
            t0 = time.perf_counter()
            try:
                merged = _merge(parts, bands, layout, outs.near, emb.dim) if d.active else part
                try:
                    finalize(emb, source, *merged, outs, opts, chip // layout.token_px)
                finally:
                    remove_quietly(*merged, *(p for pr in parts for p in pr))
            except Exception as e:
                err = e
            timer["finalize"] = time.perf_counter() - t0
        if not distributed.agree(d, err is None):
            raise err or RuntimeError("writing the outputs failed on rank 0; see its log")
        timer = distributed.broadcast(d, timer)
    timer["total"] = time.perf_counter() - t_start
    g = layout.grid
    result = EmbedResult(
        out=outs.out, parquet=outs.parquet, npz=outs.npz, grid=layout.tokens,
        tiles=layout.num_tiles, computed=sum(c for c, _ in counts),
        skipped=sum(s for _, s in counts),
        seconds=timer, pixels=g.height * g.width, km2=g.height * g.width * pixel_area_km2(g),
        warnings=notes,
    )  # fmt: skip
    log.info("embedded %s", result.summary())
    return result


__all__ = ["Outputs", "RasterError", "finalize", "run"]
