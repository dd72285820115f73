"""The model-level switch flips every attention call between the fused Triton kernels
(run by the CPU interpreter here) and the float32 reference, with the same result."""

from __future__ import annotations

import pytest
import torch
from rsfm_kernels.dispatch import triton_reasons

from .conftest import make_modality, micro_model


@pytest.mark.skipif(bool(triton_reasons()), reason="; ".join(triton_reasons()) or "triton runs")
def test_triton_and_reference_attention_agree_in_the_model():
    batch = {
        "s2": make_modality("sentinel2_l2a", T=2, H=16, W=16, B=1, seed=3),
        "s1": make_modality("sentinel1_grd", T=1, H=16, W=16, B=1, seed=4),
    }
    outs, grads = {}, {}
    for backend in ("reference", "triton"):
        model = micro_model()
        model.set_attn_backend(backend)
        out = model(batch)
        (out.dense.square().sum() + out.pooled.sum()).backward()
        outs[backend] = out
        grads[backend] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
    ref, fused = outs["reference"], outs["triton"]
    assert torch.equal(ref.valid, fused.valid)
    torch.testing.assert_close(fused.dense, ref.dense, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.pooled, ref.pooled, rtol=1e-4, atol=1e-4)
    assert grads["reference"].keys() == grads["triton"].keys()
    for name, g in grads["reference"].items():
        torch.testing.assert_close(grads["triton"][name], g, rtol=1e-3, atol=1e-4, msg=name)
