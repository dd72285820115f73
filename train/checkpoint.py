"""Training checkpoints: DeepSpeed's files plus ours, committed atomically.

Layout of ``<run>/checkpoints/``::

    step_00000100/                  one complete checkpoint (tag = step_<optimizer step>)
      mp_rank_00_model_states.pt    DeepSpeed: module, (ZeRO-0) optimizer, LR scheduler, ...
      zero_pp_rank_*_optim_states.pt  DeepSpeed, ZeRO >= 1: optimizer partitions per rank
      rsfm_state.json               ours: step/sample counters, world size, ZeRO stage
      rsfm_teacher.safetensors      ours: the EMA teacher (encoder + heads), float32
      rsfm_loss.safetensors         ours: the loss module's buffers (object prototypes)
      rsfm_rank_00000.safetensors   ours, one per rank: RNG states (python, numpy, torch,
                                    CUDA) and the data position (JSON in the metadata)
      COMPLETE                      written last: the checkpoint is whole
    step_00000150.partial/          a save in progress, or one killed mid-way: ignored
    latest_complete                 the tag of the newest complete checkpoint

Commit protocol (every rank calls :func:`save_checkpoint`): all ranks write into
``<tag>.partial/``; a barrier; rank 0 writes ``COMPLETE``, renames the folder to ``<tag>``
and replaces ``latest_complete`` (temp file + ``os.replace``, fsynced); then it removes
checkpoints beyond the newest ``keep`` and stale ``.partial`` folders. A run killed at any
point leaves ``latest_complete`` naming a whole checkpoint. :func:`find_latest` trusts
``latest_complete`` only if that folder has ``COMPLETE``, else scans for the newest one.
Checkpoints must live on a file system that every rank sees (as DeepSpeed assumes).

Security: DeepSpeed's ``*.pt`` files are pickles (``torch.load(weights_only=False)`` inside
``engine.load_checkpoint``): training checkpoints are **trusted-only**. Our own files are
JSON and safetensors and never unpickle. For users, ``rsfm export`` writes
``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn as nn
from safetensors.torch import load_file, save_file

from rsfm_core.files import atomic_write_text, fsync_dir

from . import dist

log = logging.getLogger("rsfm_train")

COMPLETE = "COMPLETE"
LATEST = "latest_complete"
PARTIAL = ".partial"
STATE_FILE = "rsfm_state.json"
TEACHER_FILE = "rsfm_teacher.safetensors"
LOSS_FILE = "rsfm_loss.safetensors"
_TAG_RE = re.compile(r"^step_(\d{8,})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rsfm_rank_{rank:05d}.safetensors"


@dataclass
class TrainState:
    """Counters that survive a resume (all JSON)."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    samples: int = 0  # samples consumed, all ranks
    tokens: int = 0  # view-1 patch tokens consumed, all ranks
    nonfinite_total: int = 0  # optimizer steps skipped for a non-finite loss/gradient
    nonfinite_consecutive: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit this run."""


# ------------------------------------------------------------------ data position (JSON)


def encode_position(pos: Any) -> Any:
    """The loader's ``DataPosition`` as JSON: plain JSON, ``to_dict()`` or a dataclass."""
    if hasattr(pos, "to_dict") or dataclasses.is_dataclass(pos):
        d = pos.to_dict() if hasattr(pos, "to_dict") else dataclasses.asdict(pos)
        cls = type(pos)
        return {"__class__": f"{cls.__module__}:{cls.__qualname__}", "fields": d}
    try:
        json.dumps(pos)
    except TypeError as e:
        raise TypeError(
            f"the data position {pos!r} is not JSON-serialisable ({e}); the loader's state() "
            "must return JSON data, a dataclass, or an object with to_dict()/from_dict()"
        ) from None
    return pos


def decode_position(obj: Any) -> Any:
    if isinstance(obj, dict) and set(obj) == {"__class__", "fields"}:
        mod, _, qual = obj["__class__"].partition(":")
        cls: Any = importlib.import_module(mod)
        for part in qual.split("."):
            cls = getattr(cls, part)
        return cls.from_dict(obj["fields"]) if hasattr(cls, "from_dict") else cls(**obj["fields"])
    return obj


