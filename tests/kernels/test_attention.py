"""Attention kernels against the float32 reference.

On CPU the Triton kernels run under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before import), float32/float16 only, with 16 x 16 tiles and small odd
shapes so every tail runs (N = 16 k + 1: a ragged last block of one row); the interpreter
runs programs one after another, so races cannot show here and the GPU tests repeat the
determinism check. GPU tests (``-m gpu``) use flash-attention's rule:
max|kernel - ref32| <= 2 * max|sdpa_lowp - ref32| + atol, with the pinned configs
(RSFM_AUTOTUNE=0) except where a test says otherwise. The custom ops, torch.compile and
the cached dispatch: test_attention_op.py; the offline compile: test_attention_compile.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
from pathlib import Path

import pytest
import rsfm_kernels as rk
import torch
from rsfm_kernels import dispatch

A = importlib.import_module("rsfm_kernels.attn")
CF = importlib.import_module("rsfm_kernels.attn.configs")  # no Triton import
HAS_TRITON = A._T is not None
if HAS_TRITON:
    T = importlib.import_module("rsfm_kernels.attn.op")  # custom ops + triton_attention
    D = importlib.import_module("rsfm_kernels.attn.dense")
    S = importlib.import_module("rsfm_kernels.attn.short")
    TC = importlib.import_module("rsfm_kernels._triton_common")

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(
    not (HAS_TRITON and (CUDA or T._INTERPRETED)),
    reason="Triton kernels need Triton and CUDA or TRITON_INTERPRET=1",
)
C = CF.LaunchConfig


@pytest.fixture(autouse=True)
def _fresh_dispatch_cache():
    """Tests change the environment that forced choices read: start each from scratch."""
    A.clear_dispatch_cache()
    yield
    A.clear_dispatch_cache()


@pytest.fixture(autouse=True)
def _pinned_configs_on_gpu(monkeypatch, request):
    """GPU tests run the table configs (autotuning every shape would dominate their time);
    tests marked ``autotune`` opt back in. No effect on CPU: the interpreter never tunes."""
    if "autotune" not in request.keywords:
        monkeypatch.setenv("RSFM_AUTOTUNE", "0")


TOL = {torch.float32: (2e-5, 5e-5), torch.float16: (3e-3, 8e-3)}  # (output, gradient) atol


def make_mask(b: int, n: int, kind: str | None, seed: int = 1) -> torch.Tensor | None:
    """None, "random" (each row keeps >= 1 key) or "empty" (batch 0 has no valid key)."""
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, n, generator=g) < 0.6
    m[:, -1] = True  # a valid key in the last (ragged) block
    if kind == "empty":
        m[0] = False
    return m.to(DEV)


def make_qkv(b, h, nq, nk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (nq, nk, nk))
    return [t.to(DEV, dtype).requires_grad_() for t in (q, k, v)]


def run_and_compare(fn, q, k, v, mask, **kw):
    """Forward + all grads of ``fn`` vs the float32 reference; returns (out, grads)."""
    out = fn(q, k, v, mask, **kw)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = A.attention_reference(*ref_in, mask)
    ref_grads = torch.autograd.grad(ref, ref_in, do.float())
    atol, gatol = TOL[q.dtype]
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=1e-3)
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(
            g.float(), r, atol=gatol, rtol=1e-3, msg=lambda m, n=name: f"d{n}: {m}"
        )
    return out, grads


def tri(path):
    return lambda q, k, v, m, **kw: T.triton_attention(q, k, v, m, path=path, **kw)


# ---------------------------------------------------------------- dense (FlashAttention-2) path


@needs_triton
@pytest.mark.parametrize(
    "b,h,nq,nk,d,dtype,mask",
    [
        (1, 1, 1, 1, 32, torch.float32, None),
        (2, 3, 17, 17, 64, torch.float32, "random"),
        (1, 2, 37, 37, 32, torch.float32, None),
        (1, 1, 130, 130, 64, torch.float32, "random"),
        (2, 1, 17, 37, 32, torch.float32, "random"),  # N_q != N_k
        (1, 2, 17, 17, 48, torch.float32, "random"),  # head dim padded to 64
        (2, 2, 37, 37, 64, torch.float16, "random"),
        (1, 1, 32, 32, 32, torch.float16, None),  # EVEN_M/EVEN_N/EVEN_D: mask-free loads
    ],
)
def test_dense_matches_reference(b, h, nq, nk, d, dtype, mask):
    q, k, v = make_qkv(b, h, nq, nk, d, dtype)
    run_and_compare(tri("dense"), q, k, v, make_mask(b, nk, mask))


@needs_triton
@pytest.mark.parametrize("nq,nk", [(33, 33), (17, 49), (49, 17)])  # block * k + 1
@pytest.mark.parametrize("mask", [None, "random"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_ragged_last_block_of_one_row(nq, nk, mask, deterministic):
    """Full blocks run mask-free and the one-row last block alone is masked; in the dK/dV
    kernel without a mask the ragged key block takes the second copy of the loop."""
    q, k, v = make_qkv(2, 1, nq, nk, 32, torch.float32)
    run_and_compare(tri("dense"), q, k, v, make_mask(2, nk, mask), deterministic=deterministic)


@needs_triton
@pytest.mark.parametrize("deterministic", [False, True])
def test_very_negative_scores_with_a_ragged_key_block_stay_finite(deterministic):
    """Every real score far below 0 (LSE < -128 in log2 units): out-of-range keys must be
    masked by score, not only read as zeros, or exp2(0 - LSE) = inf and inf * 0 = NaN."""
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    noise = [0.1 * torch.randn(1, 2, 17, 32, generator=g) for _ in range(3)]
    q = (25.0 * u + noise[0]).requires_grad_()
    k = (-25.0 * u + noise[1]).requires_grad_()  # q.k / sqrt(32) ~ -110: LSE ~ -159 log2
    v = noise[2].requires_grad_()
    out, grads = run_and_compare(tri("dense"), q, k, v, None, deterministic=deterministic)
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in grads)


class _GarbageEmpty(types.ModuleType):
    """``torch`` with ``empty`` returning NaN-filled (or max-int) tensors."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*shape, dtype=None, device=None, **kw):
        t = torch.empty(*shape, dtype=dtype, device=device, **kw)
        return t.fill_(math.nan if t.is_floating_point() else -1)


