"""The runner: tasks x inputs x feature kinds x seeds -> probes -> table, JSON, Markdown.

For every task and input the same run measures the raw normalised bands, a random init
of the evaluated architecture and every checkpoint, on the same splits (one per seed),
with the linear probe and kNN of :mod:`.probes`. Per row it records the metrics (mean,
sample std and the values per seed), the probe's chosen ``l2`` and kNN ``k`` per seed with
the inner-CV curves, the features' dimension, effective rank and mean per-dimension std,
and the seconds spent extracting them; per task the wall time.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .features import FeatureKind, Unsupported, model_kind, raw_kind
from .probes import INNER_FOLDS, K_GRID, L2_GRID, MAX_ITER, knn_probe, linear_probe_many
from .tasks import TASKS, Task

log = logging.getLogger("rsfm_train")

BOOTSTRAP = 200  # resamples of the first seed's test items (see bootstrap_std)


@dataclass
class EvalSettings:
    data: str
    tasks: tuple[str, ...] = tuple(TASKS)
    seeds: int = 5
    quick: bool = False
    dev: bool = False  # score the dev protocols (selection on training/validation data)
    batch: int = 16
    l2_grid: tuple[float, ...] = L2_GRID
    k_grid: tuple[int, ...] = K_GRID
    max_iter: int = MAX_ITER
    command: str = ""


def default_data_root(repo: Path | None = None) -> Path:
    """``$RSFM_REAL_DATA``, else ``../shared/data`` next to the repository."""
    if os.environ.get("RSFM_REAL_DATA"):
        return Path(os.environ["RSFM_REAL_DATA"])
    repo = repo or Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data"


# ---------------------------------------------------------------------------- feature kinds


def build_kinds(
    checkpoints: Sequence[str],
    random_name: str = "rsfm_tiny",
    random_seed: int = 0,
    device: str = "auto",
) -> list[FeatureKind]:
    """Raw bands, a random init and every checkpoint (``[LABEL=]PATH``). The random init
    has the FIRST checkpoint's config (same architecture, modalities and sensor
    statistics), else the registered size ``random_name``; its weights are drawn with
    ``random_seed``."""
    import rsfm_core as rs

    loaded = []
    for spec in checkpoints:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        emb = rs.Embedder.from_pretrained(path, device=device)
        info = {"kind": "checkpoint", "path": str(path), "model": emb.config.name,
                "sha256": emb.info.sha256, "verified": emb.info.verified}  # fmt: skip
        loaded.append(model_kind(label or str(path), emb, info))
    if loaded:
        cfg = rs.model.ModelConfig.from_dict(loaded[0].embedder.config.to_dict())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)
            model = rs.model.RSFMEncoder(cfg)
        rand = rs.Embedder(model, device=device)
        source = f"config of {loaded[0].name}"
    else:
        rand = rs.Embedder.random(random_name, seed=random_seed, device=device)
        source = f"registered {random_name}"
    name = f"random init ({rand.config.name}, seed {random_seed})"
    info = {"kind": "random", "model": rand.config.name, "seed": random_seed, "from": source}
    return [raw_kind(), model_kind(name, rand, info), *loaded]


# ---------------------------------------------------------------------------- one task


def _summary(per_seed: list[dict[str, float]]) -> dict[str, dict]:
    out = {}
    for m in per_seed[0]:
        v = np.array([s[m] for s in per_seed], dtype=np.float64)
        std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out[m] = {"mean": float(v.mean()), "std": std, "values": v.tolist()}
    return out


def bootstrap_std(score, y: np.ndarray, scores: np.ndarray, n: int = BOOTSTRAP, seed: int = 0):
    """Std of each metric of ``score(y, scores)`` over ``n`` seeded resamples (with
    replacement) of the test items; resamples where a metric is undefined (e.g. no
    positive of any label) are left out."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        try:
            vals.append(score(y[idx], scores[idx]))
        except ValueError:
            continue
    if len(vals) < 2:
        return {}
    return {m: float(np.std([v[m] for v in vals], ddof=1)) for m in vals[0]}


def _prior(y_train: np.ndarray, n: int, K: int, multilabel: bool) -> np.ndarray:
    """Scores that ignore the features: the training part's class (label) frequencies for
    every test item -- the majority class / constant-score reference of a split."""
    freq = y_train.mean(0) if multilabel else np.bincount(y_train, minlength=K) / len(y_train)
    return np.broadcast_to(freq, (n, K)).astype(np.float64)


