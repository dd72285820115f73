"""Two CPU processes (gloo) reproduce the single-process loss and gradients of the global batch.

Each rank's loss is ``world * local_sum / global_count`` and its gradients are what its
backward produces; averaging both over ranks -- what DeepSpeed/DDP do with gradients --
must give the loss and the gradient of the whole batch computed in one process. Ranks get
unequal row counts (6 and 4) and unequal valid counts, and rank 1 lacks a modality. The
same with equal row counts (5 and 5) inside ``dist.equal_rows`` (the engine's static
shapes: no row-count exchange; ``RSFM_CHECK_ROWS=1`` checks the promise on the device).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from rsfm_train import dist
from rsfm_train.losses import Prototypes, cross_modal_loss, global_info_nce

WORLD = 2
SPLIT = [6, 4]  # rows of the global batch of 10 held by rank 0 and rank 1
DIN, DOUT, HW = 8, 6, 3


def _data():
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(10, DIN, generator=g)
    xb = xa + 0.3 * torch.randn(10, DIN, generator=g)
    valid = torch.rand(10, generator=g) > 0.25
    maps = {m: torch.randn(10, DIN, HW, HW, generator=g) for m in ("s2", "s1")}
    mvalid = {m: torch.rand(10, HW, HW, generator=g) > 0.3 for m in ("s2", "s1")}
    tokens = torch.randn(10, 5, DOUT, generator=g)
    return xa, xb, valid, maps, mvalid, tokens


def _projector() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(DIN, DOUT)


def _image_term(proj, xa, xb, valid):
    za, zb = F.normalize(proj(xa), dim=1), F.normalize(proj(xb), dim=1)
    # Symmetric, both sides with gradient: keys are gathered *with* autograd.
    return 0.5 * (global_info_nce(za, zb, valid, 0.1)[0] + global_info_nce(zb, za, valid, 0.1)[0])


def _modal_term(proj, maps, mvalid):
    feats = {m: proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for m, x in maps.items()}
    return cross_modal_loss(feats, mvalid, 0.2, modalities=["s1", "s2"]).loss


def _run(proj, xa, xb, valid, maps, mvalid, tokens, assign):
    proj.zero_grad()
    image = _image_term(proj, xa, xb, valid)
    modal = _modal_term(proj, maps, mvalid)
    (image + modal).backward()
    protos = Prototypes(4, DOUT, momentum=0.5)
    protos.update(tokens, assign, torch.ones(assign.shape, dtype=torch.bool))
    return {
        "image": image.detach(),
        "modal": modal.detach(),
        "grad_w": proj.weight.grad.clone(),
        "grad_b": proj.bias.grad.clone(),
        "protos": protos.weight.clone(),
    }


def _worker(rank: int, port: int, out_dir: str, split: list[int], equal: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RSFM_CHECK_ROWS="1")
    torch_dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        xa, xb, valid, maps, mvalid, tokens = _data()
        lo = sum(split[:rank])
        sl = slice(lo, lo + split[rank])
        maps = {m: x[sl] for m, x in maps.items()}
        mvalid = {m: v[sl] for m, v in mvalid.items()}
        if rank == 1:  # this rank's batch has no SAR at all
            del maps["s1"], mvalid["s1"]
        assign = torch.arange(tokens[sl].numel() // DOUT).reshape(-1, 5) % 4
        with dist.equal_rows(equal):
            res = _run(_projector(), xa[sl], xb[sl], valid[sl], maps, mvalid, tokens[sl], assign)
        res["world"] = dist.world_size()
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("split, equal", [(SPLIT, False), ([5, 5], True)])
def test_two_ranks_equal_one_process(tmp_path, split, equal):
    xa, xb, valid, maps, mvalid, tokens = _data()
    # One process, global batch. Rank 1's missing SAR = SAR present but invalid there.
    mvalid_single = {m: v.clone() for m, v in mvalid.items()}
    mvalid_single["s1"][split[0] :] = False
    assign = (
        torch.cat(
            [torch.arange(split[0] * 5).reshape(-1, 5), torch.arange(split[1] * 5).reshape(-1, 5)]
        )
        % 4
    )
    want = _run(_projector(), xa, xb, valid, maps, mvalid_single, tokens, assign)

    mp.spawn(_worker, args=(_free_port(), str(tmp_path), split, equal), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert all(r["world"] == WORLD for r in ranks)

    def mean(key):
        return torch.stack([r[key] for r in ranks]).mean(0)

    # Loss: the mean over ranks is the global-batch loss (each rank returns world * local / global).
    torch.testing.assert_close(mean("image"), want["image"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean("modal"), want["modal"], rtol=1e-5, atol=1e-6)
    # Gradients: the engine's mean over ranks is the single-process gradient
    # (so the plain sum over ranks is WORLD times it).
    torch.testing.assert_close(mean("grad_w"), want["grad_w"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean("grad_b"), want["grad_b"], rtol=1e-5, atol=1e-6)
    summed = torch.stack([r["grad_w"] for r in ranks]).sum(0)
    torch.testing.assert_close(summed, WORLD * want["grad_w"], rtol=1e-5, atol=1e-6)
    # Prototype EMA uses all-reduced cluster sums: identical on every rank, equal to one process.
    for r in ranks:
        torch.testing.assert_close(r["protos"], want["protos"], rtol=1e-5, atol=1e-6)
