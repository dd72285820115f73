"""Embedder: a checkpoint's encoder, run on in-memory tensors or streamed over GeoTIFFs.

    import rsfm_core as rs
    emb = rs.Embedder.from_pretrained("ckpt/")          # verified, never unpickled
    emb.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", s2_paths, s2_dates),
                       "s1": rs.RasterInput("sentinel1_grd", s1_paths, s1_dates)},
                      out="emb.tif", parquet="chips.parquet", npz="emb.npz")
    emb.embed({"s2": modality_data})                     # in-memory tensors -> Embedding

The embedder owns the model and its numerics (device, bf16 autocast on GPU, float32 on
CPU) and offers :meth:`Embedder.forward_tiles` to the run loop; how a raster run goes is
in :mod:`rsfm_core.inference` and docs/inference.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..model import RSFMEncoder, build_model
from ..model.checkpoint import CheckpointError, CheckpointInfo, load_checkpoint
from ..sample import ModalityData
from . import distributed
from .inputs import RasterInput
from .options import Embedding, EmbedOptions, EmbedResult
from .run import run
from .stitching import ArraySink
from .stream import stream
from .tiles import ArraySource, stack, token_grid

log = logging.getLogger(__name__)

__all__ = ["Embedder"]


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
        verify: bool | str = "on",
        allow_random: bool = False,
        random_name: str = "rsfm_tiny",
    ) -> Embedder:
        """Load ``config.json`` + ``model.safetensors`` after integrity checks
        (:mod:`rsfm_core.model.checkpoint`). ``path=None`` gives random weights only with
        ``allow_random=True`` (tests, demos, benchmarks)."""
        if path is None:
            if not allow_random:
                raise CheckpointError(
                    "no checkpoint given; pass a folder with config.json + model.safetensors "
                    "(or allow_random=True / Embedder.random() for an untrained model)"
                )
            return cls.random(random_name, device=device, dtype=dtype)
        model, info = load_checkpoint(path, RSFMEncoder, "cpu", verify)
        log.info("loaded %s from %s (sha256 %s)", info.name, info.path, info.sha256[:12])
        return cls(model, device=device, dtype=dtype, info=info)

    @classmethod
    def random(
        cls, name: str = "rsfm_tiny", *, seed: int = 0, device="auto", dtype="auto", **overrides
    ):
        """An untrained model of the registered size ``name`` (``overrides``: config fields)."""
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
    def forward_tiles(self, samples: Sequence[Mapping[str, ModalityData]], offsets=None):
        """Tiles (unbatched samples of one shape) -> numpy dense (B, D, h, w) float32,
        valid (B, h, w), modality bits (B, h, w) uint16 (bit i: the checkpoint's i-th
        modality was valid); ``offsets``: each tile's token (row, col) in the region, for
        region-global positions (None: each tile is its own frame)."""
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

    # ------------------------------------------------------------------ in memory
    def embed(
        self,
        sample: Mapping[str, ModalityData] | Sequence[Mapping[str, ModalityData]],
        *,
        tile: int | None = None,
        overlap: int = 0,
        batch: int = 8,
        positions: str = "tile",
    ) -> Embedding | list[Embedding]:
        """Embed in-memory modalities (``ModalityData``, physical units, unbatched
        ``[T, C, H, W]`` or batched). ``tile=None``: one forward pass (sizes padded up to
        whole tokens with invalid pixels); ``tile=N``: the streaming tiled path of
        :meth:`embed_rasters`, in memory (unbatched input only).

        A list of unbatched samples (many small chips) gives a list of ``Embedding``
        (each with batch size 1), in the same order; chips of the same shape, sensors and
        number of dates go through the model ``batch`` at a time."""
        if isinstance(sample, Sequence):
            return self._embed_many(sample, batch)
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
        grid = None if ref.grid is None else token_grid(ref.grid, p)
        return Embedding(
            dense=out.dense.float().cpu(),
            pooled=out.pooled.float().cpu(),
            valid=out.valid.cpu(),
            modality_valid={m: v.cpu() for m, v in out.modality_valid.items()},
            grid=grid,
        )

    def _embed_many(self, samples, batch: int) -> list[Embedding]:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            if not isinstance(s, Mapping) or not s:
                raise ValueError(f"sample {i}: expected a non-empty {{modality: ModalityData}}")
            if any(d.batched for d in s.values()):
                raise ValueError(f"sample {i}: a list of samples takes unbatched ModalityData")
            key = tuple(
                (m, d.sensor, tuple(d.bands), tuple(d.pixels.shape)) for m, d in sorted(s.items())
            )
            groups.setdefault(key, []).append(i)
        out: list[Embedding | None] = [None] * len(samples)
        for idx in groups.values():
            for j in range(0, len(idx), batch):
                part = idx[j : j + batch]
                batched = {
                    m: ModalityData(
                        pixels=torch.stack([samples[i][m].pixels for i in part]),
                        valid=torch.stack([samples[i][m].valid for i in part]),
                        dates=torch.stack([samples[i][m].dates for i in part]),
                        sensor=d.sensor,
                        bands=d.bands,
                        grid=None,
                    )
                    for m, d in samples[part[0]].items()
                }
                e = self.embed(batched)
                for n, i in enumerate(part):
                    ref = next(iter(samples[i].items()))
                    p = self.config.modalities[ref[0]].patch
                    out[i] = Embedding(
                        dense=e.dense[n : n + 1],
                        pooled=e.pooled[n : n + 1],
                        valid=e.valid[n : n + 1],
                        modality_valid={m: v[n : n + 1] for m, v in e.modality_valid.items()},
                        grid=None if ref[1].grid is None else token_grid(ref[1].grid, p),
                    )
        return out

    def _embed_tiled(self, sample, tile, overlap, batch, positions) -> Embedding:
        if any(d.batched for d in sample.values()):
            raise ValueError("tiled embed() takes one unbatched sample ([T, C, H, W] per modality)")
        opts = EmbedOptions(
            tile=tile, overlap=overlap, batch=batch, positions=positions, progress=False
        )
        source = ArraySource(sample, self.config, tile, overlap)
        tok = source.layout.tokens
        sink = ArraySink(self.dim, tok.height, tok.width)
        bands = distributed.plan_bands(source.layout, 1, None)
        timer = {"read": 0.0, "compute": 0.0, "write": 0.0}
        stream(self.forward_tiles, self.dim, source, bands, sink, opts, timer)
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
