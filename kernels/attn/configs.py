"""Launch configurations of the attention kernels, per GPU family (no Triton import).

Families (see ``rsfm_kernels._triton_common.arch_family``) and the limits the tables are
derived from (per block; every family has 64K 32-bit registers per SM, 255 per thread):

    family  GPUs                              shared memory  tensor cores (Triton)
    sm80    A100, A30, Orin (8.0, 8.7)        163 KB         mma.sync
    sm86    RTX 30/40, A10, L4, L40 (8.6/8.9)  99 KB         mma.sync
    sm90    H100, H200                        227 KB         wgmma (+ TMA)
    sm100   B200, B300 (10.x)                 227 KB         tcgen05 (+ TMA, TMEM)
    sm120   RTX 50, RTX PRO 6000 (12.x)        99 KB         mma.sync
    other   anything else: the sm86 tables (fit any GPU with >= 99 KB per block)

How an entry is derived. Shared memory of the dense kernels is about
``stages * (tiles streamed per step) + resident tiles`` in the input dtype, e.g. the
forward streams K and V, ``stages * 2 * BLOCK_N * D * 2 B``, plus Q (``BLOCK_M * D * 2 B``)
on wgmma/tcgen05 parts; registers hold the float32 accumulators (forward:
``BLOCK_M * D``; dK/dV kernel: ``2 * BLOCK_N * D``) and score tiles spread over
``32 * num_warps`` threads. The largest tiles whose estimate fits the family's shared
memory and leaves the accumulators at most ~128 registers per thread are the candidates;
each candidate was then compiled offline for that family with Triton's own compiler and
ptxas (``python -m rsfm_kernels.attn.offline``): entries here have no register spills
(float32 dQ at D = 128 excepted, see ``FP32``) and shared memory within the limit
(tests/kernels/test_attention_compile.py checks a
representative subset by default and every entry under ``-m slow``). The measured
registers and shared memory are in docs/attention.md. None of this has been timed on
hardware yet: the autotuning spaces below let a GPU pick among the candidates.

Kernels: ``fwd`` (forward), ``kv`` (backward dK/dV, plus the atomic dQ), ``dq``
(deterministic backward dQ). Block names: ``block_m`` = query rows, ``block_n`` = key rows
(in ``kv`` the program owns ``block_n`` keys and steps over ``block_m`` queries).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .launch import SHORT_MAX_LEN

FAMILIES = ("sm80", "sm86", "sm90", "sm100", "sm120")
TMA_FAMILIES = ("sm90", "sm100")  # in-kernel tensor descriptors are offered here only
KERNELS = ("fwd", "kv", "dq")


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False  # Q/K/V/O (dO) tiles through in-kernel tensor descriptors (TMA)
    persistent: bool = False  # forward only: one program per SM loops over tiles

    def __str__(self) -> str:
        extra = (" tma" if self.tma else "") + (" persistent" if self.persistent else "")
        return f"{self.block_m}x{self.block_n} w{self.num_warps} s{self.num_stages}{extra}"


_C = LaunchConfig


def d_class(block_d: int) -> int:
    """Head-dim tiles 16 and 32 share configs (their tiles are small on every family)."""
    return 32 if block_d <= 32 else block_d


# (family, d class) -> (fwd, kv, dq) for float16/bfloat16: the pinned configs, also the
# first of each autotuning space. Registers / shared memory of every entry, per family:
# docs/attention.md (offline compile, Triton 3.9).
PINNED: dict[tuple[str, int], tuple[LaunchConfig, LaunchConfig, LaunchConfig]] = {
    ("sm80", 32): (_C(128, 64, 4, 3), _C(64, 128, 8, 2), _C(128, 64, 4, 2)),
    ("sm80", 64): (_C(128, 64, 8, 3), _C(32, 128, 8, 2), _C(128, 64, 8, 2)),
    ("sm80", 128): (_C(128, 64, 8, 2), _C(32, 64, 8, 2), _C(128, 32, 8, 2)),
    ("sm86", 32): (_C(128, 64, 4, 3), _C(64, 128, 8, 2), _C(64, 64, 4, 2)),
    ("sm86", 64): (_C(128, 64, 8, 3), _C(32, 128, 8, 2), _C(128, 64, 8, 2)),
    ("sm86", 128): (_C(128, 32, 8, 2), _C(32, 64, 8, 2), _C(32, 64, 4, 2)),
    ("sm90", 32): (_C(128, 64, 4, 3), _C(64, 128, 8, 2), _C(128, 64, 4, 2)),
    ("sm90", 64): (_C(128, 128, 8, 3), _C(64, 128, 8, 2), _C(128, 64, 8, 2)),
    ("sm90", 128): (_C(128, 128, 8, 2), _C(32, 128, 8, 2), _C(128, 64, 8, 2)),
    ("sm100", 32): (_C(128, 64, 4, 3), _C(64, 128, 8, 2), _C(128, 64, 4, 2)),
    ("sm100", 64): (_C(128, 64, 4, 3), _C(64, 128, 8, 2), _C(128, 64, 8, 2)),
    ("sm100", 128): (_C(128, 32, 8, 2), _C(32, 128, 8, 2), _C(128, 64, 8, 2)),
    ("sm120", 32): (_C(128, 64, 4, 3), _C(64, 128, 8, 2), _C(64, 64, 4, 2)),
    ("sm120", 64): (_C(128, 64, 8, 3), _C(32, 128, 8, 2), _C(128, 64, 8, 2)),
    ("sm120", 128): (_C(128, 32, 8, 2), _C(32, 64, 8, 2), _C(128, 32, 8, 2)),
}

# float32 (exact "ieee" dots, 4-byte tiles; forced-only on CUDA): one small set for every
# family. Triton's FMA dots spill at D = 128 in dq at every tile tried (16 x 16 up to
# 64 x 32, 4 to 16 warps; 336-392 B here): the one documented exception.
FP32: dict[int, tuple[LaunchConfig, LaunchConfig, LaunchConfig]] = {
    32: (_C(32, 32, 8, 2), _C(32, 32, 4, 2), _C(32, 32, 8, 2)),
    64: (_C(16, 16, 8, 2), _C(16, 16, 8, 2), _C(16, 16, 8, 2)),
    128: (_C(16, 16, 8, 2), _C(16, 16, 8, 2), _C(16, 16, 8, 2)),
}


def _tma(c: LaunchConfig, persistent: bool = False) -> LaunchConfig:
    return LaunchConfig(c.block_m, c.block_n, c.num_warps, c.num_stages, True, persistent)


# Extra candidates autotuned on GPU after the pinned entry, per (family, d class, kernel):
# other spill-free tile shapes, and on sm90/sm100 the tensor-descriptor (TMA) and
# persistent-grid variants. Families or kernels missing here tune nothing beyond the pin
# (no other candidate compiled without spills).
ALTERNATIVES: dict[tuple[str, int, str], tuple[LaunchConfig, ...]] = {
    ("sm80", 32, "fwd"): (_C(128, 128, 8, 3),),
    ("sm80", 128, "fwd"): (_C(128, 32, 8, 2),),
    ("sm80", 32, "kv"): (_C(64, 64, 4, 2),),
    ("sm80", 64, "kv"): (_C(64, 64, 4, 2),),
    ("sm80", 128, "kv"): (_C(16, 128, 8, 2),),
    ("sm80", 32, "dq"): (_C(64, 64, 4, 2),),
    ("sm80", 64, "dq"): (_C(64, 64, 4, 2), _C(128, 64, 8, 3)),
    ("sm80", 128, "dq"): (_C(32, 64, 4, 2),),
    ("sm86", 32, "fwd"): (_C(128, 128, 8, 3),),
    ("sm86", 64, "fwd"): (_C(128, 128, 8, 2), _C(128, 64, 8, 2)),
    ("sm86", 32, "kv"): (_C(32, 128, 4, 2),),
    ("sm86", 64, "kv"): (_C(32, 64, 4, 2),),
    ("sm86", 64, "dq"): (_C(64, 64, 4, 2),),
    ("sm120", 32, "fwd"): (_C(128, 128, 8, 3),),
    ("sm120", 64, "fwd"): (_C(128, 128, 8, 3), _C(128, 128, 8, 2)),
    ("sm120", 32, "kv"): (_C(32, 128, 4, 2),),
    ("sm120", 64, "kv"): (_C(32, 64, 4, 2),),
    ("sm120", 128, "kv"): (_C(64, 64, 8, 2),),
    ("sm120", 64, "dq"): (_C(128, 64, 8, 3), _C(64, 64, 4, 2)),
    ("sm90", 32, "fwd"): (_C(128, 128, 8, 3),),
    ("sm90", 64, "fwd"): (_C(128, 64, 8, 3),),
    ("sm90", 128, "fwd"): (_C(128, 64, 8, 2),),
    ("sm90", 32, "kv"): (_C(64, 64, 4, 2),),
    ("sm90", 64, "kv"): (_C(32, 128, 8, 2),),
    ("sm90", 128, "kv"): (_C(64, 64, 8, 2),),
    ("sm90", 128, "dq"): (_C(64, 64, 4, 2),),
    ("sm100", 32, "fwd"): (_C(128, 64, 4, 4),),
    ("sm100", 64, "fwd"): (_C(128, 64, 8, 3),),
    ("sm100", 128, "fwd"): (_C(64, 64, 4, 3),),
    ("sm100", 32, "kv"): (_C(64, 64, 4, 2),),
    ("sm100", 64, "kv"): (_C(32, 128, 8, 2),),
    ("sm100", 128, "kv"): (_C(16, 128, 8, 2),),
    ("sm100", 128, "dq"): (_C(64, 64, 4, 2),),
}
# The descriptor variants on sm90/sm100: of the pinned dK/dV and dQ configs, and the
# forward with descriptors, without and with the persistent grid. sm100's forward tiles
# with 128 keys spilled with descriptors (76-280 B), and at D = 128 the persistent
# 128 x 64 tile too (264 B), hence the smaller tiles there.
_TMA_FWD = {  # (family, d class) -> (descriptor forward, persistent descriptor forward)
    ("sm90", 32): (_C(128, 64, 4, 3), _C(128, 64, 4, 3)),
    ("sm90", 64): (_C(128, 128, 8, 3), _C(128, 128, 8, 3)),
    ("sm90", 128): (_C(128, 128, 8, 2), _C(128, 128, 8, 2)),
    ("sm100", 32): (_C(128, 64, 4, 3), _C(128, 64, 4, 3)),
    ("sm100", 64): (_C(128, 64, 4, 3), _C(128, 64, 4, 3)),
    ("sm100", 128): (_C(128, 64, 8, 2), _C(128, 32, 8, 2)),
}
for (_fam, _d), (_fwd, _pers) in _TMA_FWD.items():
    ALTERNATIVES[(_fam, _d, "fwd")] += (_tma(_fwd), _tma(_pers, persistent=True))
    _kv, _dq = PINNED[(_fam, _d)][1:]
    ALTERNATIVES[(_fam, _d, "kv")] += (_tma(_kv),)
    ALTERNATIVES[(_fam, _d, "dq")] = ALTERNATIVES.get((_fam, _d, "dq"), ()) + (_tma(_dq),)

# Under the interpreter every tile is 16 x 16 (~2 ms per program step).
INTERPRETER = (_C(16, 16, 1, 1), _C(16, 16, 1, 1), _C(16, 16, 1, 1))


def family_of(arch: str) -> str:
    """The table family of an :func:`arch_family` result ("other" uses sm86's)."""
    return arch if arch in FAMILIES else "sm86"


def pinned(
    arch: str, block_d: int, dtype: torch.dtype
) -> tuple[LaunchConfig, LaunchConfig, LaunchConfig]:
    """(fwd, kv, dq) launch configs for a family and head-dim tile."""
    if dtype == torch.float32:
        return FP32[d_class(block_d)]
    return PINNED[(family_of(arch), d_class(block_d))]


def space(arch: str, block_d: int, dtype: torch.dtype, kernel: str) -> tuple[LaunchConfig, ...]:
    """The autotuning space of one kernel: the pinned config first, then the alternatives
    (float32 is not tuned: exact dots are a correctness path, not a fast one)."""
    first = pinned(arch, block_d, dtype)[KERNELS.index(kernel)]
    if dtype == torch.float32:
        return (first,)
    return (first, *ALTERNATIVES.get((family_of(arch), d_class(block_d), kernel), ()))


def entries() -> list[tuple[str, int, str, str, LaunchConfig]]:
    """Every (family, d class, dtype name, kernel, config) the tables hold: what the
    offline compile check covers."""
    out = []
    for fam in FAMILIES:
        for dc in (32, 64, 128):
            for kern in KERNELS:
                for cfg in space(fam, dc, torch.bfloat16, kern):
                    out.append((fam, dc, "bf16", kern, cfg))
                out.append(
                    (fam, dc, "fp32", kern, pinned(fam, dc, torch.float32)[KERNELS.index(kern)])
                )
    return out


# ---------------------------------------------------------------- packed short sequences


@dataclass(frozen=True)
class ShortConfig:
    seqs: int  # whole sequences per tile
    block_m: int
    block_n: int
    warps_fwd: int
    warps_bwd: int


def _pow2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


# Families whose 128-row packed tiles for D <= 64 compile without spilling; the others
# (sm80, sm86, sm120, and sm100: 320-952 B at L = 33) stay at 64 rows.
_SHORT_WIDE = ("sm90",)


def short_config(l_q: int, l_k: int, d: int, arch: str, interpret: bool = False) -> ShortConfig:
    """Launch config of the packed kernels for ``arch`` (an :func:`arch_family` result).

    A tile of ``rows`` rows holds ``rows // max(L_q, L_k)`` whole sequences. On GPU rows is
    64 (a 64x64 float32 score tile fits 4 warps' registers); on sm90 with D <= 64 it is
    128 when that fills the tile at least 15% better (L = 33..42: 3 sequences in 128
    rows, not 1 in 64); the other families spill registers at 128 rows (offline compile). The
    backward holds q, k, v, dO and three (rows, D) accumulators, so it runs 8 warps. Under
    the interpreter rows is 32, so tests pack several sequences per tile cheaply.
    """
    longest = max(l_q, l_k)
    if longest > SHORT_MAX_LEN:
        raise ValueError(
            f"short-sequence attention needs L <= {SHORT_MAX_LEN}; got L_q={l_q}, L_k={l_k}"
        )
    if interpret:
        rows = max(32, _pow2(longest))
    else:
        rows = max(64, _pow2(longest))
        fill64 = (64 // longest) * longest / 64
        fill128 = (128 // longest) * longest / 128
        if rows == 64 and arch in _SHORT_WIDE and d <= 64 and fill128 > 1.15 * fill64:
            rows = 128
    seqs = rows // longest
    block_m = max(16, _pow2(seqs * l_q))
    block_n = max(16, _pow2(seqs * l_k))
    big = max(block_m, block_n) >= 128
    return ShortConfig(seqs, block_m, block_n, 8 if big else 4, 8)