@needs_triton
@pytest.mark.parametrize("path", ["dense", "short"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_kernels_overwrite_every_uninitialised_output(monkeypatch, path, deterministic):
    """O, LSE, delta, dQ (and its float32 accumulator, zero-filled by the preprocess
    kernel), dK, dV come from torch.empty: filled with NaN first, nothing may leak."""
    monkeypatch.setattr(D, "torch", _GarbageEmpty())
    monkeypatch.setattr(S, "torch", _GarbageEmpty())
    n = 33 if path == "dense" else 7
    q, k, v = make_qkv(2, 2, n, n, 16, torch.float32)
    mask = make_mask(2, n, "random")
    run_and_compare(tri(path), q, k, v, mask, deterministic=deterministic)


@needs_triton
@pytest.mark.parametrize(
    "fwd",
    [C(16, 16, 1, 1, tma=True), C(16, 16, 1, 1, tma=True, persistent=True),
     C(16, 16, 1, 1, persistent=True)],
    ids=["tma", "tma+persistent", "persistent"],
)  # fmt: skip
def test_tensor_descriptor_and_persistent_paths(monkeypatch, fwd):
    """The sm90/sm100 variants, run by the interpreter: in-kernel tensor descriptors
    (hardware zero-fill of ragged rows and padded head-dim columns) and the persistent
    forward (4 SM slots here, so each program loops over several tiles)."""
    back = C(16, 16, 1, 1, tma=fwd.tma)
    monkeypatch.setattr(D, "INTERPRETER_CONFIGS", (fwd, back, back))
    q, k, v = make_qkv(1, 3, 33, 49, 48, torch.float32)  # D = 48 padded to 64
    assert D._tma_ok(q, k, v)
    for det in (False, True) if fwd.tma else (False,):  # persistent is forward-only
        run_and_compare(tri("dense"), q, k, v, make_mask(1, 49, "random"), deterministic=det)
    if fwd.persistent:
        return
    # The encoder's strided qkv view is descriptor-compatible; a stride-0 dO is not (the
    # backward then falls back to pointers).
    qkv = torch.randn(2, 33, 3, 2, 32, generator=torch.Generator().manual_seed(1))
    qkv.requires_grad_()
    qs, ks, vs = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, D) views
    assert D._tma_ok(qs, ks, vs) and not D._tma_ok(torch.ones(1).expand(2, 2, 33, 32))
    out = T.triton_attention(qs, ks, vs, path="dense")
    out.sum().backward()
    ref_leaf = qkv.detach().clone().requires_grad_()
    ref = A.attention_reference(*(ref_leaf[:, :, i].transpose(1, 2) for i in range(3)))
    ref.sum().backward()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-3)
    torch.testing.assert_close(qkv.grad, ref_leaf.grad, atol=5e-5, rtol=1e-3)


