"""The pretraining engine: student/teacher on DeepSpeed, one optimizer step at a time.

Per micro-batch (:class:`~rsfm_train.data.views.ViewPair`): view 1 -> student (encoder +
projection heads, through the DeepSpeed engine), view 2 -> EMA teacher (no grad); the
projected features, token correspondence and validity fill a ``ContrastiveInputs``;
``ContrastiveLoss`` gives the loss; ``engine.backward``; ``engine.step``. After each
optimizer step the teacher takes one EMA step (:mod:`rsfm_train.teacher`).

DeepSpeed owns the optimizer (its own AdamW from the generated JSON ``optimizer`` block,
with the per-group weight decay of :func:`param_groups` passed as ``model_parameters``),
the optimizer step, ZeRO 0-3, bf16, clipping and gradient accumulation; the LR schedule
is :class:`~rsfm_train.config.WarmupCosine`, handed to ``deepspeed.initialize`` and stepped
by DeepSpeed. Nothing of DeepSpeed is patched. We add:

- **NaN/inf guard**, without a host read of our own on DeepSpeed's wrapped paths. A
  micro-batch whose loss is not finite is backpropagated as ``loss x NaN`` (``x 1.0``,
  exact, otherwise), so its gradients are NaN even where the bad term reaches no
  parameter; DeepSpeed's gradient all-reduce carries the NaN to every rank. Then:

  * bf16 (any ZeRO stage) and ZeRO 1-3: DeepSpeed's optimizer wrapper finds the global
    gradient norm not finite and skips the step by itself (its overflow path): parameters
    and Adam state untouched, ``engine.skipped_steps`` counts it, the schedule holds.
    ``engine.was_step_applied()`` tells the host.
  * fp32 ZeRO-0, where DeepSpeed hands the gradients to the bare optimizer unchecked: the
    JSON asks for torch's fused AdamW, and the engine sets its AMP ``found_inf`` flag (the
    protocol ``GradScaler`` uses) from the all-reduced gradients' norm on the device: the
    fused kernel skips parameters, moments and step counts. The engine reads that flag
    once (one host read per step, on this path only) to hold the schedule
    (``engine.step(lr_kwargs={"hold": True})``) and the teacher.

  On a skipped step the teacher's EMA step is skipped and the loss prototypes are
  restored to their value before the step. Skips are counted in our state and logged
  loudly; after ``run.max_nonfinite_skips`` in a row the run stops with
  :class:`NonFiniteError`. No tensor hooks: the gradient check is DeepSpeed's norm (which
  it computes for clipping anyway) or one norm over the gradients on fp32 ZeRO-0.
- **Metrics stay on the device** (loss, loss terms, counters, grad norm): :meth:`Trainer.fit`
  reads them once per ``run.log_every`` steps (and before a checkpoint), one all-reduce
  and one device-to-host copy for the whole window; step times are the window's mean.
- **Exact resume**: see :mod:`rsfm_train.checkpoint` (teacher, prototypes, RNG, data
  position, counters next to DeepSpeed's files). Another world size or ``data.workers``
  resumes too where the optimizer state is not partitioned (fp32 ZeRO-0): the loader
  re-splits every rank's data position (docs/data.md, elastic resume). Each checkpoint records the student's
  tensor shapes and the encoder config; :func:`check_resume` compares them with the
  config being resumed before anything is built or written.
- **One run per folder**: rank 0 holds an exclusive lock on ``<out_dir>/.rsfm_run.lock``
  from construction to :meth:`Trainer.close` (a second process is refused, a killed one
  holds nothing). The run metadata (config.yaml, ds_config.json, git.json,
  encoder_config.json) is written when training starts (:meth:`Trainer.fit`), i.e. after
  a resume was loaded: a refused resume leaves the folder as it was.
- Metrics (:mod:`rsfm_train.metrics`).
- **ZeRO-3 builds nothing whole**: the student and a float32 teacher are built under
  ``deepspeed.zero.Init`` (partitioned as each module is created; ``nn.init`` calls on
  already partitioned parameters gather them, so the weights equal a plain build's), and
  the teacher's EMA step works on each rank's own partitions (:mod:`rsfm_train.teacher`).

bf16: DeepSpeed casts the student's parameters to bf16; the forward runs under
``torch.autocast(bf16)`` so that inputs in physical units (float32) and float32 buffers
mix with bf16 weights; features are cast to float32 before the losses.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from rsfm_core.files import atomic_write_text, exclusive_lock, stale_temps
from rsfm_core.model.patch_embed import DESCRIPTOR_DIM

from . import dist
from .checkpoint import (
    CheckpointError,
    TrainState,
    find_latest,
    load_checkpoint,
    read_positions,
    read_state,
    save_checkpoint,
    world_change_problem,
)
from .config import PretrainConfig, WarmupCosine, config_to_dict, deepspeed_config, save_config
from .losses import (
    ContrastiveInputs,
    ContrastiveLoss,
    LossTerms,
    ProjectionHeads,
    patch_statistics,
)
from .metrics import CollapseMonitor, FlopCounter, MetricsWriter, count_tokens, peak_flops
from .teacher import EMATeacher, param_numel, param_shape

log = logging.getLogger("rsfm_train")

LOSS_TERMS = ("pixel", "object", "image", "cross_modal", "variance", "reconstruction")
LOCK_NAME = ".rsfm_run.lock"


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


# ------------------------------------------------------------------ process setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, NCCL on GPU).

    Under ``torchrun`` or the ``deepspeed`` launcher the environment names the rank and the
    rendezvous; a plain single process gets ``RANK=0 WORLD_SIZE=1`` and a free local port.
    On a machine without CUDA DeepSpeed's CPU accelerator is selected, and its JIT-built
    ops are cached in ``TORCH_EXTENSIONS_DIR`` (default: ``.torch_extensions`` in the
    checkout).
    """
    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    repo = Path(__file__).resolve().parents[1]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(repo / ".torch_extensions"))
    if "RANK" not in os.environ:
        for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    if not cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")


