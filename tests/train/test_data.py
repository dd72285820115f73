"""Data stream: prepare -> shards -> loader round trip, rank/worker split, exact resume,
corrupt-sample tolerance, the synthetic source and the GeoTIFF manifest path."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from rsfm_train.config import load_config
from rsfm_train.data import DataError, DataPosition, make_loader
from rsfm_train.data.prepare import (
    PrepareOptions,
    add_prepare_parser,
    prepare_manifest,
    prepare_synthetic,
)
from rsfm_train.data.scenes import synthetic_scenes
from rsfm_train.data.shards import decode_sample, read_shards, verify_shards

N_SCENES, SIZE, CHIP = 4, 32, 16  # 4 scenes x 4 chips = 16 samples, 2 per shard


def _cfg(shards: Path | None = None, *extra: str):
    base = [
        "data.crop_size=12",  # 3x3 tokens out of the 4x4-token chips
        "data.dates_per_view=2",
        "data.workers=0",
        "data.synthetic_samples=8",
        "data.synthetic_size=24",
        "deepspeed.micro_batch=2",
    ]
    if shards is not None:
        base += ["data.source=shards", f"data.shards={shards}"]
    return load_config("tiny_cpu", base + list(extra))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    opts = PrepareOptions(out, chip=CHIP, samples_per_shard=2, buffer_mb=0.2, min_valid=0.0, seed=3)
    prepare_synthetic(N_SCENES, opts, size=SIZE, num_dates=3)
    return out


def _take(loader, n: int):
    return itertools.islice(iter(loader), n)


def _ids(loader) -> list[str]:
    return [k for b in loader for k in b.sample_ids]


def _same(a, b) -> bool:
    if (
        a.sample_ids != b.sample_ids
        or list(a.view1) != list(b.view1)
        or list(a.view2) != list(b.view2)
    ):
        return False
    tensors = [(a.index1, b.index1), (a.index2, b.index2), (a.pair_valid, b.pair_valid)]
    for va, vb in ((a.view1, b.view1), (a.view2, b.view2)):
        tensors += [(va[k].pixels, vb[k].pixels) for k in va] + [
            (va[k].valid, vb[k].valid) for k in va
        ]
        tensors += [(va[k].dates, vb[k].dates) for k in va]
    return all(torch.equal(x, y) for x, y in tensors)


# ---------------------------------------------------------------------------- round trip


def test_prepare_writes_manifest_and_values_round_trip(shard_dir):
    m = json.loads((shard_dir / "manifest.json").read_text())
    assert m["samples"] == N_SCENES * (SIZE // CHIP) ** 2 == sum(s["samples"] for s in m["shards"])
    assert (
        set(m["modalities"]) == {"s2", "s1"} and m["modalities"]["s2"]["sensor"] == "sentinel2_l2a"
    )
    assert len(m["scenes"]) == N_SCENES and len(m["scenes"][0]["dates"]["s2"]) == 3
    assert verify_shards(shard_dir) == []
    raws, errors = read_shards([str(p) for p in sorted(shard_dir.glob("shard-*.tar"))])
    assert not errors and len(raws) == m["samples"]
    stored = {r["__key__"]: decode_sample(r) for r in raws}
    n = 0
    for scene in synthetic_scenes(
        N_SCENES, SIZE, CHIP, ("sentinel2_l2a", "sentinel1_grd"), 3, seed=3
    ):
        for (r, c), sample in scene.chips:
            got = stored[f"{scene.id}_r{r:05d}_c{c:05d}"]
            for name, d in sample.items():  # float16 is the encoding's precision
                assert torch.equal(got[name].pixels, d.pixels.half().float())
                assert torch.equal(got[name].valid, d.valid) and torch.equal(
                    got[name].dates, d.dates
                )
                assert got[name].bands == d.bands and got[name].grid == d.grid
                n += 1
    assert n == 2 * m["samples"]


def test_verify_flags_a_changed_shard(shard_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    with open(copy / "shard-000001.tar", "r+b") as f:
        f.seek(700)
        f.write(b"\x00\x01")
    problems = verify_shards(copy)
    assert len(problems) == 1 and "sha256" in problems[0]


def test_shard_loader_covers_the_epoch(shard_dir):
    loader = make_loader(_cfg(shard_dir), epochs=1)
    batches = list(loader)
    ids = [k for b in batches for k in b.sample_ids]
    assert len(ids) == len(set(ids)) == 16
    b = batches[0]
    assert b.view1["s2"].pixels.shape[1:] == (2, 12, 12, 12) and b.index1.shape == (2, 9)
    assert loader.state().epoch == 1
    with pytest.raises(
        ValueError, match="8 shards in 4 groups of data.shuffle_shards=2 for 12 streams"
    ):
        make_loader(_cfg(shard_dir, "data.workers=3"), rank=0, world_size=4)


@pytest.mark.parametrize("source", ["shards", "synthetic"])
def test_ranks_and_workers_split_disjoint_and_complete(shard_dir, source):
    cfg = _cfg(shard_dir if source == "shards" else None, "data.workers=2")
    per_stream = [_ids(make_loader(cfg, rank=r, world_size=2, epochs=1)) for r in range(2)]
    ids = [k for s in per_stream for k in s]
    assert len(ids) == len(set(ids)) == (16 if source == "shards" else 8)
    assert not set(per_stream[0]) & set(per_stream[1])


def test_epochs_reshuffle_and_seed_matters(shard_dir):
    e0 = _ids(make_loader(_cfg(shard_dir), epochs=1))
    e01 = _ids(make_loader(_cfg(shard_dir), epochs=2))
    assert e01[:16] == e0 and sorted(e01[16:]) == sorted(e0) and e01[16:] != e0
    assert _ids(make_loader(_cfg(shard_dir), seed=5, epochs=1)) != e0


def test_shards_stream_through_a_bounded_shuffle_buffer():
    """A group is shuffled through a buffer of ``data.shuffle_buffer`` samples: memory is
    bounded by that, not by the shard size; every sample comes once; the order is a
    function of the seed (a resumed stream replays it exactly)."""
    import numpy as np
    from rsfm_train.data.loader import _shuffle_buffer

    held = []

    def source(n):
        for i in range(n):
            held.append(i)
            yield {"i": i}

    out = []
    for raw in _shuffle_buffer(source(1000), np.random.default_rng(0), 16):
        out.append(raw["i"])
        assert len(held) - len(out) <= 16  # samples read but not yet handed out
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    held.clear()
    again = [r["i"] for r in _shuffle_buffer(source(1000), np.random.default_rng(0), 16)]
    assert again == out


# ---------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "source,workers,shuffle_shards", [("shards", 2, 3), ("shards", 0, 2), ("synthetic", 2, 1)]
)
def test_resume_gives_exactly_the_straight_runs_batches(shard_dir, source, workers, shuffle_shards):
    cfg = _cfg(
        shard_dir if source == "shards" else None,
        f"data.workers={workers}",
        f"data.shuffle_shards={shuffle_shards}",
    )
    total, cut = 13, 5  # crosses epochs; odd cut: the next batch is worker 1's
    it = iter(make_loader(cfg))
    straight = [next(it) for _ in range(total)]
    first = make_loader(cfg)
    it = iter(first)
    head = [next(it) for _ in range(cut)]
    state = json.loads(json.dumps(first.state().to_dict()))  # as a checkpoint stores it
    assert state["batches"] == cut
    resumed = make_loader(cfg, start=DataPosition.from_dict(state))
    it = iter(resumed)
    tail = [next(it) for _ in range(total - cut)]
    assert all(_same(a, b) for a, b in zip(head + tail, straight, strict=True))
    other = cfg.model_copy(deep=True)
    other.data.workers = 1 if workers == 2 else 2
    with pytest.raises(ValueError, match="cannot resume.*every rank's position"):
        make_loader(other, start=state)  # one rank's position: not enough to re-split


def test_workers_0_and_1_give_the_same_stream(shard_dir):
    a = list(make_loader(_cfg(shard_dir, "data.workers=0"), epochs=1))
    b = list(make_loader(_cfg(shard_dir, "data.workers=1"), epochs=1))
    assert len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------- corruption


def _corrupt_member(path: Path, suffix: str) -> str:
    """Overwrite the start of the first member ending in ``suffix`` (header kept)."""
    with tarfile.open(path) as tf:
        m = next(m for m in tf.getmembers() if m.name.endswith(suffix))
    with open(path, "r+b") as f:
        f.seek(m.offset_data)
        f.write(b"garbage!" * 4)
    return m.name.split(".")[0]


def test_corrupt_sample_is_skipped_and_counted(shard_dir, tmp_path, caplog):
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    key = _corrupt_member(bad / "shard-000002.tar", "s2.pixels.npy")
    with open(bad / "shard-000005.tar", "r+b") as f:  # truncate a shard mid-member
        f.truncate(1500)
    with caplog.at_level(logging.WARNING, logger="rsfm_train"):
        loader = make_loader(_cfg(bad), epochs=1)
        ids = _ids(loader)
    assert key not in ids and len(ids) == len(set(ids)) == 16 - 1 - 2
    assert loader.state().streams[0].corrupt == 2  # the bad member + the truncated tar
    assert any(key in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match=r"exceed data.max_corrupt=1.*rsfm prepare --verify"):
        _ids(make_loader(_cfg(bad, "data.max_corrupt=1"), epochs=1))


def test_a_bad_sample_counts_once_however_often_it_is_read(shard_dir, tmp_path, caplog):
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    key = _corrupt_member(bad / "shard-000002.tar", "s2.pixels.npy")
    with caplog.at_level(logging.WARNING, logger="rsfm_train"):
        loader = make_loader(_cfg(bad, "data.max_corrupt=1"), epochs=3)  # 3 reads of it
        ids = _ids(loader)
    assert len(ids) == 3 * 15 and key not in ids
    assert loader.state().corrupt_samples() == [f"{bad / 'shard-000002.tar'}#{key}"]
    assert sum(key in r.getMessage() for r in caplog.records) == 1  # logged (and decoded) once
    # a resumed stream knows it too: no new count, no new warning
    state = loader.state().to_dict()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rsfm_train"):
        resumed = make_loader(_cfg(bad, "data.max_corrupt=1"), start=state, epochs=5)
        assert len(_ids(resumed)) == 2 * 15
    assert resumed.state().corrupt_samples() == loader.state().corrupt_samples()
    assert not any(key in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_source_is_deterministic_and_shaped():
    cfg = _cfg(None)
    a, b = list(make_loader(cfg, epochs=1)), list(make_loader(cfg, epochs=1))
    assert len(a) == 4 and all(_same(x, y) for x, y in zip(a, b))
    v = a[0].view1[next(iter(a[0].view1))]
    assert v.pixels.shape[1:3] == (2, v.pixels.shape[2]) and v.pixels.shape[-2:] == (12, 12)
    ids = {k for x in a for k in x.sample_ids}
    assert ids == {f"synthetic-{i:06d}" for i in range(8)}
    with pytest.raises(ValueError, match="not a multiple of the token size"):
        make_loader(_cfg(None, "data.crop_size=10"))


# ---------------------------------------------------------------------------- GeoTIFFs + CLI


def test_prepare_from_geotiff_manifest(tmp_path):
    from rsfm_core import synthetic
    from rsfm_core.io import read_sample

    scene = synthetic.make_scene(32, seed=7, num_dates=2)
    m = synthetic.write_scene(scene, tmp_path / "scene")
    s2, s1 = m["sensors"]["sentinel2_l2a"], m["sensors"]["sentinel1_grd"]
    rel = lambda files: [str(Path(f).relative_to(tmp_path)) for f in files]  # noqa: E731
    yaml_text = (
        "scenes:\n  - id: demo.scene\n    modalities:\n"
        f"      s2: {{sensor: sentinel2_l2a, paths: {rel(s2['files'])}}}\n"
        f"      s1: {{sensor: sentinel1_grd, paths: {rel(s1['files'])}, dates: {s1['dates']}}}\n"
    )
    (tmp_path / "scenes.yaml").write_text(yaml_text)
    out = tmp_path / "shards"
    man = prepare_manifest(tmp_path / "scenes.yaml", PrepareOptions(out, chip=16, min_valid=0.0))
    assert man["samples"] == 4 and man["scenes"][0]["id"] == "demo-scene"
    assert man["scenes"][0]["dates"]["s2"] == s2["dates"] and verify_shards(out) == []
    raws, _ = read_shards([str(out / s["name"]) for s in man["shards"]])
    got = decode_sample(next(r for r in raws if r["__key__"] == "demo-scene_r00016_c00000"))
    entries = {
        "s2": {"paths": s2["files"], "sensor": "sentinel2_l2a"},
        "s1": {"paths": s1["files"], "sensor": "sentinel1_grd", "dates": s1["dates"]},
    }
    want = read_sample(entries, window=(16, 0, 16, 16))
    for name in ("s2", "s1"):
        assert torch.equal(got[name].pixels, want[name].pixels.half().float())
        assert torch.equal(got[name].valid, want[name].valid)


def test_cli_prepare_and_verify(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="rsfm")
    add_prepare_parser(parser.add_subparsers(dest="cmd"))
    assert (
        "rsfm prepare --synthetic" in parser._subparsers._group_actions[0].choices["prepare"].epilog
    )
    out = tmp_path / "cli"
    args = parser.parse_args(
        [
            "prepare",
            "--synthetic",
            "2",
            "--size",
            "16",
            "--chip",
            "8",
            "--out",
            str(out),
            "--dates",
            "2",
        ]
    )
    assert args.func(args) == 0
    assert "wrote 8 samples" in capsys.readouterr().out
    args = parser.parse_args(["prepare", "--verify", str(out)])
    assert args.func(args) == 0
    with pytest.raises(FileExistsError, match="already holds shards"):
        a = parser.parse_args(
            ["prepare", "--synthetic", "1", "--size", "16", "--chip", "8", "--out", str(out)]
        )
        a.func(a)
    np.testing.assert_equal(sorted(p.name for p in out.iterdir())[-1], "shard-000000.tar")


# ---------------------------------------------------------------------------- mixed sources


def _mixed_cfg(shard_dir: Path, *extra: str):
    mix = (
        f"data.mix=[{{shards: {shard_dir}, weight: 3}}, "
        "{source: synthetic, weight: 1, crop_size: 8, dates_per_view: 1}]"
    )
    return _cfg(None, "data.source=mixed", "data.modality_dropout=0", mix, *extra)


def test_mixed_sources_batch_whole_and_resume_exactly(shard_dir):
    cfg = _mixed_cfg(shard_dir)
    first = list(_take(make_loader(cfg, 0, 1), 12))
    kinds = [b.sample_ids[0].startswith("synthetic") for b in first]
    assert any(kinds) and not all(kinds)  # both sources are drawn
    for b in first:  # a batch is one source, with that source's view size and dates
        synth = b.sample_ids[0].startswith("synthetic")
        assert all(k.startswith("synthetic") == synth for k in b.sample_ids)
        s2 = b.view1["s2"].pixels
        assert s2.shape[-1] == (8 if synth else 12) and s2.shape[1] == (1 if synth else 2)
    assert sum(kinds) < len(kinds) / 2  # weight 3 : 1
    again = list(_take(make_loader(cfg, 0, 1), 12))  # deterministic
    assert all(_same(a, b) for a, b in zip(first, again))
    loader = make_loader(cfg, 0, 1)
    head = list(_take(loader, 5))
    resumed = list(_take(make_loader(cfg, 0, 1, start=loader.state()), 7))
    assert all(_same(a, b) for a, b in zip(head + resumed, first))


def test_mixed_config_is_checked(shard_dir):
    from rsfm_train.config import ConfigError

    with pytest.raises(ConfigError, match="data.mix entries"):
        _cfg(None, "data.source=mixed")
    with pytest.raises(ConfigError, match="data.mix entries"):
        _cfg(None, "data.source=mixed", "data.mix=[{shards: x, weight: 0}]")
    with pytest.raises(ConfigError, match="unknown config key 'data.mix.0.wieght'"):
        _cfg(None, "data.source=mixed", "data.mix=[{shards: x, wieght: 1}]")
