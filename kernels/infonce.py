"""InfoNCE over queries ``q (N, D)`` and keys ``k (M, D)`` without the N x M matrix.

Math, with ``S = q @ k.T / t`` and query ``i``'s positive key ``p_i = labels[i]``
(default ``i``)::

    row loss   l_i  = logsumexp_{j valid} S_ij - S_{i, p_i}
    loss            = mean of l_i over valid rows                      (symmetric=False)
    column loss lc_j = logsumexp_{i in q_valid} S_ij - S_{inv(j), j}   (inv(p_i) = i)
    loss            = (mean_i l_i + mean_j lc_j) / 2                    (symmetric=True)

Row ``i`` is *active* when ``q_valid[i]`` and ``labels[i] != ignore_index``; it is *valid*
(counted) when also ``k_valid[p_i]``. Invalid keys take no part in any row logsumexp; rows
with ``q_valid`` false take no part in any column logsumexp (symmetric). Column ``j`` is
valid when ``k_valid[j]`` and an active row names it. With nothing valid the loss is exactly
0 and every gradient 0 (never NaN): a rank of a distributed job with nothing to contrast
runs the same backward as its peers. ``symmetric=True`` needs the active rows' labels to be
one-to-one (a permutation, or the default diagonal); then the valid rows and columns are in
bijection and both means have the same count.

Gradients (``P = softmax_j S`` over valid keys, ``Pc = softmax_i S`` over valid queries,
``Y`` the one-hot of the labels, ``c = 1/2`` if symmetric else 1, ``n`` the valid count)::

    dL/dS = (c / n) * B,   B_ij = r_i (P_ij - Y_ij) [+ v_j (Pc_ij - Y_ij)]
    dq = dL/dS @ k / t,   dk = dL/dS^T @ q / t,   dt = -sum_ij dL/dS_ij S_ij / t

with ``r``, ``v`` the 0/1 row and column validity. ``B`` is in [-1, 1], so the kernels feed
it to the low-precision matmuls unscaled (``(c / n)`` would underflow float16 at large n)
and apply the scalar to the float32 accumulator.

Layouts: ``q (N, D)``, ``k (M, D)``, any strides; ``labels (N,)`` integer in ``[0, M)`` or
``ignore_index``; ``q_valid (N,)``, ``k_valid (M,)`` bool. ``N`` and ``M`` may differ
(labels then required). ``temperature``: a Python float (no gradient) or a tensor with one
element (learnable: it gets ``dt``); it is divided by, never clamped.

Dtypes: float16 / bfloat16 / float32 / float64 (torch and reference backends) inputs.
Statistics and accumulators are float32 (float64 for float64 inputs); the loss is returned
in that dtype, gradients in the input dtypes.

Normalisation (decision): the op uses ``q`` and ``k`` as given and does NOT L2-normalise.
Cosine InfoNCE is the caller's business (``rsfm_train.losses`` normalises; the projection
heads emit unit vectors). Keeping the op a pure function of the logits keeps its gradient
the textbook one above and lets a caller use unnormalised embeddings deliberately.

Label checks (decision: no host sync on the device path). Label values (range, and
one-to-one for ``symmetric``) and a tensor temperature's sign are checked where that costs
no synchronisation: on CPU tensors as a ``ValueError`` naming the bad value; on CUDA with
``torch._assert_async`` (a device-side assert: the error surfaces at the next sync and ends
the CUDA context). ``RSFM_CHECK_LABELS=1`` makes the CUDA check synchronous with the same
``ValueError`` (debugging). Shapes and dtypes are always checked on the host.

Backends (lower priority is tried first; :func:`info_nce` caches the choice per
(forced name, devices, dtypes, ndim, D beyond the kernel's limit), so a repeated call costs
the environment look-up of a forced backend plus a dict look-up: ~5 us on this CPU, like
the old uncached ``dispatch.select`` whose only backends had no reasons; the uncached
select with the triton backend's reasons costs ~24 us):
- ``triton`` (10; CUDA sm80+, or forced on CPU under ``TRITON_INTERPRET=1``; D <= 256):
  :mod:`rsfm_kernels.infonce_triton`. Forward: one program per query block, online
  log-sum-exp over key blocks in float32 (exp2 with ``log2(e)/t`` folded into the scale),
  the positive logit taken from the tile that holds it; saves per-row LSE only.
  Symmetric forward is a *second launch* of the same kernel with q and k swapped (column
  LSE): a column reduction crosses every query program, and merging per-program partial
  (max, sum) needs either atomics on a running max (not expressible as one atomic) or an
  ``(N / BLOCK) x M`` buffer (4 GB at 256k); a second pass costs one more forward GEMM.
  Backward: two kernels that recompute S tile by tile from the saved LSE -- dQ (program
  per query block, loop over keys) and dK (program per key block, loop over queries),
  FlashAttention-2's deterministic split: no atomics, run-to-run identical, at 4 instead
  of 3 backward GEMMs (+33%) and twice the exps; symmetric shares those two kernels (both
  softmaxes from one recomputed tile). ``dt`` comes from the dQ kernel's per-row
  ``sum_j B_ij S_ij`` (float32, no extra pass). Matmuls in the input dtype (bf16/fp16
  tensor cores; fp32 exact "ieee" dots), float32 accumulation. Small N: the loop over the
  other operand is split over several programs (float32 partials, summed in a fixed
  order) so that about two waves of programs run.
- ``torch`` (30; :mod:`rsfm_kernels.infonce_torch`): pure PyTorch, ``O((N + M) * D)``
  memory, the CPU path and the fallback. Tiles of ``block_q x block_k`` (2048 x 2048):
  one matmul per tile shared by both directions when symmetric, in-place
  scale/mask/exp, positive logits once per query block, no host sync. Counted with a
  dispatch mode (tests/kernels/test_infonce.py): one tile-sized allocation per tile
  step forward and backward (two when symmetric; on CUDA the backward adds the
  half-size fp16/bf16 copy of B for the tensor-core matmuls), where
  the pre-issue-14 ``chunked`` backend made 3 forward and 6 backward (with a key mask).
  On CUDA, fp16/bf16 tiles multiply in the input dtype with float32 output
  (``torch.mm(..., out_dtype=torch.float32)``, PyTorch >= 2.8; the old backend upcast to
  float32 matmuls); elsewhere the inputs are upcast once. The backward recomputes each
  tile from the saved LSE; dead rows/columns have LSE = +inf, so ``B = P (+ Pc) - Y``
  needs no weights, and the one-hot term is written into the tile (one element per row,
  deterministic), so both gradients come from two matmuls per tile.
- ``reference`` (90): materialises ``(N, M)`` in float32 -- the spec.
The ``triton`` and ``torch`` backends are one ``torch.library`` custom op
(``rsfm_kernels::info_nce``) with a fake implementation and registered autograd, so
``torch.compile(fullgraph=True)`` traces a call as one node.

Offline compile report (``python -m benchmarks.infonce --compile-report``, Triton 3.9's
ptxas, bf16, worst case: masks, ragged N and M, symmetric, temperature gradient), pinned
configs as (rows owned x loop tile, warps, stages):

    arch D    forward            bwd dQ (+dt)        bwd dK              (regs; smem KB)
    sm90 64   128x128 w8 s3 171;64  128x64 w8 s3 199;41  128x64 w8 s3 186;42
    sm90 128  128x128 w8 s3 192;128 128x64 w8 s3 228;81  128x64 w8 s3 228;82
    sm90 256  128x64  w8 s3 100;160 64x64  w8 s3 183;129 64x64  w8 s3 250;130
    sm80 64   128x128 w8 s3 166;49  128x64 w8 s3 238;33  128x64 w8 s3 179;34
    sm80 128  128x64  w8 s3 127;65  64x64  w8 s2 190;41  128x64 w8 s2 228;49
    sm80 256  128x64  w8 s2 96;97   64x32  w8 s2 224;52  64x32  w8 s2 224;52

No spills anywhere; the column-LSE forward (no positive) uses fewer registers (72-166).
Rejected: D = 256 backward with 4 warps (sm90 96 B / 16 B spilled, sm80 344 B / 8 B) and
sm80 D = 128 dQ 128x64 (60 B). Every kernel runs one CTA per SM at these register counts;
the GPU machines run Triton 3.6, whose register allocation may differ (recheck there).
Not yet timed on hardware: tile shapes are FlashAttention-2-like starting points.

Caution:
- The positive logit is part of the logsumexp (standard InfoNCE / cross-entropy).
- ``symmetric`` with labels that are not one-to-one among active rows is an error (the
  column positive would be ambiguous).
- Triton: float32 inputs use exact dots (no tensor cores): train in bfloat16. D > 256
  goes to the torch backend. No double backward. The GPU paths are compiled offline for
  sm80/sm90 and verified under the CPU interpreter; on hardware only once a GPU run of
  ``benchmarks/gpu_check.sh`` has happened (docs/performance.md).
- Temperature gradient of the torch backend uses ``sum(q * (B @ k))``: inputs must be
  finite (an inf in a masked row would make it NaN); the Triton dQ kernel sums
  ``B * S`` directly.
- Per-call fixed cost: the op does ~50 small tensor ops besides the tiles (preparing
  labels/masks, the custom op, the loss): on this CPU a tiny (8 x 16) forward took
  ~580 us vs ~420 us for the old backend (min of 5 interleaved rounds). On GPU these are
  kernel launches, so very small N is launch-bound on either backend.
- A dispatch choice is cached per key, and under ``torch.compile`` baked into the graph:
  changing ``RSFM_BACKEND_INFO_NCE`` after compiling does not recompile.

Differences vs reference: summation order (online LSE over tiles) and, for fp16/bf16,
the low-precision cast of ``B`` before the gradient matmuls (as FlashAttention does with
P); float32 results agree with the spec to ~1e-6 relative.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from . import dispatch
from .infonce_torch import compute_dtype as _compute_dtype
from .infonce_torch import torch_grads as _torch_grads
from .infonce_torch import torch_stats as _torch_stats

_NO_TRITON = "triton is not installed (pip install triton; Linux only)"
if importlib.util.find_spec("triton") is not None:
    from . import infonce_triton as _T
else:  # macOS, Windows, or a Linux install without it: torch and reference still work
    _T = None

LOG2E = 1.4426950408889634
MAX_TRITON_DIM = 256  # = infonce_triton.MAX_HEAD_DIM (kept here: importable without Triton)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Torch backend tiles: a (2048 x 2048) float32 tile is 16 MiB, large enough that the
# matmuls dominate the Python loop on GPU, small enough to stay O(N * D) at N = 256k.
BLOCK_Q = 2048
BLOCK_K = 2048

# ----------------------------------------------------------------------------- reference


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Mean over ``ok`` rows of ``logsumexp(logits_i) - logits_i[target_i]``; 0 if none."""
    per_row = torch.logsumexp(logits, dim=1) - logits.gather(1, target[:, None])[:, 0]
    # Dead rows can be inf - inf = NaN; where() (not ok * ...) keeps their gradient at 0.
    per_row = torch.where(ok, per_row, torch.zeros_like(per_row))
    return per_row.sum() / ok.sum().clamp_min(1).to(per_row.dtype)


