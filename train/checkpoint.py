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
      COMPLETE                      written last: the checkpoint is whole; JSON with the
                                    size of every file in the folder
    step_00000150.partial/          a save in progress, or one killed mid-way: ignored
    step_00000050.deleting/         a pruned checkpoint being removed: ignored
    latest_complete                 the tag of the newest complete checkpoint (for people;
                                    resuming does not trust it)

Commit protocol (every rank calls :func:`save_checkpoint`): rank 0 checks that the file
system has room for one more checkpoint (the size of the newest one, else an estimate
from the parameter count); all ranks write into ``<tag>.partial/`` and fsync their files;
a barrier; rank 0 writes ``COMPLETE`` (the file list with sizes, fsynced), renames the
folder to ``<tag>``, fsyncs ``checkpoints/`` and replaces ``latest_complete``; then it
prunes: each checkpoint beyond the newest ``keep`` is first renamed to
``<tag>.deleting`` (atomic) and only then deleted, so a kill during pruning never leaves
a folder that looks complete with files missing; stale ``.partial``/``.deleting``
folders go too.

Resuming (:func:`find_latest`) takes the newest checkpoint folder whose files all verify
against its ``COMPLETE`` list (present, same size); a newer one that does not is skipped
with a warning naming what is wrong, and the previous one is used. ``latest_complete`` is
not trusted (a kill between the rename and its update leaves it one behind).
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn as nn
from safetensors.torch import load_file, save_file

from rsfm_core.files import (
    NoSpaceError,
    atomic_write_text,
    check_free_space,
    fsync_dir,
    fsync_file,
    no_space_error,
)

from . import dist
from .teacher import load_teacher_state, teacher_state_dict

log = logging.getLogger("rsfm_train")

COMPLETE = "COMPLETE"
LATEST = "latest_complete"
PARTIAL = ".partial"
DELETING = ".deleting"
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


class _FileTensors(Mapping):
    """An open safetensors file as a read-only mapping: a tensor is read when asked for."""

    def __init__(self, handle: Any):
        self._h = handle

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._h.keys():
            raise KeyError(name)
        return self._h.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._h.keys())

    def __len__(self) -> int:
        return len(self._h.keys())


def _state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- listing


