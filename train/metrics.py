"""Training metrics: throughput, model FLOPs utilisation and where they are written.

Per optimizer step the engine logs each loss term, the learning rate, the gradient norm,
samples/s and tokens/s (global: all ranks), MFU, and the split of wall time between
waiting for data and computing. :class:`MetricsWriter` sends them to

- ``metrics.jsonl`` in the run folder (one JSON object per optimizer step; rank 0). A
  resumed run first drops the records after the step it resumes from (a killed run may
  have logged steps past its last checkpoint; they are run again), so every step has
  exactly one record, the one of the steps that the checkpoints continue,
- TensorBoard (``tensorboard/`` in the run folder) when the package is installed; when it
  is not, that is logged once and nothing else happens,
- a tqdm progress bar on rank 0 (stdout) and a ``logging`` line every ``log_every`` steps.

MFU = achieved model FLOP/s / peak FLOP/s of the device, where the model FLOPs of one
sample are ``3 * F(view 1) + F(view 2)``: forward + backward (2x forward) of the student,
forward of the teacher, ``F`` from ``rsfm_core.model.model_stats`` (encoder matmuls only;
projection heads and losses are left out, so MFU is slightly understated). The peak comes
from :data:`PEAK_FLOPS` (dense, no sparsity) by device name; on an unknown device (any
CPU) MFU is omitted rather than guessed.

Tokens are the spatial encoder's patch tokens of view 1 (``T * G * h * w`` summed over
the modalities present), i.e. what the student's ViT processes.

Collapse indicators (:class:`CollapseMonitor`, every ``log_every`` steps, on the first
micro-batch of the step, rank 0's tokens, over a reservoir of the last 1,024 tokens so
that batches of few tokens compare): the effective rank and the mean per-dimension
std of the encoder's dense output (the embedding users get, before the projection heads)
for the student (view 1) and the EMA teacher (view 2), and the effective rank of the
student's projected tokens (what the losses see). Effective rank is
:func:`rsfm_train.evalreal.metrics.effective_rank` (exp of the entropy of the normalised
singular values of the centred rows), the number ``rsfm eval --real`` reports for the
same embeddings. When the student's falls below ``run.collapse_warn`` times the highest
value seen so far, a warning says so (again at each further halving).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("rsfm_train")

# Dense peak FLOP/s from NVIDIA's data sheets: (substring of the device name, bf16, tf32).
# Order matters: the first match wins ("H100 PCIe" before "H100").
PEAK_FLOPS: list[tuple[str, float, float]] = [
    ("H100 PCIe", 756e12, 378e12),
    ("H100 NVL", 835e12, 418e12),
    ("H100", 989e12, 494e12),  # SXM
    ("H200", 989e12, 494e12),
    ("GH200", 989e12, 494e12),
    ("A100", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("A10G", 70e12, 35e12),
]


def peak_flops(device: torch.device | str, bf16: bool) -> float | None:
    """Peak dense FLOP/s of ``device`` for bf16 (else TF32) matmuls, or None if unknown."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, p_bf16, p_tf32 in PEAK_FLOPS:
        if key in name:
            return p_bf16 if bf16 else p_tf32
    return None


def view_shapes(view: Mapping[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    """``{modality: (T, C, H, W)}`` of one sample of a batched view (for model_stats)."""
    return {n: tuple(int(s) for s in d.pixels.shape[1:]) for n, d in view.items()}


class FlopCounter:
    """Model FLOPs per sample of (view 1, view 2) shapes, cached per shape."""

    def __init__(self, encoder: torch.nn.Module):
        self.encoder = encoder
        self._cache: dict[tuple, float] = {}

    def forward_flops(self, shapes: Mapping[str, tuple[int, int, int, int]]) -> float:
        key = tuple(sorted(shapes.items()))
        if key not in self._cache:
            from rsfm_core.model import model_stats

            try:
                self._cache[key] = float(
                    model_stats(self.encoder, dict(shapes))["flops_per_sample"]
                )
            except ValueError as e:  # shapes model_stats cannot count: MFU becomes NaN
                log.warning("cannot count model FLOPs for %s: %s", dict(shapes), e)
                self._cache[key] = math.nan
        return self._cache[key]

    def train_flops(self, view1: Mapping[str, Any], view2: Mapping[str, Any]) -> float:
        """FLOPs of one sample: student forward + backward on view 1, teacher forward on 2."""
        return 3 * self.forward_flops(view_shapes(view1)) + self.forward_flops(view_shapes(view2))


def count_tokens(view: Mapping[str, Any], encoder: torch.nn.Module) -> int:
    """Patch tokens of a batched view: ``B * T * G * (H / p) * (W / p)`` over modalities."""
    mods = encoder.config.modalities
    total = 0
    for name, d in view.items():
        B, T, _, H, W = d.pixels.shape
        m = mods[name]
        total += B * T * m.groups * (H // m.patch) * (W // m.patch)
    return int(total)


class MetricsWriter:
    """Writes one record per step to JSONL, TensorBoard (if installed) and the console.

    Only rank 0 writes; other ranks get a writer that does nothing.
    """

    def __init__(
        self,
        run_dir: str | Path,
        rank: int,
        total_steps: int,
        log_every: int = 10,
        start_step: int = 0,
        progress: bool = True,
    ):
        self.enabled = rank == 0
        self.log_every = max(1, log_every)
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        if self.path.exists():
            drop_records_after(self.path, start_step)
        self._tb = _tensorboard(Path(run_dir) / "tensorboard")
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="pretrain", unit="step",
                file=sys.stdout, dynamic_ncols=True, leave=True,
            )  # fmt: skip

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"step": step, **{k: _plain(v) for k, v in record.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, step)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(
                loss=f"{rec.get('loss', math.nan):.4f}", lr=f"{rec.get('lr', 0):.2e}",
                sps=f"{rec.get('samples_per_s', 0):.1f}", refresh=False,
            )  # fmt: skip
        if step % self.log_every == 0:
            log.info("step %d %s", step, format_record(rec))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def drop_records_after(path: Path, step: int) -> int:
    """Rewrite the JSONL ``path`` (atomically) without records of steps after ``step``
    and without torn lines (a kill mid-write); returns how many lines were dropped."""
    from rsfm_core.files import atomic_write_text

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            ok = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok and line.endswith("\n"):
            keep.append(line)
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))
        log.info("%s: dropped %d record(s) after step %d (run again after the resume)",
                 path, len(lines) - len(keep), step)  # fmt: skip
    return len(lines) - len(keep)