def accelerator_is_cpu() -> bool:
    """Whether DeepSpeed runs on its CPU accelerator (after :func:`init_distributed`)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; ``deterministic`` also turns on deterministic
    algorithms (process-wide: a training process owns its global torch state)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def git_revision(path: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool | None}`` of the checkout at ``path``."""
    cwd = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    if sha.returncode != 0:
        return {"commit": "unknown", "dirty": None}
    return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def write_run_metadata(
    run_dir: Path, cfg: PretrainConfig, ds_json: Mapping[str, Any], encoder: nn.Module
) -> None:
    """Resolved config (YAML), DeepSpeed JSON, git revision and the encoder's config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_text(run_dir / "ds_config.json", json.dumps(ds_json, indent=2))
    rev = {**git_revision(), "torch": torch.__version__}
    try:
        import deepspeed

        rev["deepspeed"] = deepspeed.__version__
    except ImportError:  # pragma: no cover - the engine needs it anyway
        pass
    atomic_write_text(run_dir / "git.json", json.dumps(rev, indent=2))
    enc = {"format": "rsfm-encoder-config", "config": encoder.config.to_dict()}
    atomic_write_text(run_dir / "encoder_config.json", json.dumps(enc, indent=2))


# ------------------------------------------------------------------ student module


@dataclass
class Projected:
    """Projected (L2-normalised, float32) features of one view; names follow
    ``EncoderOutput``. ``modal`` is empty for the teacher."""

    dense: torch.Tensor  # (B, Dh, h, w)
    pooled: torch.Tensor  # (B, Dh)
    valid: torch.Tensor  # (B, h, w)
    modal: dict[str, torch.Tensor]  # name -> (B, Dh, h, w)
    modal_valid: dict[str, torch.Tensor]  # name -> (B, h, w)
    embedding: torch.Tensor | None = None  # (B, D, h, w) the encoder's dense output (pre-head)
    # modality -> (prediction, target, valid) of the spectral reconstruction (student only)
    reconstruction: dict[str, tuple] = field(default_factory=dict)


class PretrainModule(nn.Module):
    """Encoder + projection heads: what DeepSpeed trains (and the teacher copies)."""

    def __init__(self, encoder: nn.Module, heads: ProjectionHeads, bf16: bool = False):
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.bf16 = bf16

    def forward(self, view: Mapping[str, Any], with_modal: bool = True) -> Projected:
        dev = next(iter(view.values())).pixels.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.encoder(view)
            dense = self.heads.dense.dense(out.dense)  # (B, Dh, h, w)
            pooled = self.heads.pooled(out.pooled)  # (B, Dh)
            modal = (
                {n: self.heads.modal.dense(f) for n, f in out.modalities.items()}
                if with_modal
                else {}
            )
            recon = {}
            if with_modal and hasattr(self.heads, "spectral"):
                for n, d in view.items():
                    bands = self.encoder.band_set(n, d)
                    p = self.encoder.config.modalities[n].patch
                    target, ok = patch_statistics(d.pixels, d.valid, bands.mean, bands.std, p)
                    pred = self.heads.spectral(out.dense, bands.descriptors)
                    recon[n] = (pred.float(), target, ok & out.valid)
        return Projected(
            dense=dense.float(),
            pooled=pooled.float(),
            valid=out.valid,
            modal={n: f.float() for n, f in modal.items()},
            modal_valid=dict(out.modality_valid) if with_modal else {},
            embedding=out.dense.float(),
            reconstruction=recon,
        )


_NO_DECAY_NAMES = ("modality_embed", "group_embed", "pos_embed", "fusion_token", "cls_token")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms, biases and embeddings (1-D tensors and
    ``*_embed`` / token tables), weight decay on every other matrix."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(k in name for k in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def complete_view(
    view: Mapping[str, Any], names: Sequence[str], encoder: nn.Module
) -> dict[str, Any]:
    """``view`` with an all-invalid stand-in for each of ``names`` it lacks.

    ZeRO-3 gathers a module's parameters each time the module runs, so every rank must run
    the same modules the same number of times. Modality dropout differs between ranks
    (patch embedding and the cross-modal head run once per modality present), so under
    ZeRO-3 the student always sees every modality; a dropped one is all-invalid, which the
    encoder treats exactly like an absent one (its frames are skipped and masked, and its
    tokens are invalid for the losses)."""
    from rsfm_core.sample import ModalityData

    missing = [n for n in names if n not in view]
    if not missing:
        return dict(view)
    mods = encoder.config.modalities
    ref_name, ref = next(iter(view.items()))
    B, T, _, H, W = ref.pixels.shape
    h, w = H // mods[ref_name].patch, W // mods[ref_name].patch  # the shared token grid
    out = dict(view)
    for n in missing:
        m = mods[n]
        bands = encoder.config.sensor(m.sensor).band_names
        shape = (B, T, len(bands), h * m.patch, w * m.patch)
        out[n] = ModalityData(
            pixels=ref.pixels.new_zeros(shape),
            valid=ref.valid.new_zeros((B, T, h * m.patch, w * m.patch)),
            dates=ref.dates.clone(),
            sensor=m.sensor,
            bands=bands,
        )
    return out


def _valid_at(valid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``valid (B, h, w)`` at flat token positions ``index (B, P)``; out of range: False."""
    flat = valid.reshape(valid.shape[0], -1)  # (B, h*w)
    inside = (index >= 0) & (index < flat.shape[1])
    return flat.gather(1, index.clamp(0, flat.shape[1] - 1)) & inside