def info_nce_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    labels: torch.Tensor | None = None,
    q_valid: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
    *,
    symmetric: bool = False,
    ignore_index: int = -100,
) -> torch.Tensor:
    """The spec: materialises the (N, M) logits in float32 (float64 for float64 inputs)."""
    n, m = q.shape[0], k.shape[0]
    cd = _compute_dtype(q, k)
    t = temperature.to(cd).reshape(()) if torch.is_tensor(temperature) else temperature
    s = (q.to(cd) @ k.to(cd).T) / t  # (N, M)
    lab = _default_labels(n, m, labels, q.device)
    qv = torch.ones(n, dtype=torch.bool, device=q.device) if q_valid is None else q_valid.bool()
    kv = torch.ones(m, dtype=torch.bool, device=q.device) if k_valid is None else k_valid.bool()
    active = (lab != ignore_index) & qv
    safe = torch.where(active, lab, torch.zeros_like(lab))
    row_ok = active & kv[safe] if m else active & False
    loss = _masked_ce(s.masked_fill(~kv[None, :], float("-inf")), safe, row_ok)
    if not symmetric:
        return loss
    inv = torch.full((m,), -1, dtype=torch.long, device=q.device)  # column j's positive row
    inv[lab[active]] = torch.arange(n, device=q.device)[active]
    col_ok = (inv >= 0) & kv
    col = _masked_ce(s.T.masked_fill(~qv[None, :], float("-inf")), inv.clamp_min(0), col_ok)
    return 0.5 * (loss + col)