def format_record(rec: Mapping[str, Any]) -> str:
    keys = ("loss", "loss_pixel", "loss_object", "loss_image", "loss_cross_modal", "lr",
            "grad_norm", "erank_student", "erank_teacher", "samples_per_s", "tokens_per_s",
            "mfu", "data_wait_frac")  # fmt: skip
    parts = []
    for k in keys:
        v = rec.get(k)
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
    return " ".join(parts)


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().cpu()) if v.numel() == 1 else v.tolist()
    return v


_TB_MISSING_LOGGED = False


def _tensorboard(log_dir: Path):
    """A SummaryWriter, or None (logged once) when tensorboard is not installed."""
    global _TB_MISSING_LOGGED
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module raises this when the tensorboard package is absent
        if not _TB_MISSING_LOGGED:
            log.info("tensorboard is not installed: metrics go to metrics.jsonl only")
            _TB_MISSING_LOGGED = True
        return None
    return SummaryWriter(str(log_dir))


# ---------------------------------------------------------------------------- collapse


class CollapseMonitor:
    """Effective rank and per-dimension std of token embeddings, with an early warning.

    One micro-batch can hold very few tokens (single-token views of point series: 4
    tokens bound the rank by 4), so the indicators are measured on a reservoir of the
    last ``window`` valid tokens seen on logging steps (at most ``per_step`` from each),
    and only once it holds ``min_tokens``: a rank comparable across batch kinds."""

    def __init__(
        self, warn_ratio: float = 0.5, window: int = 1024, per_step: int = 256,
        min_tokens: int = 256,
    ):  # fmt: skip
        self.warn_ratio = warn_ratio
        self.window, self.per_step, self.min_tokens = window, per_step, min_tokens
        self.best = 0.0
        self.warned_at: float | None = None
        self._rows: dict[str, list[torch.Tensor]] = {"student": [], "teacher": [], "proj": []}
        self._g = torch.Generator().manual_seed(0)

    def _add(self, key: str, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        x = tokens.detach().float().permute(0, 2, 3, 1)[valid.bool()].cpu()  # (n, D)
        if x.shape[0] > self.per_step:
            x = x[torch.randperm(x.shape[0], generator=self._g)[: self.per_step]]
        rows = self._rows[key]
        rows.append(x)
        while sum(r.shape[0] for r in rows) - rows[0].shape[0] >= self.window:
            rows.pop(0)

    def _stats(self, key: str) -> tuple[float, float]:
        from .evalreal.metrics import effective_rank, mean_dim_std

        rows = self._rows[key]
        if not rows or sum(r.shape[0] for r in rows) < self.min_tokens:
            return math.nan, math.nan
        x = torch.cat(rows)[-self.window :].numpy()
        return effective_rank(x), mean_dim_std(x)

    def record(self, step: int, student, teacher, student_proj, valid_s, valid_t) -> dict:
        """The indicators after this step's tokens (dense maps ``(B, D, h, w)``); warns
        when the student's effective rank falls below ``warn_ratio`` x its best."""
        self._add("student", student, valid_s)
        self._add("teacher", teacher, valid_t)
        self._add("proj", student_proj, valid_s)
        er_s, std_s = self._stats("student")
        er_t, std_t = self._stats("teacher")
        er_p, _ = self._stats("proj")
        rec = {"erank_student": er_s, "dimstd_student": std_s, "erank_teacher": er_t,
               "dimstd_teacher": std_t, "erank_student_proj": er_p}  # fmt: skip
        if math.isfinite(er_s):
            self.best = max(self.best, er_s)
            limit = self.warn_ratio * (self.warned_at or self.best)
            if er_s < limit:
                log.warning(
                    "possible representation collapse at step %d: the student's embedding "
                    "uses %.1f effective dimensions, down from %.1f (teacher %.1f); check "
                    "the loss terms, the learning rate and the data (docs/training.md)",
                    step, er_s, self.best, er_t,
                )  # fmt: skip
                self.warned_at = er_s
        return rec
