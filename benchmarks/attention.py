"""Attention benchmark: rsfm's Triton kernels vs PyTorch SDPA (each backend pinned), xformers
(where installed) and the naive float32 reference, all in one run on one device.

    python -m benchmarks.attention [--quick] [--json out.json] [--cases long,short]
    python -m benchmarks.attention --compile-report   # no GPU needed: regs/spills/smem
    python -m benchmarks.attention --dispatch-cost    # CPU: per-call cost of the dispatcher

Cases (bfloat16 on GPU):
- long (issue 15's targets): N in {1024, 4096, 8192, 16384}, D in {64, 128}, 16k tokens
  per batch (B = 16384 / N) and H = 2048 / D (FlashAttention's benchmark convention).
  TFLOP/s with FLOPs = 4 B H N^2 D forward, 2.5x that backward (FlashAttention's
  convention: 5 instead of 2 matmuls) and 3.5x forward+backward.
- short (the fusion stage): B*h*w = 65,536 sequences, H = 8, L in {4, 8, 16, 32, 64},
  D = 64, in the encoder's strided layout (a view of a packed (S, L, 3, H, D) qkv); GB/s
  counting q, k, v, o (forward) plus dO, dQ, dK, dV (backward) once each, against the
  measured copy bandwidth. L = 16 and 64 also run with a key-padding mask.
Providers: ``triton`` (what users get: autotuned on GPU, the chosen config is recorded per
case), ``triton_pinned`` (the table config, RSFM_AUTOTUNE=0), ``sdpa_flash`` /
``sdpa_efficient`` / ``sdpa_cudnn`` (SDPA with one backend pinned), ``sdpa`` (PyTorch's own
choice), ``xformers`` (where installed; the key-padding mask as an additive bias) and
``reference`` (skipped where its N x N float32 matrices would not fit). On CPU only tiny
shapes run (sdpa vs reference, plus triton when TRITON_INTERPRET=1): GPU numbers need a GPU.
The JSON is rewritten after every case, so a run stopped by a time limit keeps what it did.

``--compile-report`` runs :mod:`rsfm_kernels.attn.offline` (every launch config compiled
for sm80/sm86/sm90/sm100/sm120 with Triton's own ptxas: shared memory, registers, spills).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import _common as C


@dataclass
class Case:
    kind: str  # "long" or "short"
    b: int
    h: int
    n: int
    d: int
    masked: bool = False

    @property
    def label(self) -> str:
        m = " mask" if self.masked else ""
        return f"{self.kind} B={self.b} H={self.h} N={self.n} D={self.d}{m}"


def cases(
    quick: bool, device: torch.device, kinds=("long", "short"), subset: str = "all"
) -> list[Case]:
    if device.type != "cuda":
        out = [Case("long", 2, 2, 64, 32), Case("long", 2, 2, 128, 32)]
        out += [Case("short", 64, 2, 8, 32), Case("short", 64, 2, 16, 32, masked=True)]
    elif quick:
        out = [Case("long", 4, 16, 4096, 128), Case("short", 65536, 8, 16, 64)]
    elif subset == "targets":  # the target shapes, for a time-limited GPU check
        out = [Case("long", 16384 // n, 2048 // d, n, d) for d in (64, 128) for n in (4096, 16384)]
        out += [Case("short", 65536, 8, n, 64) for n in (4, 16, 64)]
        out.append(Case("short", 65536, 8, 16, 64, masked=True))
    else:
        out = [
            Case("long", 16384 // n, 2048 // d, n, d)
            for d in (64, 128)
            for n in (1024, 4096, 8192, 16384)
        ]
        out += [Case("short", 65536, 8, n, 64) for n in (4, 8, 16, 32, 64)]
        out += [Case("short", 65536, 8, n, 64, masked=True) for n in (16, 64)]
    return [c for c in out if c.kind in kinds]


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device, requires_grad: bool):
    """q, k, v (B, H, N, D) and the key-padding mask; short inputs are strided views."""
    g = torch.Generator(device="cpu").manual_seed(0)
    if case.kind == "short":
        # The encoder's layout: one qkv projection (S, L, 3, H, D), viewed as (S, H, L, D).
        qkv = torch.randn(case.b, case.n, 3, case.h, case.d, generator=g).to(device, dtype)
        qkv.requires_grad_(requires_grad)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (S, H, L, D) views
        leaves = [qkv]
    else:
        shape = (case.b, case.h, case.n, case.d)
        q, k, v = (
            torch.randn(shape, generator=g).to(device, dtype).requires_grad_(requires_grad)
            for _ in range(3)
        )
        leaves = [q, k, v]
    mask = None
    if case.masked:
        mask = torch.rand(case.b, case.n, generator=g) < 0.75
        mask[:, 0] = True  # every sequence keeps one date
        mask = mask.to(device)
    return q, k, v, mask, leaves


# ---------------------------------------------------------------- peers


def xformers_attention(q, k, v, mask=None, scale=None):
    """xformers' memory-efficient attention on (B, H, N, D) with the key-padding mask as an
    additive bias (0 / -inf), rows without a valid key zeroed (rsfm's convention)."""
    from xformers.ops import memory_efficient_attention  # lazy: optional dependency

    bias = any_valid = None
    if mask is not None:
        b, h, n, m = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        keep = mask.to(torch.bool)
        any_valid = keep.any(dim=-1)  # (B,)
        keep = keep | ~any_valid[:, None]  # a dummy key for empty rows, zeroed below
        m_pad = (m + 7) // 8 * 8  # xformers wants the bias's last dim 16-byte aligned
        full = torch.zeros(b, 1, 1, m_pad, dtype=q.dtype, device=q.device)
        full[..., :m] = torch.where(keep, 0.0, float("-inf"))[:, None, None, :].to(q.dtype)
        bias = full[..., :m].expand(b, h, n, m)  # (B, H, N, M) view, stride 0 over H and N
    out = memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
    ).transpose(1, 2)  # (B, N, H, D) -> (B, H, N, D)
    if any_valid is not None:
        out = out * any_valid[:, None, None, None].to(out.dtype)
    return out


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def providers(device: torch.device, A) -> dict[str, Callable]:
    """name -> fn(q, k, v, mask); only those that can exist on this machine."""
    out: dict[str, Callable] = {}
    T = A._T  # the Triton ops (None where Triton is not installed)
    if T is not None and (device.type == "cuda" or T._INTERPRETED):
        out["triton"] = lambda q, k, v, m: T.triton_attention(q, k, v, m)
        if device.type == "cuda":

            def pinned(q, k, v, m):
                with _env("RSFM_AUTOTUNE", "0"):
                    return T.triton_attention(q, k, v, m)

            out["triton_pinned"] = pinned
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            be = getattr(SDPBackend, name, None)
            if be is not None:
                out[f"sdpa_{name.split('_')[0].lower()}"] = _pinned_sdpa(A, sdpa_kernel, be)
        if importlib.util.find_spec("xformers") is not None:
            out["xformers"] = xformers_attention
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


