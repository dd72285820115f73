"""Training-path properties: gradients everywhere, no NaN, checkpointing, save/load,
attention backends, and the CPU forward+backward time of rsfm_tiny."""

from __future__ import annotations

import json

import pytest
import torch
from rsfm_kernels import dispatch

from rsfm_core.files import sha256_file
from rsfm_core.model import build_model, load_pretrained
from rsfm_core.model.checkpoint import CheckpointError

from .conftest import make_modality, micro_model


def _all_modalities(B: int = 2, seed: int = 0) -> dict:
    """Every default modality on a 2x2 token grid (rgb: 1 m, patch 40)."""
    return {
        "s2": make_modality("sentinel2_l2a", T=3, H=8, W=8, B=B, seed=seed),
        "s1": make_modality("sentinel1_grd", T=2, H=8, W=8, B=B, seed=seed + 1),
        "hs": make_modality("enmap", T=1, H=8, W=8, B=B, seed=seed + 2),
        "rgb": make_modality("rgb_highres", T=1, H=80, W=80, B=B, seed=seed + 3),
    }


def _loss(out) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(out.dense.shape, generator=g)
    return (out.dense * w).sum() + out.pooled.square().sum()


@pytest.mark.parametrize("shared", [True, False])
def test_every_parameter_receives_a_gradient(shared):
    model = micro_model(shared_spatial=shared).train()
    _loss(model(_all_modalities())).backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_all_invalid_locations_give_finite_flagged_output():
    model = micro_model().train()
    batch = _all_modalities()
    for name, d in batch.items():
        s = 40 if name == "rgb" else 4  # one token of this modality
        d.valid[:, :, :s, :s] = False  # location (0, 0) invalid everywhere, sample 0 ...
        d.valid[1] = False  # ... and sample 1 has no valid pixel at all
        d.pixels[1] = float("nan")
    out = model(batch)
    assert not out.valid[:, 0, 0].any() and not out.valid[1].any() and out.valid[0, 1:].all()
    for t in (out.dense, out.pooled, *out.modalities.values()):
        assert torch.isfinite(t).all()
    assert (out.dense[:, :, 0, 0] == 0).all() and (out.pooled[1] == 0).all()
    _loss(out).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_activation_checkpointing_changes_nothing():
    batch = _all_modalities(seed=4)
    results = []
    for ckpt in (False, True):
        model = micro_model(grad_checkpointing=ckpt).train()
        out = model(batch)
        _loss(out).backward()
        results.append((out.dense.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (d0, g0), (d1, g1) = results
    assert torch.equal(d0, d1)
    for n in g0:
        assert torch.equal(g1[n], g0[n]), n


def test_save_load_round_trip_is_exact(tmp_path):
    model = micro_model()
    batch = _all_modalities(seed=8)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    cfg = tmp_path / "ckpt" / "config.json"
    meta = json.loads(cfg.read_text())
    assert meta["config"]["sensors"]["sentinel2_l2a"]["bands"][0]["mean"] > 0  # stats travel
    assert meta["weights_sha256"] == sha256_file(tmp_path / "ckpt" / "model.safetensors")
    a = model(batch)
    for strip in (False, True):  # without weights_sha256: only with the explicit opt-out
        if strip:
            del meta["weights_sha256"]
            cfg.write_text(json.dumps(meta))
            with pytest.raises(CheckpointError, match="no recorded SHA-256"):
                load_pretrained(tmp_path / "ckpt")
        loaded = load_pretrained(tmp_path / "ckpt", verify="off" if strip else "on")
        assert loaded.config == model.config
        b = loaded(batch)
        assert torch.equal(a.dense, b.dense) and torch.equal(a.pooled, b.pooled)
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k


def test_fused_and_reference_attention_agree():
    model = micro_model()
    batch = _all_modalities(seed=12)
    model.set_attn_backend("sdpa")
    fused = model(batch)
    model.set_attn_backend("reference")
    ref = model(batch)
    torch.testing.assert_close(fused.dense, ref.dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.pooled, ref.pooled, rtol=1e-4, atol=1e-5)
    model.set_attn_backend("no_such_backend")  # the switch reaches every attention call
    with pytest.raises(dispatch.BackendUnavailable, match="no_such_backend"):
        model(batch)


def test_rsfm_tiny_forward_backward_at_the_demo_shape():
    """The registered rsfm_tiny itself (not the micro model), S2 + S1, T=4, 64 x 64 px:
    the token grid, finite outputs, eval-mode determinism and a finite, nonzero gradient
    for every parameter. Its CPU time is a benchmark (``python -m benchmarks.train_throughput
    --quick``), not a test."""
    torch.manual_seed(0)
    model = build_model("rsfm_tiny").train()
    batch = {
        "s2": make_modality("sentinel2_l2a", T=4, H=64, W=64, B=1, seed=20),
        "s1": make_modality("sentinel1_grd", T=4, H=64, W=64, B=1, seed=21),
    }
    out = model(batch)
    assert out.dense.shape == (1, 128, 16, 16) and out.pooled.shape == (1, 128)
    assert torch.isfinite(out.dense).all() and torch.isfinite(out.pooled).all()
    _loss(out).backward()
    params = dict(model.named_parameters())
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)
    missing = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    # only the absent modalities' own parameters: EnMAP's group embeddings, and the
    # hypernetwork head of RGB's 8 x 8 kernels
    assert all(".hs" in n or "hypernet.heads.8." in n for n in missing), missing
    model.eval()
    with torch.no_grad():
        a, b = model(batch).dense, model(batch).dense
    assert torch.equal(a, b)
