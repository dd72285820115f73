"""Attention benchmark: rsfm's Triton kernels vs PyTorch SDPA (each backend pinned), xformers
(where installed) and the naive float32 reference, all in one run on one device.

    python -m benchmarks.attention [--quick] [--json out.json]
    python -m benchmarks.attention --compile-report   # no GPU needed: regs/spills/smem

Cases (bfloat16 on GPU):
- spatial: B*T = 32, H = 12, N in {256, 1024, 4096}, D in {64, 128}; TFLOP/s with
  FLOPs = 4 B H N^2 D forward and 3.5x that forward+backward (FlashAttention's convention).
- temporal: B*h*w = 65,536 sequences, H = 8, L in {4, 8, 16, 32, 64}, D = 64, in the
  encoder's strided layout (a view of a packed (S, L, 3, H, D) qkv); GB/s counting q, k, v, o
  (forward) plus dO, dQ, dK, dV (backward) once each, against the measured copy bandwidth.
  L = 16 and 64 also run with a key-padding mask.
On CPU only ``--quick`` tiny shapes run (sdpa vs reference, plus triton when
TRITON_INTERPRET=1 is set): GPU numbers need a GPU.

``--compile-report`` compiles every pinned config for sm80 and sm90 offline (Triton's own
ptxas) and prints shared memory, registers and spills; it is how the pinned configs in
kernels/attention.py were checked, and needs no GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import _common as C


@dataclass
class Case:
    kind: str  # "spatial" or "temporal"
    b: int
    h: int
    n: int
    d: int
    masked: bool = False

    @property
    def label(self) -> str:
        m = " mask" if self.masked else ""
        return f"{self.kind} B={self.b} H={self.h} N={self.n} D={self.d}{m}"


def cases(quick: bool, device: torch.device) -> list[Case]:
    if device.type != "cuda":
        return [
            Case("spatial", 2, 2, 64, 32),
            Case("spatial", 2, 2, 128, 32),
            Case("temporal", 64, 2, 8, 32),
            Case("temporal", 64, 2, 16, 32, masked=True),
        ]
    if quick:
        return [Case("spatial", 32, 12, 1024, 64), Case("temporal", 65536, 8, 16, 64)]
    out = [Case("spatial", 32, 12, n, d) for d in (64, 128) for n in (256, 1024, 4096)]
    out += [Case("temporal", 65536, 8, n, 64) for n in (4, 8, 16, 32, 64)]
    out += [Case("temporal", 65536, 8, n, 64, masked=True) for n in (16, 64)]
    return out


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device, requires_grad: bool):
    """q, k, v (B, H, N, D) and the key-padding mask; temporal inputs are strided views."""
    g = torch.Generator(device="cpu").manual_seed(0)
    if case.kind == "temporal":
        # The encoder's layout: one qkv projection (S, L, 3, H, D), viewed as (S, H, L, D).
        qkv = torch.randn(case.b, case.n, 3, case.h, case.d, generator=g).to(device, dtype)
        qkv.requires_grad_(requires_grad)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (S, H, L, D) views
        leaves = [qkv]
    else:
        q, k, v = (
            torch.randn(case.b, case.h, case.n, case.d, generator=g)
            .to(device, dtype)
            .requires_grad_(requires_grad)
            for _ in range(3)
        )
        leaves = [q, k, v]
    mask = None
    if case.masked:
        mask = torch.rand(case.b, case.n, generator=g) < 0.75
        mask[:, 0] = True  # every sequence keeps one date
        mask = mask.to(device)
    return q, k, v, mask, leaves


def providers(device: torch.device, A) -> dict[str, Callable]:
    """name -> fn(q, k, v, mask); only those that can exist on this machine."""
    out: dict[str, Callable] = {}
    T = A._T  # the Triton kernels (None where Triton is not installed)
    if T is not None and (device.type == "cuda" or T._INTERPRETED):
        out["triton"] = lambda q, k, v, m: T.triton_attention(q, k, v, m)
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            be = getattr(SDPBackend, name, None)
            if be is not None:
                out[f"sdpa_{name.split('_')[0].lower()}"] = _pinned_sdpa(A, sdpa_kernel, be)
        if importlib.util.find_spec("xformers") is not None:
            out["xformers"] = lambda q, k, v, m: A._xformers(q, k, v, m)
    out["sdpa"] = lambda q, k, v, m: A._sdpa(q, k, v, m)  # PyTorch's own choice
    out["reference"] = lambda q, k, v, m: A.attention_reference(q, k, v, m)
    return out


def _pinned_sdpa(A, sdpa_kernel, backend):
    def fn(q, k, v, m):
        with sdpa_kernel(backend):
            return A._sdpa(q, k, v, m)

    return fn


def _short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return "OOM"
    return f"{type(e).__name__}: {msg[:70]}"


def measure(case: Case, name: str, fn: Callable, dtype, device, ref_out, timing) -> dict:
    row = {"case": case.label, "kind": case.kind, "provider": name}
    try:
        q, k, v, mask, _ = make_inputs(case, dtype, device, requires_grad=False)
        with torch.no_grad():
            out = fn(q, k, v, mask)
            if ref_out is not None:
                row["max_err"] = (out.float() - ref_out).abs().max().item()
            row["fwd_ms"] = C.time_ms(lambda: fn(q, k, v, mask), device, **timing)
        del q, k, v, out
        q, k, v, mask, leaves = make_inputs(case, dtype, device, requires_grad=True)
        out = fn(q, k, v, mask)
        do = torch.randn_like(out)

        def step():
            fn(q, k, v, mask).backward(do)

        row["fwdbwd_ms"] = C.time_ms(step, device, grad_to_none=leaves, **timing)
    except Exception as e:  # a peer that cannot run this case is reported, not fatal
        row["note"] = _short_error(e)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    elt = torch.finfo(dtype).bits // 8
    flops = 4 * case.b * case.h * case.n * case.n * case.d
    nbytes = case.b * case.h * case.n * case.d * elt
    for mode, work_fwd, work_bwd in (("fwd", 1.0, 1.0), ("fwdbwd", 3.5, 11 / 4)):
        ms = row.get(f"{mode}_ms")
        if ms is None:
            continue
        if case.kind == "spatial":
            row[f"{mode}_tflops"] = flops * work_fwd / (ms * 1e-3) / 1e12
        else:
            row[f"{mode}_gbs"] = 4 * nbytes * work_bwd / (ms * 1e-3) / 1e9
    return row


def add_ratios(rows: list[dict], copy_gbs: float) -> None:
    """triton vs the fastest pinned SDPA backend of the same case; GB/s as % of copy."""
    for r in rows:
        for mode in ("fwd", "fwdbwd"):
            if r.get(f"{mode}_gbs") is not None:
                r[f"{mode}_pct_copy"] = 100 * r[f"{mode}_gbs"] / copy_gbs
    for r in rows:
        if r["provider"] != "triton":
            continue
        for mode in ("fwd", "fwdbwd"):
            peers = [
                p[f"{mode}_ms"]
                for p in rows
                if p["case"] == r["case"]
                and p["provider"].startswith("sdpa")
                and p.get(f"{mode}_ms")
            ]
            if peers and r.get(f"{mode}_ms"):
                r[f"{mode}_x_sdpa"] = min(peers) / r[f"{mode}_ms"]


def run(quick: bool, json_path: str | None) -> int:
    device = C.default_device()
    A = C.import_kernels("rsfm_kernels.attn")
    if device.type != "cuda":
        print("No CUDA device: running the tiny CPU mode (sdpa vs reference"
              + (", triton under the interpreter" if A._T and A._T._INTERPRETED else "; set TRITON_INTERPRET=1 for triton")
              + "). GPU numbers need a GPU.")  # fmt: skip
        quick = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timing = {} if device.type == "cuda" else {"warmup": 1, "rep": 3}
    env = C.environment(device)
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  dtype {dtype}")
    copy_gbs = C.copy_bandwidth_gbs(device)
    print(f"measured copy bandwidth: {copy_gbs:.0f} GB/s (read + write)")
    provs = providers(device, A)
    rows = []
    for case in cases(quick, device):
        ref_out = None
        with contextlib.suppress(Exception), torch.no_grad():
            q, k, v, mask, _ = make_inputs(case, dtype, device, requires_grad=False)
            ref_out = A.attention_reference(q.float(), k.float(), v.float(), mask)
            del q, k, v
        for name, fn in provs.items():
            rows.append(measure(case, name, fn, dtype, device, ref_out, timing))
            print(
                f"  {case.label:<44} {name:<16} {C.fmt(rows[-1].get('fwd_ms'))} ms fwd",
                file=sys.stderr,
            )
        del ref_out
    add_ratios(rows, copy_gbs)
    cols = [
        "case",
        "provider",
        "fwd_ms",
        "fwd_tflops",
        "fwdbwd_ms",
        "fwdbwd_tflops",
        "fwd_x_sdpa",
        "fwdbwd_x_sdpa",
        "max_err",
        "note",
    ]
    C.print_table(
        [r for r in rows if r["kind"] == "spatial"],
        cols,
        f"spatial attention ({env['device']}, {dtype})",
    )
    cols = [
        "case",
        "provider",
        "fwd_ms",
        "fwd_gbs",
        "fwd_pct_copy",
        "fwdbwd_ms",
        "fwdbwd_gbs",
        "fwdbwd_pct_copy",
        "fwd_x_sdpa",
        "fwdbwd_x_sdpa",
        "max_err",
        "note",
    ]
    C.print_table(
        [r for r in rows if r["kind"] == "temporal"],
        cols,
        f"many short sequences ({env['device']}, {dtype}; copy {copy_gbs:.0f} GB/s)",
    )
    if device.type != "cuda":
        print("\nCPU timings only show the harness works; GPU numbers need a GPU.")
    if json_path:
        payload = {
            "benchmark": "attention",
            "dtype": str(dtype),
            "copy_bandwidth_gbs": copy_gbs,
            "results": rows,
        }
        print(f"wrote {C.write_json(json_path, payload, device)}")
    return 0


# ---------------------------------------------------------------- offline compile report


def compile_report(archs=(90, 80), head_dims=(64, 128), dtype: str = "bf16") -> list[dict]:
    """Compile each pinned config for each arch without a GPU; shared memory, regs, spills.

    Strides along D are specialised to 1 and other integers marked 16-divisible, as Triton
    does at launch for contiguous-in-D tensors, so the code is what a real launch compiles.
    """
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    A = C.import_kernels("rsfm_kernels.attn.dense")
    S = C.import_kernels("rsfm_kernels.attn.short")
    if A._INTERPRETED:
        raise SystemExit("--compile-report needs TRITON_INTERPRET unset (it compiles for the GPU)")
    ptrs = {n: f"*{dtype}" for n in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV")}
    ptrs.update(LSE="*fp32", DELTA="*fp32", MASK="*u8")

    def ptxas_usage(ptx: str, cap: int) -> str:
        try:
            from triton.backends.nvidia.compiler import get_ptxas

            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(ptx)
            arch = f"sm_{cap}a" if cap >= 90 else f"sm_{cap}"
            cmd = [get_ptxas(cap).path, f"-arch={arch}", "-v", f.name, "-o", os.devnull]
            err = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stderr
            os.unlink(f.name)
        except Exception as e:  # ptxas missing: report shared memory only
            return f"ptxas unavailable ({type(e).__name__})"
        regs = re.search(r"Used (\d+) registers", err)
        spill = re.search(r"(\d+) bytes spill stores", err)
        serial = " wgmma-serialized" if "C7515" in err else ""
        return f"{regs.group(1) if regs else '?'} regs, {spill.group(1) if spill else '?'} B spilled{serial}"

    def build(kern, consts, cap, warps, stages, extra_ptrs=None):
        fn = kern
        while not hasattr(fn, "src"):  # unwrap heuristics
            fn = fn.fn
        p = dict(ptrs, **(extra_ptrs or {}))
        consts, sig, attrs = dict(consts), {}, {}
        for i, n in enumerate(fn.arg_names):
            if n in consts:
                sig[n] = "constexpr"
            elif n == "smn" or (n.startswith("s") and n.endswith("d") and len(n) <= 5):
                consts[n], sig[n] = 1, "constexpr"  # unit stride along D / along the mask
            elif n in p:
                sig[n], attrs[(i,)] = p[n], [["tt.divisibility", 16]]
            elif n in ("qk_scale", "sm_scale"):
                sig[n] = "fp32"
            else:
                sig[n] = "i32"
                if n.startswith("s") and n != "smb":
                    attrs[(i,)] = [["tt.divisibility", 16]]
        k = triton.compile(
            ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", cap, 32),
            options={"num_warps": warps, "num_stages": stages},
        )  # fmt: skip
        return {"shared_kb": k.metadata.shared / 1024, "usage": ptxas_usage(k.asm["ptx"], cap)}

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    rows = []
    for cap in archs:
        dev_arch = f"sm{cap}"
        for d in head_dims:
            fwd, kv, qc = (
                A._PINNED.get((dev_arch, d), A._SMALL_SMEM)
                if torch_dtype != torch.float32
                else A._FP32
            )
            for name, kern, cfg, extra, xp in (
                ("dense fwd", A._fwd_kernel, fwd, {}, None),
                ("dense bwd dK/dV", A._bwd_kv_kernel, kv, {"ATOMIC_DQ": True}, {"DQ": "*fp32"}),
                ("dense bwd dQ", A._bwd_q_kernel, qc, {}, None),
            ):
                consts = dict(HEAD_DIM=d, HAS_MASK=True, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                              BLOCK_D=d, EVEN_M=False, EVEN_N=False, EVEN_D=True, **extra)  # fmt: skip
                r = build(kern, consts, cap, cfg.num_warps, cfg.num_stages, xp)
                rows.append(
                    {
                        "arch": dev_arch,
                        "D": d,
                        "kernel": name,
                        "config": f"{cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}",
                        **r,
                    }
                )
                print(f"  {rows[-1]}", file=sys.stderr)
            for L in (4, 16, 33, 64):
                sc = S.short_config(L, L, d, dev_arch)
                for name, kern, warps in (
                    ("short fwd", S._short_fwd_kernel, sc.warps_fwd),
                    ("short bwd", S._short_bwd_kernel, sc.warps_bwd),
                ):
                    consts = dict(
                        HEAD_DIM=d,
                        HAS_MASK=True,
                        SEQS=sc.seqs,
                        BLOCK_M=sc.block_m,
                        BLOCK_N=sc.block_n,
                        BLOCK_D=d,
                    )
                    r = build(kern, consts, cap, warps, 1)
                    rows.append(
                        {
                            "arch": dev_arch,
                            "D": d,
                            "kernel": f"{name} L={L}",
                            "config": f"{sc.seqs} seqs {sc.block_m}x{sc.block_n} w{warps}",
                            **r,
                        }
                    )
                    print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--compile-report",
        action="store_true",
        help="offline compile for sm80/sm90: smem, regs, spills",
    )
    p.add_argument(
        "--arch", type=int, action="append", help="with --compile-report: 80, 90 (repeatable)"
    )
    p.add_argument(
        "--head-dim",
        type=int,
        action="append",
        help="with --compile-report: 32, 64, 128 (repeatable)",
    )
    args = p.parse_args(argv)
    if args.compile_report:
        rows = compile_report(tuple(args.arch or (90, 80)), tuple(args.head_dim or (64, 128)))
        C.print_table(
            rows,
            ["arch", "D", "kernel", "config", "shared_kb", "usage"],
            "offline compile report (bf16, masked worst case)",
        )
        if args.json:
            C.write_json(
                args.json,
                {"benchmark": "attention_compile_report", "results": rows},
                torch.device("cpu"),
            )
        return 0
    return run(args.quick, args.json)


if __name__ == "__main__":
    sys.exit(main())