def _reference_fits(case: Case, device: torch.device) -> bool:
    """The reference holds ~3 float32 (B, H, N, N) tensors (scores, P, their grads)."""
    if device.type != "cuda":
        return True
    need = 3 * 4 * case.b * case.h * case.n * case.n
    return need < 0.6 * torch.cuda.get_device_properties(device).total_memory


def measure(case: Case, name: str, fn: Callable, dtype, device, ref_out, timing) -> dict:
    row = {"case": case.label, "kind": case.kind, "provider": name}
    if name == "reference" and not _reference_fits(case, device):
        row["note"] = "skipped: N x N float32 matrices would not fit"
        return row
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
        row["bwd_ms"] = C.time_ms(
            lambda: torch.autograd.grad(out, leaves, do, retain_graph=True), device, **timing
        )
        out = None  # frees the retained graph before the next timing

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
    for mode, work_flops, work_bytes in (("fwd", 1.0, 4), ("bwd", 2.5, 7), ("fwdbwd", 3.5, 11)):
        ms = row.get(f"{mode}_ms")
        if ms is None:
            continue
        if case.kind == "long":
            row[f"{mode}_tflops"] = flops * work_flops / (ms * 1e-3) / 1e12
        else:  # q, k, v, o | + dO, dQ, dK, dV (+ q, k, v read again) once each
            row[f"{mode}_gbs"] = nbytes * work_bytes / (ms * 1e-3) / 1e9
    return row