# ------------------------------------------------------------ prepared rows and columns


@dataclass
class _Prep:
    """Per-row/column facts every backend derives from labels and masks (sync-free)."""

    lab: torch.Tensor  # (N,) int64 positive key of active rows, -1 elsewhere
    safe: torch.Tensor  # (N,) int64 label clamped into [0, M) (for gathers)
    rv: torch.Tensor  # (N,) 0/1 valid rows, compute dtype
    n_r: torch.Tensor  # 0-d number of valid rows, >= 1
    k_keep: torch.Tensor | None  # (M,) bool
    q_keep: torch.Tensor | None  # (N,) bool, symmetric only
    cv: torch.Tensor | None = None  # (M,) 0/1 valid columns (symmetric)
    cvr: torch.Tensor | None = None  # (N,) cv at the row's label: row i is inv(p_i)
    n_c: torch.Tensor | None = None  # 0-d number of valid columns, >= 1
    counts: torch.Tensor | None = None  # (M,) active rows naming each key (symmetric)


def _prepare(q, k, labels, q_valid, k_valid, ignore_index: int, symmetric: bool) -> _Prep:
    n, m, dev = q.shape[0], k.shape[0], q.device
    cd = _compute_dtype(q, k)
    q_keep = None if q_valid is None else q_valid.to(torch.bool)
    k_keep = None if k_valid is None else k_valid.to(torch.bool)
    diagonal = labels is None
    if diagonal and q_keep is None:  # every row active, its own positive: no gathers
        lab = safe = torch.arange(n, device=dev)
        active = None
    else:
        lab = torch.arange(n, device=dev) if diagonal else labels.to(torch.long)
        active = q_keep if diagonal else lab != ignore_index
        if q_keep is not None and not diagonal:
            active = active & q_keep
        # Clamped so that gathers stay in bounds even before an async label check fires.
        safe = torch.where(active, lab, 0).clamp_(0, max(m - 1, 0))
        lab = torch.where(active, lab, -1)
    if m == 0:
        valid = torch.zeros(n, dtype=torch.bool, device=dev)
    elif k_keep is None:
        valid = active
    else:
        kept = k_keep if diagonal else k_keep[safe]
        valid = kept if active is None else active & kept
    if valid is None:
        rv, n_r = (
            torch.ones(n, dtype=cd, device=dev),
            torch.full((), max(n, 1), dtype=cd, device=dev),
        )
    else:
        rv = valid.to(cd)
        n_r = rv.sum().clamp_min(1.0)
    p = _Prep(
        lab=lab, safe=safe, rv=rv, n_r=n_r, k_keep=k_keep, q_keep=q_keep if symmetric else None
    )
    if symmetric:
        if diagonal:  # column j's positive is row j: valid columns are the valid rows
            p.cv, p.cvr, p.n_c = rv, rv, n_r
        else:
            # Exact small-integer float sums: deterministic even where scatter_add uses atomics.
            p.counts = torch.zeros(m, dtype=cd, device=dev).scatter_add_(0, safe, active.to(cd))
            col = p.counts > 0 if k_keep is None else (p.counts > 0) & k_keep
            p.cv = col.to(cd)
            p.cvr = p.cv[safe] * active.to(cd) if m else torch.zeros_like(rv)
            p.n_c = p.cv.sum().clamp_min(1.0)
    return p


