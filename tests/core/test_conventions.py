"""Conventions a newcomer relies on: checkpoint files follow the umask, manifest paths
are relative to the manifest wherever the command runs, `rsfm demo --help` names every
step, float16 outputs are documented as read back as float32."""

from __future__ import annotations

import os
import stat

import pytest

import rsfm_core as rs
from rsfm_core import cli


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_checkpoint_files_follow_the_umask(tmp_path, umask):
    model = rs.build_model("rsfm_tiny")
    old = os.umask(umask)
    try:
        folder = model.save_pretrained(tmp_path / "ckpt")
    finally:
        os.umask(old)
    files = [p for p in folder.iterdir() if p.is_file()]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p.name


def test_synth_manifest_paths_resolve_from_another_folder(tmp_path, monkeypatch, capsys):
    assert (
        cli.main(["synth", "--out", str(tmp_path / "scene"), "--size", "32", "--dates", "1"]) == 0
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    argv = [
        "embed",
        "--random",
        "rsfm_tiny",
        "--manifest",
        str(tmp_path / "scene" / "manifest.json"),
    ]
    assert cli.main([*argv, "--out", "e.tif", "--no-progress"]) == 0, capsys.readouterr().err
    assert (elsewhere / "e.tif").is_file()


def test_demo_help_names_every_step(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split()).lower()
    for step in ("synthetic", "pretrain", "export", "embed", "probe", "retrieval"):
        assert step in out, step


def test_embed_help_says_float16_reads_back_as_float32(capsys):
    with pytest.raises(SystemExit):
        cli.main(["embed", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "reads float16 files back as float32" in out


def test_small_inputs_are_not_reported_as_zero_megapixels():
    from rsfm_core.inference.options import _area, _pixels

    assert _pixels(64 * 64) == "4,096 px"
    assert _pixels(512 * 512) == "0.26 Mpx"
    assert _pixels(20_000 * 20_000) == "400 Mpx"
    assert (
        _area(0.41) == "0.41 km2"
        and _area(0.0041) == "0.0041 km2"
        and _area(1234.5) == "1,234.5 km2"
    )
