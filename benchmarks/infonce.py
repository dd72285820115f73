"""InfoNCE benchmark: the Triton kernels vs the torch backend vs the float32 reference, all
in one run on one device; forward+backward time and peak memory.

    python -m benchmarks.infonce [--quick] [--json out.json] [--sizes 4096,16384] [--dims 128]
    python -m benchmarks.infonce --compile-report   # no GPU needed: regs/spills/smem

GPU cases (bfloat16, unit-norm features, t = 0.07, diagonal positives): N = M in
{4k, 16k, 64k, 256k}, D in {128, 256}, plus a symmetric case at 16k. Per provider: forward
and forward+backward milliseconds, extra peak memory (``max_memory_allocated`` above the
inputs), TFLOP/s counting the minimum work of the loss -- the logits once and the two
gradient products: ``2NMD`` forward, ``6NMD`` forward+backward (x2 forward, +0 backward when
symmetric is not counted) -- and that rate as % of the machine's bf16 GEMM rate measured in
the same run (``torch.mm`` 8192^3). The reference materialises N x M in float32: its memory
is predicted (``REF_BYTES_PER_PAIR`` bytes per logit) and the case skipped where it cannot
fit; a provider whose predicted time (quadratic from the previous size) exceeds
``--max-case-s`` is skipped too. Both say so in the table.

CPU ``--quick`` (seconds): the new ``torch`` backend vs the pre-issue-14 ``chunked``
backend (a verbatim copy below, labelled) vs the reference, float32, on small N; timing on
a shared machine is noisy, so compare ratios within one run.

``--compile-report`` compiles every pinned config for sm80 and sm90 offline (Triton's own
ptxas) and prints shared memory, registers and spills (worst case: masks on, ragged N and
M, symmetric, temperature gradient); it is how the configs in kernels/infonce_triton.py
were checked.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import _common as C

REF_BYTES_PER_PAIR = 24  # logits, masked copy, softmax/exp, its grad, masked grad, slack (fp32)


# ------------------------------------------------------------ the pre-issue-14 backend
# LEGACY: kernels/infonce.py's `chunked` backend as of commit 2b2d85f, kept verbatim (bar
# names) as the baseline of the --quick comparison. Do not use it elsewhere.


def _legacy_row_weights(n, m, labels, q_valid, k_valid, dtype):
    valid = torch.ones(n, dtype=torch.bool, device=labels.device)
    if q_valid is not None:
        valid = valid & q_valid.to(torch.bool)
    if k_valid is not None:
        valid = valid & k_valid.to(torch.bool)[labels]
    w = valid.to(dtype)
    return w / w.sum().clamp_min(1.0)


def _legacy_masked_tile(qb, kt, kv, temperature):
    s = (qb @ kt.T) / temperature  # (bq, bk)
    if kv is not None:
        s = s.masked_fill(~kv[None, :], float("-inf"))
    return s


def _legacy_chunked_lse(q, k, k_valid, temperature, block_q, block_k):
    n, m = q.shape[0], k.shape[0]
    lse = torch.full((n,), float("-inf"), dtype=q.dtype, device=q.device)
    for i0 in range(0, n, block_q):
        qb = q[i0 : i0 + block_q]
        run = torch.full((qb.shape[0],), float("-inf"), dtype=q.dtype, device=q.device)
        for j0 in range(0, m, block_k):
            kv = None if k_valid is None else k_valid[j0 : j0 + block_k]
            s = _legacy_masked_tile(qb, k[j0 : j0 + block_k], kv, temperature)
            run = torch.logaddexp(run, torch.logsumexp(s, dim=1))
        lse[i0 : i0 + block_q] = run
    return lse


def _legacy_cd(*ts):
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


class _LegacyInfoNCEChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, labels, w, k_valid, temperature, block_q, block_k):
        cd = _legacy_cd(q, k)
        qc, kc = q.to(cd), k.to(cd)
        lse = _legacy_chunked_lse(qc, kc, k_valid, temperature, block_q, block_k)
        pos = (qc * kc[labels]).sum(dim=1) / temperature  # (N,)
        live = w > 0
        per_row = torch.where(live, lse - pos, torch.zeros_like(lse))
        lse = torch.where(live, lse, torch.full_like(lse, float("inf")))
        ctx.save_for_backward(q, k, labels, w, lse, k_valid)
        ctx.temperature, ctx.block_q, ctx.block_k = temperature, block_q, block_k
        return (w * per_row).sum()

    @staticmethod
    def backward(ctx, g):
        q, k, labels, w, lse, k_valid = ctx.saved_tensors
        t, bq_, bk_ = ctx.temperature, ctx.block_q, ctx.block_k
        cd = _legacy_cd(q, k)
        qc, kc = q.to(cd), k.to(cd)
        gw = (w * g.to(cd)) / t
        dq = torch.zeros_like(qc)
        dk = torch.zeros_like(kc)
        n, m = qc.shape[0], kc.shape[0]
        for i0 in range(0, n, bq_):
            qb, lb, gb = qc[i0 : i0 + bq_], lse[i0 : i0 + bq_], gw[i0 : i0 + bq_]
            for j0 in range(0, m, bk_):
                kt = kc[j0 : j0 + bk_]
                kv = None if k_valid is None else k_valid[j0 : j0 + bk_]
                p = torch.exp(_legacy_masked_tile(qb, kt, kv, t) - lb[:, None])  # (bq, bk)
                p = p * gb[:, None]
                dq[i0 : i0 + bq_] += p @ kt
                dk[j0 : j0 + bk_] += p.T @ qb
        dq -= gw[:, None] * kc[labels]
        dk.index_add_(0, labels, -gw[:, None] * qc)
        return dq.to(q.dtype), dk.to(k.dtype), None, None, None, None, None, None


def legacy_chunked(q, k, temperature=0.1, labels=None, q_valid=None, k_valid=None,
                   block_q=2048, block_k=2048):  # fmt: skip
    """LEGACY (pre-issue-14) chunked InfoNCE, including its syncing label-range check."""
    n, m = q.shape[0], k.shape[0]
    labels = torch.arange(n, device=q.device) if labels is None else labels.to(torch.long)
    lo, hi = (int(labels.min()), int(labels.max())) if n else (0, 0)  # the old host sync
    if n and (lo < 0 or hi >= m):
        raise ValueError(f"labels must lie in [0, {m})")
    w = _legacy_row_weights(n, m, labels, q_valid, k_valid, _legacy_cd(q, k))
    kv = None if k_valid is None else k_valid.to(torch.bool)
    return _LegacyInfoNCEChunked.apply(q, k, labels, w, kv, float(temperature), block_q, block_k)


# ---------------------------------------------------------------- measurement


def _inputs(n: int, d: int, dtype, device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g), dim=1)
    k = F.normalize(q + 0.5 * torch.randn(n, d, generator=g), dim=1)  # correlated positives
    return q.to(device, dtype).requires_grad_(), k.to(device, dtype).requires_grad_()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device, budget_s: float) -> float:
    """ms per call of ``fn``: one warm-up call, then as many as fit ``budget_s`` (1..20);
    the median on CUDA, the minimum on CPU (a shared CPU adds noise that is only ever
    positive)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    if device.type == "cuda" and first < 0.05:  # short: CUDA events, L2 flushed (do_bench)
        return C.time_ms(fn, device)
    reps = max(1, min(20, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times) if device.type == "cuda" else min(times)


def _legacy_provider(q, k, t, sym):
    if sym:  # the old backend had no symmetric mode: two calls
        return 0.5 * (legacy_chunked(q, k, t) + legacy_chunked(k, q, t))
    return legacy_chunked(q, k, t)


def _providers(device: torch.device, mod) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    if mod._T is not None and (device.type == "cuda" or mod._T._INTERPRETED):
        out["triton"] = lambda q, k, t, sym: mod.info_nce_triton(q, k, t, symmetric=sym)
    out["torch"] = lambda q, k, t, sym: mod.info_nce_torch(q, k, t, symmetric=sym)
    if device.type == "cpu":
        out["legacy_chunked"] = _legacy_provider
    out["reference"] = lambda q, k, t, sym: mod.info_nce_reference(q, k, t, symmetric=sym)
    return out


def gemm_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The machine's matmul rate in the benchmark's dtype (8192^3 on GPU, 1024^3 on CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = _time(lambda: a @ b, device, 2.0)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _free_bytes(device) -> int:
    if device.type != "cuda":
        return 1 << 62
    free, _ = torch.cuda.mem_get_info(device)
    return free


def measure(name, fn, n, d, sym, dtype, device, budget_s, ref_loss) -> dict:
    row = {"N": n, "D": d, "symmetric": sym, "provider": name}
    q, k = _inputs(n, d, dtype, device)
    t = 0.07
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)

        def step():
            fn(q, k, t, sym).backward()

        step()
        _sync(device)
        if device.type == "cuda":  # CPU: RSS hides reuse by the C allocator; GPU only
            row["peak_extra_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        with torch.no_grad():
            loss = fn(q, k, t, sym)
            row["loss"] = float(loss)
            if ref_loss is not None:
                row["loss_err"] = abs(float(loss) - ref_loss)
            row["fwd_ms"] = _time(lambda: fn(q, k, t, sym), device, budget_s / 3)
        row["fwdbwd_ms"] = _time(step, device, budget_s)
    except torch.cuda.OutOfMemoryError:
        row["note"] = "OOM"
    except Exception as e:  # a provider that cannot run this case is reported, not fatal
        row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
    finally:
        q.grad = k.grad = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    work = 2 * n * n * d
    for mode, mult in (("fwd", 1), ("fwdbwd", 3)):
        ms = row.get(f"{mode}_ms")
        if ms:
            row[f"{mode}_tflops"] = work * mult / (ms * 1e-3) / 1e12
    return row


def cases(device, quick: bool, sizes, dims) -> list[tuple[int, int, bool]]:
    if device.type != "cuda":
        return [(256, 64, False), (2048, 128, False), (4096, 128, False), (2048, 128, True)]
    if quick:
        return [(4096, 128, False), (16384, 256, False), (16384, 256, True)]
    sizes = sizes or [4096, 16384, 65536, 262144]
    dims = dims or [128, 256]
    out = [(n, d, False) for d in dims for n in sizes]
    return out + [(16384, dims[-1], True)]


def run(quick: bool, json_path: str | None, sizes, dims, max_case_s: float) -> int:
    device = C.default_device()
    I = C.import_kernels("rsfm_kernels.infonce")  # noqa: E741
    if device.type != "cuda":
        print("No CUDA device: the CPU --quick mode (new torch backend vs the pre-issue-14 "
              "chunked backend vs the reference, float32). GPU numbers need a GPU.")  # fmt: skip
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = C.environment(device)
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  dtype {dtype}")
    gemm = gemm_tflops(device, dtype)
    print(f"measured {dtype} GEMM rate: {gemm:.3g} TFLOP/s")
    provs = _providers(device, I)
    if device.type == "cpu":
        provs.pop("triton", None)  # the interpreter is for tests, not timing
    budget = 2.0 if device.type == "cuda" else 1.5
    rows: list[dict] = []
    last: dict[tuple[str, int, bool], tuple[int, float]] = {}
    for n, d, sym in cases(device, quick, sizes, dims):
        ref_loss = None
        for name, fn in provs.items():
            prev = last.get((name, d, sym))
            skip = None
            if name == "reference":
                need = REF_BYTES_PER_PAIR * n * n
                if need > 0.85 * _free_bytes(device):
                    skip = f"skipped: predicted {need / 2**30:.0f} GiB > free memory"
            if skip is None and prev is not None:
                pred = prev[1] * (n / prev[0]) ** 2 / 1e3
                if pred > max_case_s:
                    skip = f"skipped: predicted {pred:.0f} s per step"
            if skip:
                rows.append({"N": n, "D": d, "symmetric": sym, "provider": name, "note": skip})
            else:
                rows.append(measure(name, fn, n, d, sym, dtype, device, budget, ref_loss))
                if rows[-1].get("fwdbwd_ms"):
                    last[(name, d, sym)] = (n, rows[-1]["fwdbwd_ms"])
                if name == "triton" and "loss" in rows[-1]:
                    ref_loss = rows[-1]["loss"]  # later providers' loss_err is vs triton
            r = rows[-1]
            ms = C.fmt(r.get("fwdbwd_ms"))
            print(f"  N={n:<7} D={d:<4} sym={sym!s:<5} {name:<15} {ms} ms  {r.get('note', '')}",
                  file=sys.stderr)  # fmt: skip
    base_name = "torch" if device.type == "cuda" else "legacy_chunked"
    for r in rows:
        for mode in ("fwd", "fwdbwd"):
            if r.get(f"{mode}_tflops"):
                r[f"{mode}_pct_gemm"] = 100 * r[f"{mode}_tflops"] / gemm
        peers = [
            p for p in rows if (p["N"], p["D"], p["symmetric"]) == (r["N"], r["D"], r["symmetric"])
        ]
        base = next((p for p in peers if p["provider"] == base_name), None)
        if base and base.get("fwdbwd_ms") and r.get("fwdbwd_ms"):
            r["x_vs_base"] = base["fwdbwd_ms"] / r["fwdbwd_ms"]
    cols = ["N", "D", "symmetric", "provider", "fwd_ms", "fwdbwd_ms", "fwdbwd_tflops",
            "fwdbwd_pct_gemm", "x_vs_base", "peak_extra_mb", "loss_err", "note"]  # fmt: skip
    C.print_table(rows, cols, f"InfoNCE fwd+bwd ({env['device']}, {dtype}; GEMM {gemm:.3g} "
                  f"TFLOP/s; x_vs_base = {base_name} ms / provider ms)")  # fmt: skip
    if device.type != "cuda":
        print("\nCPU: no peak memory (the C allocator's reuse hides it from RSS; "
              "tests/kernels/test_infonce.py counts the torch backend's temporaries); "
              "the machine may be shared: compare ratios within this run.")  # fmt: skip
    if json_path:
        payload = {
            "benchmark": "infonce",
            "dtype": str(dtype),
            "gemm_tflops": gemm,
            "results": rows,
        }
        print(f"wrote {C.write_json(json_path, payload, device)}")
    return 0


# ---------------------------------------------------------------- offline compile report


def compile_report(archs=(90, 80), dims=(64, 128, 256), dtype: str = "bf16") -> list[dict]:
    """Compile each pinned config for each arch without a GPU; shared memory, regs, spills.

    Worst case: masks on, N and M ragged, symmetric, temperature gradient. Strides along D
    are specialised to 1 and the row strides marked 16-divisible, as Triton does at launch
    for contiguous rows, so the code is what a real launch compiles.
    """

    T = C.import_kernels("rsfm_kernels.infonce_triton")
    if T._INTERPRETED:
        raise SystemExit("--compile-report needs TRITON_INTERPRET unset (it compiles for the GPU)")
    ptrs = {n: f"*{dtype}" for n in ("X", "Y", "Q", "K", "DQ", "DK")}
    ptrs.update({n: "*fp32" for n in ("SC", "LSE", "POS", "CR", "LSE_R", "CC", "LSE_C", "DT")})
    ptrs.update(YKEEP="*u8", KKEEP="*u8", QKEEP="*u8", LAB="*i32")
    unit = {"sxd", "syd", "sqd", "skd", "sdqd", "sdkd"}
    aligned = {"sxn", "syn", "sqn", "skn", "sdqn", "sdkn", "sdqs", "sdks", "LOOP_PER_SPLIT"}

    TC = C.import_kernels("rsfm_kernels._triton_common")

    def build(kern, consts, cap, warps, stages):
        consts, sig, div = dict(consts), {}, []
        for n in TC.kernel_arg_names(kern):
            if n in consts:
                continue
            if n in unit:
                consts[n] = 1
            elif n in ptrs:
                sig[n] = ptrs[n]
                div.append(n)
            else:
                sig[n] = "i32"
                if n in aligned:
                    div.append(n)
        k = TC.compile_kernel(kern, sig, consts, cap, warps, stages, tuple(div))
        return {"shared_kb": k.metadata.shared / 1024, "usage": TC.ptxas_report(k.asm["ptx"], cap)}

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    rows = []
    for cap in archs:
        for d in dims:
            fwd, gq, gk = T.pinned_configs(d, torch_dtype, torch.device("cuda"), arch=f"sm{cap}")
            ragged = dict(EVEN_N=False, EVEN_M=False, EVEN_D=True, BLOCK_D=T.block_d(d))
            for name, kern, cfg, extra in (
                ("fwd (row LSE + positive)", T._lse_kernel, fwd,
                 dict(HAS_MASK=True, WITH_POS=True)),
                ("fwd (column LSE)", T._lse_kernel, fwd, dict(HAS_MASK=True, WITH_POS=False)),
                ("bwd dQ (+dt)", T._grad_q_kernel, gq,
                 dict(HAS_KMASK=True, HAS_QMASK=True, SYM=True, WITH_DT=True)),
                ("bwd dK", T._grad_k_kernel, gk, dict(HAS_KMASK=True, HAS_QMASK=True, SYM=True)),
            ):  # fmt: skip
                if kern is T._grad_k_kernel:
                    blocks = dict(BLOCK_N=cfg.block_own, BLOCK_M=cfg.block_loop)
                else:
                    blocks = dict(BLOCK_M=cfg.block_own, BLOCK_N=cfg.block_loop)
                r = build(kern, {**ragged, **extra, **blocks}, cap, cfg.num_warps, cfg.num_stages)
                rows.append(
                    {
                        "arch": f"sm{cap}",
                        "D": d,
                        "kernel": name,
                        "config": f"{cfg.block_own}x{cfg.block_loop} "
                        f"w{cfg.num_warps} s{cfg.num_stages}",
                        **r,
                    }
                )
                print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--compile-report", action="store_true", help="offline sm80/sm90 compile")
    p.add_argument("--arch", type=int, action="append", help="with --compile-report: 80, 90")
    p.add_argument("--dim", type=int, action="append", help="with --compile-report: 64..256")
    p.add_argument("--sizes", help="GPU: comma-separated N = M (default 4096,16384,65536,262144)")
    p.add_argument("--dims", help="GPU: comma-separated D (default 128,256)")
    p.add_argument("--max-case-s", type=float, default=20.0,
                   help="skip a provider whose predicted fwd+bwd step exceeds this")  # fmt: skip
    args = p.parse_args(argv)
    if args.compile_report:
        rows = compile_report(tuple(args.arch or (90, 80)), tuple(args.dim or (64, 128, 256)))
        title = "offline compile report (bf16, masked ragged symmetric worst case)"
        C.print_table(rows, ["arch", "D", "kernel", "config", "shared_kb", "usage"], title)
        if args.json:
            C.write_json(args.json, {"benchmark": "infonce_compile_report", "results": rows},
                         torch.device("cpu"))  # fmt: skip
        return 0
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
    dims = [int(x) for x in args.dims.split(",")] if args.dims else None
    return run(args.quick, args.json, sizes, dims, args.max_case_s)


if __name__ == "__main__":
    sys.exit(main())
