"""Named decoders of quality-assessment rasters: QA codes -> cloudy (True) per pixel.

A decoder takes band 1 of a QA raster on the target grid (float32, exact for the integer
codes) and returns a bool mask; :func:`rsfm_core.io.read_modality` takes
``cloud_masks=("BQA.tif", "landsat8_bqa_precollection")`` (or a callable), so a YAML
manifest can name one. Each decoder flags clouds, cloud shadows and cirrus at the
confidence its product documents as reliable, and fill; snow, water and saturation are
left to the user. Sources: the USGS Landsat 8 (pre-collection and Collection 1) Quality
Assessment band and Collection 2 QA_PIXEL descriptions, and the ESA Sentinel-2 L2A Scene
Classification legend.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["DECODERS", "decoder"]


def _bits(qa: np.ndarray, first: int, width: int = 1) -> np.ndarray:
    return (qa.astype(np.int64) >> first) & ((1 << width) - 1)


def landsat8_bqa_precollection(qa: np.ndarray) -> np.ndarray:
    """Landsat 8 pre-collection BQA (2013-2017 L1T products): fill (bit 0), cloud
    confidence (bits 14-15) medium or high, cirrus confidence (bits 12-13) high."""
    return (_bits(qa, 0) == 1) | (_bits(qa, 14, 2) >= 2) | (_bits(qa, 12, 2) == 3)


def landsat8_bqa_c1(qa: np.ndarray) -> np.ndarray:
    """Landsat 8 Collection 1 BQA: fill (bit 0), cloud (bit 4), cloud confidence (bits
    5-6) high, cloud-shadow confidence (bits 7-8) high, cirrus confidence (bits 11-12) high."""
    return (
        (_bits(qa, 0) == 1)
        | (_bits(qa, 4) == 1)
        | (_bits(qa, 5, 2) == 3)
        | (_bits(qa, 7, 2) == 3)
        | (_bits(qa, 11, 2) == 3)
    )


def landsat_qa_pixel_c2(qa: np.ndarray) -> np.ndarray:
    """Landsat Collection 2 QA_PIXEL: fill (bit 0), dilated cloud (1), cirrus (2), cloud
    (3), cloud shadow (4)."""
    return (_bits(qa, 0) | _bits(qa, 1) | _bits(qa, 2) | _bits(qa, 3) | _bits(qa, 4)) == 1


def sentinel2_scl(qa: np.ndarray) -> np.ndarray:
    """Sentinel-2 L2A Scene Classification: no data (0), saturated/defective (1), cloud
    shadow (3), cloud medium (8) and high (9) probability, thin cirrus (10)."""
    return np.isin(qa.astype(np.int64), (0, 1, 3, 8, 9, 10))


DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "landsat8_bqa_precollection": landsat8_bqa_precollection,
    "landsat8_bqa_c1": landsat8_bqa_c1,
    "landsat_qa_pixel_c2": landsat_qa_pixel_c2,
    "sentinel2_scl": sentinel2_scl,
}


def decoder(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The decoder called ``name``; raises naming the known ones."""
    try:
        return DECODERS[name]
    except KeyError:
        raise ValueError(
            f"unknown QA decoder {name!r}; known: {', '.join(sorted(DECODERS))} (or pass a "
            "function qa -> bool cloudy)"
        ) from None
