"""The `rsfm` command: info, synth, demo and every subcommand's --help example."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from rsfm_core import cli


def test_every_subcommand_has_help_with_example(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    assert {"info", "synth", "demo"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert "example" in (p.epilog or ""), f"rsfm {name} --help shows no example"


def test_info_lists_versions_devices_backends_and_sensors(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    import torch

    assert f"torch        {torch.__version__}" in out
    assert "rasterio" in out and "deepspeed" in out and "triton" in out
    assert "cpu:" in out
    assert re.search(r"attention\s+sdpa\s+available", out)
    assert "sentinel2_l2a" in out and "enmap" in out


def test_info_does_not_import_deepspeed():
    code = "import sys; from rsfm_core import cli; cli.main(['info']); print('deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_demo_writes_and_reads_a_scene(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--size", "32", "--dates", "2", "--pretrain-steps", "0"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "sentinel2_l2a: pixels (2, 12, 32, 32)" in out
    assert "sentinel1_grd: pixels (2, 2, 32, 32)" in out
    assert (tmp_path / "scene" / "manifest.json").is_file()


def test_bad_subcommand_exits_nonzero():
    with pytest.raises(SystemExit) as e:
        cli.main(["no-such-command"])
    assert e.value.code == 2