# ---------------------------------------------------------------------------- RNG states


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: tensors (torch, CUDA, numpy keys) and JSON (the rest)."""
    np_state = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    py = random.getstate()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached"]))
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))


def _barrier() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()


def _state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- listing


def list_complete(root: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _TAG_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def find_latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (None if there is none)."""
    root = Path(root)
    latest = root / LATEST
    if latest.is_file():
        cand = root / latest.read_text(encoding="utf-8").strip()
        if (cand / COMPLETE).is_file():
            return cand
        log.warning("%s names %s, which is not a complete checkpoint; scanning", latest, cand)
    found = list_complete(root)
    return found[-1][1] if found else None


def prune(root: str | Path, keep: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep`` (0 keeps all) and stale
    ``.partial`` folders; returns what was removed. Call on one rank, after a commit."""
    root = Path(root)
    removed = [p for p in root.glob(f"step_*{PARTIAL}") if p.is_dir()]
    found = list_complete(root)
    if keep > 0:
        removed += [p for _, p in found[:-keep]]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    if removed:
        log.info("removed old checkpoints: %s", ", ".join(p.name for p in removed))
    return removed


# ------------------------------------------------------------------------- save / load


def save_checkpoint(
    engine: Any,
    root: str | Path,
    state: TrainState,
    teacher: nn.Module,
    loss_module: nn.Module,
    data_position: Any,
    keep: int = 0,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Save a complete checkpoint of step ``state.step`` (collective: every rank calls).

    ``teacher`` is the teacher's module (its state dict is saved); ``before_commit`` is a
    test hook called on every rank once all files are written, before ``COMPLETE``.
    """
    root = Path(root)
    tag = tag_for(state.step)
    tmp, final = root / f"{tag}{PARTIAL}", root / tag
    rank, world = dist.rank(), dist.world_size()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
    _barrier()
    t0 = time.perf_counter()
    engine.save_checkpoint(str(root), tag=tmp.name, save_latest=False)
    tensors, meta = rng_state()
    meta["data_position"] = encode_position(data_position)
    meta.update(rank=rank, world_size=world)
    save_file(tensors, str(tmp / rank_file(rank)), metadata={"rsfm": json.dumps(meta)})
    if rank == 0:
        save_file(_state_dict(teacher), str(tmp / TEACHER_FILE))
        save_file(_state_dict(loss_module), str(tmp / LOSS_FILE))
        info = {**dataclasses.asdict(state), "tag": tag, "world_size": world,
                "zero_stage": int(engine.zero_optimization_stage()), "time": time.time()}  # fmt: skip
        (tmp / STATE_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    _barrier()
    if before_commit is not None:
        before_commit(tmp)
    if rank == 0:
        atomic_write_text(tmp / COMPLETE, json.dumps({"tag": tag, "step": state.step}) + "\n")
        if final.exists():  # re-reaching a step after resuming from an older checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / LATEST, tag + "\n")
        prune(root, keep)
    _barrier()
    log.info("saved checkpoint %s in %.1f s", final, time.perf_counter() - t0)
    return final


def load_checkpoint(
    engine: Any, ckpt: str | Path, teacher: nn.Module, loss_module: nn.Module
) -> tuple[TrainState, Any]:
    """Restore DeepSpeed's state, the teacher, the loss buffers and this rank's RNG
    states from the complete checkpoint folder ``ckpt``; returns the counters and this
    rank's data position. The same world size is required (data positions are per rank).
    """
    ckpt = Path(ckpt)
    if not (ckpt / COMPLETE).is_file():
        raise CheckpointError(f"{ckpt} is not a complete checkpoint (no {COMPLETE} file)")
    info = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    rank, world = dist.rank(), dist.world_size()
    if info["world_size"] != world:
        raise CheckpointError(
            f"{ckpt} was written by {info['world_size']} ranks; this run has {world}. Exact "
            "resume needs the same number of ranks (each rank's data position and RNG state)"
        )
    path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {ckpt}")
    teacher.load_state_dict(load_file(str(ckpt / TEACHER_FILE)))
    loss_module.load_state_dict(load_file(str(ckpt / LOSS_FILE)))
    f = ckpt / rank_file(rank)
    tensors = load_file(str(f))
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as h:
        meta = json.loads(h.metadata()["rsfm"])
    set_rng_state(tensors, meta)
    log.info("resumed from %s (step %d)", ckpt, info["step"])
    return TrainState.from_dict(info), decode_position(meta["data_position"])
