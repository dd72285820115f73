"""Registry of model sizes, ``build_model`` and ``model_stats`` (parameters and FLOPs).

FLOPs are counted analytically (2 per multiply-accumulate, matmuls and convolutions
only: LayerNorm, softmax, GELU and resizes are left out, as in
``torch.utils.flop_counter``), for one sample (B = 1) with every pixel valid: skipped
invalid frames only lower the real number. The band hypernetwork runs once per forward
and is counted once. A test checks the count against ``FlopCounterMode`` on rsfm_tiny.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch

from .config import ModalityConfig, ModelConfig, default_modalities
from .encoder import RSFMEncoder
from .patch_embed import DESCRIPTOR_DIM

_MODELS: dict[str, dict[str, Any]] = {}

DEFAULT_STATS_INPUTS = {"s2": (4, 12, 64, 64), "s1": (4, 2, 64, 64)}


def register_model(name: str, overwrite: bool = False, **fields: Any) -> None:
    """Register a named configuration (``ModelConfig`` fields; ``modalities`` included)."""
    if name in _MODELS and not overwrite:
        raise ValueError(f"model {name!r} is already registered (pass overwrite=True)")
    ModelConfig(name=name, **fields)  # validate now, not at first use
    _MODELS[name] = dict(fields)


def list_models() -> list[str]:
    return list(_MODELS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a registered size with ``overrides`` applied (any
    ``ModelConfig`` field; ``modalities`` replaces the whole mapping); unknown keys raise."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(fields)}")
    return ModelConfig(**{"name": name, **_MODELS[name], **overrides})


def build_model(name: str, **overrides: Any) -> RSFMEncoder:
    """A freshly initialised :class:`RSFMEncoder` of the registered size ``name``."""
    return RSFMEncoder(get_config(name, **overrides))


def load_pretrained(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    verify: bool | str = "on",
    **overrides: Any,
) -> RSFMEncoder:
    """An :class:`RSFMEncoder` from a checkpoint folder (``config.json`` +
    ``model.safetensors``), verified (:func:`rsfm_core.model.checkpoint.load_checkpoint`:
    the recorded SHA-256 is required unless ``verify="off"``), in eval mode.
    ``overrides`` replace runtime fields of the stored config."""
    return RSFMEncoder.from_pretrained(path, device, verify, **overrides)


# ---------------------------------------------------------------------------- sizes

register_model("rsfm_tiny", dim=128, depth=4, heads=4, fusion_depth=2, hyper_dim=64)
register_model("rsfm_small", dim=384, depth=12, heads=6, fusion_depth=4, hyper_dim=128)
register_model("rsfm_base", dim=768, depth=12, heads=12, fusion_depth=4, hyper_dim=128)
register_model("rsfm_large", dim=1024, depth=24, heads=16, fusion_depth=6, hyper_dim=256)


# ---------------------------------------------------------------------------- statistics


def _block_flops(seq: int, dim: int, hidden: int) -> int:
    """One pre-norm block on one sequence of ``seq`` tokens: qkv, proj, MLP, QK^T and PV."""
    linear = seq * (3 * dim * dim + dim * dim + 2 * dim * hidden)
    attn = 2 * seq * seq * dim
    return 2 * (linear + attn)


def _modality_flops(cfg: ModelConfig, m: ModalityConfig, T: int, C: int, H: int, W: int) -> dict:
    D, E, k = cfg.dim, cfg.hyper_dim, m.kernel_size
    hidden = int(D * cfg.mlp_ratio)
    N = (H // m.patch) * (W // m.patch)
    return {
        "hypernet": 2 * C * (DESCRIPTOR_DIM * E + E * E + E * k * k * D),
        "patch_embed": 2 * T * C * H * W * D,
        "spatial": T * m.groups * cfg.depth * _block_flops(N, D, hidden),
        "date_embed": 2 * T * (2 * cfg.date_freqs + 1) * D,
        "tokens": N,
        "seq": T * m.groups,
    }


def model_stats(
    model_or_name: RSFMEncoder | ModelConfig | str,
    inputs: Mapping[str, tuple[int, int, int, int]] | None = None,
) -> dict[str, Any]:
    """Parameters and forward FLOPs per sample for ``inputs`` ``{modality: (T, C, H, W)}``
    (default: S2 12 bands + S1, T = 4, 64 x 64 px). Returns ``{"params", "flops_per_sample",
    "flops": {part: flops}, "tokens_per_frame", "fusion_seq_len"}``."""
    if isinstance(model_or_name, RSFMEncoder):
        cfg, params = model_or_name.config, model_or_name.num_params()
    else:
        cfg = get_config(model_or_name) if isinstance(model_or_name, str) else model_or_name
        with torch.device("meta"):  # count without allocating (rsfm_large: ~1.5 GB)
            params = RSFMEncoder(cfg).num_params()
    inputs = dict(DEFAULT_STATS_INPUTS if inputs is None else inputs)
    unknown = sorted(set(inputs) - set(cfg.modalities))
    if unknown or not inputs:
        raise ValueError(
            f"inputs must name declared modalities {list(cfg.modalities)}; got {unknown}"
        )
    parts = {n: _modality_flops(cfg, cfg.modalities[n], *shape) for n, shape in inputs.items()}
    grids = {p["tokens"] for p in parts.values()}
    if len(grids) > 1:
        raise ValueError(f"token grids disagree: { {n: p['tokens'] for n, p in parts.items()} }")
    N, L = grids.pop(), 1 + sum(p["seq"] for p in parts.values())
    flops = {
        key: sum(p[key] for p in parts.values())
        for key in ("hypernet", "patch_embed", "spatial", "date_embed")
    }
    flops["fusion"] = N * cfg.fusion_depth * _block_flops(L, cfg.dim, int(cfg.dim * cfg.mlp_ratio))
    return {
        "params": params,
        "flops_per_sample": sum(flops.values()),
        "flops": flops,
        "tokens_per_frame": N,
        "fusion_seq_len": L,
    }


__all__ = [
    "DEFAULT_STATS_INPUTS",
    "build_model",
    "default_modalities",
    "get_config",
    "list_models",
    "load_pretrained",
    "model_stats",
    "register_model",
]