def _probe_row(task: Task, x: np.ndarray, protocol: str, settings: EvalSettings) -> dict:
    y, K, ml = task.y, task.num_outputs, task.multilabel
    seeds = list(range(settings.seeds))
    splits = [task.split(protocol, s) for s in seeds]
    lin = linear_probe_many([(x[tr], y[tr], x[te]) for tr, te in splits], K, ml, seeds,
                            settings.l2_grid, max_iter=settings.max_iter)  # fmt: skip
    knn = [knn_probe(x[tr], y[tr], x[te], K, ml, s, settings.k_grid)
           for (tr, te), s in zip(splits, seeds)]  # fmt: skip
    return {
        "prior": _summary([task.score(y[te], _prior(y[tr], len(te), K, ml)) for tr, te in splits]),
        "linear": _summary([task.score(y[te], r.scores) for r, (_, te) in zip(lin, splits)]),
        "knn": _summary([task.score(y[te], r.scores) for r, (_, te) in zip(knn, splits)]),
        "linear_bootstrap_std": bootstrap_std(task.score, y[splits[0][1]], lin[0].scores),
        "l2": [r.choice for r in lin],
        "l2_cv_logloss": [r.curve for r in lin],
        "k": [int(r.choice) for r in knn],
        "k_cv_score": [r.curve for r in knn],
        "n_train": [len(tr) for tr, _ in splits],
        "n_test": [len(te) for _, te in splits],
    }


def run_task(
    task: Task, kinds: list[FeatureKind], settings: EvalSettings, say: Callable[[str], None]
) -> dict:
    """Load ``task``, extract every input's features with every kind, probe every seed."""
    t0 = time.perf_counter()
    task.load(Path(settings.data), settings.quick)
    if settings.dev:
        task.use_dev()
    say(f"[{task.name}] loaded in {time.perf_counter() - t0:.1f} s: {task.notes}")
    rows = []
    for inp in task.inputs:
        for kind in kinds:
            t1 = time.perf_counter()
            base = {"input": inp, "features": kind.name}
            try:
                x = np.ascontiguousarray(task.features(inp, kind, settings.batch), np.float32)
            except Unsupported as e:
                say(f"[{task.name}] {inp} / {kind.name}: not measured: {e}")
                rows += [{**base, "protocol": p, "unsupported": str(e)} for p in task.protocols]
                continue
            if not np.isfinite(x).all():
                raise FloatingPointError(f"{task.name} {inp} {kind.name}: non-finite features")
            seconds = time.perf_counter() - t1
            diag = {"dim": int(x.shape[1]), "effective_rank": metrics.effective_rank(x),
                    "dim_std": metrics.mean_dim_std(x), "feature_seconds": seconds}  # fmt: skip
            for protocol in task.protocols:
                t2 = time.perf_counter()
                row = {
                    **base,
                    "protocol": protocol,
                    **diag,
                    **_probe_row(task, x, protocol, settings),
                }
                row["probe_seconds"] = time.perf_counter() - t2
                rows.append(row)
                first = task.metric_names[0]
                lin, knn = row["linear"][first], row["knn"][first]
                say(f"[{task.name}] {inp} / {protocol} / {kind.name}: {first} linear "
                    f"{lin['mean']:.3f} ± {lin['std']:.3f}, kNN {knn['mean']:.3f} ± "
                    f"{knn['std']:.3f} (features {seconds:.1f} s, probes "
                    f"{row['probe_seconds']:.1f} s)")  # fmt: skip
    return {"title": task.title, "metrics": list(task.metric_names), "notes": task.notes,
            "rows": rows, "seconds": time.perf_counter() - t0}  # fmt: skip


