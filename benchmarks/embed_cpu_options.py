"""CPU speed options for tile embedding (issue 18), measured interleaved in one process.

    python -m benchmarks.embed_cpu_options [--tiles 4] [--rounds 3] [--threads 2]

The same batch of 256 px S2 L2A tiles (12 bands, one date) through
``Embedder.forward_tiles`` of rsfm_tiny (random weights) in each variant, round-robin
(A B C A B C ...) so that the shared machine's load hits every variant alike; median
seconds per round, ratio to the float32 eager baseline, and the largest relative
difference of the dense output to the baseline (equal output = within STYLE.md's
tolerance). Variants: float32 eager (the default: attention through
``rsfm_kernels.attention``, which picks PyTorch SDPA on CPU); bfloat16 autocast;
``torch.compile`` of the model (float32); the attention forced to the pure-PyTorch
reference (what SDPA saves). Overlap and tile-count options change the output, so they
are reported as tile counts, not here.

    python -m benchmarks.embed_cpu_options --bound [--threads 1]

How far the default path is from this CPU's limit: the forward's FLOPs (torch's
FlopCounterMode, split into attention and the rest) over its measured time, next to the
same thread count's float32 matmul rate (2048^3, the best the BLAS reaches here), and
seconds per tile at batch sizes 1, 2, 4 and 8 with the share of kernel (system) CPU time
(a tile row's last batch is smaller than the others: what batching across tile rows
would save; glibc serves buffers above 32 MB with fresh zeroed pages from the kernel on
every allocation, and batch 8 makes the MLP's hidden activations 67 MB: run it once as is
(memory kept for reuse, as ``rsfm embed`` does on CPU) and once with
``RSFM_MALLOC=system``, glibc's default). The upper bound
on any equal-output speed-up of the compute is the matmul rate over the achieved rate.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

from . import _common as C


def _tiles(n: int, px: int = 256):
    import rsfm_core as rs

    g = torch.Generator().manual_seed(0)
    s2 = rs.sensors.get("sentinel2_l2a")
    out = []
    for _ in range(n):
        x = 0.02 + 0.43 * torch.rand(1, 12, px, px, generator=g)
        d = rs.ModalityData(x, torch.ones(1, px, px, dtype=torch.bool), torch.tensor([19000]),
                            "sentinel2_l2a", s2.band_names)  # fmt: skip
        out.append({"s2": d})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="float32,bfloat16,compile,reference_attention")
    p.add_argument("--bound", action="store_true", help="FLOP rate vs matmul peak, batch sizes")
    a = p.parse_args(argv)
    import rsfm_core as rs

    torch.set_num_threads(a.threads)
    if a.bound:
        return _bound(a.threads, a.rounds)
    tiles = _tiles(a.tiles)
    base = rs.Embedder.random("rsfm_tiny", device="cpu")
    variants = {}
    for v in a.variants.split(","):
        if v == "float32":
            variants[v] = base.forward_tiles
        elif v == "bfloat16":
            e = rs.Embedder(base.model, device="cpu", dtype="bfloat16", info=base.info)
            variants[v] = e.forward_tiles
        elif v == "compile":
            e = rs.Embedder(base.model, device="cpu", info=base.info)
            e.model = torch.compile(base.model)
            variants[v] = e.forward_tiles
        elif v == "reference_attention":

            def ref(samples, offsets=None):
                os.environ["RSFM_BACKEND_ATTENTION"] = "reference"
                try:
                    return base.forward_tiles(samples, offsets)
                finally:
                    del os.environ["RSFM_BACKEND_ATTENTION"]

            variants[v] = ref
    ref_out, times, first = None, {v: [] for v in variants}, {}
    for v, fn in variants.items():  # first calls (compilation) outside the rounds
        t0 = time.perf_counter()
        try:
            out = fn(tiles)[0]
        except Exception as e:
            print(f"{v}: failed: {type(e).__name__}: {e}"[:300])
            times.pop(v)
            continue
        first[v] = time.perf_counter() - t0
        if v == "float32":
            ref_out = out
        else:
            rel = float(np.abs(out - ref_out).max() / np.abs(ref_out).max())
            first[v + "_maxrel"] = rel
    for _ in range(a.rounds):
        for v in times:
            t0 = time.perf_counter()
            variants[v](tiles)
            times[v].append(time.perf_counter() - t0)
    base_s = statistics.median(times["float32"])
    print(f"{a.tiles} tiles of 256 px, rsfm_tiny, {a.threads} threads, {a.rounds} rounds")
    for v, ts in times.items():
        med = statistics.median(ts)
        print(f"{v:22s} median {med:7.2f} s  x{base_s / med:5.2f} vs float32  first call "
              f"{first[v]:6.1f} s  max rel diff {first.get(v + '_maxrel', 0):.2e}")  # fmt: skip
    return 0


def _median_s(fn, rounds: int) -> float:
    return C.time_ms(fn, torch.device("cpu"), warmup=1, rep=rounds) / 1e3


def _bound(threads: int, rounds: int) -> int:
    """Print the achieved FLOP rate of one 8-tile batch, the matmul rate and the per-tile
    seconds at batch 1, 2, 4, 8 (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

    import rsfm_core as rs

    # torch's counter has no formula for SDPA's CPU kernel (where the attention runs here)
    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _sdpa_cpu_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        b, h, n, d = q_shape
        return 4 * b * h * n * k_shape[-2] * d  # QK^T and PV, 2 FLOPs per multiply-add

    from rsfm_core.cliutil import keep_freed_memory

    malloc = keep_freed_memory()  # as `rsfm embed` on CPU; RSFM_MALLOC=system: glibc's default
    emb = rs.Embedder.random("rsfm_tiny", device="cpu")
    tiles = _tiles(8)
    with FlopCounterMode(display=False) as fc:
        emb.forward_tiles(tiles[:1])
    per_op = fc.get_flop_counts()["Global"]
    total = sum(per_op.values())
    attn = sum(n for op, n in per_op.items() if "attention" in str(op))
    a = torch.randn(2048, 2048)
    mm_rate = 2 * 2048**3 / _median_s(lambda: a @ a, rounds) / 1e9
    per_tile, sys_share, diff = {}, {}, {}
    one = emb.forward_tiles(tiles[:1])[0][0]
    for b in (1, 2, 4, 8):
        out = emb.forward_tiles(tiles[:b])[0][0]  # tile 0 in a batch of b: batch-invariant?
        diff[b] = float(np.abs(out - one).max() / np.abs(one).max())
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        per_tile[b] = _median_s(lambda b=b: emb.forward_tiles(tiles[:b]), rounds) / b
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_sys = r1.ru_stime - r0.ru_stime
        sys_share[b] = cpu_sys / max(cpu_sys + r1.ru_utime - r0.ru_utime, 1e-9)
    achieved = total / per_tile[8] / 1e9
    print(
        f"rsfm_tiny, 256 px S2 tile, {threads} threads, median of {max(3, min(rounds, 10))}; memory: {malloc}"
    )
    print(f"forward GFLOP per tile {total / 1e9:.1f} (attention {attn / total:.0%})")
    for b, s in per_tile.items():
        print(
            f"batch {b}: {s:.3f} s per tile ({total / s / 1e9:.1f} GFLOP/s, "
            f"{sys_share[b]:.0%} of CPU time in the kernel; tile 0 vs batch 1: max rel diff "
            f"{diff[b]:.1e})"
        )
    print(f"float32 matmul 2048^3: {mm_rate:.1f} GFLOP/s; forward at batch 8: {achieved:.1f} "
          f"GFLOP/s = {achieved / mm_rate:.0%} of it; equal-output compute speed-up bound "
          f"x{mm_rate / achieved:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
