"""The EMA teacher: an un-sharded float32 copy of the student, updated after each step.

``t <- m * t + (1 - m) * s`` for every parameter (``torch._foreach_lerp_`` with weight
``1 - m``), with ``m = cfg.teacher.momentum_at(step, total_steps)`` (DINO's cosine
schedule); buffers are copied. The teacher never requires grad and runs in eval mode.

Decisions:
- **Un-sharded on every rank**, float32, outside the DeepSpeed engine (copied from the
  student *before* ``deepspeed.initialize``, so ZeRO-3 never partitions it). It costs one
  full fp32 copy of encoder + heads per rank (rsfm_large: ~1.3 GB), which is small next to
  activations; sharding the teacher like the student is left for models where it is not.
- **ZeRO-3**: the student's parameters are partitioned, so each update gathers them in
  chunks of at most ``gather_numel`` elements with ``deepspeed.zero.GatheredParameters``
  (``modifier_rank=None``: read-only, nothing is broadcast back), bounding the extra
  memory to one chunk. ZeRO 0-2 keep full student parameters on every rank: no gather.
- **bf16**: DeepSpeed holds the student's module parameters in bf16 (fp32 masters live in
  the optimizer, sharded). The teacher averages the bf16 parameters into fp32, so slow
  momentum (0.996+) still moves it: an EMA kept in bf16 would round small updates away.
- Every rank computes the same update from the same student weights, so teachers stay
  identical across ranks without communication (rank 0 alone writes it in checkpoints).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import nullcontext

import torch
import torch.nn as nn

log = logging.getLogger("rsfm_train")


def _is_zero3_param(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def _chunks(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], max_numel: int
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Consecutive groups of (teacher, student) parameter pairs of at most ``max_numel``
    student elements each (a larger single parameter forms its own group)."""
    group: list[tuple[torch.Tensor, torch.Tensor]] = []
    size = 0
    for t, s in pairs:
        n = int(getattr(s, "ds_numel", s.numel()))
        if group and size + n > max_numel:
            yield group
            group, size = [], 0
        group.append((t, s))
        size += n
    if group:
        yield group


class EMATeacher(nn.Module):
    """``EMATeacher(student)`` holds ``module``, a frozen float32 deep copy of ``student``.

    Build it before ``deepspeed.initialize`` wraps (and, under ZeRO-3, partitions) the
    student. ``update(student, momentum)`` takes one EMA step.
    """

    def __init__(self, student: nn.Module, gather_numel: int = 50_000_000):
        super().__init__()
        if any(_is_zero3_param(p) for p in student.parameters()):
            raise ValueError(
                "EMATeacher must be built from the student before deepspeed.initialize "
                "partitions it (ZeRO-3)"
            )
        self.module = copy.deepcopy(student).float().eval()
        self.module.requires_grad_(False)
        self.gather_numel = gather_numel

    def train(self, mode: bool = True) -> EMATeacher:  # the teacher is always in eval mode
        super().train(False)
        return self

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` (parameters), and
        copy the student's buffers. ``student`` is the engine's module (``engine.module``)."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        t_params = dict(self.module.named_parameters())
        s_named = list(student.named_parameters())
        missing = sorted(set(t_params) ^ {n for n, _ in s_named})
        if missing:
            raise ValueError(f"teacher and student parameters differ: {missing[:5]}")
        pairs = [(t_params[n], p) for n, p in s_named]
        zero3 = any(_is_zero3_param(p) for _, p in pairs)
        for group in _chunks(pairs, self.gather_numel):
            ctx = _gathered([s for _, s in group]) if zero3 else nullcontext()
            with ctx:
                teacher = [t for t, _ in group]
                src = [s.detach().to(device=t.device, dtype=t.dtype) for t, s in group]
                torch._foreach_lerp_(teacher, src, 1.0 - momentum)
        t_bufs = dict(self.module.named_buffers())
        for name, b in student.named_buffers():
            if name in t_bufs:
                t_bufs[name].copy_(b.detach())


def _gathered(params: list[torch.Tensor]):
    """ZeRO-3: all-gather ``params`` for reading (``modifier_rank=None``: no broadcast)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