def run(
    settings: EvalSettings, kinds: list[FeatureKind], say: Callable[[str], None] = print
) -> dict:
    """Every requested task (skipped with the reason when its data are missing)."""
    unknown = sorted(set(settings.tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    t0 = time.perf_counter()
    report = {
        "settings": asdict(settings),
        "protocol": {"inner_folds": INNER_FOLDS, "bootstrap": BOOTSTRAP},
        "environment": _environment(kinds),
        "feature_kinds": [{"name": k.name, **k.info} for k in kinds],
        "tasks": {},
    }
    for name in settings.tasks:
        task = TASKS[name]()
        reason = task.missing(Path(settings.data), settings.dev)
        if reason:
            say(f"[{name}] SKIPPED: {reason}")
            report["tasks"][name] = {"title": task.title, "skipped": reason}
            continue
        report["tasks"][name] = run_task(task, kinds, settings, say)
        say(f"[{name}] done in {report['tasks'][name]['seconds']:.1f} s")
    report["total_seconds"] = time.perf_counter() - t0
    return report


def _environment(kinds: list[FeatureKind]) -> dict:
    dev = next((str(k.embedder.device) for k in kinds if k.embedder is not None), "cpu")
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": dev}  # fmt: skip


# ---------------------------------------------------------------------------- output


def _cell(m: dict | None) -> str:
    return "" if m is None else f"{m['mean']:.3f} ± {m['std']:.3f}"


def _median(v: list[float]) -> str:
    return f"{float(np.median(v)):g}" if v else ""


def summary_table(report: dict) -> str:
    """One line per task / input / protocol, one column per feature kind: the first
    metric of the linear probe (mean ± std over seeds)."""
    kinds = [k["name"] for k in report["feature_kinds"]]
    lines = ["| task | input | protocol | metric | train prior | " + " | ".join(kinds) + " |",
             "|---" * (5 + len(kinds)) + "|"]  # fmt: skip
    for name, t in report["tasks"].items():
        if "skipped" in t:
            lines.append(f"| {name} | skipped: {t['skipped']} |" + " |" * (3 + len(kinds)))
            continue
        first = t["metrics"][0]
        rows = {(r["input"], r["protocol"], r["features"]): r for r in t["rows"]}
        for inp, prot in dict.fromkeys((r["input"], r["protocol"]) for r in t["rows"]):
            got = [rows[inp, prot, k] for k in kinds]
            cells = ["n/a" if "unsupported" in r else _cell(r["linear"][first]) for r in got]
            prior = next((f"{r['prior'][first]['mean']:.3f}" for r in got if "prior" in r), "")
            lines.append(
                f"| {name} | {inp} | {prot} | {first} | {prior} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def task_table(t: dict) -> str:
    """Every row of one task with both probes' metrics and the diagnostics."""
    ms = t["metrics"]
    head = ["input", "protocol", "features", *[f"linear {m}" for m in ms],
            f"boot. std {ms[0]}", *[f"kNN {m}" for m in ms], "l2 (median)", "k (median)", "dim", "eff. rank",
            "dim std", "features s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in t["rows"]:
        if "unsupported" in r:
            cells = [r["input"], r["protocol"], r["features"], f"not measured: {r['unsupported']}"]
            lines.append("| " + " | ".join(cells) + " |" + " |" * (len(head) - 4))
            continue
        cells = [r["input"], r["protocol"], r["features"],
                 *[_cell(r["linear"][m]) for m in ms],
                 f"{r['linear_bootstrap_std'].get(ms[0], float('nan')):.3f}",
                 *[_cell(r["knn"][m]) for m in ms],
                 _median(r["l2"]), _median(r["k"]), str(r["dim"]), f"{r['effective_rank']:.1f}",
                 f"{r['dim_std']:.3g}", f"{r['feature_seconds']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    s = report["settings"]
    out = ["# rsfm eval --real", ""]
    if s.get("command"):
        out += ["```", s["command"], "```", ""]
    env = report["environment"]
    out += [
        f"Seeds: {s['seeds']}{' (quick mode)' if s['quick'] else ''}; data: `{s['data']}`; "
        f"device: {env['device']}, torch {env['torch']}, {env['cpus']} CPUs, "
        f"{env['torch_threads']} torch threads; total {report['total_seconds']:.0f} s.",
        "",
        "Linear probe, first metric of each task, mean ± std over seeds; train prior = the "
        "same metric for scores that ignore the features (the training part's class "
        "frequencies: majority class, constant scores):",
        "",
        summary_table(report),
        "",
        "Columns of the task tables: linear = logistic-regression probe, kNN = cosine kNN "
        "(mean ± sample std over seeds); boot. std = std of the first metric over "
        f"{BOOTSTRAP} resamples of the first seed's test items (pixels are spatially "
        "correlated, so for pixel tasks it understates the uncertainty); l2 / k = median of "
        "the values chosen by inner cross-validation on the training part; dim, eff. rank "
        "(exp entropy of the normalised singular values of the centred features) and dim "
        "std (mean per-dimension std) describe the features; features s = extraction time.",
        "",
    ]
    for name, t in report["tasks"].items():
        out += [f"## {name}: {t['title']}", ""]
        if "skipped" in t:
            out += [f"Skipped: {t['skipped']}", ""]
            continue
        out += [f"Wall time {t['seconds']:.1f} s. Data: {json.dumps(_short(t['notes']))}", ""]
        out += [task_table(t), ""]
    return "\n".join(out)


def _short(notes: dict) -> dict:
    return {k: v for k, v in notes.items() if not (isinstance(v, list) and len(v) > 8)}


def write(report: dict, out: str | Path) -> tuple[Path, Path]:
    """``out/eval.json`` and ``out/eval.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "eval.json", out / "eval.md"
    js.write_text(json.dumps(report, indent=1, default=_jsonable), encoding="utf-8")
    md.write_text(markdown(report), encoding="utf-8")
    return js, md


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