def contrastive_inputs(
    s: Projected, t: Projected, pair: Any, modalities: Sequence[str]
) -> ContrastiveInputs:
    """The loss inputs of one micro-batch: pairs count only where both tokens are valid."""
    pair_valid = (
        pair.pair_valid.bool() & _valid_at(s.valid, pair.index1) & _valid_at(t.valid, pair.index2)
    )
    return ContrastiveInputs(
        student_dense=s.dense,
        teacher_dense=t.dense,
        student_index=pair.index1,
        teacher_index=pair.index2,
        pair_valid=pair_valid,
        student_pooled=s.pooled,
        teacher_pooled=t.pooled,
        pooled_valid=s.valid.flatten(1).any(1) & t.valid.flatten(1).any(1),
        modal_features=s.modal,
        modal_valid=s.modal_valid,
        modalities=list(modalities),
        student_embedding=s.embedding,
        student_valid=s.valid,
        reconstruction=s.reconstruction,
    )


def _static_rows(cfg: PretrainConfig) -> bool:
    """Whether every rank's micro-batches have one shape (so the global losses gather
    without exchanging row counts): one crop size for all data sources."""
    if cfg.data.source != "mixed":
        return True
    return len({e.crop_size or cfg.data.crop_size for e in cfg.data.mix}) == 1


# ------------------------------------------------------------------ resume checks


def build_student(cfg: PretrainConfig) -> PretrainModule:
    """The student ``cfg`` trains: the registered encoder and the projection heads."""
    from rsfm_core.model import build_model

    encoder = build_model(cfg.model.name, **cfg.model.overrides)
    heads = ProjectionHeads(encoder.embed_dim, cfg.loss, DESCRIPTOR_DIM)
    return PretrainModule(encoder, heads, cfg.deepspeed.bf16)


