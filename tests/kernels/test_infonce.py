"""InfoNCE: the torch and triton backends against the float32 reference, every gradient
(q, k, temperature), masks and ignored rows, symmetric loss, no N x M memory, no host sync,
the custom op (opcheck, torch.compile) and the dispatcher.

On CPU the Triton kernels run under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before import), float32/float16 only; its pinned 64 x 64 tiles make
N in {1, 7, 130} cover one partial block, several blocks and a ragged tail. GPU tests
(``-m gpu``) use flash-attention's rule against the torch backend in float32.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rsfm_kernels as rk
import torch
import torch.nn.functional as F
from rsfm_kernels import dispatch
from rsfm_kernels.infonce import info_nce_reference, info_nce_torch, info_nce_triton
from torch.utils._python_dispatch import TorchDispatchMode

I = importlib.import_module("rsfm_kernels.infonce")  # noqa: E741 (the module, not a number)
T = I._T  # the Triton kernels (None where Triton is not installed)
TB = importlib.import_module("rsfm_kernels.infonce_torch")  # the torch backend's tiles

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
REPO = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(
    T is None or not (CUDA or T._INTERPRETED),
    reason="Triton kernels need CUDA or TRITON_INTERPRET=1",
)


# ----------------------------------------------------------------------------- fixtures


def _feats(n: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype)


def _case(n, m, d, dtype=torch.float32, labels="auto", masks=False, ignored=False, seed=0):
    """q, k and the keyword arguments of one case; labels "auto": diagonal when N == M,
    else random; "perm": a random permutation (N == M)."""
    g = torch.Generator().manual_seed(seed + 100)
    q, k = _feats(n, d, dtype, seed), _feats(m, d, dtype, seed + 1)
    kw: dict = {}
    if labels == "perm":
        kw["labels"] = torch.randperm(n, generator=g)
    elif labels == "random" or (labels == "auto" and n != m):
        kw["labels"] = torch.randint(0, m, (n,), generator=g)
    if ignored:
        lab = kw.get("labels", torch.arange(n)).clone()
        lab[1:][torch.rand(n - 1, generator=g) < 0.3] = -100  # row 0 keeps a target
        kw["labels"] = lab
    if masks:
        kw["q_valid"] = torch.rand(n, generator=g) > 0.2
        kw["k_valid"] = torch.rand(m, generator=g) > 0.2
        kw["q_valid"][0] = True
        lab0 = int(kw["labels"][0]) if "labels" in kw else 0
        kw["k_valid"][lab0] = True  # at least one live row
    return q, k, kw


def _grads(fn, q, k, temperature=0.1, **kw):
    """(loss, dq, dk, dt) with a learnable temperature tensor."""
    q = q.clone().to(DEV).requires_grad_(True)
    k = k.clone().to(DEV).requires_grad_(True)
    t = torch.tensor(float(temperature), device=DEV, requires_grad=True)
    kw = {n: v.to(DEV) if torch.is_tensor(v) else v for n, v in kw.items()}
    loss = fn(q, k, t, **kw)
    dq, dk, dt = torch.autograd.grad(loss, (q, k, t))
    return loss.detach(), dq, dk, dt


def _ref(q, k, temperature=0.1, **kw):
    return _grads(info_nce_reference, q.float(), k.float(), temperature, **kw)


def _close(got, ref, rtol, atol, what=""):
    """assert_close with ``atol`` relative to the largest |reference| entry of each output:
    gradients scale with 1/t, and their small entries carry the big ones' rounding (floor:
    0.1, for gradients that are 0 up to rounding, e.g. M = 1)."""
    for name, a, b in zip(("loss", "dq", "dk", "dt"), got, ref):
        assert torch.isfinite(a).all(), f"{what} {name} not finite"
        scale = b.abs().max().item() if b.numel() else 0.0
        torch.testing.assert_close(
            a.float(), b.float(), rtol=rtol, atol=atol * max(scale, 0.1), msg=f"{what} {name}"
        )


def _torch_fn(block=64):
    return lambda q, k, t, **kw: info_nce_torch(q, k, t, block_q=block, block_k=block + 11, **kw)


# ------------------------------------------------------------------- the torch backend

SIZES = [1, 7, 130, 1000]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("m", SIZES)
def test_torch_matches_reference_all_sizes(n, m):
    """Every (N, M) pair, D = 16; N = M uses the diagonal, N != M random labels."""
    q, k, kw = _case(n, m, 16, masks=n > 1 and m > 1)
    _close(_grads(_torch_fn(), q, k, **kw), _ref(q, k, **kw), 1e-5, 5e-6, f"{n}x{m}")


@pytest.mark.parametrize("d", [16, 64, 256])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("temperature", [0.01, 10.0])
@pytest.mark.parametrize("labels", ["auto", "perm"])
def test_torch_dims_temperatures_symmetric(d, symmetric, temperature, labels):
    q, k, kw = _case(130, 130, d, labels=labels, masks=True, ignored=True)
    kw["symmetric"] = symmetric
    got = _grads(_torch_fn(48), q, k, temperature, **kw)
    # t = 0.01: logits up to 100 in float32, so ~1e-5 relative rounding in the spec itself
    rtol = 5e-5 if temperature < 0.1 else 1e-5
    _close(got, _ref(q, k, temperature, **kw), rtol, 5e-6, f"D={d}")


def test_torch_float16_inputs_return_input_dtype_grads():
    q, k, kw = _case(130, 37, 64, torch.float16, masks=True)
    loss, dq, dk, dt = _grads(_torch_fn(32), q, k, **kw)
    assert loss.dtype == torch.float32 and dq.dtype == dk.dtype == torch.float16
    ref = _ref(q, k, **kw)
    _close((loss, dq, dk, dt), ref, 2e-3, 2e-3, "fp16")


def test_torch_1000_symmetric_with_default_tiles():
    """N = M = 1000 once with the production tile size (one tile) and once tiled."""
    q, k, kw = _case(1000, 1000, 64, masks=True, ignored=True)
    ref = _ref(q, k, 0.07, symmetric=True, **kw)
    _close(_grads(info_nce_torch, q, k, 0.07, symmetric=True, **kw), ref, 1e-5, 5e-6)
    _close(_grads(_torch_fn(256), q, k, 0.07, symmetric=True, **kw), ref, 1e-5, 5e-6)


def test_gradcheck_float64_including_temperature():
    g = torch.Generator().manual_seed(11)
    q = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 8, -100, 2, 5])
    k_valid = torch.ones(9, dtype=torch.bool)
    k_valid[4] = False
    q_valid = torch.tensor([True, True, False, True, True, True])

    def f(q, k, t, symmetric):
        return info_nce_torch(q, k, t, labels, q_valid, k_valid, symmetric=symmetric,
                              block_q=4, block_k=2)  # fmt: skip

    assert torch.autograd.gradcheck(lambda q, k, t: f(q, k, t, False), (q, k, t))
    assert torch.autograd.gradcheck(lambda q, k, t: f(q, k, t, True), (q, k, t))


def test_reference_matches_cross_entropy():
    q, k = _feats(37, 8, seed=6), _feats(37, 8, seed=7)
    want = F.cross_entropy(q @ k.T / 0.1, torch.arange(37))
    torch.testing.assert_close(info_nce_reference(q, k, 0.1), want)
    sym = 0.5 * (want + F.cross_entropy(k @ q.T / 0.1, torch.arange(37)))
    torch.testing.assert_close(info_nce_reference(q, k, 0.1, symmetric=True), sym)
    lab = torch.arange(37)
    lab[::3] = -100
    want = F.cross_entropy(q @ k.T / 0.1, lab, ignore_index=-100)
    torch.testing.assert_close(info_nce_reference(q, k, 0.1, lab), want)


@pytest.mark.parametrize("fn", [info_nce_reference, info_nce_torch])
def test_masked_keys_and_rows_do_not_matter(fn):
    """Changing invalid rows/keys changes nothing, loss or gradient of valid inputs."""
    n, d = 37, 8
    q, k = _feats(n, d, seed=8), _feats(n, d, seed=9)
    valid = torch.arange(n) % 3 != 0
    kw = dict(q_valid=valid, k_valid=valid, symmetric=True)
    out1 = _grads(fn, q, k, **kw)
    q2, k2 = q.clone(), k.clone()
    q2[~valid] = 100.0
    k2[~valid] = -50.0
    out2 = _grads(fn, q2, k2, **kw)
    torch.testing.assert_close(out1[0], out2[0])
    torch.testing.assert_close(out1[1][valid], out2[1][valid])
    torch.testing.assert_close(out1[2][valid], out2[2][valid])
    assert (out1[1][~valid] == 0).all() and (out1[2][~valid] == 0).all()


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_no_valid_row_gives_zero_not_nan(backend):
    if backend == "triton" and not (CUDA or (T is not None and T._INTERPRETED)):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")

    def fn(q, k, t, **kw):
        return rk.info_nce(q, k, t, backend=backend, **kw)

    q, k = _feats(5, 16), _feats(5, 16, seed=1)
    for kw in (
        dict(q_valid=torch.zeros(5, dtype=torch.bool)),
        dict(k_valid=torch.zeros(5, dtype=torch.bool), symmetric=True),
        dict(labels=torch.full((5,), -100)),
    ):
        loss, dq, dk, dt = _grads(fn, q, k, **kw)
        assert loss.item() == 0.0 and (dq == 0).all() and (dk == 0).all() and dt.item() == 0.0


def test_float_temperature_and_empty_inputs():
    q, k = _feats(7, 16), _feats(7, 16, seed=1)
    q.requires_grad_(True)
    torch.testing.assert_close(info_nce_torch(q, k, 0.2), info_nce_reference(q, k, 0.2))
    (dq,) = torch.autograd.grad(info_nce_torch(q, k, 0.2), (q,))  # k needs no grad: no dK
    assert dq.shape == q.shape
    e = torch.zeros(0, 16, requires_grad=True)
    loss = info_nce_torch(e, e, 0.1, symmetric=True)
    loss.backward()
    assert loss.item() == 0.0 and e.grad.shape == (0, 16)
    lab = torch.full((3,), -100)
    assert info_nce_torch(_feats(3, 16), e, 0.1, lab).item() == 0.0  # no keys, no targets


# ---------------------------------------------------- memory: O((N + M) D), few temporaries


class _Allocations(TorchDispatchMode):
    """Records, per ATen op that allocates (not views, not in-place), the output sizes."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name
        if not (func.is_view or name.endswith("_") or "out" in func._schema.overload_name):
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.sizes.append(t.numel())
        return out


