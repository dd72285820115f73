"""The one checkpoint loader against tampered, damaged and hostile files (issue 16, items
14-16): the digest is required, every config.json value is type- and range-checked, the
safetensors header is checked before anything is allocated, and every failure is a
``CheckpointError`` naming the file (and the key)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import pytest
import torch

import rsfm_core as rs
from rsfm_core.files import sha256_file
from rsfm_core.model.checkpoint import CheckpointError

from .conftest import MICRO, micro_model


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "ckpt"
    micro_model(modalities={"s2": {"sensor": "sentinel2_l2a", "patch": 4}}).save_pretrained(d)
    return d


def _meta(ckpt) -> dict:
    return json.loads((ckpt / "config.json").read_text())


def _write_meta(ckpt, meta) -> None:
    (ckpt / "config.json").write_text(json.dumps(meta))


def _rewrite_header(ckpt, edit) -> None:
    """Replace the safetensors header with ``edit(header)`` (data bytes kept) and record
    the new file's digest, as a re-export of a damaged file would."""
    w = ckpt / "model.safetensors"
    raw = w.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head = json.dumps(edit(json.loads(raw[8 : 8 + n]))).encode()
    head += b" " * (-len(head) % 8)
    w.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n :])
    meta = _meta(ckpt)
    meta["weights_sha256"] = sha256_file(w)
    _write_meta(ckpt, meta)


def _first(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


# --------------------------------------------------------------- item 14: the digest


def test_flipped_bytes_are_refused_by_load_pretrained(ckpt):
    w = ckpt / "model.safetensors"
    data = bytearray(w.read_bytes())
    for i in (-5, -400, -1200):
        data[i] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256 .* does not match"):
        rs.load_pretrained(ckpt)


@pytest.mark.parametrize("value", [None, 123, "abc", "", ["0" * 64]], ids=repr)
def test_a_missing_or_malformed_checksum_is_an_error_unless_verify_is_off(ckpt, value, caplog):
    meta = _meta(ckpt)
    meta["weights_sha256"] = value
    _write_meta(ckpt, meta)
    with pytest.raises(CheckpointError, match=r"config\.json: weights_sha256 .*not a SHA-256"):
        rs.load_pretrained(ckpt)
    model = rs.load_pretrained(ckpt, verify="off")  # the explicit opt-out still loads
    assert isinstance(model, rs.model.RSFMEncoder) and "NOT verified" in caplog.text


def test_no_recorded_checksum_is_an_error_unless_verify_is_off(ckpt):
    meta = _meta(ckpt)
    del meta["weights_sha256"]
    _write_meta(ckpt, meta)
    for load in (
        rs.load_pretrained,
        rs.model.RSFMEncoder.from_pretrained,
        rs.Embedder.from_pretrained,
    ):
        with pytest.raises(CheckpointError, match="no recorded SHA-256"):
            load(ckpt)
    assert rs.load_pretrained(ckpt, verify=False).config.dim == MICRO["dim"]
    with pytest.raises(ValueError, match="verify must be"):
        rs.load_pretrained(ckpt, verify="maybe")


# --------------------------------------------------------- item 14/15: damaged headers


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda h: {k: ({"dtype": v["dtype"], "shape": v["shape"]} if k == _first(h) else v)
                    for k, v in h.items()}, "has no data_offsets"),
        (lambda h: {**h, _first(h): "F32"}, "is not an object"),
        (lambda h: [h], "header is not a JSON object"),
        (lambda h: {**h, "__metadata__": {"format": 5}}, "__metadata__ must map strings"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "shape": [-1, 2]}}, "shape"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "data_offsets": [0, "8"]}}, "data offsets"),
    ],
    ids=["no_offsets", "entry_not_object", "list", "bad_metadata", "negative_shape", "str_offset"],
)  # fmt: skip
def test_damaged_header_is_a_checkpoint_error_naming_the_file(ckpt, edit, match):
    _rewrite_header(ckpt, edit)
    with pytest.raises(CheckpointError, match=match) as err:
        rs.load_pretrained(ckpt)
    assert str(err.value).startswith(str(ckpt / "model.safetensors"))