def student_shapes(cfg: PretrainConfig) -> dict[str, list[int]]:
    """The shape of every student parameter (encoder + heads) that ``cfg`` builds,
    computed on the meta device (nothing allocated)."""
    with torch.device("meta"):
        student = build_student(cfg)
    return {n: list(p.shape) for n, p in student.named_parameters()}


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = [k for k in sorted(set(a) | set(b)) if k not in ("sensors", "name")]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def check_resume(ckpt: str | Path, cfg: PretrainConfig, world_size: int | None = None) -> None:
    """Raise :class:`~rsfm_train.checkpoint.CheckpointError` when the checkpoint folder
    ``ckpt`` cannot be resumed by ``cfg`` on ``world_size`` ranks (default: the launcher's
    ``WORLD_SIZE``): other tensor shapes (a changed model or head width), or another rank
    count when the optimizer state is partitioned (ZeRO >= 1 or bf16;
    :func:`~rsfm_train.checkpoint.world_change_problem`). Reads JSON and builds on the
    meta device only: call it before anything starts."""
    from rsfm_core.model import get_config

    info = read_state(ckpt)
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    problem = world_change_problem(ckpt, info, world)
    if problem is not None:
        raise CheckpointError(problem)
    saved = info.get("shapes")
    if saved is None:  # written before shapes were recorded: DeepSpeed's load will check
        return
    now = student_shapes(cfg)
    bad = [n for n in sorted(set(saved) | set(now)) if saved.get(n) != now.get(n)]
    if not bad:
        return
    shown = "; ".join(f"{n}: {saved.get(n)} there, {now.get(n)} here" for n in bad[:4])
    diff = []
    if "encoder_config" in info:
        here = get_config(cfg.model.name, **cfg.model.overrides).to_dict()
        diff = _config_diff(info["encoder_config"], here)
    if "loss" in info:
        diff += [f"loss.{d}" for d in _config_diff(info["loss"], cfg.loss.model_dump())]
    raise CheckpointError(
        f"{ckpt} holds a model of other shapes than this config builds ({len(bad)} tensors "
        f"differ, e.g. {shown})"
        + (f"; changed settings: {', '.join(diff)}" if diff else "")
        + ". Resume with the run's own settings (its config.yaml) or start a new run.out_dir"
    )


@contextlib.contextmanager
def _init_gathers() -> Iterator[None]:
    """While a model is built under ``deepspeed.zero.Init``: ``torch.nn.init`` functions
    called on an already partitioned parameter (a parent module initialising its
    children's weights after they were built, as ``Encoder.__init__`` does with
    ``self.apply(init_weights)``) gather that one parameter, initialise it on rank 0 and
    scatter it back. Without this they would act on the empty placeholder, silently
    keeping PyTorch's default initialisation (and the random stream would drift from
    a plain build's). Every rank draws the same numbers (same seed, same order), so the
    weights equal a plain build's exactly; one parameter is whole at a time."""
    import deepspeed

    names = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
             "eye_", "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
             "kaiming_normal_", "orthogonal_", "sparse_")  # fmt: skip
    saved = {n: getattr(nn.init, n) for n in names if hasattr(nn.init, n)}

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if hasattr(tensor, "ds_id") and tensor.numel() == 0:
                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=0):
                    fn(tensor, *args, **kwargs)
                return tensor
            return fn(tensor, *args, **kwargs)

        return init

    try:
        for n, fn in saved.items():
            setattr(nn.init, n, wrap(fn))
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


# ------------------------------------------------------------------ the trainer


