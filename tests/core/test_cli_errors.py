"""CLI errors: one line on stderr, exit code 2, flag names (--dates, --bands) rather than
Python argument names; --bands can skip a file band."""

from __future__ import annotations

import argparse

import pytest

from rsfm_core import cli, cliutil
from rsfm_core.inference import cli as embed_cli

from ..conftest import real_data_dir

L1C_AS_L2A = "B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,-,B11,B12"


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "RANDOM weights" not in ln and "Warning" not in ln]
    lines = [ln for ln in lines if ln.strip() and not ln.startswith("  ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def test_library_argument_names_become_flags():
    w = cliutil.flag_words
    assert (
        w("bad date '2024-13-01' (month); fix dates=")
        == "bad date '2024-13-01' (month); fix --dates"
    )
    msg = w("f.tif: 13 bands ...; pass bands=[...] with one name per file band, in file order")
    assert "pass --bands with one name" in msg and "bands=" not in msg and "'-'" in msg
    msg = w("pass bands=[...] (rsfm embed: --bands NAME=B1,B2,...)")
    assert msg.count("--bands") == 2 and "rsfm embed:" not in msg  # the hint, once
    assert w("give one name per file band, in file order (None skips a band)").endswith(
        "('-' skips a band)"
    )
    assert w("resampling='x' is not a GDAL method") == "resampling='x' is not a GDAL method"


def test_error_line_is_one_line_and_unquoted():
    assert cliutil.error_line(KeyError("unknown model 'x'")) == "unknown model 'x'"
    assert cliutil.error_line(ValueError("first\n  second\n")) == "first second"
    line = cliutil.error_line(RuntimeError("boom"))  # not a user error: named, with the hint
    assert line.startswith("RuntimeError: boom") and "RSFM_TRACEBACK=1" in line


def test_run_command_exit_codes(capsys, monkeypatch):
    monkeypatch.delenv("RSFM_TRACEBACK", raising=False)

    def boom(args):
        raise RuntimeError("bad\nthing")

    assert cliutil.run_command("rsfm x", boom, None) == 2
    assert capsys.readouterr().err == (
        "rsfm x: error: RuntimeError: bad thing (RSFM_TRACEBACK=1 shows the traceback)\n"
    )

    def interrupted(args):
        raise KeyboardInterrupt

    assert cliutil.run_command("rsfm x", interrupted, None) == 130
    monkeypatch.setenv("RSFM_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        cliutil.run_command("rsfm x", boom, None)


def test_unknown_model_is_one_line(tmp_path, capsys):
    argv = ["embed", "--random", "rsfm_huge", "--input", "s2=sentinel2_l2a:a.tif"]
    assert cli.main([*argv, "--out", str(tmp_path / "e.tif")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("rsfm embed: error: unknown model 'rsfm_huge'; registered:")


def test_pretrain_bad_override_is_one_line(capsys):
    assert cli.main(["pretrain", "--config", "tiny_cpu", "nosuch.key=1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("rsfm pretrain: error:") and "unknown config key 'nosuch'" in line


def test_bands_dash_skips_a_file_band():
    assert embed_cli._bands("B02,-,B04") == ["B02", None, "B04"]
    assert embed_cli._bands("B02,B03+-,B8A") == [["B02", "B03"], [None, "B8A"]]
    ns = argparse.Namespace(
        manifest=None, input=["s2=sentinel2_l2a:f.tif"], dates=[], bands=[f"s2={L1C_AS_L2A}"],
        stac=[],
    )  # fmt: skip
    inputs, _ = embed_cli.build_inputs(ns)
    assert inputs["s2"].bands[10] is None and len(inputs["s2"].bands) == 13


def test_l1c_file_as_l2a_with_a_skipped_band(tmp_path, capsys):
    S2_L1C = real_data_dir("sen1floods11") / "Spain_7370579_S2Hand.tif"  # 13 bands, B10 too
    base = ["embed", "--random", "rsfm_tiny", "--input", f"s2=sentinel2_l2a:{S2_L1C}"]
    base += ["--dates", "s2=2019-06-01", "--region", "0,0,32,32", "--no-progress"]
    assert cli.main([*base, "--out", str(tmp_path / "a.tif")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "pass --bands" in line and "bands=" not in line and "'-'" in line
    assert cli.main([*base, "--bands", f"s2={L1C_AS_L2A}", "--out", str(tmp_path / "b.tif")]) == 0
    assert (tmp_path / "b.tif").is_file()


def test_warnings_are_one_line_each_once(capsys):
    import warnings

    def warn_twice(args):
        for _ in range(2):
            warnings.warn("f.tif: pass bands=[...] to be sure", UserWarning, stacklevel=1)
        return 0

    assert cliutil.run_command("rsfm x", warn_twice, None) == 0
    err = capsys.readouterr().err
    assert err.startswith("rsfm x: warning: f.tif: pass --bands to be sure"), err
    assert err.count("\n") == 1 and ".py:" not in err


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["no-such-command"], "rsfm: error: argument COMMAND: invalid choice"),
        (["embed", "--dtype", "float8"], "rsfm embed: error: argument --dtype: invalid choice"),
        (["synth"], "rsfm synth: error: the following arguments are required: --out"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(expect) and err.count("\n") == 1, err
