"""The README's demo end to end, shortened: scene -> pretrain -> export -> embed -> probe."""

from __future__ import annotations

import os

import pytest

from rsfm_core import cli


def test_demo_end_to_end(tmp_path, capfd, monkeypatch):
    rasterio = pytest.importorskip("rasterio", reason="the demo writes GeoTIFFs")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.setenv(
        "TORCH_EXTENSIONS_DIR",
        os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(root, ".torch_extensions")),
    )
    argv = ["demo", "--out", str(tmp_path), "--size", "32", "--dates", "2", "--pretrain-steps", "2"]
    assert cli.main(argv) == 0
    out = capfd.readouterr().out
    assert "random init" in out and "probe_acc" in out
    for f in ("model/config.json", "model/model.safetensors", "embeddings.npz", "chips.parquet"):
        assert (tmp_path / f).is_file(), f
    with rasterio.open(tmp_path / "embeddings.tif") as ds:
        assert ds.crs.to_string() == "EPSG:32632" and ds.count == 128
