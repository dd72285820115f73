"""Distributed helpers for the contrastive losses: rank/world size and gather with autograd.

The losses follow OpenCLIP's *local loss* pattern: every rank computes the loss of its
own query rows against the keys of the whole global batch. Keys that carry gradient are
gathered with :func:`all_gather_with_grad`: the forward concatenates every rank's rows
(the local slice keeps its autograd graph), the backward all-reduces (SUM) the gradient of
the whole gathered tensor and hands each rank the slice of its own rows. So rank ``r``
receives ``sum_r' dL_r' / dx_r`` -- the gradient of every rank's loss w.r.t. its rows.

Decision: the backward uses ``all_reduce`` + slice, not ``reduce_scatter``. It works on
every backend (gloo has no reduce_scatter) and with unequal row counts per rank, at twice
the bytes of a reduce_scatter; the gathered features are small next to the model.

Sum vs mean (how the losses use it, see ``rsfm_train.losses``): each rank's loss is
``world_size * (sum of its valid rows' losses) / (global number of valid rows)``. The
data-parallel engine (DeepSpeed, like DDP) *averages* gradients over ranks, so
``mean_r grad_r`` is exactly the gradient of the global-batch mean loss, and
``mean_r loss_r`` is the global-batch loss. (Equivalently ``sum_r grad_r`` is
``world_size`` times it.) ``tests/train/test_dist_gather.py`` checks this on 2 processes.

Collective symmetry: every rank must call the same collectives in the same order, forward
and backward. Never skip a gather, or drop a gathered tensor from the loss graph, on some
ranks only -- decide skips from all-reduced counts (see :func:`all_reduce_sum`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as torch_dist


def is_dist() -> bool:
    """True inside an initialised process group with more than one rank."""
    return torch_dist.is_available() and torch_dist.is_initialized() and world_size() > 1


def rank() -> int:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank()
    return 0


def world_size() -> int:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return 1


def all_gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's ``n`` (rank order). ``[n]`` without a process group."""
    if not is_dist():
        return [n]
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(world_size())]
    torch_dist.all_gather(out, t)
    return [int(x) for x in out]


_EQUAL_ROWS = [False]


@contextlib.contextmanager
def equal_rows(enabled: bool = True) -> Iterator[None]:
    """Within this context every rank promises the same row count to each gather of the
    global losses (the engine's micro-batches have static shapes): :func:`row_sizes`
    returns ``[n] * world_size`` without a collective or a host read. A broken promise
    is caught on the device (``torch._assert_async`` after one small all-gather) when
    ``RSFM_CHECK_ROWS=1``."""
    before = _EQUAL_ROWS[0]
    _EQUAL_ROWS[0] = enabled
    try:
        yield
    finally:
        _EQUAL_ROWS[0] = before


def equal_rows_enabled() -> bool:
    return _EQUAL_ROWS[0]


def row_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's row count ``n`` (rank order): ``[n] * world_size`` inside
    :func:`equal_rows` (no sync), else exchanged with :func:`all_gather_sizes` (one read)."""
    if not _EQUAL_ROWS[0]:
        return all_gather_sizes(n, device)
    if is_dist() and os.environ.get("RSFM_CHECK_ROWS", "0") not in ("", "0"):
        t = torch.tensor([n], dtype=torch.long, device=device)
        out = [torch.zeros_like(t) for _ in range(world_size())]
        torch_dist.all_gather(out, t)
        torch._assert_async(
            (torch.cat(out) == n).all(), "equal_rows: ranks gathered different row counts"
        )
    return [n] * world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a tensor that carries no gradient (counts, flags); returns a copy."""
    x = x.detach().clone()
    if is_dist():
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)
    return x


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        r = rank()
        ctx.sizes, ctx.rank = sizes, r
        most = max(sizes)
        padded = x.new_zeros((most, *x.shape[1:]))  # (max_n, ...): all_gather needs equal shapes
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        torch_dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)  # (sum(sizes), ...)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        g = g.clone(
            memory_format=torch.contiguous_format
        )  # never reduce autograd's buffer in place
        torch_dist.all_reduce(g, op=torch_dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return g[start : start + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 (rank order); the local rows keep autograd.

    Ranks may hold different numbers of rows (including 0); the other dims must agree.
    ``sizes`` (every rank's row count, from :func:`all_gather_sizes`) saves one collective
    when the caller already has it. Without a process group (or with one rank) returns
    ``x`` itself. A tensor that does not require grad is gathered with no backward
    communication -- which is only safe when that holds on every rank.
    """
    if not is_dist():
        return x
    if sizes is None:
        sizes = all_gather_sizes(x.shape[0], x.device)
    if x.dtype == torch.bool:  # not every backend gathers bool
        return _AllGatherWithGrad.apply(x.to(torch.uint8), sizes).to(torch.bool)
    return _AllGatherWithGrad.apply(x, sizes)


def gather_offset(n: int, device: torch.device) -> tuple[int, int]:
    """``(offset, total)``: where this rank's ``n`` rows start in the gathered tensor."""
    sizes = all_gather_sizes(n, device)
    return sum(sizes[: rank()]), sum(sizes)
