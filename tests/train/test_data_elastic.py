"""Elastic data resume: positions saved by a run of one world size x data.workers are
re-split over another, and every sample of the interrupted epochs is still read exactly
once (the bound documented in docs/data.md is zero, corrupt samples aside).

A 2-rank run is simulated as the engine runs it: one loader per rank, made with that
rank's ``rank``/``world_size``; a "checkpoint" is every rank's ``state()`` through JSON."""

from __future__ import annotations

import collections
import itertools
import json
import logging
from pathlib import Path

import pytest
from rsfm_train.config import load_config
from rsfm_train.data import DataPosition, make_loader
from rsfm_train.data.prepare import PrepareOptions, prepare_synthetic

EPOCHS = 2
SAMPLES = 32  # 8 scenes x 4 chips, in 11 shards of 3 (the last holds 2): unequal groups


def _cfg(shards: Path, workers: int, *extra: str):
    return load_config(
        "tiny_cpu",
        [
            "data.crop_size=12",
            "data.dates_per_view=2",
            f"data.workers={workers}",
            "deepspeed.micro_batch=2",
            "data.source=shards",
            f"data.shards={shards}",
            "data.shuffle_shards=1",  # 11 groups: enough for 2 ranks x 3 workers
            "data.shuffle_buffer=2",  # a group of 3 is shuffled through a buffer of 2
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("elastic_shards")
    opts = PrepareOptions(out, chip=16, samples_per_shard=3, buffer_mb=0.2, min_valid=0.0, seed=5)
    prepare_synthetic(8, opts, size=32, num_dates=3)
    return out


def _run(shards, world: int, workers: int, start, n: int | None):
    """Every rank's sample keys (``n`` batches each, or to the end of epoch ``EPOCHS``)
    and every rank's position after them, saved as a checkpoint saves them."""
    keys, states = [], []
    for r in range(world):
        loader = make_loader(
            _cfg(shards, workers), rank=r, world_size=world, start=start,
            epochs=EPOCHS if n is None else None,
        )  # fmt: skip
        batches = iter(loader) if n is None else itertools.islice(iter(loader), n)
        keys += [k for b in batches for k in b.sample_ids]
        states.append(json.loads(json.dumps(loader.state().to_dict())))
    return keys, states


def _exactly(keys: list[str], times: int) -> None:
    counts = collections.Counter(keys)
    assert len(counts) == SAMPLES, f"{SAMPLES - len(counts)} samples never read"
    wrong = {k: c for k, c in counts.items() if c != times}
    assert not wrong, f"read other than {times} times: {wrong}"


def test_uninterrupted_schedule_reads_every_sample_once_per_epoch(shards):
    keys, _ = _run(shards, 2, 2, None, None)
    _exactly(keys, EPOCHS)


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 3), (2, 2)])
def test_two_rank_run_resumes_on_another_world_size_and_workers(shards, world, workers):
    # 2 ranks x 2 workers, 8 batches of 2 per rank: 8 samples per stream. Streams 0-1 are
    # inside their last group of epoch 0 (3 groups, 9 samples), stream 2 just finished it
    # (8), stream 3 is 2 samples into epoch 1 (2 groups, 6): mid-group, mid-buffer and
    # across an epoch boundary at once.
    head, saved = _run(shards, 2, 2, None, 8)
    assert len(head) == 2 * 8 * 2
    assert sorted({s["streams"][w]["epoch"] for s in saved for w in range(2)}) == [0, 1]
    tail, after = _run(shards, world, workers, saved, None)
    _exactly(head + tail, EPOCHS)  # the bound: nothing repeated, nothing skipped
    if (world, workers) != (2, 2):  # re-split: the leftovers went to every new stream
        assert all(not s["plan"] for a in after for s in a["streams"])
        assert all(p["world_size"] == world for p in after)


def test_an_elastic_resume_can_itself_be_resumed_elastically(shards):
    """2x2 -> 1 rank (stopped inside its plan of leftovers) -> 2x3, still exact."""
    head, saved = _run(shards, 2, 2, None, 8)
    mid, saved1 = _run(shards, 1, 0, saved, 3)
    assert saved1[0]["streams"][0]["plan"], "the 1-rank run should still be in its plan"
    tail, _ = _run(shards, 2, 3, saved1, None)
    _exactly(head + mid + tail, EPOCHS)


