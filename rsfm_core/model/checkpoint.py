"""Checkpoints for users: ``config.json`` + ``model.safetensors``, never a pickle. The one
implementation of saving, verified loading and checksums, used by every entry point
(``model.save_pretrained``, ``rs.load_pretrained``, ``RSFMEncoder.from_pretrained``,
``rs.Embedder.from_pretrained``, ``rsfm embed``, ``rsfm eval``, the pretraining export).

Format: ``config.json`` holds ``{"format": "rsfm-encoder", "format_version": 1,
"rsfm_version", "weights_sha256", "config": ModelConfig.to_dict()}``; the config carries the
sensors (band descriptors and normalisation statistics), so a loaded model needs nothing
from the live registry. ``weights_sha256`` is the SHA-256 of ``model.safetensors``. Both
files are written atomically (:mod:`rsfm_core.files`), the weights first and
``config.json`` last, so a partial save never looks complete.

Loading (:func:`load_checkpoint`) checks, in order (each failure is a
:class:`CheckpointError` naming the file, and the key where there is one):

1. ``config.json`` parses as an rsfm encoder config, every value of the right type and
   range (:class:`~rsfm_core.model.config.ModelConfig` checks them).
2. The SHA-256 of ``model.safetensors`` equals the recorded one: ``weights_sha256`` in
   ``config.json`` if present (it must then be 64 hex digits: ``null`` or a number is an
   error, not "unverified"), else the sidecar ``model.safetensors.sha256`` (``sha256sum``
   format, written by :func:`write_checksum`). No recorded digest is an error.
   ``verify="off"`` (or ``False``) skips this step with a warning: the one opt-out, for
   weights you trust that were written without a digest.
3. The safetensors header is well formed (length, a JSON object, string metadata, each
   entry an object with a known dtype, a shape of non-negative ints and two int data
   offsets, contiguous and in bounds and matching the shape: catches truncation) and
   every tensor's name, shape and dtype class match what the config builds -- checked
   against a build on the *meta* device, so a config that asks for a huge model (``dim:
   65536``, ~51 GB) is refused before anything is allocated.
4. The real build and ``load_state_dict(strict=True)``; an error of the safetensors
   reader itself is a :class:`CheckpointError` too.

The model class is a parameter (``build``), so this module sits below the encoder:
:class:`PretrainedMixin` gives the encoder ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write, atomic_write_text, sha256_file
from .config import FORMAT, FORMAT_VERSION, ModelConfig

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


# ---------------------------------------------------------------------------- saving


def save_checkpoint(
    model: torch.nn.Module, path: str | os.PathLike, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model.safetensors``, then ``config.json`` with its SHA-256, into the folder
    ``path`` (created). ``model`` needs ``state_dict()`` and ``config`` (a ModelConfig).
    ``dtype`` (e.g. ``torch.float16``) stores floating tensors in that type (loading casts
    them back to the model's); default: as they are."""
    from safetensors.torch import save_file

    from .. import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), {"format": "pt"}))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rsfm_version": __version__,
        "weights_sha256": sha256_file(path / WEIGHTS_NAME),  # of the file as renamed into place
        "config": model.config.to_dict(),
    }
    atomic_write_text(path / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
    return path


def write_checksum(folder: str | os.PathLike) -> str:
    """Record the SHA-256 of ``folder/model.safetensors`` in the sidecar file; returns it."""
    folder = Path(folder)
    digest = sha256_file(folder / WEIGHTS_NAME)
    atomic_write_text(folder / SIDECAR_NAME, f"{digest}  {WEIGHTS_NAME}\n")
    return digest


# ---------------------------------------------------------------------------- loading


# Checkpoints shipped inside the package (docs/models.md): <name>/config.json + weights.
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


def shipped() -> list[str]:
    """Names of the checkpoints shipped with rsfm (``rs.load_pretrained(name)``)."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(d.name for d in SHIPPED_DIR.iterdir() if (d / CONFIG_NAME).is_file())


def resolve_folder(path: str | os.PathLike) -> Path:
    """A checkpoint folder from the folder, its ``config.json`` or its weights file, or
    the name of a shipped checkpoint (:func:`shipped`; a local path of that name wins)."""
    p = Path(path)
    if p.is_file() and p.name in (CONFIG_NAME, WEIGHTS_NAME):
        p = p.parent
    if not p.exists() and str(path) in shipped():
        p = SHIPPED_DIR / str(path)
    if not p.exists():
        names = ", ".join(shipped()) or "none"
        raise CheckpointError(
            f"{p}: checkpoint not found; pass the folder holding {CONFIG_NAME}, or the name of a "
            f"shipped checkpoint ({names})"
        )
    if not p.is_dir():
        raise CheckpointError(
            f"{p}: not a checkpoint folder; pass the folder holding {CONFIG_NAME} + {WEIGHTS_NAME}"
        )
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (p / name).is_file():
            raise CheckpointError(f"{p / name}: missing; a checkpoint folder holds both files")
    return p


_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def recorded_checksum(folder: Path, meta: dict) -> str | None:
    """The digest ``config.json`` (``weights_sha256``) or the sidecar records; None when
    neither does. A recorded value that is not 64 hex digits raises."""
    for key in ("weights_sha256", "sha256"):
        if key in meta:
            v = meta[key]
            if not (isinstance(v, str) and _SHA256.match(v.strip())):
                raise CheckpointError(
                    f"{folder / CONFIG_NAME}: {key} {v!r} is not a SHA-256 (64 hex digits); "
                    "config.json was edited or damaged: re-export the checkpoint, or load "
                    "with verify='off' if you trust the weights"
                )
            return v.strip().lower()
    side = folder / SIDECAR_NAME
    if side.is_file():
        words = side.read_text(encoding="utf-8").split()
        if not words or not _SHA256.match(words[0]):
            raise CheckpointError(f"{side}: not a sha256sum line ('<64 hex>  {WEIGHTS_NAME}')")
        return words[0].lower()
    return None


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; corrupt or not a safetensors file, re-export it")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(path: Path, name: str, e: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, every field checked."""
    if not isinstance(e, dict):
        raise _bad(path, f"header entry {name!r} is not an object ({e!r})")
    dt, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if dt not in _ST_DTYPES:
        raise _bad(path, f"tensor {name!r} has unknown dtype {dt!r}")
    if not isinstance(shape, list) or not all(_is_int(v) and v >= 0 for v in shape):
        raise _bad(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative ints")
    if offsets is None:
        raise _bad(path, f"tensor {name!r} has no data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise _bad(path, f"tensor {name!r}: data offsets {offsets!r} must be two ints")
    return dt, tuple(shape), offsets[0], offsets[1]


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
    if not isinstance(header, dict):
        raise _bad(path, f"header is not a JSON object (a {type(header).__name__})")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _bad(path, f"__metadata__ must map strings to strings, got {meta!r}")
    out, spans, data_size = {}, [], size - 8 - n
    for name, e in header.items():
        dt, shape, b, end = _entry(path, name, e)
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


def verify_mode(verify: bool | str) -> bool:
    """``verify=`` as a bool: ``True``/``"on"`` (the default; ``"auto"`` and ``"strict"``,
    the older spellings, mean the same) or ``False``/``"off"``."""
    if verify is True or verify in ("on", "auto", "strict"):
        return True
    if verify is False or verify == "off":
        return False
    raise ValueError(f"verify must be 'on' (True) or 'off' (False), got {verify!r}")


def _verify_digest(folder: Path, meta: dict) -> str:
    weights = folder / WEIGHTS_NAME
    expected = recorded_checksum(folder, meta)
    if expected is None:
        raise CheckpointError(
            f"{weights}: no recorded SHA-256 (config.json 'weights_sha256' or {SIDECAR_NAME}), "
            "so the weights cannot be verified. Record one with "
            "rsfm_core.model.checkpoint.write_checksum(folder) if you trust the file, or load "
            "with verify='off'"
        )
    digest = sha256_file(weights)
    if digest != expected:
        raise CheckpointError(
            f"{weights}: SHA-256 {digest} does not match the recorded {expected}; the file is "
            "corrupt or was replaced — re-download or re-export it"
        )
    return digest


def _read_meta(folder: Path) -> tuple[ModelConfig, dict]:
    """The stored :class:`ModelConfig` and the raw ``config.json`` of a checkpoint folder."""
    f = folder / CONFIG_NAME
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: not JSON ({e}); re-export the checkpoint") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{f}: not an rsfm encoder checkpoint (a JSON {type(meta).__name__}, not an object)"
        )
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{f}: not an rsfm encoder checkpoint (format {meta.get('format')!r})"
        )
    version = meta.get("format_version", 0)
    if not _is_int(version):
        raise CheckpointError(f"{f}: format_version must be an int, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{f}: format version {version} is newer than this rsfm understands "
            f"({FORMAT_VERSION}); upgrade rsfm"
        )
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(
            f"{f}: 'config' must be a mapping of model settings, got {meta.get('config')!r}"
        )
    try:
        return ModelConfig.from_dict(meta["config"]), meta
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{f}: {e}") from None


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint folder (or its ``config.json``)."""
    p = Path(path)
    folder = p.parent if p.name == CONFIG_NAME else p
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{folder / CONFIG_NAME}: missing; a checkpoint folder holds {CONFIG_NAME} + "
            f"{WEIGHTS_NAME}"
        )
    return _read_meta(folder)[0]


def load_checkpoint(
    path: str | os.PathLike,
    build: Callable[[ModelConfig], torch.nn.Module],
    device: torch.device | str = "cpu",
    verify: bool | str = "on",
    overrides: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Build ``build(config)`` and load the checkpoint at ``path`` into it after the checks
    in the module docstring; returns the model (eval mode, on ``device``) and what the
    outputs' tags record about it. ``verify``: ``"on"``/``True`` (default: the SHA-256
    must be recorded and match) or ``"off"``/``False`` (skip the digest, with a warning;
    the header and shape checks still run). ``overrides`` replace runtime fields of the
    stored config (e.g. ``attn_backend=None``, ``grad_checkpointing=True``)."""
    from safetensors.torch import load_file

    check_digest = verify_mode(verify)
    folder = resolve_folder(path)
    config, meta = _read_meta(folder)
    if overrides:
        try:
            config = ModelConfig.from_dict({**config.to_dict(), **overrides})
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{folder / CONFIG_NAME}: overrides {overrides}: {e}") from None
    weights = folder / WEIGHTS_NAME
    if check_digest:
        digest = _verify_digest(folder, meta)
    else:
        digest = ""
        log.warning("%s: loaded with verify='off': the weights are NOT verified", weights)
    header = read_header(weights)
    with torch.device("meta"):  # shapes without allocating (a bad config may ask for GBs)
        probe = build(config)
    check_against_model(weights, header, probe)
    del probe
    model = build(config)
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors' own reader (SafetensorError and friends)
        raise CheckpointError(
            f"{weights}: the safetensors reader refused it ({e}); re-export it"
        ) from e
    model.load_state_dict(state, strict=True)
    info = CheckpointInfo(
        name=config.name,
        sha256=digest,
        rsfm_version=str(meta.get("rsfm_version", "")),
        path=str(folder),
        verified=check_digest,
    )
    return model.to(device).eval(), info


class PretrainedMixin:
    """``save_pretrained``/``from_pretrained`` for a module built from a ``ModelConfig``
    (``cls(config)``) that keeps it as ``self.config``."""

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to the folder ``path`` (floating
        tensors stored as ``dtype`` when given, e.g. ``torch.float16``)."""
        return save_checkpoint(self, path, dtype)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: torch.device | str = "cpu",
        verify: bool | str = "on", **overrides: Any,
    ):  # fmt: skip
        """Load a folder written by :meth:`save_pretrained` (verified; see
        :func:`load_checkpoint`); returns the model in eval mode."""
        return load_checkpoint(path, cls, device, verify, overrides)[0]
