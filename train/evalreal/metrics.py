"""Evaluation metrics on numpy arrays (float64 arithmetic), and embedding diagnostics.

Conventions (chosen to match scikit-learn's defaults, so numbers are comparable):
- ``macro_f1``: mean F1 over the classes that occur in ``y_true`` or ``y_pred``; a class
  predicted but never true scores F1 = 0 (it had only false positives).
- ``average_precision``: the step-wise area under the precision-recall curve,
  ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds (tied scores enter
  together, so a constant scorer gets AP = the positive rate). Undefined (NaN) without
  a positive.
- ``mean_average_precision``: macro mean of AP over the labels with at least one positive
  in ``y_true`` (the labels present in the test part); the others are left out.
- ``iou``: TP / (TP + FP + FN) of one class; ``miou``: mean over the classes that occur in
  ``y_true``.
- ``effective_rank``: exp of the Shannon entropy of the normalised singular values of the
  CENTRED feature matrix (RankMe, Garrido et al. 2023, after centring): 1 for features
  on a line, D for isotropic features. Centring keeps a shared offset from counting as a
  direction.
"""

from __future__ import annotations

import numpy as np


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"class labels must be 1-D, got shape {y.shape}")
    return y.astype(np.int64, copy=False)


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    if t.size == 0:
        raise ValueError("no samples to score")
    return t, p


def accuracy(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def confusion(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """``(K, K)`` counts, rows = true class, columns = predicted class."""
    t, p = _pair(y_true, y_pred)
    K = int(max(t.max(), p.max()) + 1) if num_classes is None else num_classes
    return np.bincount(t * K + p, minlength=K * K).reshape(K, K)


def macro_f1(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred)
    scores = []
    for k in np.union1d(t, p):
        tp = np.sum((t == k) & (p == k))
        fp = np.sum((t != k) & (p == k))
        fn = np.sum((t == k) & (p != k))
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    return float(np.mean(scores))


def iou(y_true, y_pred, cls: int) -> float:
    """Intersection over union of class ``cls`` (NaN when it is neither true nor predicted)."""
    t, p = _pair(y_true, y_pred)
    inter = np.sum((t == cls) & (p == cls))
    union = np.sum((t == cls) | (p == cls))
    return float(inter / union) if union else float("nan")


def miou(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean([iou(t, p, int(k)) for k in np.unique(t)]))


def average_precision(y_true, scores) -> float:
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"y_true {t.shape} and scores {s.shape} differ in length")
    positives = int(t.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    t, s = t[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tied run
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1.0)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true, scores) -> tuple[float, int]:
    """Macro mAP over the labels with a positive in ``y_true (N, L)``, and how many they
    were."""
    t = np.asarray(y_true)
    s = np.asarray(scores)
    if t.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"need y_true and scores of one (N, L) shape, got {t.shape}, {s.shape}")
    present = [j for j in range(t.shape[1]) if t[:, j].any()]
    if not present:
        raise ValueError("no label has a positive sample: mAP is undefined")
    return float(np.mean([average_precision(t[:, j], s[:, j]) for j in present])), len(present)


def effective_rank(x, max_rows: int = 20000, seed: int = 0) -> float:
    """Effective rank of ``x (N, D)`` (see the module docstring); above ``max_rows`` rows a
    fixed seeded subsample of ``max_rows`` is used."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] > max_rows:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_rows, replace=False)]
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def mean_dim_std(x) -> float:
    """Mean over feature dimensions of each dimension's standard deviation across rows."""
    return float(np.asarray(x, dtype=np.float64).std(0).mean())