def test_same_world_and_workers_take_the_exact_path(shards):
    """Handing every rank's position to an unchanged run picks the rank's own: the
    batches are bit-identical to an uninterrupted run's (test_data.py checks tensors)."""
    straight, _ = _run(shards, 2, 2, None, 12)
    head, saved = _run(shards, 2, 2, None, 5)
    tail, _ = _run(shards, 2, 2, saved, 7)
    per_rank = lambda ks, n: [ks[i : i + 2 * n] for i in range(0, len(ks), 2 * n)]  # noqa: E731
    for s, h, t in zip(per_rank(straight, 12), per_rank(head, 5), per_rank(tail, 7)):
        assert h + t == s


def test_elastic_resume_is_refused_where_it_cannot_be_exact(shards, tmp_path):
    _, saved = _run(shards, 2, 2, None, 2)
    with pytest.raises(ValueError, match="need the positions of all 2 ranks"):
        make_loader(_cfg(shards, 0), start=saved[:1] + saved[:1])
    with pytest.raises(ValueError, match="every rank's position"):
        make_loader(_cfg(shards, 0), start=saved[0])  # one position alone cannot re-split
    old = [dict(s) for s in saved]
    for s in old:
        s.pop("layout")  # written before elastic resume
    with pytest.raises(ValueError, match="layout 1"):
        make_loader(_cfg(shards, 0), start=old)
    assert DataPosition.from_dict(old[0]).layout == 1
    regroup = _cfg(shards, 0, "data.shuffle_shards=2")
    with pytest.raises(ValueError, match="shuffle_shards=1.*shuffle_shards=2.*saved settings"):
        make_loader(regroup, start=saved)


def test_a_changed_group_layout_is_reported_on_an_exact_resume(shards, caplog):
    _, saved = _run(shards, 1, 0, None, 2)
    with caplog.at_level(logging.WARNING, logger="rsfm_train"):
        make_loader(_cfg(shards, 0, "data.shuffle_buffer=3"), start=saved[0])
    assert any("buffer=2" in r.getMessage() and "not exact" in r.getMessage()
               for r in caplog.records)  # fmt: skip


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 3)])
def test_synthetic_source_resumes_elastically(world, workers):
    """Synthetic scenes: a group is one scene; 10 scenes over 4 streams (3, 3, 2, 2)."""

    def cfg(w: int):
        return load_config("tiny_cpu", ["data.crop_size=12", "data.dates_per_view=2",
                                        "data.synthetic_samples=10", "data.synthetic_size=24",
                                        f"data.workers={w}", "deepspeed.micro_batch=2"])  # fmt: skip

    def run(w_size, w, start, n):
        keys, states = [], []
        for r in range(w_size):
            loader = make_loader(cfg(w), rank=r, world_size=w_size, start=start,
                                 epochs=EPOCHS if n is None else None)  # fmt: skip
            it = iter(loader) if n is None else itertools.islice(iter(loader), n)
            keys += [k for b in it for k in b.sample_ids]
            states.append(json.loads(json.dumps(loader.state().to_dict())))
        return keys, states

    head, saved = run(2, 2, None, 3)  # 3 batches a rank: the streams stand in epochs 0, 1, 2
    tail, _ = run(world, workers, saved, None)
    counts = collections.Counter(head + tail)
    assert len(counts) == 10 and set(counts.values()) == {EPOCHS}, counts


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 3)])
def test_mixed_sources_resume_elastically(shards, world, workers):
    """data.source: mixed re-splits each source's positions alone: nothing read before the
    resume is read again in the same epoch (epochs=1 ends a stream when one of its
    sources ends, so completeness is checked per source in the tests above)."""
    mix = (
        f"data.mix=[{{shards: {shards}, weight: 3}}, "
        "{source: synthetic, weight: 1, crop_size: 8, dates_per_view: 1}]"
    )
    extra = ["data.source=mixed", mix, "data.synthetic_samples=16", "data.synthetic_size=16"]

    def run(w_size, w, start, n):
        keys, states = [], []
        for r in range(w_size):
            loader = make_loader(_cfg(shards, w, *extra), rank=r, world_size=w_size,
                                 start=start, epochs=1 if n is None else None)  # fmt: skip
            it = iter(loader) if n is None else itertools.islice(iter(loader), n)
            keys += [k for b in it for k in b.sample_ids]
            states.append(json.loads(json.dumps(loader.state().to_dict())))
        return keys, states

    head, saved = run(2, 2, None, 4)
    tail, after = run(world, workers, saved, None)
    counts = collections.Counter(head + tail)
    assert len(tail) > len(head) and max(counts.values()) == 1, counts.most_common(3)
    assert all(p["world_size"] == world for p in after)
