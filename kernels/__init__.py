"""rsfm's kernels (imported as ``rsfm_kernels``): fused attention, spectral patch
embedding and InfoNCE, each with a pure-PyTorch reference and backends chosen by
:mod:`rsfm_kernels.dispatch`. ``python -m rsfm_kernels.info`` lists the backends."""

from . import dispatch
from .attn import attention, attention_reference
from .infonce import info_nce, info_nce_reference
from .spectral_embed import spectral_patch_embed, spectral_patch_embed_reference

__all__ = [
    "attention",
    "attention_reference",
    "dispatch",
    "info_nce",
    "info_nce_reference",
    "spectral_patch_embed",
    "spectral_patch_embed_reference",
]
