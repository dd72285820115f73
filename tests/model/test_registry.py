"""Size registry, configs, and the analytic FLOP count."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rsfm_core.model import ModelConfig, build_model, get_config, list_models, model_stats

from .conftest import MICRO, make_modality


def test_registered_sizes_grow_and_tiny_fits_the_cpu_budget():
    assert list_models()[:4] == ["rsfm_tiny", "rsfm_small", "rsfm_base", "rsfm_large"]
    stats = [model_stats(n) for n in list_models()[:4]]
    params = [s["params"] for s in stats]
    flops = [s["flops_per_sample"] for s in stats]
    assert params == sorted(params) and flops == sorted(flops)
    assert params[0] < 5_000_000
    assert build_model("rsfm_tiny").num_params() == params[0]


def test_overrides_and_unknown_keys():
    cfg = get_config(
        "rsfm_tiny", dim=64, modalities={"s2": {"sensor": "sentinel2_l2a", "patch": 2}}
    )
    assert (
        cfg.dim == 64 and list(cfg.modalities) == ["s2"] and cfg.modalities["s2"].kernel_size == 2
    )
    with pytest.raises(ValueError, match="unknown config keys.*'widht'"):
        get_config("rsfm_tiny", widht=3)
    with pytest.raises(KeyError, match="rsfm_huge"):
        build_model("rsfm_huge")
    with pytest.raises(ValueError, match="unknown keys.*'size'"):
        get_config("rsfm_tiny", modalities={"s2": {"sensor": "sentinel2_l2a", "size": 4}})
    with pytest.raises(ValueError, match="SAR"):
        get_config("rsfm_tiny", modalities={"s1": {"sensor": "sentinel1_grd", "groups": 2}})


def test_config_dict_round_trip_is_exact_and_carries_sensors():
    cfg = get_config("rsfm_small")
    d = cfg.to_dict()
    assert ModelConfig.from_dict(d) == cfg
    assert set(d["sensors"]) == {"sentinel2_l2a", "sentinel1_grd", "enmap", "rgb_highres"}
    assert len(d["modalities"]["hs"]["group_edges_nm"]) == 3
    with pytest.raises(ValueError, match="unknown keys.*'bogus'"):
        ModelConfig.from_dict({**d, "bogus": 1})


def test_analytic_flops_match_flop_counter():
    model = build_model(
        "rsfm_tiny", **MICRO, attn_backend="reference"
    )  # einsum attention is counted
    shapes = {"s2": (3, 12, 16, 16), "s1": (2, 2, 16, 16), "hs": (1, 224, 16, 16)}
    batch = {
        n: make_modality(model.config.modalities[n].sensor, T, H, W, B=1, invalid_frac=0.0)
        for n, (T, C, H, W) in shapes.items()
    }
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(batch)
    counted = fc.get_total_flops()
    analytic = model_stats(model, shapes)["flops_per_sample"]
    assert abs(analytic - counted) / counted < 0.01, (analytic, counted)
