"""Attention as custom ops (torch.library: opcheck, torch.compile), the cached backend
choice, the per-family launch-config tables and the autotuning wrappers. CPU only; the
Triton ops run under the interpreter (tests/conftest.py)."""

from __future__ import annotations

import importlib

import pytest
import rsfm_kernels as rk
import torch
from rsfm_kernels import dispatch

A = importlib.import_module("rsfm_kernels.attn")
CF = importlib.import_module("rsfm_kernels.attn.configs")
HAS_TRITON = A._T is not None
if HAS_TRITON:
    T = importlib.import_module("rsfm_kernels.attn.op")
    D = importlib.import_module("rsfm_kernels.attn.dense")
    TC = importlib.import_module("rsfm_kernels._triton_common")
needs_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and T._INTERPRETED), reason="needs Triton and TRITON_INTERPRET=1"
)
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@pytest.fixture(autouse=True)
def _fresh_dispatch_cache():
    A.clear_dispatch_cache()
    yield
    A.clear_dispatch_cache()


def qkv(b=2, h=2, nq=17, nk=17, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for n in (nq, nk, nk)]


def mask_for(b, n, seed=1):
    m = torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) < 0.6
    m[:, -1] = True
    return m


# ---------------------------------------------------------------- torch.library


@needs_interpreter
@pytest.mark.parametrize("path,n", [("dense", 17), ("short", 5)])
def test_opcheck_forward_and_backward_ops(path, n):
    q, k, v = (t.requires_grad_() for t in qkv(nq=n, nk=n))
    mask = mask_for(2, n)
    torch.library.opcheck(T.attention_fwd, (q, k, v, mask, 0.25, False, path))
    torch.library.opcheck(T.attention_fwd, (q, k, v, None, 0.25, True, path))
    o, lse = T.attention_fwd(q.detach(), k.detach(), v.detach(), mask, 0.25, False, path)
    do = torch.randn_like(o)
    args = (do, q.detach(), k.detach(), v.detach(), o, lse, mask, 0.25, False, path)
    torch.library.opcheck(T.attention_bwd, args)


def _compiled_matches_eager(fn, *inputs, counter=None):
    """fullgraph torch.compile (aot_eager: dynamo + AOTAutograd, no C++ toolchain) gives
    the eager output and gradients; returns the captured FX graphs."""
    graphs = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        graphs.append(gm)
        keep = lambda g, _: make_boxed_func(g)  # noqa: E731
        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(gm, example_inputs)

    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    got = compiled(*leaves)
    got_grads = torch.autograd.grad(got.square().sum(), leaves)
    ref_leaves = [t.detach().clone().requires_grad_() for t in inputs]
    want = fn(*ref_leaves)
    want_grads = torch.autograd.grad(want.square().sum(), ref_leaves)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)
    assert len(graphs) == 1  # fullgraph: one graph, no break
    return graphs[0]


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_torch_compile_fullgraph_through_the_dispatcher(backend):
    q, k, v = qkv(nq=9, nk=11)
    mask = mask_for(2, 11)
    mask[0] = False  # a batch with no valid key

    def f(q, k, v):
        return rk.attention(q, k, v, key_valid=mask, backend=backend) * 2

    _compiled_matches_eager(f, q, k, v)
    A.clear_dispatch_cache()  # the choice is also made at trace time when not cached yet
    _compiled_matches_eager(lambda q, k, v: rk.attention(q, k, v), q, k, v)


@needs_interpreter
@pytest.mark.parametrize("path,n", [("dense", 17), ("short", 6)])
def test_torch_compile_fullgraph_keeps_the_triton_op_as_one_node(path, n):
    q, k, v = qkv(nq=n, nk=n)
    mask = mask_for(2, n)

    def f(q, k, v):
        return A._T.triton_attention(q, k, v, mask, path=path) + 1

    gm = _compiled_matches_eager(f, q, k, v)
    targets = [node.target for node in gm.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.rsfm_kernels.attention_fwd.default) == 1, targets


@needs_interpreter
def test_forced_triton_backend_compiles_fullgraph():
    q, k, v = qkv(nq=17, nk=17)
    _compiled_matches_eager(lambda q, k, v: rk.attention(q, k, v, backend="triton"), q, k, v)


# ---------------------------------------------------------------- cached dispatch


