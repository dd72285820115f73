"""The EMA teacher: a float32 copy of the student, updated after each step.

``t <- m * t + (1 - m) * s`` for every parameter (``torch._foreach_lerp_`` with weight
``1 - m``), with ``m = cfg.teacher.momentum_at(step, total_steps)`` (DINO's cosine
schedule); buffers are copied. The teacher never requires grad and runs in eval mode.

Decisions:
- **ZeRO 0-2: un-sharded on every rank**, float32, outside the DeepSpeed engine (a deep
  copy of the student made before ``deepspeed.initialize``). It costs one full fp32 copy
  of encoder + heads per rank (rsfm_large: ~1.3 GB).
- **ZeRO-3: partitioned like the student.** The engine builds the student and a second
  float32 copy (the teacher) under ``deepspeed.zero.Init``, so each rank holds only its
  partition (``param.ds_tensor``) of every parameter of both. Same shapes, same world size:
  the teacher's partition of a parameter covers the same elements as the student's, so
  the EMA step is a local ``lerp`` of the two partitions, with no gather and no
  communication. The teacher's forward pass gathers its parameters module by module
  (:func:`_install_gather_hooks`: each module's own parameters before it runs,
  re-partitioned after, as ZeRO-3's engine does for the student). Like the student's,
  these gathers are collectives: every rank must run the same teacher modules in the same order (the
  engine completes the teacher's view as it does the student's, see
  ``complete_view``).
- **bf16**: DeepSpeed holds the student's module parameters in bf16 (fp32 masters live in
  the optimizer, sharded). The teacher averages the bf16 parameters into fp32, so slow
  momentum (0.996+) still moves it: an EMA kept in bf16 would round small updates away.
- Every rank computes the same update from the same student weights (ZeRO 0-2), or its
  own partition's (ZeRO-3), so no communication is needed. Checkpoints hold the full
  teacher (:func:`teacher_state_dict`, a collective at ZeRO-3; rank 0 writes it) and
  :func:`load_teacher_state` gives each rank back its partition.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn

log = logging.getLogger("rsfm_train")


def _is_zero3_param(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def param_numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


def param_shape(p: torch.Tensor) -> torch.Size:
    return getattr(p, "ds_shape", p.shape)


def _chunks(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], max_numel: int
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Consecutive groups of (teacher, student) parameter pairs of at most ``max_numel``
    student elements each (a larger single parameter forms its own group)."""
    group: list[tuple[torch.Tensor, torch.Tensor]] = []
    size = 0
    for t, s in pairs:
        n = param_numel(s)
        if group and size + n > max_numel:
            yield group
            group, size = [], 0
        group.append((t, s))
        size += n
    if group:
        yield group


class EMATeacher(nn.Module):
    """``EMATeacher(student)`` holds ``module``, a frozen float32 copy of ``student``.

    ZeRO 0-2: build it before ``deepspeed.initialize`` wraps the student; ``module`` is a
    deep copy. ZeRO-3: ``student`` was built under ``deepspeed.zero.Init`` and
    ``partitioned`` is a second instance of the same architecture built under
    ``deepspeed.zero.Init with float32 (a config without bf16/fp16)``; it becomes ``module``, starting from the
    student's weights. ``update(student, momentum)`` takes one EMA step.
    """

    def __init__(
        self,
        student: nn.Module,
        partitioned: nn.Module | None = None,
    ):
        super().__init__()
        self.zero3 = any(_is_zero3_param(p) for p in student.parameters())
        if not self.zero3:
            if partitioned is not None:
                raise ValueError("EMATeacher: `partitioned` is for a ZeRO-3 student only")
            self.module = copy.deepcopy(student).float().eval()
            self.module.requires_grad_(False)
            return
        if partitioned is None or not all(_is_zero3_param(p) for p in partitioned.parameters()):
            raise ValueError(
                "EMATeacher of a ZeRO-3 student: pass `partitioned`, the same model built "
                "under deepspeed.zero.Init with float32 (a config without bf16/fp16) (a deep copy of a partitioned "
                "student would not be partitioned)"
            )
        pairs = _pairs(partitioned, student)
        for t, s in pairs:
            if t.ds_tensor.numel() != s.ds_tensor.numel():
                raise ValueError(
                    f"teacher and student partitions differ ({t.ds_tensor.numel()} vs "
                    f"{s.ds_tensor.numel()} elements): build both under zero.Init with the same "
                    "process group"
                )
            if t.ds_tensor.dtype != torch.float32:
                raise ValueError(
                    f"the ZeRO-3 teacher must be float32, got {t.ds_tensor.dtype}: build it under "
                    "deepspeed.zero.Init with float32 (a config without bf16/fp16)"
                )
            t.ds_tensor.copy_(s.ds_tensor.detach())
        self.module = partitioned.eval()
        self.module.requires_grad_(False)
        t_bufs = dict(self.module.named_buffers())
        for name, b in student.named_buffers():
            if name in t_bufs:
                t_bufs[name].copy_(b.detach())
        _install_gather_hooks(self.module)

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
        pairs = _pairs(self.module, student)
        if self.zero3:  # this rank's partitions only: no gather
            teacher = [t.ds_tensor for t, _ in pairs]
            src = [s.ds_tensor.detach().to(dtype=torch.float32) for _, s in pairs]
            torch._foreach_lerp_(teacher, src, 1.0 - momentum)
        else:
            teacher = [t for t, _ in pairs]
            src = [s.detach().to(device=t.device, dtype=t.dtype) for t, s in pairs]
            torch._foreach_lerp_(teacher, src, 1.0 - momentum)
        t_bufs = dict(self.module.named_buffers())
        for name, b in student.named_buffers():
            if name in t_bufs:
                t_bufs[name].copy_(b.detach())


