"""Spectral patch embedding benchmark: rsfm's Triton kernel vs the ``torch`` backend, the
float32 ``reference`` and a plain ``conv2d`` (+ separate adds), all in one run on one device.

    python -m benchmarks.spectral_embed [--quick] [--dtype bf16|fp16|fp32] [--json out.json]
    python -m benchmarks.spectral_embed --compile-report [--arch 80 --arch 90]   # no GPU

Cases (GPU, D = 768): Sentinel-2 (C = 12, G = 1, 256 x 256, batch 64, p = 8 and 16) and
hyperspectral (C = 224, G = 8, p = 8, 128 x 128, batch 16); inputs in ``--dtype`` (default
bfloat16: pixels and weight), a validity mask and mean/std normalisation as the model
passes them. ``fwd``: forward only; ``fwdbwd``: forward + gradients of weight, bias, pos.

Columns: milliseconds; GB/s of the bytes model (forward: the image and the mask read once,
the tokens written once, weight/bias/pos read once; forward + backward adds a second read
of image and mask, one read of dOut and the weight-gradient write); ``%floor``: the memory
floor (bytes / measured copy bandwidth) as a percentage of the time, i.e. 100 % is the
bandwidth roofline; TFLOP/s of the useful FLOPs (2 * BT * N * C * p^2 * D forward, each
band counted in its own group only; twice that forward + backward: the weight gradient is
the same GEMM). ``x_torch``: speed-up over the ``torch`` backend of the same case.

``--quick`` (and every CPU run): small shapes in seconds; ``triton`` runs on CPU only under
``TRITON_INTERPRET=1`` and then only at a tiny size (the interpreter is for tests).

``--compile-report`` compiles the pinned configs of both kernels for sm80/sm90 offline
(Triton's own ptxas) and prints shared memory, registers and spills; no GPU needed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _common as C

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Case:
    name: str
    bt: int
    c: int
    g: int
    hw: int
    p: int
    d: int

    @property
    def n(self) -> int:
        return (self.hw // self.p) ** 2

    @property
    def label(self) -> str:
        return f"{self.name} BT={self.bt} C={self.c} G={self.g} {self.hw}px p={self.p} D={self.d}"

    def flops(self) -> float:
        return 2.0 * self.bt * self.n * self.c * self.p * self.p * self.d

    def bytes(self, elt: int, out_elt: int, backward: bool) -> float:
        """The bytes model: what a perfect fused kernel moves (see module docstring)."""
        image = self.bt * self.c * self.hw * self.hw * elt + self.bt * self.hw * self.hw  # + mask
        tokens = self.bt * self.g * self.n * self.d * out_elt
        params = (self.c * self.p * self.p + self.g + self.n) * self.d * out_elt
        fwd = image + tokens + params
        return fwd + (image + tokens + params) if backward else fwd


def cases(quick: bool, device: torch.device) -> list[Case]:
    if device.type != "cuda":
        out = [
            Case("s2", 4, 12, 1, 64, 8, 128),
            Case("s2", 4, 12, 1, 64, 16, 128),
            Case("hs", 2, 224, 8, 32, 8, 128),
        ]
        return out
    if quick:
        return [Case("s2", 16, 12, 1, 256, 8, 768), Case("hs", 4, 224, 8, 128, 8, 768)]
    return [
        Case("s2", 64, 12, 1, 256, 8, 768),
        Case("s2", 64, 12, 1, 256, 16, 768),
        Case("hs", 16, 224, 8, 128, 8, 768),
    ]


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device, grad: bool) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.rand(case.bt, case.c, case.hw, case.hw, generator=g) * 3000).to(device, dtype)
    valid = (torch.rand(case.bt, case.hw, case.hw, generator=g) > 0.05).to(device)
    weight = torch.randn(case.c, case.d, case.p, case.p, generator=g) / case.p
    gi = torch.arange(case.c) * case.g // case.c  # contiguous groups of equal size
    bias = torch.randn(case.g, case.d, generator=g) * 0.02
    pos = torch.randn(case.n, case.d, generator=g) * 0.02
    mean = torch.rand(case.c, generator=g) * 1000 + 1000
    std = torch.rand(case.c, generator=g) * 500 + 500
    t = {"weight": weight, "bias": bias, "pos": pos}
    t = {k: v.to(device, dtype).requires_grad_(grad) for k, v in t.items()}
    return dict(x=x, group_index=gi.to(device), num_groups=case.g, mean=mean.to(device),
                std=std.to(device), valid=valid, **t)  # fmt: skip


def _conv2d(x, weight, group_index, num_groups, bias, pos, mean, std, valid):
    """What a PyTorch user writes: normalise, mask, one conv2d, then the adds one by one."""
    BT, Cn, H, W = x.shape
    D, p = weight.shape[1], weight.shape[-1]
    xn = (x - mean.view(1, Cn, 1, 1).to(x.dtype)) / std.view(1, Cn, 1, 1).to(x.dtype)
    xn = torch.where(valid[:, None], xn, xn.new_zeros(()))
    onehot = group_index[None, :] == torch.arange(num_groups, device=x.device)[:, None]  # (G, C)
    wb = weight.transpose(0, 1)[None] * onehot[:, None, :, None, None].to(weight.dtype)
    y = F.conv2d(xn.to(weight.dtype), wb.reshape(num_groups * D, Cn, p, p), stride=p)
    y = y.view(BT, num_groups, D, -1).transpose(2, 3)  # (BT, G, N, D)
    return y + bias[None, :, None, :] + pos[None, None]


def providers(device: torch.device, case: Case) -> dict[str, Callable]:
    S = C.import_kernels("rsfm_kernels.spectral_embed")
    out: dict[str, Callable] = {}
    T = S._T
    if T is not None and (device.type == "cuda" or (T._INTERPRETED and case.name == "tiny")):
        out["triton"] = lambda **kw: S.spectral_patch_embed(**kw, backend="triton")
    out["torch"] = lambda **kw: S.spectral_patch_embed(**kw, backend="torch")
    out["reference"] = lambda **kw: S.spectral_patch_embed(**kw, backend="reference")
    out["conv2d"] = lambda **kw: _conv2d(**kw)
    return out


def _short_error(e: BaseException) -> str:
    if isinstance(e, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return "OOM"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {msg[:70]}"


def measure(case: Case, name: str, fn: Callable, dtype, device, ref, timing) -> dict:
    row = {"case": case.label, "provider": name}
    try:
        inp = make_inputs(case, dtype, device, grad=False)
        with torch.no_grad():
            out = fn(**inp)
            if ref is not None:
                row["max_err"] = (out.float() - ref).abs().max().item()
            row["fwd_ms"] = C.time_ms(lambda: fn(**inp), device, **timing)
        del inp, out
        inp = make_inputs(case, dtype, device, grad=True)
        leaves = [inp[k] for k in ("weight", "bias", "pos")]
        out = fn(**inp)
        dout = torch.randn_like(out)
        del out
        row["fwdbwd_ms"] = C.time_ms(
            lambda: fn(**inp).backward(dout), device, grad_to_none=leaves, **timing
        )
    except Exception as e:  # a peer that cannot run this case is reported, not fatal
        row["note"] = _short_error(e)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def add_rates(rows: list[dict], cases_by_label: dict, dtype, copy_gbs: float) -> None:
    elt = torch.finfo(dtype).bits // 8
    for r in rows:
        case = cases_by_label[r["case"]]
        for mode, bwd, work in (("fwd", False, 1.0), ("fwdbwd", True, 2.0)):
            ms = r.get(f"{mode}_ms")
            if not ms:
                continue
            nbytes = case.bytes(elt, elt, bwd)
            r[f"{mode}_gbs"] = nbytes / (ms * 1e-3) / 1e9
            r[f"{mode}_pct_floor"] = 100 * (nbytes / (copy_gbs * 1e9)) / (ms * 1e-3)
            r[f"{mode}_tflops"] = work * case.flops() / (ms * 1e-3) / 1e12
    for r in rows:
        for mode in ("fwd", "fwdbwd"):
            peer = [
                p.get(f"{mode}_ms")
                for p in rows
                if p["case"] == r["case"] and p["provider"] == "torch"
            ]
            if peer and peer[0] and r.get(f"{mode}_ms"):
                r[f"{mode}_x_torch"] = peer[0] / r[f"{mode}_ms"]


def run(quick: bool, dtype_name: str | None, json_path: str | None) -> int:
    device = C.default_device()
    S = C.import_kernels("rsfm_kernels.spectral_embed")
    interp = S._T is not None and S._T._INTERPRETED
    if device.type != "cuda":
        print("No CUDA device: the CPU mode (torch vs reference vs conv2d"
              + (", triton under the interpreter at a tiny size" if interp else "; set TRITON_INTERPRET=1 for triton")
              + "). GPU numbers need a GPU.")  # fmt: skip
        quick = True
    dtype = DTYPES[dtype_name or ("bf16" if device.type == "cuda" else "fp32")]
    timing = {} if device.type == "cuda" else {"warmup": 1, "rep": 5}
    env = C.environment(device)
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  dtype {dtype}")
    copy_gbs = C.copy_bandwidth_gbs(device)
    print(f"measured copy bandwidth: {copy_gbs:.0f} GB/s (read + write)")
    todo = cases(quick, device)
    if device.type != "cuda" and interp:
        todo.append(Case("tiny", 1, 4, 2, 16, 8, 32))
    rows = []
    for case in todo:
        ref = None
        no_tf32 = torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False)
        with contextlib.suppress(Exception), torch.no_grad(), no_tf32:  # an exact float32 spec
            inp = make_inputs(case, dtype, device, grad=False)
            ref = S.spectral_patch_embed_reference(
                **{k: (v.float() if k in ("weight", "bias", "pos") else v) for k, v in inp.items()}
            )
            del inp
        for name, fn in providers(device, case).items():
            rows.append(measure(case, name, fn, dtype, device, ref, timing))
            print(f"  {case.label:<48} {name:<10} {C.fmt(rows[-1].get('fwd_ms'))} ms fwd",
                  file=sys.stderr)  # fmt: skip
        del ref
    add_rates(rows, {c.label: c for c in todo}, dtype, copy_gbs)
    cols = ["case", "provider", "fwd_ms", "fwd_gbs", "fwd_pct_floor", "fwd_tflops", "fwd_x_torch",
            "fwdbwd_ms", "fwdbwd_gbs", "fwdbwd_pct_floor", "fwdbwd_tflops", "fwdbwd_x_torch",
            "max_err", "note"]  # fmt: skip
    C.print_table(
        rows, cols, f"spectral patch embedding ({env['device']}, {dtype}; copy {copy_gbs:.0f} GB/s)"
    )
    if device.type != "cuda":
        print("\nCPU timings are for the torch backend and the harness; GPU numbers need a GPU.")
    if json_path:
        payload = {"benchmark": "spectral_embed", "dtype": str(dtype), "copy_bandwidth_gbs": copy_gbs,
                   "bytes_model": "fwd: image + mask read once, tokens written once, params once; "
                   "fwdbwd: twice that (image + mask again, dOut read, dW written)",
                   "results": rows}  # fmt: skip
        print(f"wrote {C.write_json(json_path, payload, device)}")
    return 0


# ---------------------------------------------------------------- offline compile report


def compile_report(
    archs=(90, 80), patches=(4, 8, 10, 16, 40), dtypes=("bf16", "fp32")
) -> list[dict]:
    """Compile both kernels' pinned configs per arch, patch size and dtype without a GPU.

    Unit strides (pixels along W, features along D) are specialised to 1 and the other
    integers marked 16-divisible, as Triton does at launch for contiguous tensors with
    these sizes, so the code is what a real launch compiles. Worst case: mask and
    normalisation on, ragged token and feature tiles.
    """

    import triton

    T = C.import_kernels("rsfm_kernels.spectral_embed_triton")
    if T._INTERPRETED:
        raise SystemExit("--compile-report needs TRITON_INTERPRET unset (it compiles for the GPU)")

    TC = C.import_kernels("rsfm_kernels._triton_common")

    unit = {"sxw", "swv", "svw", "sbd", "spd", "sod", "sdd"}
    f32 = {"MEAN", "ISTD", "PART"}
    i32 = {"ORDER", "STARTS", "GI"}
    ptrs = {"X", "W", "VALID", "BIAS", "POS", "OUT", "DOUT"} | f32 | i32

    def build(kern, consts, cap, cfg, elt):
        consts, sig, div = dict(consts), {}, []
        for n in TC.kernel_arg_names(kern):
            if n in consts:
                continue
            if n in unit:
                consts[n] = 1
            elif n in ptrs:
                ty = "fp32" if n in f32 else "i32" if n in i32 else "u8" if n == "VALID" else elt
                sig[n] = f"*{ty}"
                div.append(n)
            else:
                sig[n] = "i32"
                if n.startswith("s") or n in ("D", "M_PER_SPLIT"):
                    div.append(n)
        k = TC.compile_kernel(kern, sig, consts, cap, cfg.num_warps, cfg.num_stages, tuple(div))
        return {"shared_kb": k.metadata.shared / 1024, "usage": TC.ptxas_report(k.asm["ptx"], cap)}

    rows = []
    for cap in archs:
        for dt in dtypes:
            pinned = T._PINNED.get((f"sm{cap}", 2), T._PINNED[("other", 2)])
            fwd, dw = T._FP32 if dt == "fp32" else pinned  # as pinned_configs picks on that GPU
            for p in patches:
                for name, kern, cfg, extra in (
                    ("fwd", T._fwd_kernel, fwd, dict(HAS_BIAS=True, HAS_POS=True, EVEN_M=False)),
                    ("dW", T._dw_kernel, dw, {}),
                ):
                    bk, bd = T.block_k(p, cfg), T.block_d(768, cfg)
                    consts = dict(P=p, NCH=triton.cdiv(p * p, bk), PRECISION="ieee",
                                  HAS_NORM=True, HAS_VALID=True, BLOCK_M=cfg.block_m, BLOCK_D=bd,
                                  BLOCK_K=bk, EVEN_D=False, EVEN_K=(p * p) % bk == 0, **extra)  # fmt: skip
                    r = build(kern, consts, cap, cfg, dt)
                    rows.append({
                        "arch": f"sm{cap}", "dtype": dt, "p": p, "kernel": name,
                        "config": f"{cfg.block_m}x{bd}x{bk} w{cfg.num_warps} s{cfg.num_stages}", **r,
                    })  # fmt: skip
                    print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), help="pixels and weight (default bf16 on GPU)"
    )
    p.add_argument(
        "--compile-report", action="store_true", help="offline compile: smem, regs, spills"
    )
    p.add_argument("--arch", type=int, action="append", help="with --compile-report: 80, 90")
    p.add_argument("--patch", type=int, action="append", help="with --compile-report: patch sizes")
    args = p.parse_args(argv)
    if args.compile_report:
        rows = compile_report(tuple(args.arch or (90, 80)), tuple(args.patch or (4, 8, 10, 16, 40)))
        C.print_table(rows, ["arch", "dtype", "p", "kernel", "config", "shared_kb", "usage"],
                      "offline compile report (D = 768, masked + normalised worst case)")  # fmt: skip
        if args.json:
            C.write_json(args.json, {"benchmark": "spectral_embed_compile_report", "results": rows},
                         torch.device("cpu"))  # fmt: skip
        return 0
    return run(args.quick, args.dtype, args.json)


if __name__ == "__main__":
    sys.exit(main())
