"""The rsfm encoder: spectral patch embedding (band hypernetwork) -> spatial ViT per
frame -> per-location temporal/multimodal fusion. See docs/model.md.

    model = build_model("rsfm_tiny")
    out = model({"s2": s2_data, "s1": s1_data})   # EncoderOutput
    model.save_pretrained("ckpt/"); model = load_pretrained("ckpt/")
"""

from .config import ModalityConfig, ModelConfig, default_modalities
from .encoder import EncoderOutput, RSFMEncoder
from .io import load_pretrained, read_config, save_pretrained
from .registry import build_model, get_config, list_models, model_stats, register_model

__all__ = [
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
    "save_pretrained",
]