def test_dispatch_choice_is_cached_per_signature(monkeypatch):
    q, k, v = qkv()
    rk.attention(q, k, v)
    key = A._dispatch_key(q, k, v, None, None)
    if not torch.cuda.is_available():
        assert dispatch._CHOICES[("attention", key)] == "sdpa"
    calls = []
    real = dispatch.select
    monkeypatch.setattr(dispatch, "select", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    rk.attention(q, k, v)  # same signature: no new selection
    rk.attention(*qkv(b=3, nq=5, nk=7))  # other B and lengths, same facts: cached too
    assert calls == []
    rk.attention(q, k, v, key_valid=mask_for(2, 17))  # a mask is a new signature
    rk.attention(q.half(), k.half(), v.half())  # so is a dtype
    rk.attention(*qkv(nq=200, nk=200))  # so is a length over the packed kernel's limit
    assert len(calls) == 3
    monkeypatch.setenv("RSFM_BACKEND_ATTENTION", "reference")  # forcing is read every call
    out = rk.attention(q, k, v)
    assert (
        dispatch._CHOICES[("attention", A._dispatch_key(q, k, v, None, "reference"))] == "reference"
    )
    torch.testing.assert_close(out, A.attention_reference(q, k, v))


def test_dispatch_key_facts_give_the_same_reasons_as_the_inputs():
    """The probes built from a key must fail exactly where the real inputs fail."""
    cases = [
        qkv(),
        qkv(d=12),
        [torch.randn(2, 17, 16)] * 3,  # 3-D
        [*qkv()[:2], qkv()[2].half()],
        qkv(nq=130, nk=3),
    ]
    masks = [None, mask_for(2, 17), torch.ones(2, 5, dtype=torch.bool)]
    for q, k, v in cases:
        for m in masks:
            inputs = {"q": q, "k": k, "v": v, "key_valid": m}
            for b in dispatch.backends("attention"):
                real = bool(b.not_supported_reasons(inputs, forced=True))
                fq, fk, fv, fm = _probes_of(A._dispatch_key(q, k, v, m, None))
                probe = {"q": fq, "k": fk, "v": fv, "key_valid": fm}
                assert bool(b.not_supported_reasons(probe, forced=True)) == real, (
                    b.name, tuple(q.shape), None if m is None else tuple(m.shape)
                )  # fmt: skip


def _probes_of(key):
    forced, qdev, kdev, vdev, qdt, kdt, vdt, ranks, dims, long, mask_ok = key
    nq = CF.SHORT_MAX_LEN + 1 if long else 1
    q = A._probe(ranks[0], dims[0], nq, qdt, qdev)
    k = A._probe(ranks[1], dims[1], 1, kdt, kdev)
    v = A._probe(ranks[2], dims[2], 1, vdt, vdev)
    m = None if mask_ok is None else torch.empty((0, 1) if mask_ok else (1,), dtype=torch.bool)
    return q, k, v, m


def test_forced_backend_that_cannot_run_names_the_real_shapes():
    q, k, v = qkv(nq=200, nk=200)
    with pytest.raises(dispatch.BackendUnavailable, match="200, 200"):
        rk.attention(q, k, v, backend="triton_short")


# ---------------------------------------------------------------- configs and autotuning


@needs_triton
def test_arch_families():
    fam = TC.arch_family
    assert [fam(8, 0), fam(8, 7), fam(8, 6), fam(8, 9)] == ["sm80", "sm80", "sm86", "sm86"]
    assert [fam(9, 0), fam(10, 0), fam(10, 3), fam(12, 0), fam(12, 1)] == [
        "sm90", "sm100", "sm100", "sm120", "sm120",
    ]  # fmt: skip
    assert fam(11, 0) == fam(7, 5) == "other" and CF.family_of("other") == "sm86"
    assert TC.gpu_arch(torch.device("cpu")) == "cpu"


def test_tables_cover_every_family_head_dim_and_dtype():
    for fam in CF.FAMILIES:
        for bd in (16, 32, 64, 128):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                cfgs = CF.pinned(fam, bd, dtype)
                assert len(cfgs) == 3
                for kernel, first in zip(CF.KERNELS, cfgs):
                    sp = CF.space(fam, bd, dtype, kernel)
                    assert sp[0] == first and not first.tma and not first.persistent
                    for c in sp:
                        assert c.block_m in (16, 32, 64, 128) and c.block_n in (16, 32, 64, 128)
                        assert not c.tma or fam in CF.TMA_FAMILIES
                        assert not c.persistent or kernel == "fwd"
    # sm120 (99 KB per block) never gets the 227 KB families' tiles
    for d in (32, 64, 128):
        assert CF.pinned("sm120", d, torch.bfloat16) != CF.pinned("sm90", d, torch.bfloat16)
    assert len(CF.entries()) == len(set(CF.entries()))


@needs_triton
def test_autotune_wrapper_holds_the_family_space(monkeypatch):
    for kernel in CF.KERNELS:
        tuner = D.tuned(kernel, "sm90", 128, torch.bfloat16)
        want = CF.space("sm90", 128, torch.bfloat16, kernel)
        assert len(tuner.configs) == len(want)
        for tc, c in zip(tuner.configs, want):
            assert (tc.kwargs["BLOCK_M"], tc.kwargs["BLOCK_N"], tc.kwargs["TMA"]) == (
                c.block_m, c.block_n, c.tma,
            )  # fmt: skip
            assert (tc.num_warps, tc.num_stages) == (c.num_warps, c.num_stages)
        assert {"N_Q_BUCKET", "N_K_BUCKET", "HEAD_DIM", "HAS_MASK", "TMA_OK"} <= set(tuner.keys)
    tma = [c for c in D.tuned("fwd", "sm90", 128, torch.bfloat16).configs if c.kwargs["TMA"]]
    plain = D._keep_tma_ok(tma, {}, TMA_OK=False)
    assert tma and plain == []  # descriptor configs are pruned for incompatible inputs
    assert D._keep_tma_ok(tma, {}, TMA_OK=True) == tma
    assert [D._bucket(n) for n in (1, 256, 257, 1024, 5000, 10**6)] == [
        256, 256, 1024, 1024, 16384, 16384,
    ]  # fmt: skip


@needs_interpreter
def test_interpreter_never_autotunes(monkeypatch):
    monkeypatch.setenv("RSFM_AUTOTUNE", "1")
    assert not TC.autotune_enabled()
    monkeypatch.setattr(D, "tuned", lambda *a: pytest.fail("autotuned under the interpreter"))
    q, k, v = qkv(nq=20, nk=20)
    A._T.triton_attention(q, k, v, path="dense")