@needs_triton
def test_dense_deterministic_mode_is_repeatable_and_matches_atomic():
    q, k, v = make_qkv(2, 2, 37, 37, 32, torch.float32)
    mask = make_mask(2, 37, "random")
    out1, g1 = run_and_compare(tri("dense"), q, k, v, mask, deterministic=True)
    out2, g2 = run_and_compare(tri("dense"), q, k, v, mask, deterministic=True)
    assert torch.equal(out1, out2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    _, ga = run_and_compare(tri("dense"), q, k, v, mask, deterministic=False)
    for a, b in zip(g1, ga):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@needs_triton
def test_deterministic_switches_reach_the_dense_backward(monkeypatch):
    seen = []
    real = T.dense_backward

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(T, "dense_backward", spy)
    q, k, v = make_qkv(1, 1, 17, 17, 32, torch.float32)

    def grad_once(**kw):
        T.triton_attention(q, k, v, path="dense", **kw).sum().backward()

    monkeypatch.delenv("RSFM_DETERMINISTIC", raising=False)
    grad_once()
    grad_once(deterministic=True)
    monkeypatch.setenv("RSFM_DETERMINISTIC", "1")
    grad_once()
    grad_once(deterministic=False)  # the argument wins over the environment
    monkeypatch.delenv("RSFM_DETERMINISTIC")
    torch.use_deterministic_algorithms(True)
    try:
        grad_once()
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [False, True, True, False, True]


# ---------------------------------------------------------------- many short sequences


@needs_triton
@pytest.mark.parametrize("length", [3, 8, 33])
@pytest.mark.parametrize("mask", [None, "random"])
def test_short_matches_reference(length, mask):
    # 15 sequences: several tiles, the last one partly empty (L=3: 10 per tile, L=8: 4).
    q, k, v = make_qkv(5, 3, length, length, 32, torch.float32)
    run_and_compare(tri("short"), q, k, v, make_mask(5, length, mask))


@needs_triton
def test_short_float16_and_unequal_lengths():
    q, k, v = make_qkv(3, 2, 8, 8, 64, torch.float16)
    run_and_compare(tri("short"), q, k, v, make_mask(3, 8, "random"))
    q, k, v = make_qkv(3, 2, 5, 9, 32, torch.float32)
    run_and_compare(tri("short"), q, k, v, make_mask(3, 9, "random"))


def test_short_config_packs_whole_sequences():
    for arch in (*CF.FAMILIES, "other"):
        for length in range(1, 65):
            c = CF.short_config(length, length, 64, arch)
            assert c.seqs >= 1 and c.seqs * length <= c.block_m
            assert c.seqs * length / c.block_m > 0.5  # whole sequences fill over half a tile
    assert CF.short_config(4, 4, 64, "sm90").seqs == 16
    assert CF.short_config(33, 33, 64, "sm90").seqs == 3  # 128-row tile on Hopper
    for small in ("sm80", "sm86", "sm100", "sm120"):  # they spill at 128 rows
        assert CF.short_config(33, 33, 64, small).seqs == 1
    with pytest.raises(ValueError, match="L <= 128"):
        CF.short_config(129, 129, 64, "sm90")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_select_path():
    assert T.select_path(64, 64) == "short"
    assert T.select_path(16, 65) == "dense"
    assert T.select_path(16, 16, "dense") == "dense"
    with pytest.raises(ValueError, match="N_q, N_k <= 128"):
        T.select_path(200, 16, "short")
    with pytest.raises(ValueError, match="path must be"):
        T.select_path(16, 16, "fast")


# ---------------------------------------------------------------- masks, layouts


@needs_triton
@pytest.mark.parametrize("path,n", [("dense", 20), ("short", 8)])
def test_fully_masked_rows_give_zeros_and_zero_grads(path, n):
    q, k, v = make_qkv(2, 2, n, n, 32, torch.float32)
    mask = make_mask(2, n, "empty")
    out, (dq, dk, dv) = run_and_compare(tri(path), q, k, v, mask)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(dq[0], torch.zeros_like(dq[0]))
    assert torch.equal(dk[0], torch.zeros_like(dk[0])) and torch.equal(
        dv[0], torch.zeros_like(dv[0])
    )
    masked_keys = ~mask[1]
    assert (dk[1][:, masked_keys] == 0).all() and (dv[1][:, masked_keys] == 0).all()
    assert out[1].abs().sum() > 0


@needs_triton
@pytest.mark.parametrize("path,n", [("dense", 19), ("short", 6)])
def test_strided_inputs_need_no_copy(path, n):
    # The encoder's layout: one qkv projection (B, N, 3, H, D) viewed as (B, H, N, D).
    b, h, d = 3, 2, 32
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, n, 3, h, d, generator=g).to(DEV).requires_grad_()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, D) views
    assert not q.is_contiguous()
    big = make_mask(b, 2 * n, "random", seed=5)
    mask = big[:, ::2]  # non-contiguous mask too
    mask[:, -1] = True
    out = T.triton_attention(q, k, v, mask, path=path)
    out.sum().backward()  # dO with all strides 0
    grad = qkv.grad.clone()
    ref_leaf = qkv.detach().clone().requires_grad_()
    rq, rk_, rv = (ref_leaf[:, :, i].transpose(1, 2) for i in range(3))
    ref = A.attention_reference(rq, rk_, rv, mask)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-3)
    torch.testing.assert_close(grad, ref_leaf.grad, atol=5e-5, rtol=1e-3)