def _host_checks(t: torch.Tensor) -> bool:
    """Check values on the host: free for CPU tensors, a sync (debug only) on a device."""
    return t.device.type == "cpu" or os.environ.get("RSFM_CHECK_LABELS", "0") not in ("", "0")


def _validate(labels, temperature, p: _Prep, m: int, ignore_index: int) -> None:
    """Value checks without a host sync (see the module docstring, "Label checks")."""
    host = labels is not None and _host_checks(labels)
    if labels is not None:
        lab = labels.to(torch.long)
        bad = (lab != ignore_index) & ((lab < 0) | (lab >= m))
        if host:
            if bool(bad.any()):
                vals = lab[lab != ignore_index]
                lo, hi = int(vals.min()), int(vals.max())
                raise ValueError(
                    f"info_nce: labels must lie in [0, {m}) or equal ignore_index="
                    f"{ignore_index}; got values in [{lo}, {hi}]"
                )
        else:
            torch._assert_async(~bad.any(), "info_nce: a label lies outside [0, M)")
    if p.counts is not None and labels is not None:  # the diagonal is one-to-one
        dup = p.counts > 1
        if host:
            if bool(dup.any()):
                j = int(dup.nonzero()[0, 0])
                raise ValueError(
                    f"info_nce: symmetric=True needs one-to-one labels among active rows; "
                    f"key {j} is the positive of {int(p.counts[j])} rows"
                )
        else:
            torch._assert_async(~dup.any(), "info_nce: symmetric needs one-to-one labels")
    if _host_checks(temperature):
        if not bool((temperature > 0).all()):
            raise ValueError(f"info_nce: temperature must be > 0; got {temperature.tolist()}")
    else:
        torch._assert_async((temperature > 0).all(), "info_nce: temperature must be > 0")


