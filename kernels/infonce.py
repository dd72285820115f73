"""InfoNCE over a query set ``q (N, D)`` and a key set ``k (M, D)`` without the N x M matrix.

Math, for every query row ``i`` with positive key ``p_i = labels[i]`` (default ``i``)::

    s_ij   = (q_i . k_j) / temperature                       over valid keys j
    loss_i = logsumexp_j s_ij - s_{i, p_i}
    loss   = sum_i w_i loss_i,   w_i = valid_i / max(1, sum_i valid_i)

A row is valid when ``q_valid[i]`` and ``k_valid[p_i]`` are both true (a query whose
positive was masked out has no target). Invalid keys take no part in any logsumexp. With no
valid row the loss is exactly 0 and every gradient is 0 (never NaN) -- a rank of a
distributed job with nothing to contrast still runs the same backward as its peers.

Gradients (``P_ij = softmax_j s_ij``, zero on invalid keys, ``Y`` the one-hot of labels)::

    dq = (w * (P - Y)) @ k / temperature
    dk = (w * (P - Y))^T @ q / temperature

Layouts: ``q (N, D)``, ``k (M, D)``, ``labels (N,)`` int64 in ``[0, M)``, ``q_valid (N,)``,
``k_valid (M,)`` bool. Any contiguity. ``N`` and ``M`` may differ (labels then required).

Dtypes: float16 / bfloat16 / float32 / float64 inputs. Math runs in float32 (float64 for
float64 inputs); the loss is returned in that compute dtype, gradients in the input dtypes.

Normalisation (decision): the op uses ``q`` and ``k`` exactly as given and does NOT
L2-normalise. Cosine-similarity InfoNCE is the caller's business (``rsfm_train.losses``
normalises its features; the projection heads already emit unit vectors). Keeping the op a
pure function of the logits makes its gradient the textbook one above.

Backends (lower priority is tried first):
- ``chunked`` (30): pure PyTorch, ``O((N + M) * D)`` memory. Queries are processed in
  blocks of ``block_q`` rows and keys in tiles of ``block_k`` rows with an online
  logsumexp; the backward recomputes every ``(block_q, block_k)`` tile of ``P`` from the
  saved per-row logsumexp. Peak extra memory is one tile. This is the CPU/GPU path until
  the Triton kernel lands (it will register with a lower priority number here).
- ``reference`` (90): materialises ``(N, M)`` in float32 -- the spec.

Caution:
- ``temperature`` is a Python float: no gradient flows to it (a learnable temperature
  would need ``dL/dT``; not needed by the pretraining losses).
- The positive logit is part of the logsumexp (standard InfoNCE / cross-entropy).
- Label values are checked against ``M`` in the launcher (a device sync on GPU).

Differences vs reference: summation order only (online logsumexp over tiles): float32
results agree to ~1e-6 relative.
"""

from __future__ import annotations

import torch

from . import dispatch