def test_reference_fully_masked_rows_have_zero_finite_grads():
    q, k, v = (torch.randn(2, 1, 5, 8, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[False] * 5, [True, False, True, True, False]])
    out = A.attention_reference(q, k, v, mask)
    out.square().sum().backward()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and torch.equal(t.grad[0], torch.zeros_like(t.grad[0]))
    assert (k.grad[1, :, 1] == 0).all() and q.grad[1].abs().sum() > 0


def test_sdpa_backend_matches_reference_with_fully_masked_rows():
    q, k, v = (t.detach().cpu().requires_grad_() for t in make_qkv(2, 3, 11, 13, 16, torch.float32))
    mask = make_mask(2, 13, "empty").cpu()
    out, (dq, dk, dv) = run_and_compare(
        lambda q, k, v, m: rk.attention(q, k, v, key_valid=m, backend="sdpa"), q, k, v, mask
    )
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(
        dq[0], torch.zeros_like(dq[0])
    )


# ---------------------------------------------------------------- dispatch and validation


def _reasons(name, inputs):
    b = next(b for b in dispatch.backends("attention") if b.name == name)
    return b.not_supported_reasons(inputs, forced=True)


def test_backends_registered_in_priority_order():
    names = [b.name for b in dispatch.backends("attention")]
    assert names == ["triton", "triton_short", "sdpa", "reference"]
    prio = {b.name: b.priority for b in dispatch.backends("attention")}
    assert prio == {"triton": 10, "triton_short": 11, "sdpa": 20, "reference": 90}


def test_forced_triton_on_cpu_without_interpreter_lists_reasons(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = k = v = torch.randn(1, 2, 8, 32)
    with pytest.raises(
        dispatch.BackendUnavailable, match="forced backend 'triton'.*TRITON_INTERPRET"
    ):
        rk.attention(q, k, v, backend="triton")
    monkeypatch.setenv("RSFM_BACKEND_ATTENTION", "triton_short")
    with pytest.raises(dispatch.BackendUnavailable, match="triton_short"):
        rk.attention(q, k, v)


def test_triton_reasons_name_what_is_unsupported():
    x = torch.randn(1, 2, 8, 32)
    assert "bfloat16" in " ".join(
        _reasons("triton", {"q": x.bfloat16(), "k": x.bfloat16(), "v": x.bfloat16()})
    )
    x12 = torch.randn(1, 2, 8, 12)
    assert "head dims 12" in " ".join(_reasons("triton", {"q": x12, "k": x12, "v": x12}))
    assert "dtypes differ" in " ".join(_reasons("triton", {"q": x, "k": x.half(), "v": x}))
    long = torch.randn(1, 1, 200, 32)
    assert "exceed" in " ".join(_reasons("triton_short", {"q": long, "k": long, "v": long}))
    assert not any("exceed" in r for r in _reasons("triton", {"q": long, "k": long, "v": long}))


def test_float32_on_cuda_is_not_chosen_automatically_but_runs_when_forced():
    """Triton's exact float32 dots fit only tiny tiles on every GPU family (offline
    compile): the automatic choice sends float32 CUDA tensors to SDPA; forcing runs them."""
    cuda32 = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    cuda16 = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)
    assert "float32 on CUDA" in " ".join(A._triton_auto_reasons({"q": cuda32}))
    assert A._triton_auto_reasons({"q": cuda16}) == []
    b = next(b for b in dispatch.backends("attention") if b.name == "triton")
    assert b.auto_reasons is A._triton_auto_reasons  # consulted only when not forced