def _loss_from_stats(lse_r, pos, lse_c, p: _Prep) -> torch.Tensor:
    """The loss from per-row LSE / positive logit and (symmetric) per-column LSE."""
    row = torch.where(p.rv > 0, lse_r - pos, 0.0).sum() / p.n_r
    if p.cv is None:
        return row
    col = torch.where(p.cv > 0, lse_c, 0.0).sum() - torch.where(p.cvr > 0, pos, 0.0).sum()
    return 0.5 * (row + col / p.n_c)


# ------------------------------------------------------------ the custom op (triton | torch)


def _stats(q, k, t, p: _Prep, backend: str, block_q: int, block_k: int):
    n, m = q.shape[0], k.shape[0]
    if n == 0 or m == 0:
        neg = q.new_full((n,), float("-inf"), dtype=p.rv.dtype)
        return neg, torch.zeros_like(neg), q.new_full((m,), float("-inf"), dtype=p.rv.dtype)
    if backend == "triton":
        sc = (LOG2E / t.float()).reshape(1)  # the forward kernel reads sc[0] only
        lab32 = p.lab.to(torch.int32)
        lse_r, pos = _T.lse_forward(q, k, p.k_keep, lab32, sc)
        lse_c = _T.lse_forward(k, q, p.q_keep, None, sc)[0] if p.cv is not None else None
        return lse_r, pos, lse_c
    return _torch_stats(q, k, t, p, block_q, block_k)


def _forward_impl(
    q, k, temperature, labels, q_valid, k_valid, ignore_index, symmetric, backend, block_q, block_k
):  # fmt: skip
    """(loss, row LSE (N,) with +inf on dead rows, column LSE (M,) or (0,)) -- the LSEs are
    what the backward needs; see :func:`info_nce`."""
    p = _prepare(q, k, labels, q_valid, k_valid, ignore_index, symmetric)
    _validate(labels, temperature, p, k.shape[0], ignore_index)
    t = temperature.reshape(()).to(p.rv.dtype)
    lse_r, pos, lse_c = _stats(q, k, t, p, backend, block_q, block_k)
    loss = _loss_from_stats(lse_r.to(p.rv.dtype), pos.to(p.rv.dtype), lse_c, p)
    inf = float("inf")
    lse_r = torch.where(p.rv > 0, lse_r.to(p.rv.dtype), inf)  # dead rows: P = exp(-inf) = 0
    if symmetric:
        lse_c = torch.where(p.cv > 0, lse_c.to(p.rv.dtype), inf)
    else:
        lse_c = lse_r.new_empty((0,))
    return loss, lse_r, lse_c


