"""GPU (``-m gpu``): bf16 autocast on CUDA agrees with float32 on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import inputs_of, micro_embedder, read_cog


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu_float32(scene, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = micro_embedder(device="cuda")
    assert gpu.dtype == torch.bfloat16
    opts = dict(tile=32, overlap=8, dtype="float32", progress=False)
    a = read_cog(gpu.embed_rasters(inputs_of(scene), tmp_path / "g.tif", **opts).out)[0]
    b = read_cog(
        micro_embedder(device="cpu").embed_rasters(inputs_of(scene), tmp_path / "c.tif", **opts).out
    )[0]
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    assert np.linalg.norm(a[ok] - b[ok]) / np.linalg.norm(b[ok]) < 0.03
