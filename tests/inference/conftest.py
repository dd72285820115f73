"""Fixtures for the inference tests: a micro encoder (S2 + S1 only, fast on 2 CPU cores),
a translation-equivariant stub encoder (exact stitching checks) and small seeded
GeoTIFF scenes with smooth fields, a nodata corner and RSFM_DATE tags."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import rsfm_core as rs
from rsfm_core.model import EncoderOutput, ModalityConfig, ModelConfig
from rsfm_core.sample import ModalityData

try:  # optional here: the bare GPU image has no rasterio; its tests skip with this reason
    import rasterio
    from affine import Affine
except ImportError as e:
    rasterio = Affine = None
    NO_RASTERIO = f"rasterio is not installed ({e}); pip install rasterio"
else:
    NO_RASTERIO = ""


def need_rasterio() -> None:
    """Skip the calling test or fixture when rasterio is missing."""
    if rasterio is None:
        pytest.skip(NO_RASTERIO)


MODS = {"s2": ModalityConfig("sentinel2_l2a", 4), "s1": ModalityConfig("sentinel1_grd", 4)}
MICRO = dict(dim=16, depth=1, heads=2, fusion_depth=1, hyper_dim=8, modalities=MODS)
CRS = "EPSG:32633"
ORIGIN = (500000.0, 4600000.0)
S2_DATES = ("2021-05-01", "2021-06-10")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Micro models on tiny tiles: OpenMP start-up per op outweighs the work (10-20 ms
    per op on a busy 2-core machine); one thread keeps these tests fast and stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def micro_embedder(**kw) -> rs.Embedder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rs.Embedder.random("rsfm_tiny", seed=0, **{**MICRO, **kw})


@pytest.fixture(scope="session")
def micro() -> rs.Embedder:
    return micro_embedder()


class LocalStub(torch.nn.Module):
    """An encoder without positions or attention: each token is a fixed linear map of its
    patch's mean valid pixels per modality (averaged over dates). Tiling changes nothing
    it computes, so a tiled map must equal the whole-raster map exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(name="stub", dim=8, depth=1, heads=1, modalities=dict(MODS))
        g = torch.Generator().manual_seed(0)
        self.proj = {n: torch.randn(8, len(self.config.sensor(m.sensor).bands), generator=g)
                     for n, m in MODS.items()}  # fmt: skip

    def forward(self, batch) -> EncoderOutput:
        dense, mvalid = 0.0, {}
        for n, d in batch.items():
            p = self.config.modalities[n].patch
            v = d.valid[:, :, None].float()  # (B, T, 1, H, W)
            num = torch.nn.functional.avg_pool2d((d.pixels * v).sum(1), p)  # (B, C, h, w)
            den = torch.nn.functional.avg_pool2d(v.sum(1), p)  # (B, 1, h, w)
            mvalid[n] = den[:, 0] > 0
            feat = num / den.clamp_min(1e-6)
            dense = dense + torch.einsum("dc,bchw->bdhw", self.proj[n][:, : feat.shape[1]], feat)
        valid = torch.stack(list(mvalid.values())).any(0)  # (B, h, w)
        dense = dense * valid[:, None]
        pooled = dense.sum((2, 3)) / valid.sum((1, 2)).clamp_min(1)[:, None]
        return EncoderOutput(dense, pooled, valid, {}, mvalid)


@pytest.fixture
def stub() -> rs.Embedder:
    return rs.Embedder(LocalStub(), device="cpu")


# ---------------------------------------------------------------------------- rasters


def smooth(bands: int, h: int, w: int, seed: int, lo: float, hi: float) -> np.ndarray:
    """(bands, h, w) smooth random fields in [lo, hi] (bicubic upsampling of noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, bands, max(2, h // 16), max(2, w // 16), generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return (lo + (hi - lo) * x[0].clamp(0, 1)).numpy()


def write_tif(path: Path, arr: np.ndarray, *, res=10.0, crs=CRS, origin=ORIGIN, nodata=None,
              descriptions=None, tags=None) -> Path:  # fmt: skip
    need_rasterio()
    c, h, w = arr.shape
    prof = dict(driver="GTiff", height=h, width=w, count=c, dtype=arr.dtype.name, crs=crs,
                transform=Affine(res, 0, origin[0], 0, -res, origin[1]), nodata=nodata)  # fmt: skip
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(arr)
        for i, d in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)
    return path


def make_scene(folder: Path, h: int = 80, w: int = 72, nodata_corner: bool = True) -> dict:
    """S2 L2A (uint16, 12 bands, 2 dates) and S1 (float32 dB, 2 dates) at 10 m; the
    bottom-right 32 x 32 px are nodata in every file (an all-invalid tile for tile 32)."""
    need_rasterio()
    folder.mkdir(parents=True, exist_ok=True)
    s2, s1 = rs.sensors.get("sentinel2_l2a"), rs.sensors.get("sentinel1_grd")
    out = {"s2": [], "s1": []}
    for t, date in enumerate(S2_DATES):
        refl = smooth(12, h, w, seed=t, lo=0.02, hi=0.45)
        raw = np.round(refl * 10000).astype(np.uint16)
        db = smooth(2, h, w, seed=10 + t, lo=-22.0, hi=-5.0).astype(np.float32)
        if nodata_corner:
            raw[:, h - 32 :, w - 32 :] = 0
            db[:, h - 32 :, w - 32 :] = np.nan
        tags = {"RSFM_DATE": date}
        out["s2"].append(
            write_tif(folder / f"s2_{t}.tif", raw, nodata=0, descriptions=s2.band_names, tags=tags)
        )
        out["s1"].append(
            write_tif(
                folder / f"s1_{t}.tif",
                db,
                nodata=float("nan"),
                descriptions=s1.band_names,
                tags=tags,
            )
        )
    return out


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> dict:
    return make_scene(tmp_path_factory.mktemp("scene"))


def inputs_of(scene: dict) -> dict:
    return {
        "s2": rs.RasterInput("sentinel2_l2a", [str(p) for p in scene["s2"]]),
        "s1": rs.RasterInput("sentinel1_grd", [str(p) for p in scene["s1"]]),
    }


def read_whole(scene: dict) -> dict[str, ModalityData]:
    from rsfm_core import io

    return {
        "s2": io.read_modality([str(p) for p in scene["s2"]], "sentinel2_l2a"),
        "s1": io.read_modality([str(p) for p in scene["s1"]], "sentinel1_grd"),
    }


def read_cog(path) -> tuple[np.ndarray, dict]:
    need_rasterio()
    with rasterio.open(path) as ds:
        return ds.read(), {
            "crs": ds.crs, "transform": ds.transform, "nodata": ds.nodata, "count": ds.count,
            "tags": ds.tags(), "overviews": ds.overviews(1), "scales": ds.scales,
            "offsets": ds.offsets, "layout": ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "dtype": ds.dtypes[0], "shape": (ds.height, ds.width),
        }  # fmt: skip
