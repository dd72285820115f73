"""The ``spectral_embed`` backends (triton, torch) against the float32 reference.

On CPU the Triton kernels run under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before import), float32/float16 only, with small odd shapes so every
tail mask runs. Gradients are checked for weight, bias and pos (and x where a backend
computes it) against autograd through :func:`spectral_patch_embed_reference` (the spec).
float16 and GPU bfloat16 use flash-attention's rule,
``max|kernel - ref32| <= 2 * max|lowp - ref32| + atol``, where ``lowp`` is the reference
fed the same rounded operands the kernels multiply (normalised pixels and weight in the
low dtype, float32 accumulation).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rsfm_kernels as rk
import torch
from rsfm_kernels import dispatch

SE = importlib.import_module("rsfm_kernels.spectral_embed")
T = SE._T  # the Triton kernels (None where Triton is not installed)

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
REPO = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(
    T is None or not (CUDA or T._INTERPRETED),
    reason="Triton kernels need CUDA or TRITON_INTERPRET=1",
)
GRADS = ("weight", "bias", "pos")


def make_inputs(
    BT=3, C=13, G=4, p=4, h=2, w=3, D=24, dtype=torch.float32, norm=True, masked=True,
    nan=True, seed=0, device=DEV,
):  # fmt: skip
    """Inputs of the op as a dict; NaN under invalid pixels when ``masked and nan``."""
    g = torch.Generator().manual_seed(seed)
    H, W = h * p, w * p
    x = torch.randn(BT, C, H, W, generator=g) * 0.2 + 0.3
    valid = torch.rand(BT, H, W, generator=g) > 0.25 if masked else None
    if masked and nan:
        x = torch.where(valid[:, None], x, torch.full((), float("nan")))
    weight = torch.randn(C, D, p, p, generator=g) / p
    gi = torch.randint(0, G, (C,), generator=g)
    if G > 1 and C > 1:
        gi[-1] = G - 1  # the last group holds at least one band; group 0 may be empty
    bias = torch.randn(G, D, generator=g)
    pos = torch.randn(h * w, D, generator=g)
    mean = torch.rand(C, generator=g) * 0.3 if norm else None
    std = torch.rand(C, generator=g) * 0.2 + 0.05 if norm else None
    out = dict(x=x.to(dtype), weight=weight.to(dtype), group_index=gi, num_groups=G,
               bias=bias.to(dtype), pos=pos.to(dtype), mean=mean, std=std, valid=valid)  # fmt: skip
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def with_leaves(inp: dict, names=GRADS, dtype=None) -> dict:
    """A copy whose ``names`` are fresh leaves requiring grad (cast to ``dtype`` if given)."""
    out = dict(inp)
    for n in names:
        t = inp[n].detach()
        out[n] = (t.to(dtype) if dtype else t.clone()).requires_grad_(True)
    return out


def run(inp: dict, backend: str | None, dout: torch.Tensor, names=GRADS):
    """Forward through the public op and the gradients of ``names``."""
    leaves = with_leaves(inp, names)
    out = rk.spectral_patch_embed(**leaves, backend=backend)
    grads = torch.autograd.grad(out, [leaves[n] for n in names], dout)
    return out, dict(zip(names, grads))


def spec(inp: dict, dout: torch.Tensor, names=GRADS, rounded_to=None):
    """float32 reference and gradients (plain autograd). ``rounded_to``: feed the reference
    the normalised pixels and weight rounded to that dtype (the low-precision peer)."""
    inp = dict(inp)
    if rounded_to is not None:
        xn = SE._torch.normalised(inp["x"], inp["mean"], inp["std"], inp["valid"], torch.float32)
        inp.update(x=xn.to(rounded_to).float(), mean=None, std=None, valid=None)
        inp["weight"] = inp["weight"].to(rounded_to)
    leaves = with_leaves(inp, names, dtype=torch.float32)
    # cuDNN convolutions default to TF32 on GPU: the float32 spec must not
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        ref = rk.spectral_patch_embed_reference(**leaves)
        grads = torch.autograd.grad(ref, [leaves[n] for n in names], dout.float())
    return ref, dict(zip(names, grads))


def assert_close(name, got, ref, lowp=None, atol=1e-4):
    """float32: |got - ref| <= atol * scale; with ``lowp``: the flash-attention rule."""
    got = got.float()
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values (NaN leaked?)"
    scale = max(1.0, ref.abs().max().item())
    err = (got - ref).abs().max().item()
    bound = atol * scale
    if lowp is not None:
        bound += 2 * (lowp.float() - ref).abs().max().item()
    assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e} (scale {scale:.3g})"


def check_backend(backend: str, inp: dict, atol: float = 1e-5):
    dtype = inp["weight"].dtype
    g = torch.Generator().manual_seed(7)
    N = inp["pos"].shape[0]
    dout = torch.randn(inp["x"].shape[0], inp["num_groups"], N, inp["weight"].shape[1], generator=g)
    dout = dout.to(inp["x"].device, dtype)
    out, grads = run(inp, backend, dout)
    assert out.dtype == dtype
    ref, ref_grads = spec(inp, dout)
    lowp, lowp_grads = (None, {}) if dtype == torch.float32 else spec(inp, dout, rounded_to=dtype)
    if lowp is not None:
        lowp = lowp.to(dtype)  # the output is rounded to weight.dtype too
        lowp_grads = {k: v.to(dtype) for k, v in lowp_grads.items()}
    assert_close(f"{backend} out", out, ref, lowp, atol)
    for n in GRADS:
        assert_close(f"{backend} d{n}", grads[n], ref_grads[n], lowp_grads.get(n), atol)
    return out, grads


# ---------------------------------------------------------------- forward + gradients

# (BT, C, G, p, h, w, D, norm, masked): C in {1, 2, 13, 202}, G in {1, 4}, p in {4, 8},
# one case each for p = 10, 16 and 40; odd batch sizes, odd token counts and D. The first
# case splits the weight gradient over tokens (few tiles, 45 tokens: 2 splits, the last
# ragged); the second runs the mask-free EVEN path (32 tokens, D = 32, p * p = 64).
CASES = [
    (5, 1, 1, 4, 3, 3, 24, True, True),
    (2, 13, 4, 8, 4, 4, 32, True, True),
    (3, 2, 4, 8, 1, 3, 40, False, True),
    (5, 13, 4, 4, 2, 3, 24, True, True),
    (3, 13, 1, 8, 2, 1, 16, True, False),
    (1, 202, 1, 4, 1, 3, 24, False, False),
    (3, 202, 4, 8, 1, 1, 24, True, True),
    (3, 3, 2, 10, 1, 2, 24, True, True),
    (1, 2, 1, 16, 2, 1, 16, False, True),
    (1, 2, 1, 40, 1, 1, 16, True, True),
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "BT{}-C{}-G{}-p{}-{}x{}-D{}-n{:d}m{:d}".format(*c)
)
def test_triton_and_torch_match_reference(case, dtype):
    BT, C, G, p, h, w, D, norm, masked = case
    inp = make_inputs(BT, C, G, p, h, w, D, dtype, norm, masked)
    atol = 1e-5 if dtype == torch.float32 else 2e-3
    check_backend("triton", inp, atol)
    check_backend("torch", inp, atol)


def test_torch_backend_x_gradient_matches_reference():
    inp = make_inputs(BT=3, C=5, G=2, p=4, h=2, w=3, D=16)
    names = ("x", *GRADS)
    dout = torch.randn(3, 2, 6, 16, generator=torch.Generator().manual_seed(3)).to(DEV)
    out, grads = run(inp, "torch", dout, names)
    ref, ref_grads = spec(inp, dout, names)
    assert_close("out", out, ref)
    for n in names:
        assert_close(f"d{n}", grads[n], ref_grads[n])
    assert (grads["x"][~inp["valid"][:, None].expand_as(inp["x"])] == 0).all()
    # the reference backend through the op (its written-out backward) agrees too
    out_r, grads_r = run(inp, "reference", dout, names)
    for n in names:
        assert_close(f"reference d{n}", grads_r[n], ref_grads[n])


@pytest.mark.parametrize("layout", ["block", "exact-padded", "exact-identity"])
def test_torch_layouts_match_reference(layout):
    """Both group-sum layouts of the torch backend (block: what CUDA uses, G x the FLOPs;
    exact: grouped conv2d from a CPU group_index), gradients of x and weight included."""
    inp = make_inputs(BT=3, C=12, G=4, p=4, h=2, w=3, D=16, device="cpu")
    if layout == "exact-identity":  # contiguous equal groups: no gather copy
        inp["group_index"] = torch.arange(12) // 3
    if layout == "exact-padded":
        inp["group_index"] = torch.tensor([3, 0, 0, 2, 5, 0, 2, 3, 0, 0, -1, 2])  # G=1 empty
    ex = SE._torch.exact_groups(inp["group_index"], 4, torch.device("cpu"))
    exact = layout != "block"
    if exact:
        assert ex.identity == (layout == "exact-identity")
        assert ex.padded == (layout == "exact-padded")
    args = [inp[k] for k in ("x", "weight", "group_index", "num_groups", "bias", "pos", "mean",
                             "std", "valid")]  # fmt: skip
    out = SE._torch.forward(*args, exact=exact)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    dx, dw = SE._torch.backward(dout, *args[:4], *args[6:], [True, True], exact=exact)
    ref, grads = spec(inp, dout, ("x", "weight"))
    assert_close("out", out, ref)
    assert_close("dx", dx, grads["x"])
    assert_close("dweight", dw, grads["weight"])


@needs_triton
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_noncontiguous_inputs(backend):
    """x as a channel slice of a channels-last tensor, bias as the model's expand."""
    base = make_inputs(BT=3, C=7, G=2, p=4, h=2, w=3, D=24)
    BT, C, H, W = base["x"].shape
    wide = torch.randn(BT, H, W, 2 * C, generator=torch.Generator().manual_seed(5))
    x = wide.to(DEV).permute(0, 3, 1, 2)[:, ::2]  # (BT, C, H, W), strides (HW2C, 2, W2C, 2C)
    assert not x.is_contiguous() and x.shape == base["x"].shape
    inp = dict(base, x=x)
    check_backend(backend, inp)
    shared = torch.randn(24, generator=torch.Generator().manual_seed(6)).to(DEV)
    inp_b = dict(inp, bias=shared.expand(2, 24))  # stride 0 along G
    check_backend(backend, inp_b)