class Trainer:
    """Builds the student, teacher, loss and DeepSpeed engine for ``cfg``; runs steps,
    saves and resumes checkpoints. Needs an initialised process group
    (:func:`init_distributed`; called here if missing).

    Test hooks (None in training): ``fault_hook(step, inputs) -> inputs`` may corrupt a
    micro-batch's loss inputs; ``before_commit(tmp_dir)`` runs inside every checkpoint
    save after all files are written and before ``COMPLETE``.
    """

    def __init__(
        self, cfg: PretrainConfig, run_dir: str | Path | None = None, progress: bool = True
    ):
        init_distributed()
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.run.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.rank, self.world = dist.rank(), dist.world_size()
        self.progress = progress
        self.fault_hook: Callable[[int, ContrastiveInputs], ContrastiveInputs] | None = None
        self.before_commit: Callable[[Path], None] | None = None
        self._lock = self._take_lock()
        self._metadata_written = False
        self.corrupt_samples: list[str] = []
        try:
            self._build(cfg)
        except BaseException:
            self.close()
            raise

    def _build(self, cfg: PretrainConfig) -> None:
        import deepspeed

        seed_everything(cfg.run.seed, cfg.run.deterministic)  # same weights on every rank
        self.ds_config = deepspeed_config(cfg, self.world, cpu=accelerator_is_cpu())
        if cfg.deepspeed.zero_stage == 3:
            # parameters partitioned as they are created: no rank ever holds the whole
            # model; the teacher is a second, float32, partitioned instance (its EMA step
            # is then local to each rank's partition, see rsfm_train.teacher)
            # memory_efficient_linear off: zero.Init would otherwise replace
            # torch.nn.functional.linear by DeepSpeed's autograd Function for the rest of
            # the process (never restored; the engine's gathering hooks do not need it)
            zero = {**self.ds_config["zero_optimization"], "memory_efficient_linear": False}
            init_cfg = {**self.ds_config, "zero_optimization": zero}
            with deepspeed.zero.Init(config_dict_or_path=init_cfg), _init_gathers():
                student = build_student(cfg)
            rng = torch.get_rng_state()  # the teacher's own init draws are overwritten
            # float32 by a config without bf16/fp16 (DeepSpeed 0.19's zero.Init ignores its
            # ``dtype`` argument on accelerators without fp16: operator precedence)
            fp32 = {**init_cfg, "bf16": {"enabled": False}, "fp16": {"enabled": False}}
            with deepspeed.zero.Init(config_dict_or_path=fp32), _init_gathers():
                partitioned = build_student(cfg)
            torch.set_rng_state(rng)
            self.teacher = EMATeacher(student, partitioned=partitioned)
        else:
            student = build_student(cfg)
            self.teacher = EMATeacher(student)
        encoder = student.encoder
        self.encoder_config = encoder.config.to_dict()
        self.shapes = {n: list(param_shape(p)) for n, p in student.named_parameters()}
        numel = sum(param_numel(p) for p in student.parameters())
        # module + fp32 masters + two Adam moments + the fp32 teacher, bytes per parameter
        self.ckpt_estimate = numel * (4 + 4 + 8 + 4)
        self.loss_fn = ContrastiveLoss(
            cfg.loss, dim=cfg.loss.head_dim, equal_rows=_static_rows(cfg)
        )
        self.engine, _, _, _ = deepspeed.initialize(
            model=student,
            model_parameters=param_groups(student, cfg.optim.weight_decay),
            lr_scheduler=functools.partial(WarmupCosine, optim=cfg.optim),
            config=self.ds_config,
        )
        # DeepSpeed's optimizer wrappers (bf16 at any stage, ZeRO 1-3) skip a step whose
        # global gradient norm is not finite by themselves; fp32 ZeRO-0 hands the bare
        # AdamW the gradients, so the engine checks the norm there (see train_step)
        self.skips_in_deepspeed = cfg.deepspeed.bf16 or cfg.deepspeed.zero_stage > 0
        self._found_inf: torch.Tensor | None = None
        if not self.skips_in_deepspeed:
            # torch's fused AdamW (the JSON asks for it on this path) takes the AMP
            # protocol's ``found_inf``: a device flag that skips the whole update (params,
            # moments, step counts) inside the kernel, as GradScaler uses it
            opt = self.engine.basic_optimizer
            if not getattr(opt, "_step_supports_amp_scaling", False):
                raise RuntimeError(
                    f"fp32 ZeRO-0 needs torch's fused AdamW; DeepSpeed built {type(opt).__name__}"
                )
            self._found_inf = torch.zeros((), device=self.engine.device)
            opt.grad_scale, opt.found_inf = None, self._found_inf
        self.device = self.engine.device
        self.teacher.to(self.device)
        self.loss_fn.to(self.device).train()
        self.flops = FlopCounter(encoder)
        self.peak = peak_flops(self.device, cfg.deepspeed.bf16)
        self.collapse = CollapseMonitor(cfg.run.collapse_warn)
        self._collapse_rec: dict[str, float] = {}
        self.state = TrainState()
        seed_everything(cfg.run.seed + 1000 * self.rank)  # per-rank streams from here on
        n = numel
        log.info("student: %s + heads, %.2fM parameters, ZeRO %d, %s, %d rank(s)", cfg.model.name,
                 n / 1e6, cfg.deepspeed.zero_stage, "bf16" if cfg.deepspeed.bf16 else "fp32", self.world)  # fmt: skip

    def _take_lock(self) -> Any:
        """Rank 0: the run folder's lock, held until :meth:`close`; stale temporaries of
        killed runs are removed once it is held."""
        if self.rank != 0:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = exclusive_lock(self.run_dir / LOCK_NAME, f"run folder {self.run_dir}")
        lock.__enter__()
        names = ("config.yaml", "ds_config.json", "git.json", "encoder_config.json",
                 "metrics.jsonl", "checkpoints/latest_complete")  # fmt: skip
        for name in names:
            for tmp in stale_temps(self.run_dir / name):
                tmp.unlink(missing_ok=True)
        return lock

    def write_metadata(self) -> None:
        """The resolved config, DeepSpeed JSON, git revision and encoder config (rank 0),
        once; :meth:`fit` calls it, after any resume was loaded."""
        if self.rank == 0 and not self._metadata_written:
            write_run_metadata(self.run_dir, self.cfg, self.ds_config, self.student.encoder)
        self._metadata_written = True

    # -------------------------------------------------------------- one step
    @property
    def student(self) -> PretrainModule:
        return self.engine.module

    def _micro_step(self, pair: Any, monitor: bool = False) -> tuple[LossTerms, int, float]:
        pair = pair.to(self.device, non_blocking=True)
        view1 = pair.view1
        view2 = pair.view2
        if self.engine.zero_optimization_stage() == 3:
            view1 = complete_view(view1, self.cfg.data.modalities, self.student.encoder)
            view2 = complete_view(view2, self.cfg.data.modalities, self.student.encoder)
        s = self.engine(view1, with_modal=True)
        t = self.teacher(view2, with_modal=False)
        inputs = contrastive_inputs(s, t, pair, self.cfg.data.modalities)
        if monitor and self.rank == 0:  # collapse indicators, on logging steps only
            self._collapse_rec = self.collapse.record(
                self.state.step + 1, s.embedding, t.embedding, s.dense, s.valid, t.valid
            )
        if self.fault_hook is not None:
            inputs = self.fault_hook(self.state.step, inputs)
        terms = self.loss_fn(inputs)
        # A non-finite loss poisons this rank's gradients (x NaN; x 1.0 is exact otherwise),
        # even where the bad term does not reach them; DeepSpeed's gradient all-reduce then
        # carries the NaN to every rank, and every rank skips the step (no extra collective,
        # no host read: see train_step)
        total = terms.total
        poison = torch.where(torch.isfinite(total.detach()), 1.0, float("nan"))
        self.engine.backward(total * poison)
        tokens = count_tokens(pair.view1, self.student.encoder)
        flops = self.flops.train_flops(pair.view1, pair.view2) * pair.batch_size
        return terms, tokens, flops

    def _grad_norm(self) -> torch.Tensor | None:
        """Pre-clip global grad norm (a device scalar) of the gradients the bare optimizer
        holds (fp32 ZeRO-0: already all-reduced by DeepSpeed's backward)."""
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        if not grads:
            return None
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def train_step(self, pairs: Sequence[Any]) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics
        (read from the device now: :meth:`fit` reads them every ``run.log_every`` steps)."""
        return self._records([self._step(pairs)])[0]

    def _step(self, pairs: Sequence[Any]) -> dict[str, Any]:
        """One optimizer step; its metrics stay on the device (a pending record)."""
        gas = self.cfg.deepspeed.grad_accum
        if len(pairs) != gas:
            raise ValueError(
                f"train_step needs deepspeed.grad_accum={gas} micro-batches, got {len(pairs)}"
            )
        protos = self.loss_fn.prototypes.weight.detach().clone()
        k = len(LOSS_TERMS)
        # [loss, term sums, non-finite micro-steps, samples, tokens, model FLOPs] of this
        # rank, on the device (host numbers are added as scalars: no tensor per micro-step)
        vec = torch.zeros(5 + k, dtype=torch.float64, device=self.device)
        counts = [0] * k
        lr = float(self.engine.get_lr()[0])
        log_every = max(1, self.cfg.run.log_every)
        monitor = (self.state.step + 1) % log_every == 0 or self.state.step == 0
        self._collapse_rec = {}
        for i, pair in enumerate(pairs):
            terms, n_tok, n_flops = self._micro_step(pair, monitor and i == 0)
            vec[2 + k] += pair.batch_size
            vec[3 + k] += n_tok
            vec[4 + k] += n_flops
            total = terms.total.detach()
            vec[0] += total.double()
            vec[1 + k] += (~torch.isfinite(total)).double()
            for j, name in enumerate(LOSS_TERMS):
                v = getattr(terms, name)
                if v is not None:
                    vec[1 + j] += v.detach().double()
                    counts[j] += 1
        grad_norm: Any = None
        if self.skips_in_deepspeed:
            self.engine.step()  # skips by itself on a non-finite global gradient norm
            skip = not self.engine.was_step_applied()
            grad_norm = self.engine.get_global_grad_norm()
        else:
            # fp32 ZeRO-0: DeepSpeed hands the gradients to the bare AdamW unchecked. The
            # flag is the all-reduced gradients' norm (the same on every rank); the fused
            # AdamW skips on it without a host read, and the engine reads it once to hold
            # the schedule (WarmupCosine.step(hold=True)) and the teacher
            grad_norm = self._grad_norm()
            assert self._found_inf is not None
            if grad_norm is None:
                self._found_inf.zero_()
            else:
                torch.logical_not(torch.isfinite(grad_norm), out=self._found_inf)
            skip = bool(self._found_inf)
            self.engine.step(lr_kwargs={"hold": skip})
        self._finish_step(skip, protos)
        return {"vec": vec, "grad_norm": grad_norm, "counts": counts, "lr": lr,
                "skipped": float(skip), **self._collapse_rec}  # fmt: skip

    def _finish_step(self, skip: bool, protos: torch.Tensor) -> None:
        cfg, st = self.cfg, self.state
        if skip:
            self.loss_fn.prototypes.weight.copy_(protos)
            st.nonfinite_total += 1
            st.nonfinite_consecutive += 1
            if self.rank == 0:
                log.error("NON-FINITE loss or gradient at step %d (on any rank): step skipped "
                          "(%d in a row, %d in total)", st.step + 1,
                          st.nonfinite_consecutive, st.nonfinite_total)  # fmt: skip
        else:
            st.nonfinite_consecutive = 0
            self.teacher.update(
                self.student, cfg.teacher.momentum_at(st.step, cfg.optim.total_steps)
            )
        st.step += 1
        if st.nonfinite_consecutive >= max(1, cfg.run.max_nonfinite_skips):
            raise NonFiniteError(
                f"{st.nonfinite_consecutive} optimizer steps in a row (up to step {st.step}) had a "
                "non-finite loss or gradient (run.max_nonfinite_skips="
                f"{cfg.run.max_nonfinite_skips}). Lower optim.lr, check the data for NaN/inf "
                "values that reach the loss, or resume from an earlier checkpoint"
            )

    def _records(self, pending: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
        """Metrics of pending steps: one all-reduce and one device read for all of them."""
        if not pending:
            return []
        k, world, gas = len(LOSS_TERMS), self.world, self.cfg.deepspeed.grad_accum
        norms = [p["grad_norm"] for p in pending]
        dev = [torch.as_tensor(float("nan") if g is None else g, dtype=torch.float64,
                               device=self.device).reshape(1) for g in norms]  # fmt: skip
        vecs = dist.all_reduce_sum(torch.stack([p["vec"] for p in pending]))  # (n, 5 + k)
        host = torch.cat([vecs, torch.stack(dev)], dim=1).cpu()  # the one read
        out = []
        for p, row in zip(pending, host.tolist()):
            rec: dict[str, float] = {"loss": row[0] / (world * gas)}
            for j, name in enumerate(LOSS_TERMS):
                if p["counts"][j] > 0:  # the term ran (the same decision on every rank)
                    rec[f"loss_{name}"] = row[1 + j] / (world * p["counts"][j])
            rec["nonfinite_micro_steps"] = row[1 + k]
            rec.update(samples=row[2 + k], tokens=row[3 + k], model_flops=row[4 + k],
                       grad_norm=row[5 + k])  # fmt: skip
            rec.update({n: v for n, v in p.items() if n not in ("vec", "grad_norm", "counts")})
            self.state.samples += int(rec["samples"])
            self.state.tokens += int(rec["tokens"])
            out.append(rec)
        return out

    # -------------------------------------------------------------- loop
    def fit(self, loader: Iterable[Any], max_steps: int | None = None) -> TrainState:
        """Train until ``max_steps`` (default ``optim.total_steps``) optimizer steps, saving
        every ``run.ckpt_every`` steps and at the end. ``loader`` yields ViewPairs and has
        ``state()`` (the data position saved in checkpoints)."""
        cfg = self.cfg
        self.write_metadata()
        target = cfg.optim.total_steps if max_steps is None else max_steps
        writer = MetricsWriter(self.run_dir, self.rank, target, cfg.run.log_every,
                               self.state.step, self.progress)  # fmt: skip
        it = iter(loader)
        last_saved = self.state.step
        log_every = max(1, cfg.run.log_every)
        # (step, pending record, data wait): metrics stay on the device until a logging
        # step, a checkpoint or the end reads them all at once (one all-reduce, one read)
        pending: list[tuple[int, dict[str, Any], float]] = []
        window = [time.perf_counter()]

        def flush() -> None:
            recs = self._records([p for _, p, _ in pending])  # synchronises with the device
            now = time.perf_counter()
            step_s = (now - window[0]) / max(1, len(pending))  # the window's mean step time
            for (step, _, wait), rec in zip(pending, recs):
                writer.write(step, self._throughput(rec, wait, max(step_s - wait, 0.0)))
            pending.clear()
            window[0] = now

        ok = False
        try:
            while self.state.step < target:
                t0 = time.perf_counter()
                try:
                    pairs = [next(it) for _ in range(cfg.deepspeed.grad_accum)]
                except StopIteration:  # a finite loader (e.g. make_loader(epochs=...))
                    log.warning("the data ran out at step %d of %d", self.state.step, target)
                    break
                wait = time.perf_counter() - t0
                pending.append((self.state.step + 1, self._step(pairs), wait))
                step = self.state.step
                save = cfg.run.ckpt_every > 0 and step % cfg.run.ckpt_every == 0
                if save or step % log_every == 0 or step >= target:
                    flush()
                if save:
                    self.save(loader.state())
                    last_saved = step
            ok = True
        finally:
            if pending and (ok or self.world == 1):  # (no collective while ranks unwind)
                flush()
            writer.close()
            self._report_corrupt(loader)
        if last_saved != self.state.step:
            self.save(loader.state())
        return self.state

    def _report_corrupt(self, loader: Any) -> None:
        state = getattr(loader, "state", None)
        position = state() if callable(state) else None
        bad = list(getattr(position, "corrupt_samples", list)())
        self.corrupt_samples = bad
        if bad:
            log.warning("rank %d skipped %d corrupt sample(s) (each once): %s",
                        self.rank, len(bad), ", ".join(bad))  # fmt: skip

    def _throughput(
        self, rec: dict[str, float], data_s: float, compute_s: float
    ) -> dict[str, float]:
        dt = max(data_s + compute_s, 1e-9)
        out = dict(rec)
        out.update(samples_per_s=rec["samples"] / dt, tokens_per_s=rec["tokens"] / dt,
                   data_wait_s=data_s, compute_s=compute_s, data_wait_frac=data_s / dt,
                   step_time_s=dt)  # fmt: skip
        if self.peak is not None:
            out["mfu"] = rec["model_flops"] / (dt * self.world * self.peak)
        return out

    # -------------------------------------------------------------- checkpoints
    def save(self, data_position: Any) -> Path:
        """A complete checkpoint of the current step (collective)."""
        extra = {"shapes": self.shapes, "encoder_config": self.encoder_config,
                 "loss": self.cfg.loss.model_dump()}  # fmt: skip
        return save_checkpoint(
            self.engine, self.ckpt_dir, self.state, self.teacher.module, self.loss_fn,
            data_position, keep=self.cfg.run.keep_ckpts, before_commit=self.before_commit,
            extra=extra, estimate=self.ckpt_estimate,
        )  # fmt: skip

    def load(self, ckpt: str | Path | None = None) -> Any:
        """Resume from ``ckpt`` (default: the newest complete checkpoint of this run);
        returns this rank's data position (None when there is nothing to resume)."""
        path = Path(ckpt) if ckpt is not None else find_latest(self.ckpt_dir)
        if path is None:
            return None
        check_resume(path, self.cfg, self.world)
        self.state, position = load_checkpoint(self.engine, path, self.teacher.module, self.loss_fn)
        workers = getattr(position, "workers", None)
        if workers is not None and workers != max(1, self.cfg.data.workers):
            position = read_positions(path)  # data.workers changed: the loader re-splits all
        return position

    def close(self) -> None:
        """Release the engine and the run folder (tests build several in one process)."""
        engine = getattr(self, "engine", None)
        destroy = getattr(engine, "destroy", None)
        if destroy is not None:
            destroy()
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None


__all__ = [
    "LOCK_NAME",
    "NonFiniteError",
    "PretrainModule",
    "Projected",
    "Trainer",
    "check_resume",
    "config_to_dict",
    "contrastive_inputs",
    "init_distributed",
    "param_groups",
    "seed_everything",
    "student_shapes",
]