@torch.library.custom_op("rsfm_kernels::info_nce", mutates_args=())
def _info_nce_op(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: torch.Tensor,
    labels: torch.Tensor | None,
    q_valid: torch.Tensor | None,
    k_valid: torch.Tensor | None,
    ignore_index: int,
    symmetric: bool,
    backend: str,
    block_q: int,
    block_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward as one opaque op (``backend``: "triton" or "torch"); autograd below."""
    return _forward_impl(q, k, temperature, labels, q_valid, k_valid, ignore_index,
                         symmetric, backend, block_q, block_k)  # fmt: skip


@_info_nce_op.register_fake
def _(q, k, temperature, labels, q_valid, k_valid, ignore_index, symmetric, backend, bq, bk):
    cd = _compute_dtype(q, k)
    m_c = k.shape[0] if symmetric else 0
    n = q.shape[0]
    return q.new_empty((), dtype=cd), q.new_empty((n,), dtype=cd), q.new_empty((m_c,), dtype=cd)


def _backward_impl(
    grad, q, k, temperature, labels, q_valid, k_valid, lse_r, lse_c, ignore_index, symmetric,
    backend, block_q, block_k, need,
):  # fmt: skip
    """(dq, dk, dt); an output whose ``need`` flag is False is an empty tensor."""
    need_dq, need_dk, need_dt = need
    p = _prepare(q, k, labels, q_valid, k_valid, ignore_index, symmetric)
    cd = p.rv.dtype
    t = temperature.reshape(()).to(cd)
    coef = grad.to(cd) * (0.5 if symmetric else 1.0) / p.n_r  # dL/dS = coef * B
    out_scale = coef / t
    dq = dk = dt = None
    if q.shape[0] and k.shape[0] and backend == "triton":
        cc = p.cv if symmetric else None  # one-to-one: n_c == n_r, one scalar for both
        g = _T.GradInputs(
            lab=p.lab.to(torch.int32), cr=p.rv.float(), lse_r=lse_r.float(), k_keep=p.k_keep,
            q_keep=p.q_keep, cc=None if cc is None else cc.float(),
            lse_c=lse_c.float() if symmetric else None,
            sc=torch.stack([LOG2E / t.float(), out_scale.float()]),
        )  # fmt: skip
        if need_dq or need_dt:
            dq, r = _T.grad_q(q, k, g, need_dt)
            dt = None if r is None else -coef * r.to(cd) / t
        if need_dk:
            dk = _T.grad_k(q, k, g)
    elif q.shape[0] and k.shape[0]:
        a, b, r = _torch_grads(q, k, t, p, lse_r, lse_c, need, block_q, block_k)
        dq = None if a is None else (a * out_scale).to(q.dtype)
        dk = None if b is None else (b * out_scale).to(k.dtype)
        dt = None if r is None else -coef * r / t
    if need_dq and dq is None:  # nothing to contrast: exact zeros
        dq = torch.zeros_like(q)
    if need_dk and dk is None:
        dk = torch.zeros_like(k)
    if need_dt and dt is None:
        dt = torch.zeros((), dtype=cd, device=q.device)
    return (  # distinct empties: custom-op outputs must not alias each other
        dq if need_dq else q.new_empty((0,)),
        dk if need_dk else q.new_empty((0,)),
        dt.to(temperature.dtype).reshape(temperature.shape) if need_dt else q.new_empty((0,)),
    )


@torch.library.custom_op("rsfm_kernels::info_nce_backward", mutates_args=())
def _info_nce_backward_op(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: torch.Tensor,
    labels: torch.Tensor | None,
    q_valid: torch.Tensor | None,
    k_valid: torch.Tensor | None,
    lse_r: torch.Tensor,
    lse_c: torch.Tensor,
    ignore_index: int,
    symmetric: bool,
    backend: str,
    block_q: int,
    block_k: int,
    need: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward as one opaque op (no double backward)."""
    return _backward_impl(grad, q, k, temperature, labels, q_valid, k_valid, lse_r, lse_c,
                          ignore_index, symmetric, backend, block_q, block_k, need)  # fmt: skip


@_info_nce_backward_op.register_fake
def _(grad, q, k, temperature, labels, q_valid, k_valid, lse_r, lse_c, ii, sym, be, bq, bk, need):
    return (
        q.new_empty(q.shape) if need[0] else q.new_empty((0,)),
        k.new_empty(k.shape) if need[1] else q.new_empty((0,)),
        temperature.new_empty(temperature.shape) if need[2] else q.new_empty((0,)),
    )


def _setup_context(ctx, inputs, output):
    q, k, temperature, labels, q_valid, k_valid, ignore_index, symmetric, backend, bq, bk = inputs
    _, lse_r, lse_c = output
    ctx.save_for_backward(q, k, temperature, labels, q_valid, k_valid, lse_r, lse_c)
    ctx.meta = (ignore_index, symmetric, backend, bq, bk)
    ctx.mark_non_differentiable(lse_r, lse_c)


def _backward(ctx, grad, _g_lse_r, _g_lse_c):
    q, k, temperature, labels, q_valid, k_valid, lse_r, lse_c = ctx.saved_tensors
    need = [bool(x) for x in ctx.needs_input_grad[:3]]
    dq, dk, dt = _info_nce_backward_op(
        grad, q, k, temperature, labels, q_valid, k_valid, lse_r, lse_c, *ctx.meta, need
    )
    return (
        dq if need[0] else None, dk if need[1] else None, dt if need[2] else None,
        None, None, None, None, None, None, None, None,
    )  # fmt: skip


_info_nce_op.register_autograd(_backward, setup_context=_setup_context)


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
    """Every shape/dtype check of the op (host facts only: no value is read from a device)."""
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(
            f"info_nce: q must be (N, D) and k (M, D) with the same D; "
            f"got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if not (q.is_floating_point() and k.is_floating_point()):
        raise TypeError(f"info_nce: q and k must be floating point; got {q.dtype}, {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"info_nce: q is on {q.device} and k on {k.device}")
    if torch.is_tensor(temperature):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise ValueError(
                f"info_nce: a temperature tensor must be one floating-point element; "
                f"got shape {tuple(temperature.shape)}, {temperature.dtype}"
            )
    elif not temperature > 0:
        raise ValueError(f"info_nce: temperature must be > 0; got {temperature}")
    n, m = q.shape[0], k.shape[0]
    if labels is None and n != m:
        _default_labels(n, m, labels, q.device)  # raises with the message
    for name, t, size in (("labels", labels, n), ("q_valid", q_valid, n), ("k_valid", k_valid, m)):
        if t is not None and (t.dim() != 1 or t.shape[0] != size):
            raise ValueError(f"info_nce: {name} must be ({size},); got {tuple(t.shape)}")
        if t is not None and t.device != q.device:
            raise ValueError(f"info_nce: {name} is on {t.device}, q on {q.device}")
    if labels is not None and labels.is_floating_point():
        raise TypeError(f"info_nce: labels must be an integer tensor; got {labels.dtype}")


def _temperature_tensor(temperature, q: torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(temperature):
        t = temperature.reshape(())
        return t if t.device == q.device else t.to(q.device)
    return torch.full((), float(temperature), dtype=torch.float32, device=q.device)


def _run_op(backend, q, k, temperature, labels, q_valid, k_valid, symmetric, ignore_index,
            block_q=BLOCK_Q, block_k=BLOCK_K):  # fmt: skip
    _check(q, k, labels, q_valid, k_valid, temperature)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"info_nce: block_q and block_k must be >= 1; got {block_q}, {block_k}")
    t = _temperature_tensor(temperature, q)
    return _info_nce_op(
        q, k, t, labels, q_valid, k_valid, int(ignore_index), bool(symmetric), backend,
        int(block_q), int(block_k),
    )[0]  # fmt: skip


def info_nce_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    labels: torch.Tensor | None = None,
    q_valid: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
    *,
    symmetric: bool = False,
    ignore_index: int = -100,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
) -> torch.Tensor:
    """The ``torch`` backend directly (no dispatch); tile sizes exposed for tests and tuning."""
    return _run_op("torch", q, k, temperature, labels, q_valid, k_valid, symmetric,
                   ignore_index, block_q, block_k)  # fmt: skip


def info_nce_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    labels: torch.Tensor | None = None,
    q_valid: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
    *,
    symmetric: bool = False,
    ignore_index: int = -100,
) -> torch.Tensor:
    """The ``triton`` backend directly (no dispatch); raises where it cannot run."""
    reasons = _triton_reasons({"q": q, "k": k})
    if reasons:
        raise dispatch.BackendUnavailable("info_nce triton: " + "; ".join(reasons))
    return _run_op("triton", q, k, temperature, labels, q_valid, k_valid, symmetric,
                   ignore_index)  # fmt: skip


def _reference_backend(q, k, temperature, labels, q_valid, k_valid, symmetric, ignore_index):
    _check(q, k, labels, q_valid, k_valid, temperature)
    t = _temperature_tensor(temperature, q) if torch.is_tensor(temperature) else temperature
    p = _prepare(q, k, labels, q_valid, k_valid, ignore_index, symmetric)
    _validate(labels, _temperature_tensor(temperature, q), p, k.shape[0], ignore_index)
    return info_nce_reference(q, k, t, labels, q_valid, k_valid, symmetric=symmetric,
                              ignore_index=ignore_index)  # fmt: skip


def _torch_backend(q, k, temperature, labels, q_valid, k_valid, symmetric, ignore_index):
    return _run_op("torch", q, k, temperature, labels, q_valid, k_valid, symmetric, ignore_index)


def _triton_backend(q, k, temperature, labels, q_valid, k_valid, symmetric, ignore_index):
    return _run_op("triton", q, k, temperature, labels, q_valid, k_valid, symmetric, ignore_index)


# ------------------------------------------------------------------------- registration


def _reasons(inputs: dispatch.Inputs | None) -> list[str]:
    """Shape/device facts. Depends only on what :func:`_dispatch_key` holds."""
    if inputs is None:
        return []
    q, k = inputs["q"], inputs["k"]
    out = []
    if q.dim() != 2 or k.dim() != 2:
        out.append(f"q and k must be 2-D (N, D), (M, D); got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.device != k.device:
        out.append(f"q is on {q.device} and k on {k.device}")
    return out


def _triton_reasons(inputs: dispatch.Inputs | None) -> list[str]:
    if _T is None:
        return [_NO_TRITON]
    out = dispatch.backend_device_reasons(inputs)
    if inputs is None:
        return out
    out += _reasons(inputs)
    q, k = inputs["q"], inputs["k"]
    out += dispatch.dtype_reasons(inputs, ("q", "k"), TRITON_DTYPES)
    if q.dtype != k.dtype:
        out.append(f"q and k dtypes differ: {q.dtype}, {k.dtype}")
    if q.dim() == 2 and q.shape[1] > MAX_TRITON_DIM:
        out.append(f"D={q.shape[1]} > {MAX_TRITON_DIM} (one feature tile per program)")
    if q.device.type == "cpu":
        if dispatch.interpreter_on() and not _T._INTERPRETED:
            out.append("TRITON_INTERPRET=1 was set after rsfm_kernels was imported")
        if torch.bfloat16 in (q.dtype, k.dtype):
            out.append(
                "the Triton CPU interpreter computes bfloat16 wrongly; use float16/float32 on CPU"
            )
    out += dispatch.min_capability_reasons(inputs, 8, 0)
    return out


dispatch.register(
    "info_nce", "triton", _triton_backend, _triton_reasons, priority=10, auto_on_cpu=False,
    description="Triton fused online-LSE forward + deterministic dQ/dK backward",
)  # fmt: skip
dispatch.register(
    "info_nce", "torch", _torch_backend, _reasons, priority=30,
    description="PyTorch tiles + online logsumexp, O((N+M)*D) memory, sync-free",
)  # fmt: skip
dispatch.register(
    "info_nce", "reference", _reference_backend, _reasons, priority=90,
    description="float32 PyTorch math materialising N x M (the spec)",
)  # fmt: skip

_FNS = {"triton": _triton_backend, "torch": _torch_backend, "reference": _reference_backend}


def _dispatch_key(q: torch.Tensor, k: torch.Tensor, forced: str | None) -> tuple:
    """Everything the backends' reasons read: the cache key of the choice."""
    wide = q.dim() == 2 and q.shape[1] > MAX_TRITON_DIM
    return (forced, q.device, k.device, q.dtype, k.dtype, q.dim(), k.dim(), wide)


def _probe(dim: int, wide: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty tensor with the facts of the key, for the reasons functions."""
    shape = (0,) * max(dim - 1, 0) + ((MAX_TRITON_DIM + 1 if wide else 1),) if dim else ()
    return torch.empty(shape, dtype=dtype, device=device)


@torch.compiler.assume_constant_result
def _choose(key: tuple) -> str:
    """The backend name for a dispatch key (:func:`rsfm_kernels.dispatch.choose`: selected
    once, then a dict look-up; under torch.compile made at trace time, baked into the graph)."""

    def probes() -> dict:
        _, qdev, kdev, qdt, kdt, qdim, kdim, wide = key
        return {"q": _probe(qdim, wide, qdt, qdev), "k": _probe(kdim, wide, kdt, kdev)}

    return dispatch.choose("info_nce", key, probes, key[0]).name


def clear_dispatch_cache() -> None:
    """Forget the cached backend choices (registering a backend does it too)."""
    dispatch.clear_choices("info_nce")


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    labels: torch.Tensor | None = None,
    q_valid: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
    backend: str | None = None,
    *,
    symmetric: bool = False,
    ignore_index: int = -100,
) -> torch.Tensor:
    """InfoNCE loss (mean over valid rows) through the dispatcher; see the module docstring."""
    name = _choose(_dispatch_key(q, k, dispatch.forced_backend("info_nce", backend)))
    fn = _FNS.get(name) or next(b.fn for b in dispatch.backends("info_nce") if b.name == name)
    return fn(q, k, temperature, labels, q_valid, k_valid, symmetric, ignore_index)


__all__ = ["info_nce", "info_nce_reference", "info_nce_torch", "info_nce_triton"]
