"""int8 vs float16 embeddings: linear-probe accuracy on a real eval task (issue 18).

    python -m benchmarks.int8_probe CKPT [--data ../shared/data] [--seeds 10]

Fair measure of what the COG's int8 does to the features: the dense token maps of every
chip are embedded once in float32 (the in-memory path of ``rsfm eval --real``), then
stored three ways, exactly as ``embed_rasters`` would store one large map: float32,
float16 (IEEE half, the float16 COG) and int8 with ONE per-band scale/offset over all
valid tokens of all chips (the COG's scheme, ``rsfm_core.io.writers.int8_params``:
[min, max] onto [-127, 127]). The chip vector is the mean of its valid dequantised tokens
(as a GeoParquet chip / ``Embedding.pooled``), and the same linear probe with the same
seeds and folds (EuroSAT-MS 5-fold CV, ``rsfm_train.evalreal``) is fitted on each. The
table gives accuracy per storage and the paired difference to float16.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import _common as C


def quantised(dense: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """dense (N, D, h, w) float32 -> {storage: dequantised dense}, int8 by the COG's scheme."""
    from rsfm_core.io import writers

    tok = dense.transpose(1, 0, 2, 3)[:, valid]  # (D, valid tokens of all chips)
    scale, offset = writers.int8_params(tok.min(axis=1), tok.max(axis=1))
    s, o = scale[None, :, None, None], offset[None, :, None, None]
    q = np.clip(np.rint((dense - o) / s), -127, 127)
    return {"float32": dense, "float16": dense.astype(np.float16).astype(np.float32),
            "int8": (q * s + o).astype(np.float32)}  # fmt: skip


def pooled(dense: np.ndarray, valid: np.ndarray) -> np.ndarray:
    v = valid[:, None].astype(np.float64)
    return ((dense * v).sum((2, 3)) / np.maximum(v.sum((2, 3)), 1)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default=str(C.REPO.parent / "shared" / "data"))
    p.add_argument("--seeds", type=int, default=10, help="fold seeds (5 = one 5-fold CV)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    from rsfm_train.evalreal.metrics import accuracy
    from rsfm_train.evalreal.probes import linear_probe
    from rsfm_train.evalreal.tasks import EuroSAT

    import rsfm_core as rs

    torch.set_num_threads(1)
    task = EuroSAT()
    task.load(Path(a.data))
    emb = rs.Embedder.from_pretrained(a.checkpoint, device="cpu")
    d = task.data
    parts = []
    for i in range(0, d.pixels.shape[0], 25):
        chip = rs.ModalityData(d.pixels[i : i + 25], d.valid[i : i + 25], d.dates[i : i + 25],
                               d.sensor, d.bands)  # fmt: skip
        parts.append(emb.embed({"s2": chip}))
    dense = torch.cat([e.dense for e in parts]).numpy()  # (N, D, h, w), 0 where invalid
    valid = torch.cat([e.valid for e in parts]).numpy()
    feats = {k: pooled(x, valid) for k, x in quantised(dense, valid).items()}
    rows = {k: [] for k in feats}
    for seed in range(a.seeds):
        tr, te = task.split("5-fold CV", seed)
        for k, x in feats.items():
            r = linear_probe(x[tr], task.y[tr], x[te], task.num_outputs, seed=seed)
            rows[k].append(accuracy(task.y[te], r.scores.argmax(1)))
    ref = np.array(rows["float16"])
    table = []
    for k, acc in rows.items():
        acc = np.array(acc)
        table.append({"storage": k, "accuracy": float(acc.mean()), "std": float(acc.std()),
                      "minus_float16": float((acc - ref).mean()),
                      "max_abs_paired_diff": float(np.abs(acc - ref).max())})  # fmt: skip
    mask = np.broadcast_to(valid[:, None], dense.shape)
    err = np.abs(quantised(dense, valid)["int8"] - dense)[mask]
    print(f"EuroSAT-MS ({len(task.y)} chips), {a.checkpoint}, {a.seeds} fold seeds, "
          f"linear probe on pooled tokens; int8 max |error| per token {err.max():.4g}")  # fmt: skip
    C.print_table(table, ["storage", "accuracy", "std", "minus_float16", "max_abs_paired_diff"])
    if a.json:
        Path(a.json).write_text(json.dumps({"checkpoint": a.checkpoint, "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
