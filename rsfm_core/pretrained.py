"""Verified loading of user checkpoints (``config.json`` + ``model.safetensors``) for
inference: never unpickles, and checks the weights file before trusting it.

Checks, in order (each failure is a :class:`CheckpointError` naming the file):

1. ``config.json`` parses as an rsfm encoder config (``rsfm_core.model.read_config``).
2. The SHA-256 of ``model.safetensors`` equals the recorded one: ``weights_sha256`` in
   ``config.json`` (written by ``save_pretrained``) if present, else the sidecar
   ``model.safetensors.sha256`` (``sha256sum`` format, written by :func:`write_checksum`).
   With none recorded the digest is computed, logged and carried into the outputs' tags,
   and a warning says the file could not be verified (``verify="strict"`` makes that an
   error).
3. The safetensors header is well formed (length, JSON, dtypes, contiguous in-bounds
   data offsets that match each shape: catches truncation) and every tensor's name,
   shape and dtype class match what the config builds.
4. ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SIDECAR_NAME = WEIGHTS_NAME + ".sha256"
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype codes -> bytes per element
_ST_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_FLOAT_CODES = {"F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64"}


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not match its config."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What the outputs' tags record about the model that made them."""

    name: str
    sha256: str
    rsfm_version: str
    path: str
    verified: bool


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_checksum(folder: str | os.PathLike) -> str:
    """Record the SHA-256 of ``folder/model.safetensors`` in the sidecar file; returns it."""
    folder = Path(folder)
    digest = sha256_file(folder / WEIGHTS_NAME)
    (folder / SIDECAR_NAME).write_text(f"{digest}  {WEIGHTS_NAME}\n", encoding="utf-8")
    return digest


def resolve_folder(path: str | os.PathLike) -> Path:
    """A checkpoint folder from the folder, its ``config.json`` or its weights file."""
    p = Path(path)
    if p.is_file() and p.name in (CONFIG_NAME, WEIGHTS_NAME):
        p = p.parent
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found; pass the folder holding {CONFIG_NAME}")
    if not p.is_dir():
        raise CheckpointError(
            f"{p}: not a checkpoint folder; pass the folder holding {CONFIG_NAME} + {WEIGHTS_NAME}"
        )
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (p / name).is_file():
            raise CheckpointError(f"{p / name}: missing; a checkpoint folder holds both files")
    return p


def recorded_checksum(folder: Path, meta: dict) -> str | None:
    for key in ("weights_sha256", "sha256"):
        if isinstance(meta.get(key), str):
            return meta[key].strip().lower()
    side = folder / SIDECAR_NAME
    if side.is_file():
        words = side.read_text(encoding="utf-8").split()
        if not words or len(words[0]) != 64:
            raise CheckpointError(f"{side}: not a sha256sum line ('<64 hex>  {WEIGHTS_NAME}')")
        return words[0].lower()
    return None


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse and check a safetensors header: name -> (dtype code, shape)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path}: header length {n} exceeds the file; truncated/corrupt")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: header is not JSON ({e}); corrupt file") from None
    header.pop("__metadata__", None)
    out, spans, data_size = {}, [], size - 8 - n
    for name, e in header.items():
        dt, shape, (b, end) = e.get("dtype"), tuple(e.get("shape", ())), e.get("data_offsets")
        if dt not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dt!r}")
        if end - b != math.prod(shape) * _ST_DTYPES[dt] or not 0 <= b <= end <= data_size:
            raise CheckpointError(
                f"{path}: tensor {name!r} {dt}{list(shape)} has data offsets [{b}, {end}) that "
                f"do not fit its shape or the {data_size} data bytes; truncated or corrupt file"
            )
        spans.append((b, end))
        out[name] = (dt, shape)
    spans.sort()
    pos = 0
    for b, end in spans:
        if b != pos:
            raise CheckpointError(f"{path}: tensor data overlap or leave gaps; corrupt file")
        pos = end
    if pos != data_size:
        raise CheckpointError(f"{path}: {data_size - pos} stray bytes after the tensors")
    return out


def check_against_model(path: Path, header: dict, model: torch.nn.Module) -> None:
    state = model.state_dict()
    missing = sorted(set(state) - set(header))
    extra = sorted(set(header) - set(state))
    if missing or extra:
        raise CheckpointError(
            f"{path}: tensors do not match {CONFIG_NAME}: missing {missing[:8]}, unexpected "
            f"{extra[:8]}; the weights belong to another model config"
        )
    for name, t in state.items():
        dt, shape = header[name]
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {list(shape)}, the config builds "
                f"{list(t.shape)}; the weights belong to another model config"
            )
        if t.is_floating_point() != (dt in _FLOAT_CODES):
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dt}, expected {t.dtype}")


def _verify_digest(folder: Path, meta: dict, verify: str) -> tuple[str, bool]:
    weights = folder / WEIGHTS_NAME
    digest = sha256_file(weights)
    expected = recorded_checksum(folder, meta)
    if expected is None:
        if verify == "strict":
            raise CheckpointError(
                f"{weights}: no recorded SHA-256 (config.json 'weights_sha256' or {SIDECAR_NAME}); "
                "record one with rsfm_core.pretrained.write_checksum(folder)"
            )
        log.warning(
            "%s: no recorded SHA-256 to verify against; sha256=%s (record it with "
            "rsfm_core.pretrained.write_checksum)", weights, digest,
        )  # fmt: skip
        return digest, False
    if digest != expected:
        raise CheckpointError(
            f"{weights}: SHA-256 {digest} does not match the recorded {expected}; the file is "
            "corrupt or was replaced — re-download or re-export it"
        )
    return digest, True


def load_verified(
    path: str | os.PathLike, device: torch.device | str = "cpu", verify: str = "auto"
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Load an encoder checkpoint after the checks in the module docstring; ``verify``:
    ``"auto"`` (check the digest when one is recorded), ``"strict"`` (require one) or
    ``"off"`` (skip the digest; header and shape checks still run)."""
    from safetensors.torch import load_file

    from .model import RSFMEncoder, read_config

    if verify not in ("auto", "strict", "off"):
        raise ValueError(f"verify must be 'auto', 'strict' or 'off', got {verify!r}")
    folder = resolve_folder(path)
    try:
        config = read_config(folder)
        meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {e}") from None
    weights = folder / WEIGHTS_NAME
    digest, verified = ("", False) if verify == "off" else _verify_digest(folder, meta, verify)
    header = read_header(weights)
    model = RSFMEncoder(config)
    check_against_model(weights, header, model)
    model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    info = CheckpointInfo(
        name=config.name,
        sha256=digest,
        rsfm_version=str(meta.get("rsfm_version", "")),
        path=str(folder),
        verified=verified,
    )
    return model.to(device).eval(), info
