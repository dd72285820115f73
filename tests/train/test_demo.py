"""The README's demo: the reading part in the default suite; end to end (scene ->
pretrain -> export -> embed -> probe, three child processes) is ``slow``. Each step of
the end-to-end run has its own default test: tests/train/test_config.py
(``tiny_cpu`` trains), test_engine_train.py (``rsfm pretrain`` + ``rsfm export``),
tests/inference/test_cli.py (``rsfm embed``), test_eval_cli.py (``rsfm eval``)."""

from __future__ import annotations

import os

import pytest

from rsfm_core import cli


def test_demo_scene_and_what_the_reader_sees(tmp_path, capfd):
    pytest.importorskip("rasterio", reason="the demo writes GeoTIFFs")
    assert cli.main(["demo", "--out", str(tmp_path), "--size", "32", "--dates", "2",
                     "--pretrain-steps", "0"]) == 0  # fmt: skip
    out = capfd.readouterr().out
    assert "== what the reader sees ==" in out and "sentinel2_l2a: pixels (2, 12, 32, 32)" in out
    assert (tmp_path / "scene" / "manifest.json").is_file()


@pytest.mark.slow
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
