"""RSFMEncoder: spectral patch embedding -> spatial ViT per frame -> per-location fusion.

``model(batch)`` takes ``{modality name: ModalityData}`` (batched ``[B, T, C, H, W]``,
physical values; any declared modality may be missing, any band subset may be given) and
returns an :class:`EncoderOutput`. All modalities must give the same token grid
``(H / patch, W / patch)``. ``model(batch, pos_offset=(r, c))`` embeds inputs whose
top-left token is token ``(r, c)`` of a larger frame with that frame's positions (tiled
inference with region-global positions).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange

from .. import sensors as _sensors
from ..sample import ModalityData
from .blocks import Attention, init_weights
from .checkpoint import PretrainedMixin
from .config import ModelConfig
from .fusion import FusionEncoder, masked_mean
from .patch_embed import BandSet, SpectralPatchEmbed, make_band_set
from .spatial import SpatialEncoder

log = logging.getLogger("rsfm_core.model")


@dataclass
class EncoderOutput:
    """What the encoder returns (``D`` = ``config.dim``, ``h, w`` = the token grid).

    - ``dense`` (B, D, h, w): the fusion token's output at each location; exactly 0 where
      ``valid`` is False.
    - ``pooled`` (B, D): mean of ``dense`` over the valid locations (0 if there are none).
    - ``valid`` (B, h, w) bool: the location had at least one valid input token.
    - ``modalities``: name -> (B, D, h, w) pre-fusion features of each given modality
      (spatial-encoder output averaged over that modality's valid frames and groups).
    - ``modality_valid``: name -> (B, h, w) bool, where that modality had a valid token.
    - ``intermediates``: when requested, one (B, D, h, w) map per requested spatial block:
      that block's (normed) output averaged over all valid frames of all modalities.
    """

    dense: torch.Tensor
    pooled: torch.Tensor
    valid: torch.Tensor
    modalities: dict[str, torch.Tensor]
    modality_valid: dict[str, torch.Tensor]
    intermediates: list[torch.Tensor] | None = None


def _token_grid(config: ModelConfig, batch: Mapping[str, ModalityData]) -> tuple[int, int]:
    """The shared token grid (h, w); raises naming every modality's shape if they differ."""
    grids = {}
    for name, d in batch.items():
        p = config.modalities[name].patch
        H, W = d.shape_hw
        if H % p or W % p:
            raise ValueError(
                f"modality {name!r}: image {H}x{W} px is not a multiple of its patch size {p}; "
                f"crop or pad it to a multiple of {p}"
            )
        grids[name] = (H // p, W // p)
    if len(set(grids.values())) > 1:
        detail = "; ".join(
            f"{n}: {batch[n].shape_hw[0]}x{batch[n].shape_hw[1]} px / patch "
            f"{config.modalities[n].patch} -> {g[0]}x{g[1]} tokens"
            for n, g in grids.items()
        )
        raise ValueError(
            f"token grids of the modalities disagree ({detail}); every modality must cover the "
            "same ground area with H / patch and W / patch equal"
        )
    return next(iter(grids.values()))


def _flat(x: torch.Tensor) -> torch.Tensor:
    """Per-frame tokens (B, T, G, N, ...) -> per-location sequences (B, N, T*G, ...)."""
    return rearrange(x, "b t g n ... -> b n (t g) ...")


def _outputs(
    fused: torch.Tensor,
    loc_valid: torch.Tensor,
    feats: dict[str, torch.Tensor],
    valids: dict[str, torch.Tensor],
    layers: list[dict[str, torch.Tensor]] | None,
    grid: tuple[int, int],
) -> EncoderOutput:
    """Assemble the named outputs from per-location tensors ``fused`` (B, N, D) and the
    per-modality frame tokens ``feats[m]`` (B, T, G, N, D) / ``valids[m]`` (B, T, G, N)."""
    h, w = grid
    to_map = lambda t: rearrange(t, "b (h w) d -> b d h w", h=h, w=w)  # noqa: E731
    intermediates = None
    if layers is not None:
        all_valid = torch.cat([_flat(v) for v in valids.values()], dim=2)  # (B, N, L)
        intermediates = [
            to_map(masked_mean(torch.cat([_flat(t) for t in lay.values()], dim=2), all_valid))
            for lay in layers
        ]  # each (B, D, h, w)
    return EncoderOutput(
        dense=to_map(fused),  # (B, D, h, w)
        pooled=masked_mean(fused, loc_valid),  # (B, D)
        valid=loc_valid.view(-1, h, w),  # (B, h, w)
        modalities={n: to_map(masked_mean(_flat(feats[n]), _flat(valids[n]))) for n in feats},
        modality_valid={n: _flat(v).any(-1).view(-1, h, w) for n, v in valids.items()},
        intermediates=intermediates,
    )


class RSFMEncoder(PretrainedMixin, nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = SpectralPatchEmbed(config)
        self.spatial = SpatialEncoder(config)
        self.fusion = FusionEncoder(config)
        self.apply(init_weights)
        self.patch_embed.reset_parameters()
        self.fusion.reset_parameters()
        self.set_attn_backend(config.attn_backend)
        self.set_grad_checkpointing(config.grad_checkpointing)
        self._band_sets: dict[tuple, BandSet] = {}
        self._sensors: dict[str, _sensors.Sensor] = {}

    # ------------------------------------------------------------------ switches
    @property
    def embed_dim(self) -> int:
        return self.config.dim

    def set_attn_backend(self, backend: str | None) -> None:
        """Force an ``rsfm_kernels.attention`` backend on every block (None: automatic)."""
        self.config.attn_backend = backend
        for mod in self.modules():
            if isinstance(mod, Attention):
                mod.backend = backend

    def set_embed_backend(self, backend: str | None) -> None:
        """Force an ``rsfm_kernels.spectral_patch_embed`` backend (None: automatic)."""
        self.config.embed_backend = backend
        self.patch_embed.backend = backend

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.config.grad_checkpointing = enabled
        for t in (*self.spatial.encoders.values(), self.fusion.transformer):
            t.grad_checkpointing = enabled

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ inputs
    def _sensor(self, name: str) -> _sensors.Sensor:
        if name not in self._sensors:
            if name in self.config.sensors:
                self._sensors[name] = self.config.sensor(name)
            else:
                log.info("sensor %r is not stored in the model config; using the registry's", name)
                self._sensors[name] = _sensors.get(name)
        return self._sensors[name]

    def band_set(self, modality: str, d: ModalityData) -> BandSet:
        """Descriptors, normalisation statistics and groups of ``d``'s bands (cached)."""
        key = (modality, d.sensor, d.bands, str(d.pixels.device))
        if key not in self._band_sets:
            m = self.config.modalities[modality]
            sensor, declared = self._sensor(d.sensor), self._sensor(m.sensor)
            if sensor.is_sar != declared.is_sar:
                raise ValueError(
                    f"modality {modality!r} is declared for {declared.name} ({declared.kind}) "
                    f"but got {sensor.name} ({sensor.kind}) data; feed it under a modality of "
                    "that kind"
                )
            self._band_sets[key] = make_band_set(
                sensor, d.bands, m.groups, m.group_edges_nm, d.pixels.device
            )
        return self._band_sets[key]

    def _prepare(self, batch: Mapping[str, ModalityData]) -> dict[str, ModalityData]:
        """Batched inputs in the config's modality order, checked."""
        if not batch:
            raise ValueError(f"empty batch; give at least one of {list(self.config.modalities)}")
        unknown = sorted(set(batch) - set(self.config.modalities))
        if unknown:
            raise ValueError(
                f"unknown modalities {unknown}; this model declares {list(self.config.modalities)}"
            )
        out = {}
        for name in self.config.modalities:
            if name in batch:
                d = batch[name]
                if not isinstance(d, ModalityData):
                    raise TypeError(
                        f"batch[{name!r}] must be a ModalityData, got {type(d).__name__}"
                    )
                out[name] = d.unsqueeze()
        sizes = {n: d.pixels.shape[0] for n, d in out.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch sizes of the modalities differ: {sizes}")
        return out

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        batch: Mapping[str, ModalityData],
        intermediate_layers: Sequence[int] | None = None,
        pos_offset: tuple[int, int] | torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode ``batch``; ``intermediate_layers``: spatial block indices (negative
        allowed) whose outputs to return in ``EncoderOutput.intermediates``.
        ``pos_offset``: token (row, col) at which the inputs' top-left token sits in a
        larger frame (a crop or tile of it), as an int pair for the whole batch or an
        integer (B, 2) tensor per sample; positions then match the larger frame's.
        None: (0, 0)."""
        data = self._prepare(batch)
        h, w = _token_grid(self.config, data)
        keep = tuple(intermediate_layers or ())
        tokens, tvalid, shapes = {}, {}, {}
        for name, d in data.items():
            bands = self.band_set(name, d)
            valid = d.valid & torch.isfinite(d.pixels).all(dim=2)  # (B, T, H, W)
            tokens[name], tvalid[name] = self.patch_embed(d.pixels, valid, bands, name, pos_offset)
            B, T = d.pixels.shape[:2]
            shapes[name] = (B, T, bands.num_groups, h * w)  # (B, T, G, N)
        spatial = self.spatial(tokens, tvalid, keep)
        feats = {n: spatial[n][0].view(*shapes[n], -1) for n in data}  # (B, T, G, N, D)
        valids = {n: tvalid[n].view(shapes[n]) for n in data}  # (B, T, G, N)
        fused, loc_valid = self.fusion(feats, valids, {n: d.dates for n, d in data.items()})
        fused = fused * loc_valid[..., None].to(fused.dtype)  # (B, N, D); 0 where invalid
        layers = [
            {n: spatial[n][1][j].view(*shapes[n], -1) for n in data} for j in range(len(keep))
        ]
        return _outputs(fused, loc_valid, feats, valids, layers if keep else None, (h, w))
