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
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch


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
    a = p.parse_args(argv)
    import rsfm_core as rs

    torch.set_num_threads(a.threads)
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


if __name__ == "__main__":
    sys.exit(main())