def test_torch_backend_never_materialises_n_by_m_and_allocates_one_tile_per_step():
    """The largest intermediate is one tile or one (N, D) operand; each tile step allocates
    one tile (the matmul) -- two when symmetric (the column copy) -- the rest is in place.
    (The pre-issue-14 ``chunked`` backend, counted the same way: 3 forward, 6 backward.)"""
    n = m = 512
    tile, d = 64, 32
    q, k = _feats(n, d), _feats(m, d, seed=1)
    steps = (n // tile) * (m // tile)
    for symmetric in (False, True):
        p = I._prepare(q, k, None, None, torch.arange(m) % 5 != 0, -100, symmetric)
        t = torch.tensor(0.1)
        with _Allocations() as mode:
            lse_r, pos, lse_c = TB.torch_stats(q, k, t, p, tile, tile)
        per_step = 2 if symmetric else 1
        assert max(mode.sizes) <= max(tile * tile, n * d)
        assert sum(s == tile * tile for s in mode.sizes) == per_step * steps, symmetric
        lse_r = torch.where(p.rv > 0, lse_r, float("inf"))
        lse_c = torch.where(p.cv > 0, lse_c, float("inf")) if symmetric else None
        with _Allocations() as mode:
            TB.torch_grads(q, k, t, p, lse_r, lse_c, (True, True, True), tile, tile)
        assert max(mode.sizes) <= max(tile * tile, n * d)
        assert sum(s == tile * tile for s in mode.sizes) == per_step * steps, symmetric
    ref_mode = _Allocations()  # the probe sees N x M where it exists
    with ref_mode:
        info_nce_reference(q, k, 0.1)
    assert max(ref_mode.sizes) >= n * m


# ------------------------------------------------------------------------ no host sync


class _NoSync(TorchDispatchMode):
    """Fails on the ops that read a device value on the host (.item(), bool(), nonzero)."""

    SYNCING = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCING:
            raise AssertionError(f"host sync: {func._schema.name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_device_path_has_no_host_sync(monkeypatch, backend, symmetric):
    """The op's forward and backward bodies as they run on CUDA (label and temperature
    checks as async asserts) under a mode that fails on any host read of a tensor value;
    CPU tensors stand in for device ones. (The custom op hides its body from a dispatch
    mode, so the bodies are called directly.)"""
    if backend == "triton" and not (CUDA or (T is not None and T._INTERPRETED)):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")
    with _NoSync(), pytest.raises(AssertionError, match="host sync"):
        torch.ones(2).sum().item()  # the probe catches a sync
    monkeypatch.setattr(I, "_host_checks", lambda tensor: False)
    q, k, kw = _case(70, 70, 16, labels="perm", masks=True, ignored=True)
    lab, qv, kv = kw["labels"], kw["q_valid"], kw["k_valid"]
    with _NoSync():
        I._check(q, k, lab, qv, kv, 0.1)
        t = I._temperature_tensor(torch.tensor(0.1), q)
        loss, lse_r, lse_c = I._forward_impl(q, k, t, lab, qv, kv, -100, symmetric, backend, 32, 32)
        g = I._backward_impl(torch.ones(()), q, k, t, lab, qv, kv, lse_r, lse_c, -100,
                             symmetric, backend, 32, 32, [True, True, True])  # fmt: skip
    ref = _ref(q, k, 0.1, symmetric=symmetric, **kw)
    _close((loss, *g), ref, 1e-5, 5e-6)


def test_bad_labels_raise_on_cpu_and_assert_async_on_the_device_path(monkeypatch):
    q, k = _feats(4, 8), _feats(6, 8, seed=1)
    with pytest.raises(ValueError, match=r"\[0, 6\).*\[0, 6\]"):
        info_nce_torch(q, k, 0.1, torch.tensor([0, 1, 2, 6]))
    assert info_nce_torch(q, k, 0.1, torch.tensor([0, -100, 2, 5])).isfinite()
    with pytest.raises(ValueError, match="one-to-one.*key 2 is the positive of 2 rows"):
        info_nce_torch(q, k, 0.1, torch.tensor([0, 2, 2, 5]), symmetric=True)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce_torch(q, k, torch.tensor(-0.1), torch.tensor([0, 1, 2, 3]))
    monkeypatch.setattr(I, "_host_checks", lambda tensor: False)  # as on CUDA
    with pytest.raises(RuntimeError, match="outside"):  # _assert_async fails eagerly on CPU
        info_nce_torch(q, k, 0.1, torch.tensor([0, 1, 2, 6]))


# ------------------------------------------------------------- the triton backend (CPU)


def _triton_fn(q, k, t, **kw):
    return info_nce_triton(q, k, t, **kw)


TRITON_SIZES = [(1, 1), (1, 7), (7, 1), (7, 130), (130, 7), (130, 130), (1000, 130), (130, 1000)]


@needs_triton
@pytest.mark.parametrize("n,m", TRITON_SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_reference_sizes(n, m, dtype):
    q, k, kw = _case(n, m, 16, dtype, masks=n > 1 and m > 1)
    tol = (1e-5, 5e-6) if dtype == torch.float32 else (3e-3, 3e-4)
    _close(_grads(_triton_fn, q, k, **kw), _ref(q, k, **kw), *tol, f"{n}x{m} {dtype}")


@needs_triton
@pytest.mark.parametrize("d", [16, 64, 256])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("temperature", [0.01, 10.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_dims_temperatures_symmetric_masks(d, symmetric, temperature, dtype):
    labels = "perm" if symmetric else "random"
    q, k, kw = _case(130, 130, d, dtype, labels=labels, masks=True, ignored=True)
    kw["symmetric"] = symmetric
    got = _grads(_triton_fn, q, k, temperature, **kw)
    if dtype == torch.float32:
        tol = (5e-5 if temperature < 0.1 else 1e-5, 5e-6)
    else:  # fp16 B in the gradient matmuls; logits up to 100 at t = 0.01
        tol = (1e-2 if temperature < 0.1 else 3e-3, 3e-4)
    _close(got, _ref(q, k, temperature, **kw), *tol, f"D={d} {dtype}")


@needs_triton
def test_triton_diagonal_odd_dim_and_strided_inputs():
    base = _feats(130, 2 * 24, seed=3)
    q = base[:, ::2]  # (130, 24) with stride 2 along D: non-power-of-two D, any strides
    k = _feats(130, 24, seed=4).T.contiguous().T  # column-major
    _close(_grads(_triton_fn, q, k), _ref(q, k), 1e-5, 5e-6)
    k_valid = (torch.arange(260) % 3 != 0)[::2]  # a non-contiguous mask
    kw = dict(k_valid=k_valid, symmetric=True)
    _close(_grads(_triton_fn, q, k, **kw), _ref(q, k, **kw), 1e-5, 5e-6, "strided mask")


@needs_triton
def test_triton_split_loop_path(monkeypatch):
    """Small N on a big GPU splits each loop over several programs (partials + combine)."""
    monkeypatch.setattr(T, "SPLIT_OVERRIDE", 3)
    q, k, kw = _case(70, 200, 32, labels="random", masks=True, ignored=True)
    _close(_grads(_triton_fn, q, k, **kw), _ref(q, k, **kw), 1e-5, 5e-6, "split")
    q, k, kw = _case(200, 200, 32, labels="perm", masks=True)
    kw["symmetric"] = True
    _close(_grads(_triton_fn, q, k, **kw), _ref(q, k, **kw), 1e-5, 5e-6, "split sym")


@needs_triton
def test_triton_backward_is_bitwise_repeatable():
    q, k, kw = _case(130, 130, 32, labels="perm", masks=True)
    runs = [_grads(_triton_fn, q, k, symmetric=True, **kw) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_triton
@pytest.mark.slow
def test_triton_1000_by_1000_symmetric():
    """~10 s under the interpreter: the largest square case."""
    q, k, kw = _case(1000, 1000, 16, labels="perm", masks=True, ignored=True)
    kw["symmetric"] = True
    _close(_grads(_triton_fn, q, k, **kw), _ref(q, k, **kw), 1e-5, 5e-6)


# ------------------------------------------------------------- custom op and dispatch


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    if backend == "triton" and not (CUDA or (T is not None and T._INTERPRETED)):
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")
    q, k, kw = _case(9, 11, 16, labels="random", masks=True, ignored=True)
    t = torch.tensor(0.3, requires_grad=True)
    args = (q.requires_grad_(), k.requires_grad_(), t, kw["labels"], kw["q_valid"],
            kw["k_valid"], -100, False, backend, 4, 4)  # fmt: skip
    torch.library.opcheck(I._info_nce_op, args)
    q, k, kw = _case(9, 9, 16, labels="perm", masks=True)
    args = (q, k, t, kw["labels"], kw["q_valid"], kw["k_valid"], -100, True, backend, 4, 4)
    torch.library.opcheck(I._info_nce_op, args)


def test_torch_compile_fullgraph_traces_one_op():
    q, k = _feats(9, 16).requires_grad_(), _feats(9, 16, seed=1).requires_grad_()
    t = torch.tensor(0.2, requires_grad=True)
    lab = torch.randperm(9, generator=torch.Generator().manual_seed(0))

    def f(q, k, t):
        return rk.info_nce(q, k, t, lab, symmetric=True) + rk.info_nce(q, k, 0.1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(q, k, t)
    gq, gk, gt = torch.autograd.grad(got, (q, k, t))
    want = f(q, k, t)
    wq, wk, wt = torch.autograd.grad(want, (q, k, t))
    for a, b in ((got, want), (gq, wq), (gk, wk), (gt, wt)):
        torch.testing.assert_close(a, b)


def test_dispatch_prefers_torch_on_cpu_caches_and_forcing_works(monkeypatch):
    q, k = _feats(37, 8), _feats(37, 8, seed=1)
    assert dispatch.select("info_nce", {"q": q, "k": k}).name == "torch"
    I.clear_dispatch_cache()
    a = rk.info_nce(q, k, 0.1)
    key = I._dispatch_key(q, k, None)
    assert dispatch._CHOICES[("info_nce", key)] == "torch"
    calls = []
    monkeypatch.setattr(dispatch, "select", lambda *a, **kw: calls.append(a))
    rk.info_nce(q, k, 0.1)  # cached: the registry is not asked again
    assert not calls
    monkeypatch.undo()
    b = rk.info_nce(q, k, 0.1, backend="reference")
    torch.testing.assert_close(a, b)
    monkeypatch.setenv("RSFM_BACKEND_INFO_NCE", "reference")  # the environment is in the key
    assert I._choose(I._dispatch_key(q, k, dispatch.forced_backend("info_nce"))) == "reference"
    with pytest.raises(dispatch.BackendUnavailable):
        rk.info_nce(q, k, backend="nope")
    with pytest.raises(dispatch.BackendUnavailable, match="triton.*bfloat16"):
        rk.info_nce(q.bfloat16(), k.bfloat16(), backend="triton")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(q=torch.randn(4, 8), k=torch.randn(5, 8)), "pass labels"),
        (dict(q=torch.randn(4, 8), k=torch.randn(4, 7)), "same D"),
        (
            dict(q=torch.randn(4, 8), k=torch.randn(6, 8), labels=torch.tensor([0, 1, 2, 6])),
            r"\[0, 6\)",
        ),
        (
            dict(q=torch.randn(4, 8), k=torch.randn(4, 8), q_valid=torch.ones(3, dtype=torch.bool)),
            "q_valid",
        ),
        (dict(q=torch.randn(4, 8), k=torch.randn(4, 8), temperature=0.0), "temperature"),
        (dict(q=torch.randn(4, 8), k=torch.randn(4, 8), temperature=torch.ones(2)), "one"),
        (dict(q=torch.randn(4, 8), k=torch.randn(4, 8), labels=torch.ones(4)), "integer"),
    ],
)
def test_errors_name_the_problem(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rk.info_nce(**kwargs)


NO_TRITON = r"""
import json, sys
sys.modules["triton"] = None  # as if not installed
import torch
import rsfm_kernels as rk
from rsfm_kernels import dispatch
q = torch.randn(9, 16)
loss = rk.info_nce(q, q.flip(0), 0.1, symmetric=True)
reasons = dispatch.backends("info_nce")[0].not_supported_reasons({"q": q, "k": q})
print(json.dumps({"loss": float(loss), "reasons": reasons,
                  "loaded": "rsfm_kernels.infonce_triton" in sys.modules}))
"""


def test_runs_without_triton():
    p = subprocess.run([sys.executable, "-c", NO_TRITON], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["loss"] > 0 and not r["loaded"]
    assert any("triton is not installed" in x for x in r["reasons"]), r


# ---------------------------------------------------------------- offline GPU compile (slow)


@pytest.mark.slow
def test_pinned_configs_compile_for_sm80_and_sm90_without_spills():
    """Compiles every pinned config with Triton's own ptxas; no GPU needed."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.infonce", "--compile-report"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith(("sm80", "sm90"))]
    assert len(rows) == 2 * 3 * 4, res.stdout  # arch x D x (fwd, fwd sym-free, dQ, dK)
    spilling = [r for r in rows if " 0 B spilled" not in r and "ptxas unavailable" not in r]
    assert not spilling, "\n".join(spilling)


# ---------------------------------------------------------------- GPU (-m gpu)


def _flash_rule(name, got, ref32, lowp, atol):
    err = (got.float() - ref32.float()).abs().max().item()
    bound = 2 * (lowp.float() - ref32.float()).abs().max().item() + atol
    assert err <= bound, f"{name}: max error {err:.3e} > 2 * torch-lowp error + atol = {bound:.3e}"


GPU_REL_ATOL = {torch.bfloat16: 4e-3, torch.float16: 1e-3, torch.float32: 1e-5}


def _gpu_compare(q, k, **kw):
    """triton (input dtype) vs the torch backend in float32 (truth) and in the input dtype;
    atol is a fraction of each output's largest entry (~bf16/fp16 resolution), so the rule
    also holds where the torch backend's own low-precision error is ~0 (e.g. a PyTorch
    without ``mm(..., out_dtype)``, where it upcasts)."""
    got = _grads(functools.partial(rk.info_nce, backend="triton"), q, k, **kw)
    low = _grads(functools.partial(rk.info_nce, backend="torch"), q, k, **kw)
    ref = _grads(functools.partial(rk.info_nce, backend="torch"), q.float(), k.float(), **kw)
    rel = GPU_REL_ATOL[q.dtype]
    for name, g, lw, r in zip(("loss", "dq", "dk", "dt"), got, low, ref):
        assert torch.isfinite(g).all(), name
        _flash_rule(name, g, r, lw, rel * r.abs().max().item() + 1e-7)
    return got


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_bf16_65536_d256_against_torch_backend_and_no_sync():
    n, d = 65536, 256
    q = F.normalize(torch.randn(n, d, device=DEV), dim=1).bfloat16()
    k = F.normalize(q.float() + 0.5 * torch.randn(n, d, device=DEV), dim=1).bfloat16()
    _gpu_compare(q, k, temperature=0.07)
    # Any host sync in forward or backward raises under the sync debug mode; inputs are
    # made before (a CUDA tensor from a Python number is a synchronous copy).
    qs, ks = q[:8192].clone().requires_grad_(), k[:8192].clone().requires_grad_()
    t = torch.full((), 0.07, device=DEV).requires_grad_()
    lab = torch.randperm(8192, device=DEV)
    lab[::7] = -100
    valid = torch.rand(8192, device=DEV) > 0.1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for backend in ("triton", "torch"):
            for sym in (False, True):
                loss = rk.info_nce(qs, ks, t, lab, valid, valid, backend=backend, symmetric=sym)
                torch.autograd.grad(loss, (qs, ks, t))
    finally:
        torch.cuda.set_sync_debug_mode("default")


GPU_CASES = [  # (dtype, D, symmetric): bf16 at every D, fp16 and fp32 once (compile time)
    (torch.bfloat16, 64, False), (torch.bfloat16, 128, False), (torch.bfloat16, 128, True),
    (torch.bfloat16, 256, True), (torch.float16, 128, True), (torch.float32, 64, True),
]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,d,symmetric", GPU_CASES)
def test_gpu_ragged_masked_flash_rule(dtype, d, symmetric):
    labels = "perm" if symmetric else "random"
    q, k, kw = _case(3001, 3001, d, labels=labels, masks=True, ignored=True)
    q, k = q.to(DEV, dtype), k.to(DEV, dtype)
    strided = torch.empty(3001, 2 * d, device=DEV, dtype=dtype)[:, ::2]  # any strides
    strided.copy_(q)
    _gpu_compare(strided, k, temperature=0.05, symmetric=symmetric, **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_small_n_split_and_determinism_and_dispatch():
    q, k, kw = _case(300, 5000, 128, torch.bfloat16, labels="random", masks=True)
    q, k = q.to(DEV), k.to(DEV)
    assert dispatch.select("info_nce", {"q": q, "k": k}).name == "triton"
    runs = [_gpu_compare(q, k, **kw) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
