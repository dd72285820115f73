"""What a run is asked to do and what it gives back: :class:`EmbedOptions`,
:class:`Embedding` (in memory), :class:`EmbedResult` (files written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..sample import Grid


@dataclass
class EmbedOptions:
    """How :meth:`Embedder.embed_rasters` tiles, computes and writes. Sizes are pixels of
    the reference (finest) grid; ``tile``, ``overlap`` and ``chip`` must be multiples of
    the token size (patch x pixel, e.g. 4 for S2 at patch 4)."""

    tile: int = 256
    overlap: int = 32
    batch: int = 8
    dtype: str = "auto"  # dense COG: auto | float16 | float32 | int8 (auto: int8 when large)
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
        choices = {"dtype": ("auto", "float16", "float32", "int8"), "resolution": ("token", "pixel"),
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


INT8_ABOVE_BYTES = 2**30  # dtype="auto": int8 when the float16 map would be larger


def auto_dtype(height: int, width: int, dim: int) -> str:
    """``dtype="auto"``: int8 for a map whose float16 values exceed 1 GiB (e.g. rsfm_tiny
    over more than ~8,200 x 8,200 px of 10 m pixels at token resolution), else float16."""
    return "int8" if height * width * dim * 2 > INT8_ABOVE_BYTES else "float16"


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
            f"{_pixels(self.pixels)} = {_area(self.km2)} in {s['total']:.1f} s "
            f"({rate:.2f} km2/s; read {s['read']:.1f} s, compute {s['compute']:.1f} s, "
            f"write {s['write']:.1f} s, finalize {s['finalize']:.1f} s)"
        )


def _pixels(n: int) -> str:
    """``4096 px``, ``0.26 Mpx``, ``120 Mpx``: never ``0.00 Mpx``."""
    if n < 100_000:
        return f"{n:,} px"
    return f"{n / 1e6:.2f} Mpx" if n < 100e6 else f"{n / 1e6:,.0f} Mpx"


def _area(km2: float) -> str:
    return f"{km2:.3g} km2" if km2 < 10 else f"{km2:,.1f} km2"


__all__ = ["EmbedOptions", "EmbedResult", "Embedding", "auto_dtype"]