def list_complete(root: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every checkpoint folder under ``root`` with a ``COMPLETE``
    marker, oldest first (see :func:`verify` for whether its files are all there)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _TAG_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


# what a checkpoint written before COMPLETE listed its files must hold at least
_REQUIRED = (STATE_FILE, TEACHER_FILE, LOSS_FILE, "mp_rank_00_model_states.pt")


def verify(ckpt: str | Path) -> str | None:
    """Why the checkpoint folder ``ckpt`` cannot be resumed from, or None when every file
    its ``COMPLETE`` marker lists is present with the recorded size."""
    ckpt = Path(ckpt)
    marker = ckpt / COMPLETE
    if not marker.is_file():
        return f"no {COMPLETE} marker"
    try:
        info = json.loads(marker.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError:
        return f"{COMPLETE} is not JSON (damaged)"
    files = info.get("files") if isinstance(info, dict) else None
    if files is None:  # an older checkpoint: no list, check what every one holds
        try:
            world = int(json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))["world_size"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"{STATE_FILE} is missing or damaged"
        files = {n: None for n in (*_REQUIRED, *(rank_file(r) for r in range(world)))}
    for name, size in files.items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if size is not None and f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {COMPLETE} recorded {size}"
    return None


def find_latest(root: str | Path) -> Path | None:
    """The newest checkpoint folder under ``root`` whose files all verify (None if there
    is none); newer complete-looking ones that do not are skipped with a warning."""
    root = Path(root)
    for _, folder in reversed(list_complete(root)):
        problem = verify(folder)
        if problem is None:
            return folder
        log.warning(
            "checkpoint %s cannot be resumed from (%s); falling back to the previous one",
            folder, problem,
        )  # fmt: skip
    return None


def _discard(folder: Path) -> None:
    """Rename ``folder`` out of the way (atomic; it no longer looks complete), then delete it."""
    gone = folder if folder.name.endswith((PARTIAL, DELETING)) else None
    if gone is None:
        gone = folder.with_name(folder.name + DELETING)
        if gone.exists():
            shutil.rmtree(gone, ignore_errors=True)
        os.replace(folder, gone)
        fsync_dir(folder.parent)
    shutil.rmtree(gone, ignore_errors=True)


def prune(root: str | Path, keep: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep`` (0 keeps all) and stale
    ``.partial``/``.deleting`` folders; returns what was removed. Call on one rank, after
    a commit. A checkpoint is renamed to ``<tag>.deleting`` before its files go."""
    root = Path(root)
    removed = [
        p for p in root.glob("step_*") if p.is_dir() and p.name.endswith((PARTIAL, DELETING))
    ]
    found = list_complete(root)
    if keep > 0:
        removed += [p for _, p in found[:-keep]]
    for p in removed:
        _discard(p)
    if removed:
        log.info("removed old checkpoints: %s", ", ".join(p.name for p in removed))
    return removed


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


# ------------------------------------------------------------------------- save / load


def _space_needed(root: Path, estimate: int) -> int:
    """Bytes one more checkpoint needs: the newest complete one's size (+5 %), else
    ``estimate`` (the caller's guess from the parameter count)."""
    found = list_complete(root)
    size = folder_bytes(found[-1][1]) if found else estimate
    return int(size * 1.05) + 2**20


def _all_ok(ok: bool, device: Any) -> bool:
    """Whether every rank is ok (a collective: every rank calls it)."""
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    return not bool(dist.all_reduce_sum(flag).item() > 0)


def _write_files(engine, tmp: Path, state: TrainState, teacher, loss_module, data_position,
                 extra: dict[str, Any]) -> None:  # fmt: skip
    """Every file of this rank into ``tmp``, fsynced."""
    rank, world = dist.rank(), dist.world_size()
    engine.save_checkpoint(str(tmp.parent), tag=tmp.name, save_latest=False)
    tensors, meta = rng_state()
    meta["data_position"] = encode_position(data_position)
    meta.update(rank=rank, world_size=world)
    save_file(tensors, str(tmp / rank_file(rank)), metadata={"rsfm": json.dumps(meta)})
    teacher_sd = teacher_state_dict(teacher, rank0_only=True)  # ZeRO-3: a collective
    if rank == 0:
        save_file(teacher_sd, str(tmp / TEACHER_FILE))
        save_file(_state_dict(loss_module), str(tmp / LOSS_FILE))
        info = {**dataclasses.asdict(state), "tag": tmp.name[: -len(PARTIAL)], "world_size": world,
                "zero_stage": int(engine.zero_optimization_stage()), "time": time.time(),
                **extra}  # fmt: skip
        (tmp / STATE_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    for f in tmp.iterdir():  # this rank's files, and the rest too (cheap when clean)
        if f.is_file():
            fsync_file(f)


def save_checkpoint(
    engine: Any,
    root: str | Path,
    state: TrainState,
    teacher: nn.Module,
    loss_module: nn.Module,
    data_position: Any,
    keep: int = 0,
    before_commit: Callable[[Path], None] | None = None,
    extra: dict[str, Any] | None = None,
    estimate: int = 0,
) -> Path:
    """Save a complete checkpoint of step ``state.step`` (collective: every rank calls).

    ``teacher`` is the teacher's module (its state dict is saved); ``extra``: more JSON
    for ``rsfm_state.json`` (the engine records the model's tensor shapes and config);
    ``estimate``: bytes of a checkpoint when there is none yet to measure (free-space
    check); ``before_commit`` is a test hook called on every rank once all files are
    written, before ``COMPLETE``. A full disk raises :class:`NoSpaceError` ("no space left
    on <folder>") and leaves no ``.partial`` folder behind (rank 0).
    """
    root = Path(root)
    tag = tag_for(state.step)
    tmp, final = root / f"{tag}{PARTIAL}", root / tag
    rank = dist.rank()
    what = f"checkpoint {tag}"
    need, problem = 0, None
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        need = _space_needed(root, estimate)
        try:
            check_free_space(root, need, what)
        except NoSpaceError as e:
            problem = e
    if not _all_ok(problem is None, engine.device):  # also the barrier before writing
        raise problem or CheckpointError(f"rank 0 cannot save {what} (see its log)")
    t0 = time.perf_counter()
    try:
        _write_files(engine, tmp, state, teacher, loss_module, data_position, dict(extra or {}))
    except Exception as e:
        written = folder_bytes(tmp) if tmp.is_dir() else 0
        full = no_space_error(e, root, what, need=max(need - written, 2**20))
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from e
        raise
    _barrier()
    if before_commit is not None:
        before_commit(tmp)
    if rank == 0:
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        marker = {"tag": tag, "step": state.step, "files": files}
        atomic_write_text(tmp / COMPLETE, json.dumps(marker, indent=1) + "\n")
        if final.exists():  # re-reaching a step after resuming from an older checkpoint
            _discard(final)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / LATEST, tag + "\n")
        prune(root, keep)
    _barrier()
    log.info("saved checkpoint %s in %.1f s", final, time.perf_counter() - t0)
    return final


def read_state(ckpt: str | Path) -> dict[str, Any]:
    """``rsfm_state.json`` of a checkpoint folder (counters, world size, shapes, config)."""
    f = Path(ckpt) / STATE_FILE
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{f}: missing or damaged ({e}); resume from another checkpoint"
        ) from None


def world_change_problem(ckpt: str | Path, info: dict[str, Any], world: int) -> str | None:
    """Why ``ckpt`` (its ``rsfm_state.json`` is ``info``) cannot be resumed on ``world``
    ranks when it was written by another number, or None when it can: only an fp32
    ZeRO-0 checkpoint, where every rank saved and loads the full module and optimizer
    (``mp_rank_00_model_states.pt``). ZeRO >= 1 and bf16 (DeepSpeed's bf16 optimizer, at
    any stage) keep the optimizer in per-rank partitions (``*zero_pp_rank_*``), which
    DeepSpeed loads only on the world size that wrote them."""
    saved = int(info.get("world_size", world))
    if saved == world:
        return None
    stage = int(info.get("zero_stage", 0))
    parts = sorted(p.name for p in Path(ckpt).glob("*zero_pp_rank_*"))
    if stage == 0 and not parts:
        return None
    why = f"ZeRO stage {stage}" if stage else f"a partitioned (bf16) optimizer ({parts[0]}, ...)"
    return (
        f"{ckpt} was written by {saved} ranks with {why}; this run has {world}. The "
        f"optimizer state is split into {saved} per-rank partitions, which DeepSpeed loads "
        f"only on {saved} ranks (DeepSpeed's universal checkpoint conversion is not wired "
        f"into rsfm): resume on {saved} ranks (data.workers may change). Runs with "
        "deepspeed.zero_stage=0 and deepspeed.bf16=false resume on any world size "
        "(docs/training.md, Limits)"
    )


def read_positions(ckpt: str | Path) -> list[Any]:
    """Every rank's data position in ``ckpt`` (rank order), for a resume that re-splits
    them over another world size or ``data.workers`` (elastic resume)."""
    from safetensors import safe_open

    ckpt = Path(ckpt)
    world = int(read_state(ckpt)["world_size"])
    out = []
    for r in range(world):
        with safe_open(str(ckpt / rank_file(r)), framework="pt") as h:
            out.append(decode_position(json.loads(h.metadata()["rsfm"])["data_position"]))
    return out


def load_checkpoint(
    engine: Any, ckpt: str | Path, teacher: nn.Module, loss_module: nn.Module
) -> tuple[TrainState, Any]:
    """Restore DeepSpeed's state, the teacher, the loss buffers and this rank's RNG
    states from the complete checkpoint folder ``ckpt``; returns the counters and this
    rank's data position. On another world size (allowed for fp32 ZeRO-0 checkpoints
    only, :func:`world_change_problem`) the data position returned is the list of every
    saved rank's (the loader re-splits them), and a rank the checkpoint has no file for
    keeps the RNG state it was seeded with.
    """
    ckpt = Path(ckpt)
    problem = verify(ckpt)
    if problem is not None:
        raise CheckpointError(f"{ckpt} cannot be resumed from: {problem}")
    info = read_state(ckpt)
    rank, world = dist.rank(), dist.world_size()
    problem = world_change_problem(ckpt, info, world)
    if problem is not None:
        raise CheckpointError(problem)
    try:
        path, _ = engine.load_checkpoint(
            str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )  # fmt: skip
    except (AssertionError, RuntimeError, KeyError, OSError) as e:  # DeepSpeed's own checks
        raise CheckpointError(
            f"DeepSpeed could not load {ckpt}: {type(e).__name__}: {e}; the checkpoint does not "
            "fit this run (model, ZeRO stage or world size) or is damaged"
        ) from e
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {ckpt}")
    from safetensors import safe_open

    with safe_open(str(ckpt / TEACHER_FILE), framework="pt") as h:  # one tensor at a time
        load_teacher_state(teacher, _FileTensors(h))  # ZeRO-3: each rank its own partition
    loss_module.load_state_dict(load_file(str(ckpt / LOSS_FILE)))
    f = ckpt / rank_file(rank)
    position: Any = None
    if f.is_file():
        tensors = load_file(str(f))
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as h:
            meta = json.loads(h.metadata()["rsfm"])
        set_rng_state(tensors, meta)
        position = decode_position(meta["data_position"])
    if info["world_size"] != world:
        position = read_positions(ckpt)
        log.info("resuming %d ranks' data positions on %d ranks (elastic)", len(position), world)
    log.info("resumed from %s (step %d)", ckpt, info["step"])
    return TrainState.from_dict(info), position
