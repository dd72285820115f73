"""Pretraining data: views of samples, shards on disk, the loader, and ``rsfm prepare``.

Modules, lowest first: :mod:`.views` (two overlapping views of one sample: crops, dates,
modality dropout, flips; collation), :mod:`.shards` (the webdataset shard format, its
decoding and verification), :mod:`.loader` (synthetic or sharded sources split by rank
and worker, resumable positions, :func:`make_loader`), :mod:`.prepare` (GeoTIFF
collections or synthetic scenes -> shards: ``rsfm prepare``).
"""

from __future__ import annotations

from rsfm_core.lazy import lazy_exports

# Loaded on first use: ``rsfm --help`` imports .prepare for its parser only.
_ATTRS = {
    "DataError": "rsfm_train.data.loader",
    "DataPosition": "rsfm_train.data.loader",
    "LoaderOptions": "rsfm_train.data.loader",
    "StreamPosition": "rsfm_train.data.loader",
    "ViewPairLoader": "rsfm_train.data.loader",
    "make_loader": "rsfm_train.data.loader",
}
__all__ = sorted(_ATTRS)
__getattr__, __dir__ = lazy_exports(__name__, _ATTRS)