@pytest.mark.skipif(CUDA, reason="checks the CPU choice")
def test_cpu_auto_choice_is_sdpa_and_env_forcing_works(monkeypatch):
    q = k = v = torch.randn(1, 2, 8, 32)
    assert dispatch.select("attention", {"q": q, "k": k, "v": v}).name == "sdpa"
    monkeypatch.setenv("RSFM_BACKEND_ATTENTION", "reference")
    assert dispatch.select("attention", {"q": q, "k": k, "v": v}).name == "reference"
    torch.testing.assert_close(rk.attention(q, k, v), A.attention_reference(q, k, v))


@needs_triton
def test_attention_forced_triton_runs_both_paths():
    q, k, v = make_qkv(1, 2, 12, 12, 32, torch.float32)
    run_and_compare(lambda q, k, v, m: rk.attention(q, k, v, m, backend="triton"), q, k, v, None)
    run_and_compare(
        lambda q, k, v, m: rk.attention(q, k, v, m, backend="triton_short"), q, k, v, None
    )


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_launcher_validation_names_the_shapes():
    x = torch.randn(2, 3, 8, 32)
    with pytest.raises(ValueError, match=r"share B and H.*\(2, 3, 8, 32\)"):
        T.triton_attention(x, torch.randn(2, 4, 8, 32), torch.randn(2, 4, 8, 32))
    with pytest.raises(ValueError, match="same length N_k"):
        T.triton_attention(x, x, torch.randn(2, 3, 9, 32))
    with pytest.raises(ValueError, match="head dim D=12"):
        T.triton_attention(*(torch.randn(1, 1, 4, 12),) * 3)
    with pytest.raises(TypeError, match="one dtype"):
        T.triton_attention(x, x.double(), x)
    with pytest.raises(ValueError, match=r"key_valid must be \(B, N_k\) = \(2, 8\)"):
        T.triton_attention(x, x, x, torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="4-D"):
        T.triton_attention(x[0], x[0], x[0])


# ---------------------------------------------------------------- GPU (-m gpu)


def _flash_rule(name, got, ref32, lowp, atol):
    err = (got.float() - ref32).abs().max().item()
    bound = 2 * (lowp.float() - ref32).abs().max().item() + atol
    assert err <= bound, f"{name}: max error {err:.3e} > 2 * sdpa error + atol = {bound:.3e}"


def _gpu_compare(fn, q, k, v, mask, atol=1e-3):
    do = torch.randn_like(q)
    out = fn(q, k, v, mask)
    grads = torch.autograd.grad(out, (q, k, v), do)
    low = A._sdpa(q, k, v, mask)
    low_grads = torch.autograd.grad(low, (q, k, v), do)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = A.attention_reference(*ref_in, mask)
    ref_grads = torch.autograd.grad(ref, ref_in, do.float())
    _flash_rule("out", out, ref, low, atol)
    for name, g, lg, rg in zip(("dq", "dk", "dv"), grads, low_grads, ref_grads):
        assert torch.isfinite(g).all()
        _flash_rule(name, g, rg, lg, atol)
    return out, grads


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("n", [129, 1000, 2048])  # 129 = 128 + 1: a one-row ragged block
def test_gpu_dense_flash_rule(dtype, d, n):
    q, k, v = make_qkv(2, 4, n, n, d, dtype)
    _gpu_compare(tri("dense"), q, k, v, make_mask(2, n, "random"))
    _gpu_compare(tri("dense"), q, k, v, None)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", [4, 16, 33, 64])