# ------------------------------------------------------------- item 15: config.json


@pytest.mark.parametrize(
    "path,value,match",
    [
        (("config", "heads"), 0, r"heads must be an int >= 1, got 0"),
        (("config", "depth"), "2", r"depth must be an int, got '2' \(str\)"),
        (("config", "dim"), 32.0, r"dim must be an int, got 32.0 \(float\)"),
        (("config", "qkv_bias"), "no", r"qkv_bias must be a bool \(true/false\), got 'no'"),
        (("config", "mlp_ratio"), -1.0, r"mlp_ratio must be a number > 0"),
        (("config", "modalities"), ["s2"], r"modalities must be a mapping"),
        (("config", "modalities", "s2", "patch"), "4", r"modality 's2': patch must be an int"),
        (("config", "sensors"), [], r"sensors must be a mapping"),
        (("config",), [1, 2], r"'config' must be a mapping"),
        ((), [], r"not an rsfm encoder checkpoint \(a JSON list"),
    ],
    ids=["heads0", "depth_str", "dim_float", "qkv_str", "mlp_neg", "mods_list", "patch_str",
         "sensors_list", "config_list", "top_list"],
)  # fmt: skip
def test_bad_config_values_name_the_file_and_key(ckpt, path, value, match):
    meta = _meta(ckpt)
    if not path:
        meta = value
    else:
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    _write_meta(ckpt, meta)
    with pytest.raises(CheckpointError, match=match) as err:
        rs.load_pretrained(ckpt)
    assert str(err.value).startswith(str(ckpt / "config.json"))


def test_embed_cli_prints_the_error_without_a_traceback(ckpt, tmp_path, capsys):
    from rsfm_core.cli import main

    meta = _meta(ckpt)
    meta["config"]["heads"] = 0
    _write_meta(ckpt, meta)
    tif = tmp_path / "x.tif"
    rc = main(["embed", "--checkpoint", str(ckpt), "--input", f"s2=sentinel2_l2a:{tif}",
               "--out", str(tmp_path / "e.tif"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "rsfm embed: error:" in err and "heads must be an int >= 1" in err
    assert "Traceback" not in err


# ----------------------------------------------------- item 16: shapes before memory

_HUGE = """
import json, resource, sys
import rsfm_core as rs
from rsfm_core.model.checkpoint import CheckpointError
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))  # a 51 GB model cannot fit
try:
    rs.load_pretrained(sys.argv[1])
    print("LOADED")
except CheckpointError as e:
    print("CheckpointError:", e)
except BaseException as e:
    print("OTHER", type(e).__name__, str(e)[:300])
"""


def test_a_huge_dim_is_refused_from_the_header_before_allocating(ckpt, tmp_path):
    meta = _meta(ckpt)
    meta["config"]["dim"] = 65536  # ~51 GB of float32 parameters if built
    _write_meta(ckpt, meta)
    (tmp_path / "huge.py").write_text(textwrap.dedent(_HUGE))
    res = subprocess.run([sys.executable, str(tmp_path / "huge.py"), str(ckpt)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "CheckpointError:" in res.stdout and "the config builds" in res.stdout, res.stdout
    assert "65536" in res.stdout


def test_meta_device_check_matches_the_real_model(ckpt):
    """The header check runs on a meta-device build; the real load still matches it."""
    model = rs.load_pretrained(ckpt)
    assert all(p.device.type == "cpu" and not p.is_meta for p in model.parameters())
    assert torch.equal(model.state_dict()[next(iter(model.state_dict()))],
                       rs.load_pretrained(ckpt).state_dict()[next(iter(model.state_dict()))])  # fmt: skip