def tuned_configs(A, case: Case, device: torch.device) -> dict[str, str]:
    """The configs the autotuner picked for this case's kernels (empty where none ran)."""
    if A._T is None or device.type != "cuda" or case.kind != "long":
        return {}
    D = sys.modules.get("rsfm_kernels.attn.dense")
    out = {}
    for (kernel, *_), tuner in getattr(D, "_TUNED", {}).items():
        cache = getattr(tuner, "cache", {})
        mine = [c for key, c in cache.items() if key[:3] == (D._bucket(case.n),) * 2 + (case.d,)]
        best = [str(c) for c in mine]
        if best:
            out[kernel] = "; ".join(sorted(set(best)))
    return out


def add_ratios(rows: list[dict], copy_gbs: float) -> None:
    """triton vs the fastest pinned SDPA backend of the same case; GB/s as % of copy."""
    for r in rows:
        for mode in ("fwd", "bwd", "fwdbwd"):
            if r.get(f"{mode}_gbs") is not None:
                r[f"{mode}_pct_copy"] = 100 * r[f"{mode}_gbs"] / copy_gbs
    for r in rows:
        if not r["provider"].startswith("triton"):
            continue
        for mode in ("fwd", "bwd", "fwdbwd"):
            peers = [
                p[f"{mode}_ms"]
                for p in rows
                if p["case"] == r["case"]
                and p["provider"].startswith("sdpa")
                and p.get(f"{mode}_ms")
            ]
            if peers and r.get(f"{mode}_ms"):
                r[f"{mode}_x_sdpa"] = min(peers) / r[f"{mode}_ms"]


def _print(rows, env, dtype, copy_gbs) -> None:
    base = ["case", "provider", "fwd_ms", "bwd_ms"]
    ratio = ["fwd_x_sdpa", "bwd_x_sdpa", "fwdbwd_x_sdpa", "max_err", "note"]
    C.print_table(
        [r for r in rows if r["kind"] == "long"],
        [*base, "fwd_tflops", "bwd_tflops", "fwdbwd_tflops", *ratio],
        f"long sequences ({env['device']}, {dtype})",
    )
    C.print_table(
        [r for r in rows if r["kind"] == "short"],
        [*base, "fwd_gbs", "fwd_pct_copy", "fwdbwd_gbs", "fwdbwd_pct_copy", *ratio],
        f"many short sequences ({env['device']}, {dtype}; copy {copy_gbs:.0f} GB/s)",
    )


