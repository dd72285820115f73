"""InfoNCE: the chunked backend against the reference, gradients, masks, O(N*D) memory."""

from __future__ import annotations

import pytest
import rsfm_kernels as rk
import torch
import torch.nn.functional as F
from rsfm_kernels import dispatch
from rsfm_kernels.infonce import info_nce_chunked, info_nce_reference
from torch.utils._python_dispatch import TorchDispatchMode


def _feats(n: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def _grads(fn, q, k, **kw):
    q = q.clone().requires_grad_(True)
    k = k.clone().requires_grad_(True)
    loss = fn(q, k, **kw)
    dq, dk = torch.autograd.grad(loss, (q, k))
    return loss.detach(), dq, dk


@pytest.mark.parametrize("n", [1, 37, 130])
@pytest.mark.parametrize("d", [8, 33])
def test_chunked_matches_reference_square(n, d):
    q, k = _feats(n, d, seed=1), _feats(n, d, seed=2)
    kw = dict(temperature=0.07)
    ref = _grads(info_nce_reference, q, k, **kw)
    got = _grads(info_nce_chunked, q, k, block_q=16, block_k=24, **kw)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,m", [(1, 5), (37, 130), (130, 37)])
def test_chunked_matches_reference_labels_and_masks(n, m):
    d = 33
    g = torch.Generator().manual_seed(3)
    q, k = _feats(n, d, seed=4), _feats(m, d, seed=5)
    labels = torch.randint(0, m, (n,), generator=g)
    q_valid = torch.rand(n, generator=g) > 0.2
    k_valid = torch.rand(m, generator=g) > 0.3
    q_valid[0] = True
    k_valid[labels[0]] = True  # at least one live row
    kw = dict(temperature=0.2, labels=labels, q_valid=q_valid, k_valid=k_valid)
    ref = _grads(info_nce_reference, q, k, **kw)
    got = _grads(info_nce_chunked, q, k, block_q=7, block_k=11, **kw)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_reference_matches_cross_entropy():
    q, k = _feats(37, 8, seed=6), _feats(37, 8, seed=7)
    want = F.cross_entropy(q @ k.T / 0.1, torch.arange(37))
    torch.testing.assert_close(info_nce_reference(q, k, 0.1), want)


def test_masked_keys_and_rows_do_not_matter():
    """Changing invalid rows/keys changes nothing, loss or gradient of valid inputs."""
    n, d = 37, 8
    q, k = _feats(n, d, seed=8), _feats(n, d, seed=9)
    valid = torch.arange(n) % 3 != 0
    out1 = _grads(info_nce_chunked, q, k, q_valid=valid, k_valid=valid, block_q=8, block_k=8)
    q2, k2 = q.clone(), k.clone()
    q2[~valid] = 100.0
    k2[~valid] = -50.0
    out2 = _grads(info_nce_chunked, q2, k2, q_valid=valid, k_valid=valid, block_q=8, block_k=8)
    torch.testing.assert_close(out1[0], out2[0])
    torch.testing.assert_close(out1[1][valid], out2[1][valid])
    torch.testing.assert_close(out1[2][valid], out2[2][valid])
    assert (out1[1][~valid] == 0).all() and (out1[2][~valid] == 0).all()


@pytest.mark.parametrize("fn", [info_nce_reference, info_nce_chunked])
def test_no_valid_row_gives_zero_not_nan(fn):
    q, k = _feats(5, 8), _feats(5, 8, seed=1)
    loss, dq, dk = _grads(fn, q, k, q_valid=torch.zeros(5, dtype=torch.bool))
    assert loss.item() == 0.0 and (dq == 0).all() and (dk == 0).all()
    loss, dq, dk = _grads(fn, q, k, k_valid=torch.zeros(5, dtype=torch.bool))
    assert loss.item() == 0.0 and torch.isfinite(dq).all() and torch.isfinite(dk).all()


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(11)
    q = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 3, 8, 2, 2, 5])
    k_valid = torch.ones(9, dtype=torch.bool)
    k_valid[4] = False
    q_valid = torch.tensor([True, True, False, True, True, True])

    def f(q, k):
        return info_nce_chunked(q, k, 0.5, labels, q_valid, k_valid, block_q=4, block_k=2)

    assert torch.autograd.gradcheck(f, (q, k))


def test_low_precision_inputs_return_input_dtype_grads():
    q, k = _feats(37, 16).to(torch.bfloat16), _feats(37, 16, seed=1).to(torch.bfloat16)
    loss, dq, dk = _grads(info_nce_chunked, q, k, block_q=8, block_k=8)
    ref = info_nce_reference(q, k)
    assert loss.dtype == torch.float32 and dq.dtype == torch.bfloat16 and dk.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any ATen op produced while active (forward + backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_never_materialises_n_by_m():
    n = m = 512
    tile = 64
    q = _feats(n, 32).requires_grad_(True)
    k = _feats(m, 32, seed=1).requires_grad_(True)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    mode = _LargestOutput()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
        loss = info_nce_chunked(q, k, 0.1, block_q=tile, block_k=tile)
        loss.backward()
    assert saved and max(saved) < n * m, saved
    # Nothing bigger than one tile or one (N, D) operand/gradient, forward or backward.
    assert mode.largest <= max(tile * tile, n * 32), f"largest intermediate {mode.largest}"
    # The reference does materialise it: the probe would have caught it.
    ref_mode = _LargestOutput()
    with ref_mode:
        loss = info_nce_reference(q, k, 0.1)
    assert ref_mode.largest >= n * m
    ref_mode = _LargestOutput()
    with ref_mode:  # and the probe sees the backward pass too
        loss.backward()
    assert ref_mode.largest >= n * m


def test_dispatch_prefers_chunked_and_forcing_works():
    q, k = _feats(37, 8), _feats(37, 8, seed=1)
    assert dispatch.select("info_nce", {"q": q, "k": k}).name == "chunked"
    a = rk.info_nce(q, k, 0.1)
    b = rk.info_nce(q, k, 0.1, backend="reference")
    torch.testing.assert_close(a, b)
    with pytest.raises(dispatch.BackendUnavailable):
        rk.info_nce(q, k, backend="nope")


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
    ],
)
def test_errors_name_the_problem(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rk.info_nce(**kwargs)