def test_gpu_short_flash_rule_strided(dtype, length):
    s, h, d = 4096, 8, 64
    qkv = torch.randn(s, length, 3, h, d, device=DEV, dtype=dtype, requires_grad=True)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (S, H, L, D) views
    mask = make_mask(s, length, "empty")
    out, grads = _gpu_compare(tri("auto"), q, k, v, mask)
    assert (out[0] == 0).all() and (grads[0][0] == 0).all()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_deterministic_backward_is_bitwise_repeatable():
    q, k, v = make_qkv(2, 8, 1024, 1024, 64, torch.bfloat16)
    mask = make_mask(2, 1024, "random")
    do = torch.randn_like(q)
    runs = [
        torch.autograd.grad(T.triton_attention(q, k, v, mask, deterministic=True), (q, k, v), do)
        for _ in range(3)
    ]
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], r))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_auto_dispatch_picks_triton_for_bf16_and_sdpa_for_float32():
    q = torch.randn(2, 4, 256, 64, device=DEV, dtype=torch.bfloat16)
    assert dispatch.select("attention", {"q": q, "k": q, "v": q}).name == "triton"
    q = q.float()
    assert dispatch.select("attention", {"q": q, "k": q, "v": q}).name == "sdpa"
    out = rk.attention(q, q, q, backend="triton")  # forced float32 still runs
    torch.testing.assert_close(out, A.attention_reference(q, q, q), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("persistent", [False, True])
def test_gpu_tensor_descriptor_configs(monkeypatch, persistent):
    """The TMA (and persistent) table variants on sm90/sm100, pinned, under the flash rule."""
    fam = TC.gpu_arch(torch.device(DEV))
    if fam not in CF.TMA_FAMILIES:
        pytest.skip(f"tensor descriptors are offered on {CF.TMA_FAMILIES}, this GPU is {fam}")
    for d in (64, 128):
        fwd, kv, dq = CF.PINNED[(fam, d)]
        tma = tuple(dataclasses.replace(c, tma=True) for c in (fwd, kv, dq))
        tma = (dataclasses.replace(tma[0], persistent=persistent), *tma[1:])
        monkeypatch.setitem(CF.PINNED, (fam, d), tma)
        q, k, v = make_qkv(2, 4, 1000, 1000, d, torch.bfloat16)
        assert D._tma_ok(q, k, v)
        for det in (False, True):
            fn = lambda q, k, v, m, det=det: T.triton_attention(q, k, v, m, deterministic=det)  # noqa: E731
            _gpu_compare(fn, q, k, v, make_mask(2, 1000, "random"))


@pytest.mark.gpu
@pytest.mark.autotune
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_autotuned_kernels_match_and_persist_their_choice(monkeypatch):
    """Autotuning (the GPU default) over the family's space: correct whichever config
    wins, and the timings land in Triton's on-disk cache (the next process reuses them)."""
    import json

    import triton

    monkeypatch.delenv("RSFM_AUTOTUNE", raising=False)
    assert TC.autotune_enabled()
    q, k, v = make_qkv(2, 4, 1000, 1000, 128, torch.bfloat16)
    _gpu_compare(tri("dense"), q, k, v, make_mask(2, 1000, "random"))
    fam = TC.gpu_arch(torch.device(DEV))
    for kernel, fname in (("fwd", "_fwd_kernel"), ("kv", "_bwd_kv_kernel")):
        tuner = D._TUNED[(kernel, CF.family_of(fam), 128, False)]
        keys = [[str(x) for x in key] for key in tuner.cache]
        assert keys, kernel
        on_disk = []
        for path in Path(triton.knobs.cache.dir).rglob(f"{fname}.autotune.json"):
            on_disk.append([str(x) for x in json.loads(path.read_text())["key"]])
        assert any(key in on_disk for key in keys), (kernel, keys)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_xformers_benchmark_peer_with_key_padding_bias():
    """The benchmark's xformers peer passes the key-padding mask as an additive bias."""
    pytest.importorskip("xformers")
    from benchmarks.attention import xformers_attention

    for n, mask in ((300, "empty"), (64, "random")):
        q, k, v = make_qkv(2, 4, n, n, 64, torch.bfloat16)
        _gpu_compare(
            lambda q, k, v, m: xformers_attention(q, k, v, m), q, k, v, make_mask(2, n, mask)
        )


def test_old_mask_name_is_refused_with_the_convention():
    q = torch.randn(1, 1, 4, 8)
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(TypeError, match=r"renamed key_valid \(True = a valid key"):
        rk.attention(q, q, q, key_padding_mask=mask)
    # key_valid=True keeps a key: masking all but key 0 gives v[0] for every query
    v = torch.randn(1, 1, 4, 8)
    only0 = torch.tensor([[True, False, False, False]])
    out = rk.attention(q, q, v, key_valid=only0, backend="sdpa")
    torch.testing.assert_close(out, v[:, :, :1].expand_as(out))
