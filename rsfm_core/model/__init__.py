"""The rsfm encoder: spectral patch embedding (band hypernetwork) -> spatial ViT per
frame -> per-location temporal/multimodal fusion. See docs/model.md.

    model = build_model("rsfm_tiny")
    out = model({"s2": s2_data, "s1": s1_data})   # EncoderOutput
    model.save_pretrained("ckpt/"); model = load_pretrained("ckpt/")   # verified load

Modules, leaves first: config (the schema of config.json) -> blocks, patch_embed, spatial,
fusion -> checkpoint (the one verified save/load) -> encoder -> registry (named sizes,
``build_model``, ``load_pretrained``, statistics).
"""

from .checkpoint import CheckpointError, CheckpointInfo, read_config, save_checkpoint, shipped
from .config import ModalityConfig, ModelConfig, default_modalities
from .encoder import EncoderOutput, RSFMEncoder
from .registry import (
    build_model,
    get_config,
    list_models,
    load_pretrained,
    model_stats,
    register_model,
)

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "EncoderOutput",
    "ModalityConfig",
    "ModelConfig",
    "RSFMEncoder",
    "build_model",
    "default_modalities",
    "get_config",
    "list_models",
    "load_pretrained",
    "model_stats",
    "read_config",
    "register_model",
    "save_checkpoint",
    "shipped",
]
