"""Checkpoints for users: ``config.json`` + ``model.safetensors`` (no pickle, ever).

``config.json`` holds ``{"format": "rsfm-encoder", "format_version": 1, "rsfm_version",
"weights_sha256", "config": ModelConfig.to_dict()}``; the config carries the sensors (band
descriptors and normalisation statistics), so a loaded model needs nothing from the live
registry. ``weights_sha256`` is the SHA-256 of ``model.safetensors``, checked by the
inference loader (:mod:`rsfm_core.pretrained`); older checkpoints without it still load.
Both files are written under a temporary name and renamed, the weights first and
``config.json`` last, so a partial write never looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..pretrained import sha256_file
from .config import FORMAT, FORMAT_VERSION, ModelConfig
from .encoder import RSFMEncoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_pretrained(model: RSFMEncoder, path: str | os.PathLike) -> Path:
    """Write ``model.safetensors``, then ``config.json`` with its SHA-256, into the folder
    ``path`` (created)."""
    from .. import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rsfm_version": __version__,
        "weights_sha256": sha256_file(path / WEIGHTS_NAME),  # of the file as renamed into place
        "config": model.config.to_dict(),
    }

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")

    _atomic_write(path / CONFIG_NAME, write_json)
    return path


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint folder."""
    f = Path(path) / CONFIG_NAME
    if not f.is_file():
        raise FileNotFoundError(
            f"{f} not found: a checkpoint folder holds {CONFIG_NAME} + {WEIGHTS_NAME}"
        )
    meta = json.loads(f.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{f}: not an rsfm encoder checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{f}: format version {meta['format_version']} is newer than this rsfm "
            f"understands ({FORMAT_VERSION}); upgrade rsfm"
        )
    return ModelConfig.from_dict(meta["config"])


def load_pretrained(
    path: str | os.PathLike, device: torch.device | str = "cpu", **overrides: Any
) -> RSFMEncoder:
    """Load a folder written by :meth:`RSFMEncoder.save_pretrained`; returns the model in
    eval mode. ``overrides`` replace runtime fields of the stored config (e.g.
    ``attn_backend=None``, ``grad_checkpointing=True``)."""
    config = read_config(path)
    if overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    f = Path(path) / WEIGHTS_NAME
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found next to {CONFIG_NAME}")
    model = RSFMEncoder(config)
    state = load_file(str(f), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{f} does not match its config: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return model.to(device).eval()
