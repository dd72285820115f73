"""The encoder's forward has no host sync and no data-dependent shape on its compiled path:
``torch.compile(fullgraph=True)`` traces forward and backward of rsfm_tiny (any graph
break or sync raises) and gives the eager result (float32, CPU)."""

from __future__ import annotations

import pytest
import torch

import rsfm_core as rs
from rsfm_core.sample import ModalityData


def _batch(B: int = 2, T: int = 2, H: int = 16) -> dict[str, ModalityData]:
    g = torch.Generator().manual_seed(3)
    bands = rs.sensors.get("sentinel2_l2a").band_names
    valid = torch.rand(B, T, H, H, generator=g) > 0.2
    valid[1, 1] = False  # a fully invalid frame: zeroed, not skipped, when compiled
    s2 = ModalityData(torch.rand(B, T, 12, H, H, generator=g) * 0.3, valid,
                      torch.tensor([[18000, 18030]] * B), "sentinel2_l2a", bands)  # fmt: skip
    s1 = ModalityData(torch.randn(B, T, 2, H, H, generator=g) * 3 - 15,
                      torch.ones(B, T, H, H, dtype=torch.bool),
                      torch.tensor([[18001, 18031]] * B), "sentinel1_grd", ("VV", "VH"))  # fmt: skip
    return {"s2": s2, "s1": s1}


def _loss_and_grads(model, fn, batch, offset):
    model.zero_grad(set_to_none=True)
    dense, pooled = fn(batch, offset)
    (dense.square().mean() + pooled.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return dense.detach(), pooled.detach(), grads


@pytest.mark.parametrize("backends", ["default", pytest.param("reference", marks=pytest.mark.slow)])
def test_compiled_forward_and_backward_equal_eager(backends):
    if backends == "default":
        kw = {}  # CPU: sdpa attention, torch spectral embedding
    else:
        kw = {"attn_backend": "reference", "embed_backend": "reference"}
    torch.manual_seed(0)
    model = rs.build_model("rsfm_tiny", depth=1, fusion_depth=1, **kw)
    batch = _batch()
    offset = torch.tensor([[0, 0], [2, 3]])  # per-sample positions: no host loop either

    def run(b, off):
        out = model(b, pos_offset=off)
        return out.dense, out.pooled

    eager = _loss_and_grads(model, run, batch, offset)
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    got = _loss_and_grads(model, compiled, batch, offset)
    torch.testing.assert_close(got[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], eager[1], rtol=1e-5, atol=1e-5)
    assert got[2].keys() == eager[2].keys() and len(eager[2]) > 20  # the same parameters learn
    for name, g in eager[2].items():
        torch.testing.assert_close(got[2][name], g, rtol=1e-4, atol=1e-5, msg=name)
    torch._dynamo.reset()
