"""The ``torch`` backend of :func:`rsfm_kernels.info_nce`: tiles of plain PyTorch with an
online log-sum-exp, ``O((N + M) * D)`` memory, no host sync. Math, decisions and the
prepared per-row/column tensors (``p``): :mod:`rsfm_kernels.infonce`.

Both functions run inside the op's custom-op body (no autograd here): the forward returns
per-row/column statistics, the backward the unscaled gradient products; the caller applies
the scalar ``c / (n t)``.
"""

from __future__ import annotations

import torch

_LOWP = (torch.float16, torch.bfloat16)
_HAS_MM_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")  # aten::mm.dtype (fp16/bf16 -> fp32)


def compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    """Statistics and accumulators: float64 for float64 inputs, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _lowp(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Multiply fp16/bf16 tiles in the input dtype with float32 output (CUDA only)."""
    return q.is_cuda and q.dtype == k.dtype and q.dtype in _LOWP and _HAS_MM_OUT_DTYPE


def _mm(a: torch.Tensor, b: torch.Tensor, lowp: bool) -> torch.Tensor:
    return torch.mm(a, b, out_dtype=torch.float32) if lowp else a @ b


def _bias(keep: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """0 where kept, -inf elsewhere: masking as one in-place add on the tile."""
    if keep is None:
        return None
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(
        ~keep, float("-inf")
    )


def _online_(m_run: torch.Tensor, l_run: torch.Tensor, s: torch.Tensor, dim: int) -> None:
    """Fold tile ``s`` (consumed: exponentiated in place) into the running (max, sum)."""
    m_new = torch.maximum(m_run, s.amax(dim))
    m_use = torch.where(torch.isneginf(m_new), 0.0, m_new)  # no valid entry yet: no NaN
    s.sub_(m_use.unsqueeze(dim)).exp_()
    l_run.mul_(torch.exp(m_run - m_use)).add_(s.sum(dim))
    m_run.copy_(m_new)


def torch_stats(q, k, t, p, block_q: int, block_k: int):
    """(row LSE, positive logit, column LSE or None): one matmul per tile for both."""
    n, m = q.shape[0], k.shape[0]
    lowp = _lowp(q, k)
    cd = torch.float32 if lowp else compute_dtype(q, k)
    qc, kc = (q, k) if lowp else (q.to(cd), k.to(cd))
    inv_t = (1.0 / t).to(cd)
    kbias, qbias = _bias(p.k_keep, cd), _bias(p.q_keep, cd)
    sym = p.cv is not None
    m_r = torch.full((n,), float("-inf"), dtype=cd, device=q.device)
    l_r = torch.zeros(n, dtype=cd, device=q.device)
    pos = torch.empty(n, dtype=cd, device=q.device)
    m_c = torch.full((m,), float("-inf"), dtype=cd, device=q.device) if sym else None
    l_c = torch.zeros(m, dtype=cd, device=q.device) if sym else None
    for i0 in range(0, n, block_q):
        i1 = min(i0 + block_q, n)
        qb = qc[i0:i1]
        # Positive logits once per query block ((bq, D) temporaries, float32 products).
        pos[i0:i1] = (qb.to(cd) * kc[p.safe[i0:i1]].to(cd)).sum(1) * inv_t
        for j0 in range(0, m, block_k):
            j1 = min(j0 + block_k, m)
            s = _mm(qb, kc[j0:j1].T, lowp).mul_(inv_t)  # (bq, bk)
            if sym:
                sc = s + qbias[i0:i1, None] if qbias is not None else s.clone()
                _online_(m_c[j0:j1], l_c[j0:j1], sc, dim=0)
            if kbias is not None:
                s.add_(kbias[None, j0:j1])
            _online_(m_r[i0:i1], l_r[i0:i1], s, dim=1)
    lse_c = m_c + torch.log(l_c) if sym else None
    return m_r + torch.log(l_r), pos, lse_c


def torch_grads(q, k, t, p, lse_r, lse_c, need, block_q: int, block_k: int):
    """Unscaled ``(B @ k, B^T @ q, sum_ij B_ij S_ij)`` (``None`` where not needed).

    ``B = P (+ Pc) - (r_i + v_{p_i}) Y``: the weights r, v are 0/1 and every dead row
    (column) has LSE = +inf, so P (Pc) needs no multiply; one-to-one labels make the valid
    row and column counts equal, so both directions share the scalar ``c / n``.
    """
    need_dq, need_dk, need_dt = need
    n, m, d = q.shape[0], k.shape[0], q.shape[1]
    lowp = _lowp(q, k)
    cd = torch.float32 if lowp else compute_dtype(q, k)
    qc, kc = (q, k) if lowp else (q.to(cd), k.to(cd))
    inv_t = (1.0 / t).to(cd)
    kbias, qbias = _bias(p.k_keep, cd), _bias(p.q_keep, cd)
    sym = p.cv is not None
    y_coef = (p.rv + p.cvr if sym else p.rv).to(cd)  # the one-hot entry of row i is -y_coef_i
    tile_of = torch.div(p.lab, block_k, rounding_mode="floor")  # -1 for rows without one
    col_of = (p.lab - tile_of * block_k)[:, None]  # (N, 1) column inside that tile
    a = torch.zeros(n, d, dtype=cd, device=q.device) if need_dq or need_dt else None
    b = torch.zeros(m, d, dtype=cd, device=q.device) if need_dk else None
    r = torch.zeros((), dtype=cd, device=q.device)
    for i0 in range(0, n, block_q):
        i1 = min(i0 + block_q, n)
        qb = qc[i0:i1]
        for jt, j0 in enumerate(range(0, m, block_k)):
            j1 = min(j0 + block_k, m)
            kt = kc[j0:j1]
            s = _mm(qb, kt.T, lowp).mul_(inv_t)  # (bq, bk)
            if sym:
                pc = s + qbias[i0:i1, None] if qbias is not None else s.clone()
                pc.sub_(lse_c[None, j0:j1]).exp_()
            if kbias is not None:
                s.add_(kbias[None, j0:j1])
            s.sub_(lse_r[i0:i1, None]).exp_()  # P, 0 on dead rows (LSE = +inf)
            if sym:
                s.add_(pc)
            # -Y: one element per row whose positive falls in this tile (unique: no races)
            idx = col_of[i0:i1].clamp(max=j1 - j0 - 1)
            minus = torch.where(tile_of[i0:i1] == jt, y_coef[i0:i1], 0.0)[:, None]
            s.scatter_(1, idx, s.gather(1, idx) - minus)
            bt = s.to(q.dtype) if lowp else s
            if a is not None:
                a[i0:i1] += _mm(bt, kt, lowp)
            if b is not None:
                b[j0:j1] += _mm(bt.T, qb, lowp)
        if need_dt:  # sum_ij B_ij S_ij = inv_t * sum_i q_i . (B @ k)_i
            r += (qb.to(cd) * a[i0:i1]).sum() * inv_t
    return a, b, (r if need_dt else None)
