"""A model cast to bfloat16 (what DeepSpeed's bf16 mode does) takes float32 inputs in
physical units and computes in bfloat16, on the CPU too: the patch embedding runs in
float32 and hands bf16 tokens on; the date features follow the weights' dtype."""

from __future__ import annotations

import torch

from .conftest import make_modality, micro_model


def test_bf16_model_takes_float32_inputs_and_matches_fp32():
    batch = {
        "s2": make_modality("sentinel2_l2a", T=2, H=16, W=16, seed=1),
        "s1": make_modality("sentinel1_grd", T=3, H=16, W=16, seed=2),
    }
    ref = micro_model().eval()
    low = micro_model().eval()
    low.load_state_dict(ref.state_dict())
    low.to(torch.bfloat16)
    with torch.no_grad():
        a = ref(batch)
        b = low(batch)
    assert b.dense.dtype == torch.bfloat16 and b.pooled.dtype == torch.bfloat16
    assert torch.equal(a.valid, b.valid)
    err = (b.pooled.float() - a.pooled).norm() / a.pooled.norm()
    assert err < 0.05, f"bf16 vs fp32 relative error {err:.3f}"
    # and it trains: gradients reach the bf16 parameters
    low.train()
    low(batch).pooled.float().square().mean().backward()
    grads = [p.grad for p in low.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 for g in grads)
