"""GPU (``-m gpu``): the model in bfloat16 on CUDA runs the Triton attention kernels (the
automatic choice) on both paths, the dense spatial one (N = 256 tokens per frame) and
the packed temporal-fusion one (L = 6 per location, with a key-padding mask from
validity), and agrees with the float32 reference about as well as SDPA in bf16 does."""

from __future__ import annotations

import importlib

import pytest
import torch

from .conftest import make_modality, micro_model

CUDA = torch.cuda.is_available()


def _batch(device):
    batch = {
        "s2": make_modality("sentinel2_l2a", T=3, H=64, W=64, B=2, seed=1, invalid_frac=0.2),
        "s1": make_modality("sentinel1_grd", T=2, H=64, W=64, B=2, seed=2, invalid_frac=0.2),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _run(model, batch):
    out = model(batch)
    loss = out.dense.float().square().mean() + out.pooled.float().sum()
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return out, grads


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_bf16_model_runs_triton_attention_like_sdpa(monkeypatch):
    monkeypatch.setenv("RSFM_AUTOTUNE", "0")  # pinned configs: this test is about the model
    A = importlib.import_module("rsfm_kernels.attn")
    if A._T is None:
        pytest.skip("triton is not installed")
    paths = []
    real = A._T.select_path
    monkeypatch.setattr(A._T, "select_path", lambda *a: paths.append(real(*a)) or paths[-1])
    batch = _batch("cuda")
    ref_model = micro_model().cuda().train()
    ref_model.set_attn_backend("reference")
    ref, ref_grads = _run(ref_model, batch)  # float32 math

    results = {}
    for backend in (None, "sdpa"):  # None: the automatic choice
        model = micro_model().cuda().to(torch.bfloat16).train()
        model.set_attn_backend(backend)
        results[backend] = _run(model, batch)
    assert {"dense", "short"} <= set(paths), paths  # both Triton paths ran (automatically)

    (tri, tri_grads), (sd, sd_grads) = results[None], results["sdpa"]
    assert tri.dense.dtype == torch.bfloat16 and torch.equal(tri.valid, ref.valid)
    assert torch.isfinite(tri_grads).all()
    for name, got, low, want in (
        ("dense", tri.dense, sd.dense, ref.dense),
        ("pooled", tri.pooled, sd.pooled, ref.pooled),
        ("grads", tri_grads, sd_grads, ref_grads),
    ):
        err, err_sdpa = _rel(got, want), _rel(low, want)
        assert err <= 2 * err_sdpa + 1e-2, f"{name}: triton {err:.4f} vs sdpa {err_sdpa:.4f}"