@needs_triton
@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
def test_nan_under_invalid_pixels_does_not_leak(backend):
    inp = make_inputs(BT=3, C=13, G=4, p=4, h=2, w=2, D=16, masked=True, nan=True)
    zeros = dict(inp, x=torch.nan_to_num(inp["x"], nan=0.0))
    assert torch.isnan(inp["x"]).any()
    dout = torch.randn(3, 4, 4, 16, generator=torch.Generator().manual_seed(1)).to(DEV)
    out, grads = run(inp, backend, dout)
    out0, grads0 = run(zeros, backend, dout)
    assert torch.isfinite(out).all() and torch.isfinite(grads["weight"]).all()
    torch.testing.assert_close(out, out0, rtol=0, atol=0)
    torch.testing.assert_close(grads["weight"], grads0["weight"], rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_bands_outside_every_group_are_dropped(backend):
    inp = make_inputs(BT=1, C=5, G=2, p=4, h=1, w=2, D=16)
    inp["group_index"] = torch.tensor([0, 2, 1, -1, 1], device=DEV)  # bands 1 and 3: no group
    out, grads = check_backend(backend, inp)
    assert (grads["weight"][[1, 3]] == 0).all() and (grads["weight"][[0, 2, 4]] != 0).any()


@needs_triton
def test_triton_weight_gradient_is_deterministic():
    inp = make_inputs(BT=5, C=2, G=2, p=4, h=3, w=3, D=24)  # 45 tokens: split in two
    dout = torch.randn(5, 2, 9, 24, generator=torch.Generator().manual_seed(2)).to(DEV)
    runs = [run(inp, "triton", dout)[1]["weight"] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


# ---------------------------------------------------------------- errors and reasons


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
def test_image_not_a_multiple_of_patch_is_a_clear_error(backend):
    inp = make_inputs(BT=1, C=2, G=1, p=4, h=2, w=2, D=16)
    inp.update(x=inp["x"][..., :-1], valid=inp["valid"][..., :-1], pos=None)
    with pytest.raises(dispatch.BackendUnavailable, match="not a multiple of the patch size 4"):
        rk.spectral_patch_embed(**inp, backend=backend)


@needs_triton
def test_triton_launcher_checks_name_the_problem():
    inp = make_inputs(BT=1, C=2, G=1, p=4, h=2, w=2, D=16)
    args = (inp["weight"], inp["group_index"], 1, None, None, None)
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        T.check_and_prepare(inp["x"][..., :-2], *args)
    with pytest.raises(ValueError, match=r"weight must be \(C=2"):
        T.check_and_prepare(inp["x"], inp["weight"][:1], inp["group_index"], 1, None, None, None)
    with pytest.raises(TypeError, match="float64"):
        T.check_and_prepare(inp["x"].double(), *args)


def test_x_requires_grad_is_a_triton_reason_and_torch_takes_over():
    inp = make_inputs(BT=1, C=2, G=1, p=4, h=2, w=2, D=16)
    reasons = SE._triton_reasons(dict(inp, x_requires_grad=True))
    assert any(r.startswith("x requires grad") for r in reasons), reasons
    x = inp["x"].clone().requires_grad_(True)
    if T is not None and (CUDA or T._INTERPRETED):
        with pytest.raises(dispatch.BackendUnavailable, match="x requires grad"):
            rk.spectral_patch_embed(**dict(inp, x=x), backend="triton")
    args = [x, *(inp[k] for k in ("weight", "group_index", "num_groups", "bias", "pos",
                                  "mean", "std", "valid"))]  # fmt: skip
    assert SE.select_backend(*args, None, True).name == "torch"
    out = rk.spectral_patch_embed(*args)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- dispatch, custom op


def test_auto_dispatch_on_cpu_picks_torch_and_caches(monkeypatch):
    inp = make_inputs(device="cpu", BT=1, C=2, G=1, p=4, h=2, w=2, D=16)
    SE.clear_backend_cache()
    calls = []
    real = dispatch.select
    monkeypatch.setattr(dispatch, "select", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(3):
        rk.spectral_patch_embed(**inp)
    assert len(calls) == 1, "the choice must be cached after the first call"
    args = [inp[k] for k in inp]
    assert SE.select_backend(*args, None, False).name == "torch"
    monkeypatch.setenv("RSFM_BACKEND_SPECTRAL_EMBED", "reference")  # read on every call
    assert SE.select_backend(*args, None, False).name == "reference"
    monkeypatch.delenv("RSFM_BACKEND_SPECTRAL_EMBED")
    names = [b.name for b in dispatch.backends("spectral_embed")]
    assert names == ["triton", "torch", "reference"]


def _opcheck_args(backend, optional=True):
    inp = make_inputs(BT=3, C=5, G=2, p=4, h=2, w=1, D=16, nan=optional)  # no mask: no NaN
    w = inp["weight"].requires_grad_(True)
    if not optional:
        return (inp["x"], w, inp["group_index"], 2, None, None, None, None, None, backend, False)
    b, pos = inp["bias"].requires_grad_(True), inp["pos"].requires_grad_(True)
    return (inp["x"], w, inp["group_index"], 2, b, pos, inp["mean"], inp["std"], inp["valid"],
            backend, False)  # fmt: skip


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("optional", [True, False], ids=["all-inputs", "optionals-None"])
def test_opcheck(backend, optional):
    if backend == "triton" and (T is None or not (CUDA or T._INTERPRETED)):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")
    args = _opcheck_args(backend, optional)
    torch.library.opcheck(torch.ops.rsfm.spectral_patch_embed.default, args)
    x, w, gi, G, b, pos, mean, std, valid = (a.detach() if isinstance(a, torch.Tensor) else a
                                             for a in args[:9])  # fmt: skip
    grad = torch.randn(3, 2, 2, 16, device=DEV)
    bwd = (grad, x, w, gi, G, b, pos, mean, std, valid,
           [False, True, b is not None, pos is not None], backend, False)  # fmt: skip
    torch.library.opcheck(torch.ops.rsfm.spectral_patch_embed_backward.default, bwd)


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_eager_path_equals_custom_op(backend):
    """spectral_patch_embed's eager autograd.Function and the custom op run the same code."""
    if backend == "triton" and (T is None or not (CUDA or T._INTERPRETED)):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")
    inp = make_inputs(BT=3, C=5, G=2, p=4, h=2, w=1, D=16)
    dout = torch.randn(3, 2, 2, 16, generator=torch.Generator().manual_seed(8)).to(DEV)
    out, grads = run(inp, backend, dout)
    leaves = with_leaves(inp)
    args = [leaves[k] for k in ("x", "weight", "group_index", "num_groups", "bias", "pos",
                                "mean", "std", "valid")]  # fmt: skip
    out_op = torch.ops.rsfm.spectral_patch_embed(*args, backend, False)
    grads_op = torch.autograd.grad(out_op, [leaves[n] for n in GRADS], dout)
    assert torch.equal(out, out_op)
    for n, g in zip(GRADS, grads_op):
        assert torch.equal(grads[n], g), n


def test_torch_compile_fullgraph_no_graph_breaks():
    inp = make_inputs(BT=2, C=3, G=2, p=4, h=2, w=2, D=16)
    w = inp["weight"].clone().requires_grad_(True)
    shared = torch.randn(16, device=DEV, requires_grad=True)

    def f(x, w, shared):
        bias = shared.expand(2, 16)  # as the model passes it
        out = rk.spectral_patch_embed(x, w, inp["group_index"], 2, bias, inp["pos"],
                                      inp["mean"], inp["std"], inp["valid"])  # fmt: skip
        return out.square().sum()

    explained = torch._dynamo.explain(f)(inp["x"], w, shared)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(inp["x"], w, shared)
    gw, gs = torch.autograd.grad(loss, (w, shared))
    ref = f(inp["x"], w, shared)
    rw, rs = torch.autograd.grad(ref, (w, shared))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gw, rw)
    torch.testing.assert_close(gs, rs)


def test_flop_counter_sees_the_op():
    from torch.utils.flop_counter import FlopCounterMode

    inp = with_leaves(make_inputs(BT=3, C=5, G=2, p=4, h=2, w=3, D=16), ("weight",))
    gemm = 2 * 3 * 6 * 5 * 16 * 16  # 2 * BT * N * C * p^2 * D
    with FlopCounterMode(display=False) as fc:
        out = rk.spectral_patch_embed(**inp)
    assert fc.get_total_flops() == gemm
    with FlopCounterMode(display=False) as fc:
        out.sum().backward()  # the weight gradient only (x needs none)
    assert fc.get_total_flops() == gemm


# ---------------------------------------------------------------- offline GPU compile (slow)


@pytest.mark.slow
def test_pinned_configs_compile_for_sm80_and_sm90_without_spills():
    """Compiles both kernels' pinned configs with Triton's own ptxas; no GPU (~2 min)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.spectral_embed", "--compile-report"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith(("sm80", "sm90"))]
    assert len(rows) == 40, res.stdout  # 2 archs x 2 dtypes x 5 patch sizes x 2 kernels
    spilling = [r for r in rows if " 0 B spilled" not in r and "ptxas unavailable" not in r]
    assert not spilling, "\n".join(spilling)


# ---------------------------------------------------------------- GPU (-m gpu)

GPU_CASES = {  # realistic sizes, batch trimmed to keep the float32 reference in memory
    "s2_p8": dict(BT=8, C=12, G=1, p=8, h=32, w=32, D=768),
    "s2_p16": dict(BT=8, C=12, G=1, p=16, h=16, w=16, D=768),
    "hs_g8": dict(BT=4, C=224, G=8, p=8, h=16, w=16, D=768),
    "rgb_p40": dict(BT=4, C=3, G=1, p=40, h=8, w=8, D=768),
    "p10": dict(BT=4, C=4, G=2, p=10, h=10, w=10, D=256),
}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_gpu_bfloat16_flash_rule(case):
    """bfloat16 against the float32 spec; the low-precision peer is the torch backend."""
    inp = make_inputs(**GPU_CASES[case], dtype=torch.bfloat16, device="cuda")
    G, D = inp["num_groups"], inp["weight"].shape[1]
    dout = torch.randn(inp["x"].shape[0], G, inp["pos"].shape[0], D, device="cuda")
    dout = dout.to(torch.bfloat16)
    out, grads = run(inp, "triton", dout)
    low, low_grads = run(inp, "torch", dout)  # bf16 tensor-core matmul on CUDA
    ref, ref_grads = spec(inp, dout)
    assert_close("out", out, ref, low, atol=1e-3)
    for n in GRADS:
        assert_close(f"d{n}", grads[n], ref_grads[n], low_grads[n], atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_float32_and_repeatable():
    inp = make_inputs(BT=4, C=13, G=4, p=8, h=8, w=8, D=96, device="cuda")
    check_backend("triton", inp, atol=1e-5)
    dout = torch.randn(4, 4, 64, 96, device="cuda")
    runs = [run(inp, "triton", dout) for _ in range(3)]
    for out, grads in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(grads["weight"], runs[0][1]["weight"])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_auto_dispatch_picks_triton():
    inp = make_inputs(BT=1, C=2, G=1, p=4, h=2, w=2, D=16, device="cuda")
    args = [inp[k] for k in inp]
    assert SE.select_backend(*args, None, False).name == "triton"
