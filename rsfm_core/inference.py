"""Embedder: checkpoint -> streaming tiled embedding of GeoTIFFs -> COG / GeoParquet / npz.

    import rsfm_core as rs
    emb = rs.Embedder.from_pretrained("ckpt/")          # verified, never unpickled
    emb.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", s2_paths, s2_dates),
                       "s1": rs.RasterInput("sentinel1_grd", s1_paths, s1_dates)},
                      out="emb.tif", parquet="chips.parquet", npz="emb.npz")
    emb.embed({"s2": modality_data})                     # in-memory tensors -> Embedding

How a run goes (details and decisions in docs/inference.md):

1. inputs are matched to the checkpoint's modalities and checked (one-token read);
2. the region is cut into overlapping tiles (multiples of the token size); tiles are
   read a batch at a time along each tile row, tiles without a valid pixel are skipped,
   the rest run through the encoder (bf16 autocast on GPU, float32 on CPU);
3. outputs are blended with sin^2 ramps over the overlap (:mod:`rsfm_core.stitching`)
   and finished token rows go to a temporary intermediate (memory: one tile height of
   token rows across the width, whatever the raster's size);
4. the intermediate becomes the COG, the GeoParquet chips and the npz
   (:mod:`rsfm_core.writers`), each renamed into place only when complete.

Under torchrun, ranks take disjoint bands of tile rows (:mod:`rsfm_core.embed_dist`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import embed_dist
from .data import Grid, ModalityData
from .embed_sources import (
    ArraySource,
    Layout,
    MissingInputWarning,
    RasterInput,
    Source,
    load_manifest,
    pixel_area_km2,
    stack,
    tile_has_data,
)
from .io import RasterError
from .pretrained import CheckpointError, CheckpointInfo, load_verified
from .stitching import ArraySink, RowBlender, tile_weights

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "EmbedOptions",
    "EmbedResult",
    "Embedder",
    "Embedding",
    "MissingInputWarning",
    "RasterError",
    "RasterInput",
    "load_manifest",
]


# ---------------------------------------------------------------------------- options/results


@dataclass
class EmbedOptions:
    """How :meth:`Embedder.embed_rasters` tiles, computes and writes. Sizes are pixels of
    the reference (finest) grid; ``tile``, ``overlap`` and ``chip`` must be multiples of
    the token size (patch x pixel, e.g. 4 for S2 at patch 4)."""

    tile: int = 256
    overlap: int = 32
    batch: int = 8
    dtype: str = "float16"  # dense COG: float16 | float32 | int8
    resolution: str = "token"  # token (one value per token) | pixel (bilinear upsampling)
    chip: int | None = None  # GeoParquet chip side; None: the tile size
    positions: str = "tile"  # tile (as trained on crops) | global (tiled == whole raster)
    region: tuple[int, int, int, int] | None = None  # (row, col, height, width) to embed
    blocksize: int = 256  # COG internal tile side
    compress: str = "deflate"
    progress: bool = True
    rows_per_band: int | None = None  # tile rows per distributed band (None: one per rank)
    distributed: bool | None = None  # None: auto (torchrun env / initialised group)
    cache_mb: int = 256  # GDAL block cache

    def __post_init__(self) -> None:
        choices = {"dtype": ("float16", "float32", "int8"), "resolution": ("token", "pixel"),
                   "positions": ("tile", "global")}  # fmt: skip
        for k, allowed in choices.items():
            if getattr(self, k) not in allowed:
                raise ValueError(f"{k} must be one of {allowed}, got {getattr(self, k)!r}")
        if self.tile <= 0 or not 0 <= self.overlap < self.tile or self.batch < 1:
            raise ValueError(
                f"need tile > 0, 0 <= overlap < tile, batch >= 1; got tile {self.tile}, "
                f"overlap {self.overlap}, batch {self.batch}"
            )
        if self.blocksize % 16 or not 128 <= self.blocksize <= 4096:
            raise ValueError(
                f"blocksize must be a multiple of 16 in 128..4096, got {self.blocksize}"
            )


@dataclass
class Embedding:
    """In-memory embedding (:meth:`Embedder.embed`): ``dense`` (B, D, h, w) float32 (0 where
    invalid), ``pooled`` (B, D), ``valid`` (B, h, w), ``modality_valid`` name ->
    (B, h, w), and ``grid``, the token grid when the input had one."""

    dense: torch.Tensor
    pooled: torch.Tensor
    valid: torch.Tensor
    modality_valid: dict[str, torch.Tensor]
    grid: Grid | None = None


@dataclass
class EmbedResult:
    """What :meth:`Embedder.embed_rasters` wrote and how long it took."""

    out: Path | None
    parquet: Path | None
    npz: Path | None
    grid: Grid  # the token grid of the dense map
    tiles: int
    computed: int
    skipped: int
    seconds: dict[str, float]
    pixels: int
    km2: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = self.seconds
        rate = self.km2 / max(s["total"], 1e-9)
        return (
            f"{self.tiles} tiles ({self.computed} computed, {self.skipped} without data), "
            f"{self.pixels / 1e6:.2f} Mpx = {self.km2:.1f} km2 in {s['total']:.1f} s "
            f"({rate:.2f} km2/s; read {s['read']:.1f} s, compute {s['compute']:.1f} s, "
            f"write {s['write']:.1f} s, finalize {s['finalize']:.1f} s)"
        )


# ---------------------------------------------------------------------------- embedder


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Embedder:
    """Streaming inference with an rsfm encoder (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device="auto",
        dtype="auto",
        info: CheckpointInfo | None = None,
    ) -> None:
        self.device = _device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
        self.dtype = getattr(torch, dtype)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.info = info or CheckpointInfo(self.config.name, "", "", "", False)
        self.bit = {m: i for i, m in enumerate(self.config.modalities)}

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None,
        *,
        device="auto",
        dtype="auto",
        verify: str = "auto",
        allow_random: bool = False,
        random_name: str = "rsfm_tiny",
    ) -> Embedder:
        """Load ``config.json`` + ``model.safetensors`` after integrity checks
        (:mod:`rsfm_core.pretrained`). ``path=None`` gives random weights only with
        ``allow_random=True`` (tests, demos, benchmarks)."""
        if path is None:
            if not allow_random:
                raise CheckpointError(
                    "no checkpoint given; pass a folder with config.json + model.safetensors "
                    "(or allow_random=True / Embedder.random() for an untrained model)"
                )
            return cls.random(random_name, device=device, dtype=dtype)
        model, info = load_verified(path, "cpu", verify)
        log.info("loaded %s from %s (sha256 %s)", info.name, info.path, info.sha256[:12])
        return cls(model, device=device, dtype=dtype, info=info)

    @classmethod
    def random(
        cls, name: str = "rsfm_tiny", *, seed: int = 0, device="auto", dtype="auto", **overrides
    ):
        """An untrained model of the registered size ``name`` (``overrides``: config fields)."""
        from .model import build_model

        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG state untouched
            torch.manual_seed(seed)
            model = build_model(name, **overrides)
        log.warning(
            "%s has RANDOM weights (seed %d): embeddings carry no learned meaning", name, seed
        )
        info = CheckpointInfo(model.config.name, f"random-init-seed-{seed}", "", "", False)
        return cls(model, device=device, dtype=dtype, info=info)

    @property
    def dim(self) -> int:
        return self.config.dim

    # ------------------------------------------------------------------ compute
    def _forward(self, samples: Sequence[Mapping[str, ModalityData]], offsets=None):
        """Tiles -> dense (B, D, h, w) float32, valid (B, h, w), modality bits (B, h, w);
        ``offsets``: each tile's token (row, col) in the region for global positions."""
        batch = stack(samples, self.device)
        autocast = self.dtype != torch.float32
        kw = {} if offsets is None else {"pos_offset": torch.tensor(offsets, dtype=torch.long)}
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, enabled=autocast):
            out = self.model(batch, **kw)
        bits = torch.zeros(out.valid.shape, dtype=torch.int32, device=out.valid.device)
        for m, v in out.modality_valid.items():
            bits |= v.to(torch.int32) << self.bit[m]
        return (
            out.dense.float().cpu().numpy(),
            out.valid.cpu().numpy(),
            bits.cpu().numpy().astype(np.uint16),
        )

    def _band(self, source: Source, band, sink, opts: EmbedOptions, timer, pbar):
        """Compute one band of tile rows, flush its owned token rows to ``sink``;
        returns (tiles computed, tiles skipped for having no valid pixel)."""
        L, t = source.layout, source.layout.token_px
        tok = L.tokens
        blend = RowBlender(
            self.dim, tok.width, L.tile_tok, L.row_start(band.tile_rows[0]), tok.height
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
                    dense, valid, bits = self._forward([samples[k] for k in keep], pos)
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

    def _stream(self, source: Source, bands, sink, opts: EmbedOptions, timer, rank0=True):
        """Every band in turn; returns (tiles computed, tiles skipped)."""
        from tqdm.auto import tqdm

        L = source.layout
        total = sum(len(L.rows[i]) for b in bands for i in b.tile_rows)
        pbar = tqdm(total=total, unit="tile", desc="embed", disable=not (opts.progress and rank0))
        try:
            counts = [self._band(source, b, sink, opts, timer, pbar) for b in bands]
            return sum(c for c, _ in counts), sum(s for _, s in counts)
        finally:
            pbar.close()

    # ------------------------------------------------------------------ in memory
    def embed(
        self,
        sample: Mapping[str, ModalityData],
        *,
        tile: int | None = None,
        overlap: int = 0,
        batch: int = 8,
        positions: str = "tile",
    ) -> Embedding:
        """Embed in-memory modalities (``ModalityData``, physical units, unbatched
        ``[T, C, H, W]`` or batched). ``tile=None``: one forward pass (sizes padded up to
        whole tokens with invalid pixels); ``tile=N``: the streaming tiled path of
        :meth:`embed_rasters`, in memory (unbatched input only)."""
        if not sample:
            raise ValueError(f"empty sample; give some of {list(self.config.modalities)}")
        if tile is not None:
            return self._embed_tiled(sample, tile, overlap, batch, positions)
        padded = {
            m: _pad_to(d.unsqueeze(), self.config.modalities[m].patch) for m, d in sample.items()
        }
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32),
        ):
            out = self.model({m: d.to(self.device) for m, d in padded.items()})
        ref = next(iter(sample.values()))
        p = self.config.modalities[next(iter(sample))].patch
        grid = None if ref.grid is None else _token_grid(ref.grid, p)
        return Embedding(
            dense=out.dense.float().cpu(),
            pooled=out.pooled.float().cpu(),
            valid=out.valid.cpu(),
            modality_valid={m: v.cpu() for m, v in out.modality_valid.items()},
            grid=grid,
        )

    def _embed_tiled(self, sample, tile, overlap, batch, positions) -> Embedding:
        if any(d.batched for d in sample.values()):
            raise ValueError("tiled embed() takes one unbatched sample ([T, C, H, W] per modality)")
        opts = EmbedOptions(
            tile=tile, overlap=overlap, batch=batch, positions=positions, progress=False
        )
        source = ArraySource(sample, self.config, tile, overlap)
        tok = source.layout.tokens
        sink = ArraySink(self.dim, tok.height, tok.width)
        band = embed_dist.plan_bands(source.layout, 1, None)
        self._stream(source, band, sink, opts, {"read": 0.0, "compute": 0.0, "write": 0.0})
        dense = torch.from_numpy(sink.dense)[None]  # (1, D, h, w)
        valid = ~torch.isnan(dense[:, 0])  # (1, h, w)
        dense = torch.nan_to_num(dense)  # 0 where invalid, as the encoder's own output
        pooled = dense.sum((2, 3)) / valid.sum().clamp_min(1)
        mv = {m: torch.from_numpy((sink.bits >> self.bit[m]) & 1 > 0)[None] for m in sample}
        return Embedding(dense, pooled, valid, mv, tok if source.layout.grid.crs else None)

    # ------------------------------------------------------------------ rasters
    def embed_rasters(
        self,
        inputs: Mapping[str, RasterInput],
        out: str | os.PathLike | None = None,
        *,
        parquet: str | os.PathLike | None = None,
        npz: str | os.PathLike | None = None,
        options: EmbedOptions | None = None,
        **overrides,
    ) -> EmbedResult:
        """Embed GeoTIFFs (``{modality: RasterInput}``) into a dense COG ``out``, GeoParquet
        chips ``parquet`` and/or ``npz``. ``overrides``: :class:`EmbedOptions` fields."""
        from .embed_run import run

        opts = dataclasses.replace(options or EmbedOptions(), **overrides)
        return run(self, inputs, out, parquet, npz, opts)


def _pad_to(d: ModalityData, p: int) -> ModalityData:
    H, W = d.shape_hw
    ph, pw = -H % p, -W % p
    if not ph and not pw:
        return d
    pixels = torch.nn.functional.pad(d.pixels, (0, pw, 0, ph))
    valid = torch.nn.functional.pad(d.valid, (0, pw, 0, ph))
    return dataclasses.replace(d, pixels=pixels, valid=valid)


def _token_grid(g: Grid, t: int) -> Grid:
    a, b, c, d, e, f = g.transform
    return Grid(g.crs, (a * t, b * t, c, d * t, e * t, f), -(-g.height // t), -(-g.width // t))


def area_km2(layout: Layout) -> float:
    return layout.grid.height * layout.grid.width * pixel_area_km2(layout.grid)
