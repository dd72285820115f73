"""Verified checkpoint loading: digest, safetensors header, shapes; random weights
only on request."""

from __future__ import annotations

import json

import pytest
import torch

import rsfm_core as rs
from rsfm_core.files import sha256_file
from rsfm_core.model.checkpoint import SIDECAR_NAME, CheckpointError, read_header, write_checksum

from .conftest import inputs_of, micro_embedder, read_cog


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "ckpt"
    micro_embedder().model.save_pretrained(d)
    return d


def _strip_checksum(ckpt) -> dict:
    """Drop ``weights_sha256`` from config.json (a checkpoint from before it was recorded)."""
    cfg = ckpt / "config.json"
    meta = json.loads(cfg.read_text())
    del meta["weights_sha256"]
    cfg.write_text(json.dumps(meta))
    return meta


def test_fresh_checkpoint_verifies_without_sidecar_and_lands_in_the_tags(
    ckpt, scene, tmp_path, micro
):
    digest = json.loads((ckpt / "config.json").read_text())["weights_sha256"]
    assert digest == sha256_file(ckpt / "model.safetensors")
    assert not (ckpt / SIDECAR_NAME).exists()
    emb = rs.Embedder.from_pretrained(ckpt, device="cpu")
    assert emb.info.verified and emb.info.sha256 == digest and emb.info.name == "rsfm_tiny"
    for a, b in zip(emb.model.state_dict().values(), micro.model.state_dict().values()):
        assert torch.equal(a, b)
    emb.embed_rasters(inputs_of(scene), tmp_path / "e.tif", tile=32, overlap=8, progress=False)
    tags = read_cog(tmp_path / "e.tif")[1]["tags"]
    assert tags["RSFM_MODEL_SHA256"] == digest and tags["RSFM_MODEL_VERIFIED"] == "true"


def test_checksum_from_sidecar_config_json_and_unrecorded(ckpt, caplog):
    meta = _strip_checksum(ckpt)
    with pytest.raises(CheckpointError, match="no recorded SHA-256"):  # none recorded
        rs.Embedder.from_pretrained(ckpt)
    emb = rs.Embedder.from_pretrained(ckpt, device="cpu", verify="off")  # the opt-out
    assert not emb.info.verified and "NOT verified" in caplog.text
    digest = write_checksum(ckpt)
    emb = rs.Embedder.from_pretrained(ckpt, device="cpu", verify="on")
    assert emb.info.verified and emb.info.sha256 == digest
    # config.json's digest takes precedence over the sidecar
    (ckpt / "config.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256 .* does not match"):
        rs.Embedder.from_pretrained(ckpt)


def test_corrupt_and_truncated_weights(ckpt):
    w = ckpt / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in a weight; the digest save_pretrained recorded catches it
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the recorded") as err:
        rs.Embedder.from_pretrained(ckpt)
    assert str(err.value).startswith(str(w))
    _strip_checksum(ckpt)
    w.write_bytes(bytes(data[:-100]))  # truncated: caught by the header check
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        rs.Embedder.from_pretrained(ckpt, verify="off")
    w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="header is not JSON"):
        read_header(w)


def test_weights_of_another_config(ckpt, tmp_path):
    other = tmp_path / "other"
    micro_embedder(dim=32).model.save_pretrained(other)
    (ckpt / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match the recorded"):
        rs.Embedder.from_pretrained(ckpt)
    with pytest.raises(CheckpointError, match="has shape .* the config builds"):
        rs.Embedder.from_pretrained(ckpt, verify="off")  # the shape check still runs


def test_random_weights_only_when_asked(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        rs.Embedder.from_pretrained(None)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        rs.Embedder.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="config.json: missing"):
        rs.Embedder.from_pretrained(tmp_path)
    emb = rs.Embedder.from_pretrained(None, allow_random=True, device="cpu")
    assert emb.info.sha256 == "random-init-seed-0" and emb.dtype == torch.float32


def test_embed_cli_verify_on_by_default_and_off_on_request(ckpt, scene, tmp_path, capsys):
    from rsfm_core.cli import main

    _strip_checksum(ckpt)
    s2 = ",".join(str(p) for p in scene["s2"])
    args = ["embed", "--checkpoint", str(ckpt), "--input", f"s2=sentinel2_l2a:{s2}",
            "--out", str(tmp_path / "e.tif"), "--tile", "32", "--overlap", "8", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert "no recorded SHA-256" in capsys.readouterr().err and not (tmp_path / "e.tif").exists()
    assert main([*args, "--verify", "off"]) == 0
    assert read_cog(tmp_path / "e.tif")[1]["tags"]["RSFM_MODEL_VERIFIED"] == "false"
    with pytest.raises(SystemExit):  # the old spellings are not CLI choices any more
        main([*args, "--verify", "auto"])