def run(quick: bool, json_path: str | None, kinds=("long", "short"), subset="all") -> int:
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
    rows: list[dict] = []
    for case in cases(quick, device, kinds, subset):
        ref_out = None
        if _reference_fits(case, device):
            with contextlib.suppress(Exception), torch.no_grad():
                q, k, v, mask, _ = make_inputs(case, dtype, device, requires_grad=False)
                ref_out = A.attention_reference(q.float(), k.float(), v.float(), mask)
                del q, k, v
        for name, fn in provs.items():
            t0 = time.time()
            rows.append(measure(case, name, fn, dtype, device, ref_out, timing))
            if name == "triton":
                rows[-1]["autotuned"] = tuned_configs(A, case, device)
            print(f"  {case.label:<44} {name:<16} {C.fmt(rows[-1].get('fwd_ms'))} ms fwd "
                  f"({time.time() - t0:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip
        del ref_out
        add_ratios(rows, copy_gbs)
        if json_path:  # after every case: a run stopped by a time limit keeps its rows
            payload = {"benchmark": "attention", "dtype": str(dtype),
                       "copy_bandwidth_gbs": copy_gbs, "results": rows}  # fmt: skip
            C.write_json(json_path, payload, device)
    _print(rows, env, dtype, copy_gbs)
    for r in rows:
        if r.get("autotuned"):
            print(f"autotuned {r['case']}: {r['autotuned']}")
    if device.type != "cuda":
        print("\nCPU timings only show the harness works; GPU numbers need a GPU.")
    if json_path:
        print(f"wrote {json_path}")
    return 0


# ---------------------------------------------------------------- dispatch cost (CPU)


def dispatch_cost(repeats: int = 5000, rounds: int = 7) -> dict:
    """Per-call cost of ``rk.attention``'s backend choice on CPU, without the attention:
    the chosen backend is swapped for one that returns at once. ``cached``: this version
    (environment look-up of a forced backend, the signature key, a dict look-up);
    ``select every call``: the registry asked each call (the pre-issue-15 path: every
    backend's reasons until one fits). Minimum over interleaved rounds, microseconds."""
    import rsfm_kernels as rk

    A = C.import_kernels("rsfm_kernels.attn")
    dispatch = C.import_kernels("rsfm_kernels.dispatch")
    q = k = v = torch.randn(1, 1, 4, 8)
    mask = torch.ones(1, 4, dtype=torch.bool)
    inputs = {"q": q, "k": k, "v": v, "key_valid": mask}
    rk.attention(q, k, v, key_valid=mask)  # fill the cache
    name = A._choose(A._dispatch_key(q, k, v, mask, None))
    real = A._FNS[name]
    A._FNS[name] = lambda q, k, v, **kw: q
    try:
        variants = {
            "cached": lambda: rk.attention(q, k, v, key_valid=mask),
            "select every call": lambda: dispatch.select("attention", inputs, None),
        }
        best = {n: float("inf") for n in variants}
        for _ in range(rounds):
            for n, fn in variants.items():
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fn()
                best[n] = min(best[n], (time.perf_counter() - t0) / repeats * 1e6)
    finally:
        A._FNS[name] = real
    return {"backend": name, **{n: {"us_per_call": us} for n, us in best.items()}}


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--cases", default="long,short", help="comma list of: long, short")
    p.add_argument(
        "--subset",
        choices=("all", "targets"),
        default="all",
        help="targets: only the issue's target shapes (long N 4k/16k, short L 4/16/64)",
    )
    p.add_argument(
        "--compile-report",
        action="store_true",
        help="offline compile of every launch config for every GPU family (no GPU)",
    )
    p.add_argument("--dispatch-cost", action="store_true", help="CPU: dispatcher cost per call")
    args, rest = p.parse_known_args(argv)
    if args.compile_report:
        offline = C.import_kernels("rsfm_kernels.attn.offline")
        return offline.main(rest + (["--json", args.json] if args.json else []))
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.dispatch_cost:
        torch.set_num_threads(1)
        res = dispatch_cost()
        rows = [{"variant": k, **v} for k, v in res.items() if k != "backend"]
        rows.append(
            {"variant": "ratio", "us_per_call": rows[1]["us_per_call"] / rows[0]["us_per_call"]}
        )
        title = f"attention dispatch cost per call, {C.device_name()} (backend {res['backend']})"
        C.print_table(rows, ["variant", "us_per_call"], title)
        if args.json:
            C.write_json(args.json, {"benchmark": "attention_dispatch", "results": rows})
        return 0
    return run(args.quick, args.json, tuple(args.cases.split(",")), args.subset)


if __name__ == "__main__":
    sys.exit(main())
