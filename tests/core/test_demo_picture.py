"""The demo's picture: S2 RGB, S1 VV, labels and the embedding's principal components in
one PNG (matplotlib optional: the demo says how to get it)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from rsfm_core import cli, demo


def test_pca_rgb_orders_components_by_variance():
    rng = np.random.default_rng(0)
    h = w = 8
    base = np.zeros((4, h, w))
    base[0] = np.linspace(-10, 10, h * w).reshape(h, w)  # the dominant direction
    base[1] = rng.normal(0, 1, (h, w))
    valid = np.ones((h, w), bool)
    valid[0, 0] = False
    rgb = demo.pca_rgb(base, valid)
    assert rgb.shape == (h, w, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[0, 0] == 0).all()  # invalid: black
    r = rgb[..., 0][valid]
    assert abs(np.corrcoef(r, base[0][valid])[0, 1]) > 0.99  # PC1 = the dominant direction


def test_without_matplotlib_the_demo_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert demo.picture(tmp_path) == demo.NO_MATPLOTLIB
    assert "pip install matplotlib" in demo.NO_MATPLOTLIB


def test_picture_of_a_scene_and_its_embeddings(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    scene = tmp_path / "scene"
    assert cli.main(["synth", "--out", str(scene), "--size", "32", "--dates", "1"]) == 0
    argv = ["embed", "--random", "rsfm_tiny", "--manifest", str(scene / "manifest.json")]
    assert cli.main([*argv, "--npz", str(tmp_path / "embeddings.npz"), "--no-progress"]) == 0
    line = demo.picture(tmp_path)
    png = tmp_path / demo.PICTURE_NAME
    assert line.startswith(f"picture: {png}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