def _pairs(teacher: nn.Module, student: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    t_params = dict(teacher.named_parameters())
    s_named = list(student.named_parameters())
    missing = sorted(set(t_params) ^ {n for n, _ in s_named})
    if missing:
        raise ValueError(f"teacher and student parameters differ: {missing[:5]}")
    return [(t_params[n], p) for n, p in s_named]


def _gathered(params: list[torch.Tensor]):
    """ZeRO-3: all-gather ``params`` for reading (``modifier_rank=None``: no broadcast)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


# ------------------------------------------------------------ ZeRO-3 teacher forward


def _install_gather_hooks(module: nn.Module) -> None:
    """Hooks that gather a partitioned (ZeRO-3, outside any engine) module's parameters
    while it runs, as ZeRO-3's engine does for the student: every module that owns
    parameters gathers its own (not its children's) before its forward and re-partitions
    them after, so one module's parameters are whole at a time (plus those of the
    modules it is nested in). A module that reads a child's parameter without calling
    the child would see the empty placeholder and fail on its shape (loudly)."""
    for m in module.modules():
        if any(True for _ in m.parameters(recurse=False)):
            _hook(m)


def _hook(module: nn.Module) -> None:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    held: list[list[torch.Tensor]] = []  # one entry per active call (re-entrant safe)

    def pre(mod, args):
        params = [p for p in mod.parameters(recurse=False)
                  if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]  # fmt: skip
        if params:
            params[0].all_gather(param_list=params)
        held.append(params)

    def post(mod, args, out):
        params = held.pop()
        if params:
            params[0].partition(param_list=params, has_been_updated=False)

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


# ------------------------------------------------------------ checkpoints


@torch.no_grad()
def teacher_state_dict(
    module: nn.Module, gather_numel: int = 50_000_000, rank0_only: bool = False
) -> dict[str, torch.Tensor]:
    """The teacher's full state dict on the CPU (names as ``module.state_dict()``). At
    ZeRO-3 a collective: every rank must call it; parameters are gathered in chunks of at
    most ``gather_numel`` elements; with ``rank0_only`` only rank 0 keeps the gathered
    parameters (the other ranks' dicts lack them: one chunk at a time is whole there)."""
    out = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    named = [(n, p) for n, p in module.named_parameters() if _is_zero3_param(p)]
    if not named:
        return out
    keep = not rank0_only or torch.distributed.get_rank() == 0
    names = {id(p): n for n, p in named}
    for n, _ in named:
        del out[n]  # the empty placeholders
    for group in _chunks([(p, p) for _, p in named], gather_numel):
        params = [p for p, _ in group]
        with _gathered(params):
            if keep:
                for p in params:
                    out[names[id(p)]] = p.detach().cpu().clone()
    if keep:  # state_dict's order
        order = list(module.state_dict())
        out = {k: out[k] for k in order}
    return out


@torch.no_grad()
def load_teacher_state(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Load a full teacher state dict (:func:`teacher_state_dict`'s) into ``module``; at
    ZeRO-3 each rank copies only its own partition of each parameter. Names and shapes must
    match exactly. ``tensors`` may be lazy (a view of a safetensors file): at ZeRO-3 one
    tensor at a time is read whole."""
    params = dict(module.named_parameters())
    if not any(_is_zero3_param(p) for p in params.values()):
        module.load_state_dict(dict(tensors))
        return
    own = set(module.state_dict())
    bad = sorted(own ^ set(tensors))
    if bad:
        raise ValueError(f"teacher state names differ from the model's: {bad[:5]}")
    rest = {}
    for name, value in tensors.items():
        p = params.get(name)
        if p is None:
            rest[name] = value
            continue
        if tuple(value.shape) != tuple(param_shape(p)):
            raise ValueError(
                f"teacher state {name}: shape {tuple(value.shape)}, the model's is "
                f"{tuple(param_shape(p))}"
            )
        part = p.ds_tensor
        rank = torch.distributed.get_rank(group=p.ds_process_group)
        flat = value.reshape(-1)
        start = rank * part.numel()
        piece = flat[start : start + part.numel()]
        part.zero_()
        part[: piece.numel()].copy_(piece.to(part.dtype))
    bufs = dict(module.named_buffers())
    for name, value in rest.items():
        bufs[name].copy_(value)
