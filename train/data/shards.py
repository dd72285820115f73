"""Shard format: one webdataset tar member set per sample, a manifest per shard folder.

A sample (one chip of one scene) is stored under the key ``<scene>_r<row>_c<col>``:

- ``<modality>.pixels.npy``: float16 ``[T, C, H, W]`` in physical units (0 where invalid);
- ``<modality>.valid.npy``: uint8, ``np.packbits`` of the bool ``[T, H, W]`` validity;
- ``meta.json``: ``{"format", "scene", "window", "modalities": {name: {"sensor",
  "bands", "dates" (days since 1970), "shape" [T, C, H, W], "grid" (or null)}}}``.

Decisions:
- float16 for every sensor: one code path; relative precision 2**-11 (S2 reflectance
  within 2.4e-4 up to 1.0, about the 1e-4 of its integer files; SAR dB within 0.016 dB
  below 32 dB), far under sensor noise; values past float16's range are refused when
  writing. ``.npy`` is read with ``allow_pickle=False``: shards cannot run code.
- Validity as packed bits: 1/16 of the pixel bytes of a single-band float16 modality.
- The shard folder's ``manifest.json`` lists every shard with its sample count, size and
  sha256 (:func:`verify_shards` checks them), and the sensors, bands, dates and grids.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsfm_core.files import sha256_file
from rsfm_core.sample import Grid, ModalityData

log = logging.getLogger("rsfm_train")

SAMPLE_FORMAT = "rsfm-sample/1"
MANIFEST_FORMAT = "rsfm-shards/1"
MANIFEST_NAME = "manifest.json"
_F16_MAX = float(np.finfo(np.float16).max)


class CorruptSample(ValueError):
    """A sample in a shard could not be decoded (the message says what and where)."""


# ---------------------------------------------------------------------------- encoding


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def grid_dict(grid: Grid | None) -> dict | None:
    if grid is None:
        return None
    return {
        "crs": grid.crs,
        "transform": list(grid.transform),
        "height": grid.height,
        "width": grid.width,
    }


def encode_sample(
    key: str, sample: Mapping[str, ModalityData], extra: Mapping[str, Any] | None = None
) -> dict[str, bytes]:
    """Tar members of one sample (``{"__key__": key, "s2.pixels.npy": ..., ...}``).

    ``sample``: unbatched modalities; ``extra``: JSON-able fields added to meta.json.
    """
    if "." in key or "/" in key:
        raise ValueError(
            f"sample key {key!r} must not contain '.' or '/' (webdataset splits on them)"
        )
    out: dict[str, bytes] = {}
    meta: dict[str, Any] = {"format": SAMPLE_FORMAT, **(extra or {}), "modalities": {}}
    for name, d in sample.items():
        if name != name.lower() or "." in name:
            raise ValueError(f"modality name {name!r} must be lower case without '.'")
        if d.batched:
            raise ValueError(
                f"{key}/{name}: encode one sample, got a batch {tuple(d.pixels.shape)}"
            )
        px = d.pixels.detach().cpu().float().numpy()
        valid = d.valid.cpu().numpy()
        big = np.abs(np.where(valid[:, None], px, 0.0)).max(initial=0.0)
        if not np.isfinite(big) or big > _F16_MAX:
            raise ValueError(
                f"{key}/{name}: value {big:g} does not fit float16 (max {_F16_MAX:g}); "
                "shards hold physical units (reflectance, dB), not raw counts"
            )
        out[f"{name}.pixels.npy"] = _npy(np.where(valid[:, None], px, 0.0).astype(np.float16))
        out[f"{name}.valid.npy"] = _npy(np.packbits(valid.reshape(-1)))
        meta["modalities"][name] = {
            "sensor": d.sensor,
            "bands": list(d.bands),
            "dates": [int(x) for x in d.dates.tolist()],
            "shape": list(px.shape),
            "grid": grid_dict(d.grid),
        }
    out["meta.json"] = json.dumps(meta).encode()
    return {"__key__": key, **out}  # type: ignore[dict-item]


# ---------------------------------------------------------------------------- decoding


def _load(raw: Mapping[str, Any], member: str, dtype: np.dtype) -> np.ndarray:
    if member not in raw:
        raise CorruptSample(f"member {member} is missing")
    a = np.load(io.BytesIO(raw[member]), allow_pickle=False)
    if a.dtype != dtype:
        raise CorruptSample(f"member {member} is {a.dtype}, expected {dtype}")
    return a


def _decode_modality(raw: Mapping[str, Any], name: str, m: Mapping[str, Any]) -> ModalityData:
    T, C, H, W = (int(v) for v in m["shape"])
    px = _load(raw, f"{name}.pixels.npy", np.dtype(np.float16))
    if px.shape != (T, C, H, W):
        raise CorruptSample(
            f"{name}.pixels.npy has shape {px.shape}, meta.json says {(T, C, H, W)}"
        )
    bits = _load(raw, f"{name}.valid.npy", np.dtype(np.uint8))
    if bits.size * 8 < T * H * W:
        raise CorruptSample(f"{name}.valid.npy holds {bits.size * 8} bits for {T * H * W} pixels")
    valid = np.unpackbits(bits, count=T * H * W).reshape(T, H, W).astype(bool)
    if not np.isfinite(px).all():  # numpy: torch's multi-threaded isfinite is slow here
        raise CorruptSample(f"{name}.pixels.npy holds NaN or inf")
    pixels = torch.from_numpy(px.astype(np.float32))
    grid = m.get("grid")
    return ModalityData(
        pixels=pixels,
        valid=torch.from_numpy(valid),
        dates=torch.tensor(m["dates"], dtype=torch.int64),
        sensor=m["sensor"],
        bands=tuple(m["bands"]),
        grid=None
        if grid is None
        else Grid(grid["crs"], tuple(grid["transform"]), grid["height"], grid["width"]),
    )


def decode_sample(raw: Mapping[str, Any]) -> dict[str, ModalityData]:
    """Modalities of one raw webdataset sample; raises :class:`CorruptSample` saying what
    is wrong (missing member, bad npy/JSON, inconsistent shapes)."""
    try:
        meta = json.loads(raw["meta.json"])
        if meta.get("format") != SAMPLE_FORMAT:
            raise CorruptSample(
                f"meta.json format is {meta.get('format')!r}, expected {SAMPLE_FORMAT!r}"
            )
        return {name: _decode_modality(raw, name, m) for name, m in meta["modalities"].items()}
    except CorruptSample:
        raise
    except Exception as e:  # any parse error of untrusted bytes is corruption
        raise CorruptSample(f"{type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------- shard lists


@dataclass
class ShardList:
    urls: list[str]
    manifest: dict | None = None


def _read_text(url: str) -> str:
    import webdataset as wds

    with wds.gopen(url, "rb") as f:
        return f.read().decode("utf-8")


def _join(base: str, name: str) -> str:
    if "://" in base:
        return base.rsplit("/", 1)[0] + "/" + name
    return str(Path(base).parent / name)


def resolve_shards(spec: str) -> ShardList:
    """Shard URLs from a folder holding ``manifest.json``, a manifest path/URL, a brace
    pattern (``data/shard-{000000..000099}.tar``), a glob, or comma-separated URLs."""
    spec = str(spec).strip()
    if os.path.isdir(spec):
        spec = os.path.join(spec, MANIFEST_NAME)
        if not os.path.exists(spec):
            raise FileNotFoundError(f"{spec} not found: give a folder written by `rsfm prepare`")
    if spec.endswith(".json"):
        manifest = json.loads(_read_text(spec))
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(
                f"{spec}: not an rsfm shard manifest (format {manifest.get('format')!r})"
            )
        return ShardList([_join(spec, s["name"]) for s in manifest["shards"]], manifest)
    if "{" in spec:
        import braceexpand

        urls = list(braceexpand.braceexpand(spec))
    elif any(ch in spec for ch in "*?[") and "://" not in spec:
        urls = sorted(glob.glob(spec))
    else:
        urls = [u for u in spec.split(",") if u]
    if not urls:
        raise FileNotFoundError(f"no shards match {spec!r}")
    return ShardList(urls)


def iter_shards(urls: list[str], errors: list[Exception]) -> Iterator[dict]:
    """Every raw sample of ``urls`` in tar order, streamed (one sample in memory at a
    time); tar-level errors are appended to ``errors`` as they are met (a truncated file
    or bad header ends that shard; the samples before it are kept)."""
    import webdataset as wds

    def handler(e: Exception) -> bool:
        errors.append(e)
        return True  # go on with the next shard

    pipe = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=handler))
    yield from pipe


def read_shards(urls: list[str]) -> tuple[list[dict], list[Exception]]:
    """Every raw sample (``{"__key__", "__url__", member: bytes}``) of ``urls`` in tar
    order, through webdataset's tar reader, and the tar-level errors met (a truncated
    file or bad header ends that shard; the samples before it are kept)."""
    import webdataset as wds

    errors: list[Exception] = []

    def handler(e: Exception) -> bool:
        errors.append(e)
        return True  # go on with the next shard

    pipe = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=handler))
    return list(pipe), errors


# ---------------------------------------------------------------------------- checksums


def verify_shards(folder: str | os.PathLike) -> list[str]:
    """Check every shard of a local shard folder against its manifest (size, sha256,
    sample count). Returns the problems found (empty: all good)."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    problems = []
    for s in manifest["shards"]:
        path = folder / s["name"]
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != s["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, manifest says {s['bytes']}")
        elif sha256_file(path) != s["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (corrupt or replaced)")
    total = sum(s["samples"] for s in manifest["shards"])
    if total != manifest.get("samples"):
        problems.append(
            f"{folder}: shards hold {total} samples, manifest says {manifest.get('samples')}"
        )
    return problems
