"""Sharding tiled inference across ranks (torchrun, or any initialised process group).

Tile rows are grouped into *bands* of consecutive tile rows; band ``b`` goes to rank
``b % world`` (round-robin). A band owns the output token rows between its cuts (halfway
into the overlap with the neighbouring band, :meth:`Layout.cut`) and computes every tile
row that touches them, i.e. also one tile row of each neighbour (the blend needs both
sides of a seam). Each tile is computed in the same batch composition whatever the
rank count (batches never span tile rows), so N ranks give bit-identical maps to one.

Each rank writes its bands into its own part (a sparse intermediate); rank 0 copies
every band's rows from its owner's part into the merged intermediate and finalizes.
A failure on any rank is all-reduced so that every rank raises instead of waiting.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1


@dataclass(frozen=True)
class Band:
    index: int
    tile_rows: range  # tile rows to compute (own rows + halos)
    out_start: int  # owned token rows [out_start, out_end)
    out_end: int


def plan_bands(layout, world: int, rows_per_band: int | None) -> list[Band]:
    """Bands over the layout's tile rows: ``rows_per_band`` tile rows each (default:
    one contiguous band per rank, the fewest halo recomputations)."""
    n = len(layout.rows)
    per = rows_per_band or -(-n // world)
    out = []
    for b, i0 in enumerate(range(0, n, per)):
        i1 = min(i0 + per, n)
        a, e = layout.cut(i0), layout.cut(i1)
        t = layout.tile_tok
        need = [i for i in range(n) if layout.row_start(i) < e and layout.row_start(i) + t > a]
        out.append(Band(b, range(need[0], need[-1] + 1), a, e))
    return out


@contextmanager
def session(distributed: bool | None, device: torch.device):
    """The process group to use: an initialised one, or one started here from torchrun's
    environment (``WORLD_SIZE`` > 1) and torn down at the end; ``False``: single rank."""
    import torch.distributed as dist

    started = False
    if distributed is False or not dist.is_available():
        yield Dist()
        return
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            if distributed:
                raise RuntimeError(
                    "distributed=True but no process group is initialised and WORLD_SIZE "
                    "is not set; launch with torchrun --nproc-per-node N"
                )
            yield Dist()
            return
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    try:
        yield Dist(dist.get_rank(), dist.get_world_size())
    finally:
        if started:
            dist.destroy_process_group()


def agree(d: Dist, ok: bool) -> bool:
    """True when every rank is ok (all-reduced); a barrier as well."""
    if not d.active:
        return ok
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def broadcast(d: Dist, obj):
    """``obj`` from rank 0 on every rank."""
    if not d.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(d: Dist, obj) -> list:
    if not d.active:
        return [obj]
    import torch.distributed as dist

    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