# Pinned tile sizes: a (2048 x 2048) float32 tile is 16 MiB, large enough that the
# matmuls dominate the Python loop on GPU, small enough to stay O(N * D) at N = 64k.
BLOCK_Q = 2048
BLOCK_K = 2048


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _row_weights(
    n: int,
    m: int,
    labels: torch.Tensor,
    q_valid: torch.Tensor | None,
    k_valid: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``w_i = valid_i / max(1, #valid)``: the mean over valid rows as per-row weights."""
    valid = torch.ones(n, dtype=torch.bool, device=labels.device)
    if q_valid is not None:
        valid = valid & q_valid.to(torch.bool)
    if k_valid is not None:
        valid = valid & k_valid.to(torch.bool)[labels]
    w = valid.to(dtype)
    return w / w.sum().clamp_min(1.0)


# ----------------------------------------------------------------------------- reference


def info_nce_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float = 0.1,
    labels: torch.Tensor | None = None,
    q_valid: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The spec: materialises the (N, M) logits in float32 (float64 for float64 inputs)."""
    n, m = q.shape[0], k.shape[0]
    labels = _default_labels(n, m, labels, q.device)
    cd = _compute_dtype(q, k)
    s = (q.to(cd) @ k.to(cd).T) / temperature  # (N, M)
    if k_valid is not None:
        s = s.masked_fill(~k_valid.to(torch.bool)[None, :], float("-inf"))
    w = _row_weights(n, m, labels, q_valid, k_valid, cd)
    pos = s.gather(1, labels[:, None])[:, 0]  # (N,)
    per_row = torch.logsumexp(s, dim=1) - pos
    # Invalid rows can be inf - inf = NaN; where() (not w * ...) keeps their gradient at 0.
    per_row = torch.where(w > 0, per_row, torch.zeros_like(per_row))
    return (w * per_row).sum()


# ------------------------------------------------------------------ chunked (PyTorch tiles)


def _masked_tile(
    qb: torch.Tensor, kt: torch.Tensor, kv: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    s = (qb @ kt.T) / temperature  # (bq, bk)
    if kv is not None:
        s = s.masked_fill(~kv[None, :], float("-inf"))
    return s


def _chunked_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    k_valid: torch.Tensor | None,
    temperature: float,
    block_q: int,
    block_k: int,
) -> torch.Tensor:
    """Per-row logsumexp over valid keys, one (block_q, block_k) tile at a time. (N,)"""
    n, m = q.shape[0], k.shape[0]
    lse = torch.full((n,), float("-inf"), dtype=q.dtype, device=q.device)
    for i0 in range(0, n, block_q):
        qb = q[i0 : i0 + block_q]
        run = torch.full((qb.shape[0],), float("-inf"), dtype=q.dtype, device=q.device)
        for j0 in range(0, m, block_k):
            kv = None if k_valid is None else k_valid[j0 : j0 + block_k]
            s = _masked_tile(qb, k[j0 : j0 + block_k], kv, temperature)
            run = torch.logaddexp(run, torch.logsumexp(s, dim=1))
        lse[i0 : i0 + block_q] = run
    return lse


class _InfoNCEChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, labels, w, k_valid, temperature, block_q, block_k):
        cd = _compute_dtype(q, k)
        qc, kc = q.to(cd), k.to(cd)
        lse = _chunked_lse(qc, kc, k_valid, temperature, block_q, block_k)
        pos = (qc * kc[labels]).sum(dim=1) / temperature  # (N,)
        live = w > 0
        per_row = torch.where(live, lse - pos, torch.zeros_like(lse))
        # Dead rows get lse = +inf so that exp(s - lse) is 0 in the backward, never NaN.
        lse = torch.where(live, lse, torch.full_like(lse, float("inf")))
        ctx.save_for_backward(q, k, labels, w, lse, k_valid)
        ctx.temperature, ctx.block_q, ctx.block_k = temperature, block_q, block_k
        return (w * per_row).sum()

    @staticmethod
    def backward(ctx, g):
        q, k, labels, w, lse, k_valid = ctx.saved_tensors
        t, bq_, bk_ = ctx.temperature, ctx.block_q, ctx.block_k
        cd = _compute_dtype(q, k)
        qc, kc = q.to(cd), k.to(cd)
        gw = (w * g.to(cd)) / t  # (N,) per-row scale of (P - Y)
        dq = torch.zeros_like(qc)
        dk = torch.zeros_like(kc)
        n, m = qc.shape[0], kc.shape[0]
        for i0 in range(0, n, bq_):
            qb, lb, gb = qc[i0 : i0 + bq_], lse[i0 : i0 + bq_], gw[i0 : i0 + bq_]
            for j0 in range(0, m, bk_):
                kt = kc[j0 : j0 + bk_]
                kv = None if k_valid is None else k_valid[j0 : j0 + bk_]
                p = torch.exp(_masked_tile(qb, kt, kv, t) - lb[:, None])  # (bq, bk)
                p = p * gb[:, None]
                dq[i0 : i0 + bq_] += p @ kt
                dk[j0 : j0 + bk_] += p.T @ qb
        # The one-hot part (-Y) touches one key per row: O(N * D), no tile needed.
        dq -= gw[:, None] * kc[labels]
        dk.index_add_(0, labels, -gw[:, None] * qc)
        return dq.to(q.dtype), dk.to(k.dtype), None, None, None, None, None, None


def info_nce_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float = 0.1,
    labels: torch.Tensor | None = None,
    q_valid: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
) -> torch.Tensor:
    """Tiled InfoNCE (never stores N x M); tile sizes exposed for tests and tuning."""
    _check(q, k, labels, q_valid, k_valid, temperature)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q and block_k must be >= 1; got {block_q}, {block_k}")
    n, m = q.shape[0], k.shape[0]
    labels = _default_labels(n, m, labels, q.device)
    w = _row_weights(n, m, labels, q_valid, k_valid, _compute_dtype(q, k))
    kv = None if k_valid is None else k_valid.to(torch.bool)
    return _InfoNCEChunked.apply(q, k, labels, w, kv, float(temperature), block_q, block_k)


# ---------------------------------------------------------------------------- launchers


def _default_labels(
    n: int, m: int, labels: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    if labels is None:
        if n != m:
            raise ValueError(
                f"info_nce: q has {n} rows and k has {m}; pass labels (N,) giving each "
                "query's positive key when N != M"
            )
        return torch.arange(n, device=device)
    return labels.to(torch.long)


def _check(q, k, labels, q_valid, k_valid, temperature) -> None:
    """Every shape/dtype check of the op; the backends assume they passed."""
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(
            f"info_nce: q must be (N, D) and k (M, D) with the same D; "
            f"got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if not (q.is_floating_point() and k.is_floating_point()):
        raise TypeError(f"info_nce: q and k must be floating point; got {q.dtype}, {k.dtype}")
    if not temperature > 0:
        raise ValueError(f"info_nce: temperature must be > 0; got {temperature}")
    n, m = q.shape[0], k.shape[0]
    for name, t, size in (("labels", labels, n), ("q_valid", q_valid, n), ("k_valid", k_valid, m)):
        if t is not None and (t.dim() != 1 or t.shape[0] != size):
            raise ValueError(f"info_nce: {name} must be ({size},); got {tuple(t.shape)}")
    if labels is not None:
        if labels.is_floating_point():
            raise TypeError(f"info_nce: labels must be an integer tensor; got {labels.dtype}")
        lo, hi = (int(labels.min()), int(labels.max())) if n else (0, 0)
        if n and (lo < 0 or hi >= m):
            raise ValueError(f"info_nce: labels must lie in [0, {m}); got [{lo}, {hi}]")


def _reasons(inputs: dispatch.Inputs | None) -> list[str]:
    if inputs is None:
        return []
    q, k = inputs["q"], inputs["k"]
    out = []
    if q.dim() != 2 or k.dim() != 2:
        out.append(f"q and k must be 2-D (N, D), (M, D); got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.device != k.device:
        out.append(f"q is on {q.device} and k on {k.device}")
    return out


def _reference_backend(q, k, temperature, labels, q_valid, k_valid):
    _check(q, k, labels, q_valid, k_valid, temperature)
    return info_nce_reference(q, k, temperature, labels, q_valid, k_valid)


def _chunked_backend(q, k, temperature, labels, q_valid, k_valid):
    return info_nce_chunked(q, k, temperature, labels, q_valid, k_valid)


# ------------------------------------------------------------------------- registration

dispatch.register(
    "info_nce", "chunked", _chunked_backend, _reasons, priority=30,
    description="PyTorch tiles + online logsumexp, O((N+M)*D) memory, recomputing backward",
)  # fmt: skip
dispatch.register(
    "info_nce", "reference", _reference_backend, _reasons, priority=90,
    description="float32 PyTorch math materialising N x M (the spec)",
)  # fmt: skip


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float = 0.1,
    labels: torch.Tensor | None = None,
    q_valid: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """InfoNCE loss (mean over valid rows) through the dispatcher; see the module docstring."""
    inputs = {"q": q, "k": k, "labels": labels, "q_valid": q_valid, "k_valid": k_valid}
    b = dispatch.select("info_nce", inputs, backend)
    return b.fn(q, k, temperature, labels, q_valid, k_valid)
