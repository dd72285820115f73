"""The five real evaluation tasks: loading, splits, features per feature kind, scores.

Every task reads its folder under the data root (``$RSFM_REAL_DATA`` or
``../shared/data``; see /work/shared/data/README.md for the files) and is skipped with a
reason when the folder or a file is missing. Each task has *inputs* (band sets or
modality combinations: one feature matrix per input and feature kind) and *protocols*
(how items are split; one split per seed). Items are scenes (EuroSAT, reBEN), labelled
pixels (Salinas-A, Sen1Floods11) or points (Presto). Every decision is written where it
is made and collected in docs/evaluation.md.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import rsfm_core as rs

from . import metrics
from .features import band_stats, embed, modality_data, normalised, upsample
from .probes import inner_folds


def days(year: int, month: int, day: int) -> int:
    """A date as days since 1970-01-01 (what ``ModalityData.dates`` holds)."""
    return (dt.date(year, month, day) - dt.date(1970, 1, 1)).days


class Task:
    """Base class; subclasses set the class attributes and implement the methods."""

    name: str = ""
    folder: str = ""
    title: str = ""
    files: tuple[str, ...] = ()  # required, relative to the task's folder
    inputs: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()
    metric_names: tuple[str, ...] = ()
    multilabel: bool = False
    # --dev: the protocol scored for model selection on training/validation data only
    # (docs/evaluation.md "Selecting on dev"); None: the task has no such split
    dev_protocol: str | None = None

    def __init__(self) -> None:
        self.y: np.ndarray | None = None  # (N,) class ids or (N, L) 0/1
        self.num_outputs = 0
        self.notes: dict = {}

    def missing(self, root: Path, dev: bool = False) -> str | None:
        """Why the task cannot run from ``root`` (None: it can)."""
        if dev and self.dev_protocol is None:
            return "no training/validation split to select on (--dev)"
        d = Path(root) / self.folder
        if not d.is_dir():
            return f"{d} not found (give --data or set RSFM_REAL_DATA to the data root)"
        absent = [f for f in self.files if not (d / f).exists()]
        return f"{d} lacks {', '.join(absent)}" if absent else None

    def load(self, root: Path, quick: bool = False) -> None:
        raise NotImplementedError

    def use_dev(self) -> None:
        """Switch to the dev protocol (call after :meth:`load`)."""
        self.protocols = (self.dev_protocol,)

    def features(self, inp: str, kind, batch: int = 16) -> np.ndarray:
        """``(N, D)`` float32 features of every item for input ``inp``."""
        raise NotImplementedError

    def split(self, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) item indices of one seed."""
        raise NotImplementedError

    def score(self, y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        pred = scores.argmax(1)
        return {
            "accuracy": metrics.accuracy(y_true, pred),
            "macro_f1": metrics.macro_f1(y_true, pred),
        }


def _pixels_of(maps: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per-item features from a ``(D, H, W)`` map at pixel ``(rows, cols)``: ``(N, D)``."""
    return maps[:, rows, cols].T.contiguous().numpy().astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- EuroSAT


class EuroSAT(Task):
    """EuroSAT-MS, 10 classes x 10 chips of 64 x 64 px, Sentinel-2 L1C, 13 bands.

    Decisions: bands are named in the FILE order (B01..B12, then B8A) and the reader puts
    them in the sensor's order; the chips carry no date, so every chip gets the nominal
    date 2017-06-15 (EuroSAT was acquired 2015-2017); one date per chip. Protocol:
    stratified 5-fold cross-validation; seed ``s`` is fold ``s % 5`` of the partition
    drawn with seed ``s // 5`` (5 seeds = one complete 5-fold CV). Features: the pooled
    embedding; raw: per-band mean + std of the normalised bands."""

    name, folder = "eurosat", "eurosat_ms"
    title = "EuroSAT-MS scene classification (10 classes)"
    CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
               "Pasture", "PermanentCrop", "Residential", "River", "SeaLake")  # fmt: skip
    FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                  "B12", "B8A")  # fmt: skip
    RGBN = ("B02", "B03", "B04", "B08")
    DATE = "2017-06-15"
    files = CLASSES
    inputs = ("13 bands", "RGBN")
    protocols = ("5-fold CV", "5-fold CV, ids 6-10")
    dev_protocol = "5-fold CV, ids 1-5"
    metric_names = ("accuracy", "macro_f1")

    def load(self, root: Path, quick: bool = False) -> None:
        per_class = 5 if quick else 10
        if quick:
            self.protocols = ("5-fold CV",)
        chips, y = [], []
        for k, c in enumerate(self.CLASSES):
            for i in range(1, per_class + 1):
                path = Path(root) / self.folder / c / f"{c}_{i}.tif"
                chips.append(rs.io.read_modality(str(path), "sentinel2_l1c", dates=[self.DATE],
                                                 bands=list(self.FILE_BANDS)))  # fmt: skip
                y.append(k)
        first = chips[0]
        self.data = modality_data(
            torch.stack([c.pixels for c in chips]), torch.stack([c.valid for c in chips]),
            torch.stack([c.dates for c in chips]), first.sensor, first.bands,
        )  # fmt: skip  # (N, 1, 13, 64, 64), bands in the sensor's order
        self.y, self.num_outputs = np.asarray(y), len(self.CLASSES)
        self.notes = {"chips": len(y), "bands": list(first.bands)}

    def _input(self, inp: str):
        d = self.data
        if inp == "13 bands":
            return d
        idx = [d.bands.index(b) for b in self.RGBN]
        return modality_data(d.pixels[:, :, idx], d.valid, d.dates, d.sensor, self.RGBN)

    def features(self, inp: str, kind, batch: int = 16) -> np.ndarray:
        d = self._input(inp)
        if kind.is_raw:
            return band_stats(d)
        return embed(kind, {"s2": d}, batch).pooled.numpy()

    def split(self, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """5-fold CV over all chips, or over the chips of file ids 1-5 (dev: what recipes
        were selected on) or 6-10 (never used for selection)."""
        per_class = len(self.y) // len(self.CLASSES)
        ids = np.arange(len(self.y)) % per_class + 1  # file id of each chip
        keep = {"5-fold CV": ids > 0, "5-fold CV, ids 1-5": ids <= 5}.get(protocol, ids > 5)
        sub = np.flatnonzero(keep)
        train, test = inner_folds(self.y[sub], 5, seed // 5, multilabel=False)[seed % 5]
        return sub[train], sub[test]


# ---------------------------------------------------------------------------- reBEN


class ReBEN(Task):
    """reBEN (BigEarthNet v2): 24 paired S1/S2 patches of 120 x 120 px, 12 labels present.

    Decisions: S2 is L2A reflectance x 10000 (``sentinel2_l2a``, 0 = nodata); the 20 m
    and 60 m bands are upsampled to the 120 px grid bilinearly (``align_corners=False``;
    validity by nearest), so one ``s2`` input holds all 12 bands; S1 is dB. Dates come
    from the product names (S2 ``..._MSIL2A_YYYYMMDD...``, S1 ``..._1SDV_YYYYMMDD...``).
    Protocol: probe trained on ``split == "train"`` (8 patches), tested on validation +
    test (16); seeds vary only the inner-CV folds. mAP: macro over the labels with a
    positive in the test part."""

    name, folder = "reben", "reben_s1s2"
    title = "reBEN multi-label (19-class CORINE nomenclature, 12 present)"
    files = ("reben_s1s2.npz",)
    inputs = ("S2", "S1", "S1+S2")
    protocols = ("train -> val+test",)
    dev_protocol = "train -> val"
    metric_names = ("mAP",)
    multilabel = True

    def load(self, root: Path, quick: bool = False) -> None:
        z = np.load(Path(root) / self.folder / self.files[0])
        s2 = rs.sensors.get("sentinel2_l2a")
        parts, valids, bands = [], [], []
        for key, factor in (("s2_10m", 1), ("s2_20m", 2), ("s2_60m", 6)):
            raw = torch.from_numpy(z[key].astype(np.float32))  # (N, C, h, w)
            phys = torch.from_numpy(s2.to_physical(raw.numpy()))
            ok = (raw != 0).float()
            if factor > 1:
                phys = F.interpolate(
                    phys, scale_factor=factor, mode="bilinear", align_corners=False
                )
                ok = F.interpolate(ok, scale_factor=factor, mode="nearest")
            parts.append(phys)
            valids.append(ok.bool().all(1))  # (N, 120, 120)
            bands += [str(b) for b in z[f"{key}_bands"]]
        n = z["s2_10m"].shape[0]
        s2_dates = [[self._date(p, 2)] for p in z["patch_id"]]
        s1_dates = [[self._date(p, 4)] for p in z["s1_name"]]
        valid2 = torch.stack(valids).all(0)
        self.s2 = modality_data(torch.cat(parts, 1)[:, None], valid2[:, None], s2_dates,
                                "sentinel2_l2a", bands)  # fmt: skip  # (N, 1, 12, 120, 120)
        s1 = torch.from_numpy(z["s1"].astype(np.float32))  # (N, 2, 120, 120) dB
        self.s1 = modality_data(s1[:, None], torch.isfinite(s1).all(1)[:, None], s1_dates,
                                "sentinel1_grd", [str(b) for b in z["s1_bands"]])  # fmt: skip
        self.y = z["labels"].astype(np.int64)
        self.num_outputs = self.y.shape[1]
        self.train_mask = z["split"] == "train"
        self.val_mask = z["split"] == "validation"
        test = ~self.train_mask
        self.notes = {
            "patches": n, "train": int(self.train_mask.sum()), "test": int(test.sum()),
            "labels_scored": int(self.y[test].any(0).sum()),
            "label_names": [str(n) for n in z["label_names"]],
        }  # fmt: skip

    @staticmethod
    def _date(name: str, field: int) -> int:
        s = str(name).split("_")[field][:8]
        return days(int(s[:4]), int(s[4:6]), int(s[6:8]))

    def features(self, inp: str, kind, batch: int = 16) -> np.ndarray:
        roles = {
            "S2": {"s2": self.s2},
            "S1": {"s1": self.s1},
            "S1+S2": {"s2": self.s2, "s1": self.s1},
        }[inp]
        if kind.is_raw:
            return np.concatenate([band_stats(d) for d in roles.values()], 1)
        return embed(kind, roles, batch).pooled.numpy()

    def split(self, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        test = self.val_mask if protocol == self.dev_protocol else ~self.train_mask
        return np.flatnonzero(self.train_mask), np.flatnonzero(test)

    def score(self, y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return {"mAP": metrics.mean_average_precision(y_true, scores)[0]}


# ---------------------------------------------------------------------------- Salinas-A


class SalinasA(Task):
    """Salinas-A: AVIRIS, 83 x 86 px, 204 bands, 6 classes (5,348 labelled pixels).

    Decisions: band k (0-based of AVIRIS's 224) is centred at 400 + 9.46 k nm, the
    registered ``aviris`` sensor's bands; the 20 removed bands (108-112, 154-167, 224,
    1-based) are dropped from its band list. Values are int16 radiance-like numbers; they
    are read as reflectance x 10000 (the ``aviris`` sensor's scale 1e-4), which puts the
    band means at 0.01-0.35, the range of the normalisation statistics; this is a
    documented approximation, not a radiometric calibration. The scene is padded to 84 x
    88 px with invalid pixels and embedded whole (one date, nominal 1998-07-01: the
    distribution carries no date) under the model's hyperspectral modality (patch 4: 4 x 4
    px tokens); the dense map is upsampled bilinearly to pixels. Protocol: ``n`` labelled
    pixels per class drawn with the seed train the probe; all other labelled pixels test."""

    name, folder = "salinas_a", "salinas_a"
    title = "Salinas-A per-pixel classification (AVIRIS, 6 classes)"
    files = ("SalinasA_corrected.mat", "SalinasA_gt.mat")
    inputs = ("204 bands",)
    protocols = ("5 px/class", "20 px/class")
    metric_names = ("OA", "mIoU")
    REMOVED_1BASED = (*range(108, 113), *range(154, 168), 224)
    CLASS_VALUES = (1, 10, 11, 12, 13, 14)
    CLASS_NAMES = ("Brocoli_green_weeds_1", "Corn_senesced_green_weeds", "Lettuce_romaine_4wk",
                   "Lettuce_romaine_5wk", "Lettuce_romaine_6wk", "Lettuce_romaine_7wk")  # fmt: skip
    DATE = (1998, 7, 1)

    def load(self, root: Path, quick: bool = False) -> None:
        from scipy.io import loadmat

        d = Path(root) / self.folder
        cube = loadmat(d / self.files[0])["salinasA_corrected"]  # (H, W, 204) int16
        gt = loadmat(d / self.files[1])["salinasA_gt"]  # (H, W)
        av = rs.sensors.get("aviris")
        keep = [k for k in range(224) if k + 1 not in self.REMOVED_1BASED]
        if cube.shape[2] != len(keep):
            raise ValueError(
                f"{d / self.files[0]}: expected {len(keep)} bands, got {cube.shape[2]}"
            )
        H, W = gt.shape
        Hp, Wp = -(-H // 4) * 4, -(-W // 4) * 4
        px = np.zeros((len(keep), Hp, Wp), np.float32)
        px[:, :H, :W] = av.to_physical(cube).transpose(2, 0, 1)
        valid = np.zeros((Hp, Wp), bool)
        valid[:H, :W] = True
        bands = [av.bands[k].name for k in keep]
        self.data = modality_data(
            px[None, None], valid[None, None], [[days(*self.DATE)]], "aviris", bands
        )
        self.rows, self.cols = np.nonzero(gt)
        lut = {v: i for i, v in enumerate(self.CLASS_VALUES)}
        self.y = np.array([lut[v] for v in gt[self.rows, self.cols]])
        self.num_outputs = len(self.CLASS_VALUES)
        self.size = (H, W)
        self.notes = {"labelled_pixels": len(self.y), "per_class": np.bincount(self.y).tolist(),
                      "classes": list(self.CLASS_NAMES), "bands": len(keep)}  # fmt: skip

    def features(self, inp: str, kind, batch: int = 16) -> np.ndarray:
        if kind.is_raw:
            return _pixels_of(normalised(self.data)[0, 0], self.rows, self.cols)
        e = embed(kind, {"hs": self.data}, batch)
        maps = upsample(e.dense, tuple(self.data.pixels.shape[-2:]))[0]  # (D, Hp, Wp)
        return _pixels_of(maps, self.rows, self.cols)

    def split(self, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(protocol.split()[0])
        rng = np.random.default_rng(seed)
        train = np.concatenate(
            [
                rng.choice(np.flatnonzero(self.y == k), n, replace=False)
                for k in range(self.num_outputs)
            ]
        )
        return np.sort(train), np.setdiff1d(np.arange(len(self.y)), train)

    def score(self, y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        pred = scores.argmax(1)
        return {"OA": metrics.accuracy(y_true, pred), "mIoU": metrics.miou(y_true, pred)}


# ---------------------------------------------------------------------------- Sen1Floods11


class Sen1Floods11(Task):
    """Sen1Floods11: one 512 x 512 px chip (Spain_7370579), S1 dB + S2 L1C, hand label.

    Decisions: the chip carries no date tag; both sensors get the nominal date
    2019-09-18 (the Spain event of Sen1Floods11, September 2019). The chip is cut into 16
    non-overlapping 128 x 128 px tiles, embedded as one batch; each tile's 32 x 32 token
    map is upsampled bilinearly to its own 128 x 128 px (no blending across tiles), so the
    left and right halves (a tile boundary at column 256) never share a tile. Protocol:
    the probe trains on ``TRAIN_PER_CLASS`` pixels per class drawn with the seed from the
    LEFT half (columns < 256) and is tested on every labelled pixel of the RIGHT half;
    label -1 (nodata) is excluded everywhere. ``--quick``: the top 256 rows only."""

    name, folder = "sen1floods11", "sen1floods11"
    title = "Sen1Floods11 per-pixel water (left half -> right half)"
    STEM = "Spain_7370579_"
    files = (f"{STEM}S1Hand.tif", f"{STEM}S2Hand.tif", f"{STEM}LabelHand.tif")
    inputs = ("S1", "S2", "S1+S2")
    protocols = ("left -> right half",)
    dev_protocol = "left half: top -> bottom"
    metric_names = ("IoU_water", "accuracy")
    DATE = "2019-09-18"
    TILE = 128
    TRAIN_PER_CLASS = 250

    def load(self, root: Path, quick: bool = False) -> None:
        import rasterio

        d = Path(root) / self.folder
        s1 = rs.io.read_modality(str(d / self.files[0]), "sentinel1_grd", dates=[self.DATE])
        s2 = rs.io.read_modality(str(d / self.files[1]), "sentinel2_l1c", dates=[self.DATE])
        with rasterio.open(d / self.files[2]) as f:
            label = f.read(1).astype(np.int64)  # (H, W): -1 nodata, 0 dry, 1 water
        H = 256 if quick else label.shape[0]
        self.s1, self.s2 = s1.crop(0, 0, H, label.shape[1]), s2.crop(0, 0, H, label.shape[1])
        label = label[:H]
        H, W = label.shape
        if H % self.TILE or W % self.TILE:
            raise ValueError(f"{d}: chip {H}x{W} px is not a multiple of the {self.TILE} px tile")
        self.rows, self.cols = np.nonzero(label >= 0)
        self.y = label[self.rows, self.cols]
        self.num_outputs, self.size = 2, (H, W)
        left = self.cols < W // 2
        self.notes = {
            "labelled_pixels": len(self.y),
            "left_dry_water": np.bincount(self.y[left], minlength=2).tolist(),
            "right_dry_water": np.bincount(self.y[~left], minlength=2).tolist(),
        }

    def _tiles(self, d):
        """Unbatched ``[1, C, H, W]`` -> a batch of ``(n, 1, C, t, t)`` tiles, row-major."""
        t, (H, W) = self.TILE, self.size
        C = d.pixels.shape[1]
        px = d.pixels[0].view(C, H // t, t, W // t, t).permute(1, 3, 0, 2, 4)  # (hT, wT, C, t, t)
        ok = d.valid[0].view(H // t, t, W // t, t).permute(0, 2, 1, 3)  # (hT, wT, t, t)
        n = (H // t) * (W // t)
        dates = d.dates[None].expand(n, -1)  # (n, 1)
        return modality_data(
            px.reshape(n, 1, C, t, t), ok.reshape(n, 1, t, t), dates, d.sensor, d.bands
        )

    def features(self, inp: str, kind, batch: int = 16) -> np.ndarray:
        mods = {
            "S1": {"s1": self.s1},
            "S2": {"s2": self.s2},
            "S1+S2": {"s2": self.s2, "s1": self.s1},
        }[inp]
        if kind.is_raw:
            maps = torch.cat([normalised(d)[0] for d in mods.values()])  # (C, H, W)
            return _pixels_of(maps, self.rows, self.cols)
        e = embed(kind, {r: self._tiles(d) for r, d in mods.items()}, batch)
        t, (H, W) = self.TILE, self.size
        up = upsample(e.dense, (t, t))  # (n, D, t, t), each tile on its own
        D = up.shape[1]
        maps = up.view(H // t, W // t, D, t, t).permute(2, 0, 3, 1, 4).reshape(D, H, W)
        return _pixels_of(maps, self.rows, self.cols)

    def split(self, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Train pixels from the left half, test on the right half; dev: both inside the
        left half (train from its top, test on its bottom), the right half unseen."""
        left = self.cols < self.size[1] // 2
        if protocol == self.dev_protocol:
            top = self.rows < self.size[0] // 2
            pool, test = left & top, left & ~top
        else:
            pool, test = left, ~left
        rng = np.random.default_rng(seed)
        train = []
        for k in range(self.num_outputs):
            members = np.flatnonzero(pool & (self.y == k))
            train.append(
                rng.choice(members, min(self.TRAIN_PER_CLASS, len(members)), replace=False)
            )
        return np.sort(np.concatenate(train)), np.flatnonzero(test)

    def score(self, y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        pred = scores.argmax(1)
        return {
            "IoU_water": metrics.iou(y_true, pred, 1),
            "accuracy": metrics.accuracy(y_true, pred),
        }


# ---------------------------------------------------------------------------- Presto


class PrestoAlgae(Task):
    """Presto algae-bloom severity: 1,122 points, 12 monthly S1 + S2 composites, 5 levels.

    Decisions: channels 0-1 are S1 VV/VH in dB, 2-12 S2 B02 B03 B04 B05 B06 B07 B08 B8A
    B09 B11 B12 x 10000 (fed as ``sentinel2_l1c``; L1C and L2A share band descriptors and
    statistics in the registry, so the choice changes no number); ERA5, SRTM and NDVI
    channels are not used (the model takes S1 + S2 only, and so does the raw baseline).
    Each point becomes a 4 x 4 px chip replicating its pixel (patch 4 -> one token) with
    12 dates: the 15th of each given month, the year starting at a nominal 2020 and
    counting up when the month index wraps (the files carry no year). Split: the FIXED
    70/30 split of :mod:`.presto_split` (by location, seed 0; the dataset's ``is_test``
    is not used); seeds vary only the inner-CV folds. Raw: the flattened normalised series
    (12 x 13 = 156 values)."""

    name, folder = "presto_algae", "presto_algae"
    title = "Presto algae-bloom severity (12 monthly S1+S2 steps, 5 levels)"
    files = ("s1_s2_era5_srtm.npy", "month.npy", "target.npy", "latlon.npy", "uid.npy")
    inputs = ("S1+S2",)
    protocols = ("fixed 70/30 split",)
    dev_protocol = "70/30 split of the 70 % part"
    metric_names = ("accuracy", "macro_f1")
    S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
    START_YEAR = 2020

    def load(self, root: Path, quick: bool = False) -> None:
        from .presto_split import make_split, split_from_uids

        d = Path(root) / self.folder
        x = np.load(d / self.files[0])  # (N, 12, 18) float64
        months = np.load(d / self.files[1]).astype(np.int64)  # (N, 12), 0 = January
        self.y = np.load(d / self.files[2]).astype(np.int64) - 1  # 1..5 -> 0..4
        self.test_mask = split_from_uids(np.load(d / self.files[4]))
        latlon = np.load(d / self.files[3])
        train = np.flatnonzero(~self.test_mask)  # dev: the same by-location split, inside it
        self.dev_test = np.zeros_like(self.test_mask)
        self.dev_test[train[make_split(latlon[train], seed=1)]] = True
        N, T = months.shape
        dates = np.array([self._dates(m) for m in months])  # (N, T)
        s1 = x[:, :, 0:2].astype(np.float32)  # (N, T, 2) dB
        s2 = rs.sensors.get("sentinel2_l1c").to_physical(x[:, :, 2:13])  # (N, T, 11)
        chip = lambda a: np.broadcast_to(a[..., None, None], (*a.shape, 4, 4))  # noqa: E731
        ok = np.ones((N, T, 4, 4), bool)
        self.s1 = modality_data(chip(s1), ok & np.isfinite(s1).all(-1)[..., None, None], dates,
                                "sentinel1_grd", ("VV", "VH"))  # fmt: skip
        self.s2 = modality_data(chip(s2), ok & (x[:, :, 2:13] > 0).all(-1)[..., None, None],
                                dates, "sentinel2_l1c", self.S2_BANDS)  # fmt: skip
        self.num_outputs = 5
        self.notes = {
            "points": N, "test_points": int(self.test_mask.sum()),
            "train_per_class": np.bincount(self.y[~self.test_mask], minlength=5).tolist(),
            "test_per_class": np.bincount(self.y[self.test_mask], minlength=5).tolist(),
        }  # fmt: skip

    def _dates(self, months: np.ndarray) -> list[int]:
        year, out, prev = self.START_YEAR, [], None
        for m in months:
            if prev is not None and m < prev:
                year += 1
            out.append(days(year, int(m) + 1, 15))
            prev = m
        return out

    def features(self, inp: str, kind, batch: int = 16) -> np.ndarray:
        if kind.is_raw:
            z = torch.cat([normalised(self.s2), normalised(self.s1)], 2)  # (N, T, 13, 4, 4)
            return z[..., 0, 0].reshape(len(z), -1).numpy()  # (N, T * 13)
        return embed(kind, {"s2": self.s2, "s1": self.s1}, batch * 16).pooled.numpy()

    def split(self, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if protocol == self.dev_protocol:
            return np.flatnonzero(~self.test_mask & ~self.dev_test), np.flatnonzero(self.dev_test)
        return np.flatnonzero(~self.test_mask), np.flatnonzero(self.test_mask)


TASKS = {t.name: t for t in (EuroSAT, ReBEN, SalinasA, Sen1Floods11, PrestoAlgae)}
