"""`rsfm eval --real` (rsfm_train.evalreal): metrics, probes, runner, skips, CLI.

The default tests use hand-made cases and tiny synthetic stand-ins written in the real
sets' file formats (seconds); the slow test runs all five real tasks on rsfm_tiny.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio import Affine
from rsfm_train.evalreal import metrics, probes
from rsfm_train.evalreal.presto_split import TEST_UIDS, make_split, split_from_uids
from rsfm_train.evalreal.run import EvalSettings, build_kinds, markdown, run
from rsfm_train.evalreal.tasks import EuroSAT

from rsfm_core import cli
from rsfm_core.model import build_model

# ---------------------------------------------------------------------------- metrics


def test_accuracy_and_macro_f1_known_answers():
    assert metrics.accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    # class 0: tp 1, fn 1 -> F1 2/3; class 1: tp 2, fp 1 -> F1 4/5
    assert metrics.macro_f1([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # a class predicted but never true counts with F1 = 0 (scikit-learn's convention)
    assert metrics.macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0) / 2)


def test_average_precision_known_answers():
    # ranks: pos (P 1, R .5), neg, pos (P 2/3, R 1), neg -> .5 * 1 + .5 * 2/3
    assert metrics.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    assert metrics.average_precision([1, 0, 1, 0], [1, 1, 1, 1]) == pytest.approx(0.5)  # ties
    assert metrics.average_precision([0, 1], [0.9, 0.1]) == pytest.approx(0.5)
    assert np.isnan(metrics.average_precision([0, 0], [0.3, 0.2]))
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.8, 0.3, 0.5], [0.1, 0.9, 0.5]])
    # label 0: perfect ranking (AP 1); label 1: positives rank 2 and 3 -> (1/2 + 2/3) / 2;
    # label 2 has no positive and is left out
    m, n = metrics.mean_average_precision(y, s)
    assert n == 2 and m == pytest.approx((1.0 + (1 / 2 + 2 / 3) / 2) / 2)


def test_iou_and_miou_known_answers():
    assert metrics.iou([1, 1, 0, 0], [1, 0, 1, 0], 1) == pytest.approx(1 / 3)
    assert np.isnan(metrics.iou([0, 0], [0, 0], 1))
    # class 0: 1/2, class 1: 2/3, class 2: 1
    assert metrics.miou([0, 0, 1, 1, 2], [0, 1, 1, 1, 2]) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    cm = metrics.confusion([0, 0, 1], [0, 1, 1], 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def test_effective_rank_and_dim_std():
    cross = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])  # two equal singular values
    assert metrics.effective_rank(cross) == pytest.approx(2.0)
    line = np.outer(np.arange(7.0), [1.0, 2.0, -1.0]) + 5.0  # one direction (+ an offset)
    assert metrics.effective_rank(line) == pytest.approx(1.0)
    x = np.random.default_rng(0).normal(size=(2000, 8)) * np.array([1, 1, 1, 1, 1, 1, 1, 1e-6])
    assert 6.5 < metrics.effective_rank(x) < 7.05  # the tiny dimension hardly counts
    assert metrics.mean_dim_std(np.array([[0.0, 1], [2, 1]])) == pytest.approx(0.5)


# ---------------------------------------------------------------------------- probes


def _blobs(n_per: int, dim: int, classes: int, sep: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * sep
    y = np.repeat(np.arange(classes), n_per)
    return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_linear_probe_recovers_a_separable_problem():
    x, y = _blobs(40, 6, 3, sep=6.0, seed=1)
    xt, yt = _blobs(30, 6, 3, sep=6.0, seed=1)  # same centres, new noise
    xt, yt = xt[::3], yt[::3]
    grid = (1e-3, 1e-1, 10.0)
    r = probes.linear_probe(x, y, xt, 3, seed=0, grid=grid, max_iter=100)
    assert r.scores.shape == (len(xt), 3)
    assert metrics.accuracy(yt, r.scores.argmax(1)) == 1.0
    assert r.choice in grid and set(r.curve) == set(grid)


def test_inner_cv_chooses_l2_from_the_training_part_only():
    rng = np.random.default_rng(3)
    grid = (1e-4, 1e-2, 1.0, 10.0)
    fit = lambda x, y, xt: probes.linear_probe(x, y, xt, 2, seed=0, grid=grid, max_iter=100)  # noqa: E731
    # clean, separable, plenty of data: a weak penalty fits best
    x, y = _blobs(100, 4, 2, sep=8.0, seed=2)
    clean = fit(x, y, x[:5])
    assert clean.choice <= 1e-3
    # pure-noise labels, few samples, many features: a strong penalty fits best
    xn = rng.normal(size=(24, 40)).astype(np.float32)
    yn = np.tile([0, 1], 12)
    noisy = fit(xn, yn, xn[:5])
    assert noisy.choice >= 1.0
    # the test part never enters: any x_test gives the same choice and curve, and they
    # equal those of the selection run on the training part alone
    other = fit(x, y, rng.normal(size=(50, 4)) * 100)
    assert other.choice == clean.choice and other.curve == clean.curve
    (lam, curve), = probes.select_l2_many([(x, y)], 2, False, [0], grid, max_iter=100)  # fmt: skip
    assert lam == clean.choice and curve == clean.curve


def test_inner_folds_are_stratified_and_disjoint():
    y = np.array([0] * 7 + [1] * 3 + [2] * 10)
    folds = probes.inner_folds(y, 5, seed=0, multilabel=False)
    held = np.concatenate([va for _, va in folds])
    assert sorted(held.tolist()) == list(range(len(y)))  # each sample held out once
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert abs(len(va) - len(y) / 5) <= 1
        assert (y[va] == 2).sum() == 2  # 10 members of class 2 spread evenly
    assert [va.tolist() for _, va in probes.inner_folds(y, 5, 0, False)] == [
        va.tolist() for _, va in folds
    ]


def test_batched_fits_equal_single_fits():
    x, y = _blobs(30, 5, 3, sep=1.0, seed=4)
    rows = np.arange(0, 90, 2)
    many = probes.fit_many([(x, y)], [(0, rows, 0.1), (0, np.arange(90), 1.0)], 3)
    one = probes.fit_many([(x[rows], y[rows])], [(0, np.arange(len(rows)), 0.1)], 3)
    np.testing.assert_allclose(many.scores(x, 0), one.scores(x, 0), atol=1e-3)  # solver tol.


def test_knn_toy_case():
    xtr = np.array([[1.0, 0], [0, 1], [-1, 0]])
    ytr = np.array([0, 1, 2])
    s = probes.knn_scores(xtr, ytr, np.array([[0.9, 0.1], [-2.0, -0.5]]), k=1, num_outputs=3)
    assert s.argmax(1).tolist() == [0, 2]
    assert np.floor(s).tolist() == [[1, 0, 0], [0, 0, 1]]  # one vote, tie-break < 1
    # multi-label: the score of a label is the count of neighbours carrying it
    yml = np.array([[1, 1], [0, 1], [0, 0]])
    s = probes.knn_scores(xtr, yml, np.array([[0.9, 0.1]]), k=2, num_outputs=2, multilabel=True)
    assert np.floor(s).tolist() == [[1, 2]]
    x, y = _blobs(20, 3, 2, sep=10.0, seed=5)
    r = probes.knn_probe(x, y, x, 2, seed=0)
    assert r.choice in probes.K_GRID and metrics.accuracy(y, r.scores.argmax(1)) == 1.0


# ---------------------------------------------------------------------------- runner

TINY = dict(dim=16, depth=1, heads=2, fusion_depth=1, hyper_dim=16)


def _fake_eurosat(root, size: int = 16) -> None:
    """5 chips of each class in EuroSAT's file layout: 13-band uint16 GeoTIFFs, bands in
    the file order (B8A last), class-dependent spectra."""
    rng = np.random.default_rng(0)
    for k, c in enumerate(EuroSAT.CLASSES):
        (root / "eurosat_ms" / c).mkdir(parents=True)
        spectrum = rng.uniform(500, 4000, 13)
        for i in range(1, 6):
            px = spectrum[:, None, None] * rng.uniform(0.8, 1.2, (13, size, size))
            path = root / "eurosat_ms" / c / f"{c}_{i}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=13,
                               dtype="uint16", crs="EPSG:32632",
                               transform=Affine(10, 0, 5e5 + 1e3 * k, 0, -10, 5e6)) as f:  # fmt: skip
                f.write(px.astype(np.uint16))


def _fake_presto(root) -> None:
    """The committed test points plus 63 training points, Presto's array layout."""
    rng = np.random.default_rng(1)
    uids = np.array([*TEST_UIDS, *[f"zz{i:02d}" for i in range(63)]])
    n = len(uids)
    y = rng.integers(1, 6, n)
    x = np.zeros((n, 12, 18))
    x[:, :, 0:2] = rng.normal(-12, 3, (n, 12, 2)) + y[:, None, None]
    x[:, :, 2:13] = rng.uniform(300, 3000, (n, 12, 11)) * (1 + 0.1 * y[:, None, None])
    months = (np.arange(12)[None] + rng.integers(0, 12, (n, 1))) % 12
    d = root / "presto_algae"
    d.mkdir(parents=True)
    arrays = {"s1_s2_era5_srtm": x, "month": months, "target": y.astype(float),
              "latlon": rng.uniform(30, 40, (n, 2)), "uid": uids}  # fmt: skip
    for name, a in arrays.items():
        np.save(d / f"{name}.npy", a)


@pytest.fixture
def stand_in(tmp_path):
    data = tmp_path / "data"
    _fake_eurosat(data)
    _fake_presto(data)
    model = tmp_path / "model"
    build_model("rsfm_tiny", **TINY).save_pretrained(model)
    return data, model


def _run(data, model, tasks=("eurosat", "salinas_a", "presto_algae"), say=print):
    # a short grid and few L-BFGS iterations keep the stand-in run to seconds
    settings = EvalSettings(data=str(data), tasks=tasks, seeds=2, quick=True, batch=8,
                            l2_grid=(1e-2, 1.0), k_grid=(1, 3), max_iter=30)  # fmt: skip
    return run(settings, build_kinds([f"ckpt={model}"], device="cpu"), say=say)


def _numbers(report: dict) -> list:
    timing = ("feature_seconds", "probe_seconds")
    return [
        {k: v for k, v in r.items() if k not in timing}
        for t in report["tasks"].values() for r in t.get("rows", [])
    ]  # fmt: skip


def test_runner_measures_raw_random_and_checkpoint_and_skips_missing(stand_in, capsys):
    data, model = stand_in
    report = _run(data, model)
    printed = capsys.readouterr().out
    # Salinas-A is absent from the stand-in: skipped, with the reason printed and kept
    assert "salinas_a" in report["tasks"] and "not found" in report["tasks"]["salinas_a"]["skipped"]
    assert "[salinas_a] SKIPPED" in printed and str(data / "salinas_a") in printed
    names = [k["name"] for k in report["feature_kinds"]]
    assert names == ["raw bands", "random init (rsfm_tiny, seed 0)", "ckpt"]
    assert report["feature_kinds"][1]["from"] == "config of ckpt"  # the checkpoint's architecture
    for task, inputs in (("eurosat", 2), ("presto_algae", 1)):
        rows = report["tasks"][task]["rows"]
        assert len(rows) == 3 * inputs
        assert [r["features"] for r in rows[:3]] == names
        for r in rows:
            first = report["tasks"][task]["metrics"][0]
            assert len(r["linear"][first]["values"]) == 2 and len(r["l2"]) == 2
            assert 0.0 <= r["linear"][first]["mean"] <= 1.0
            assert r["dim"] == (16 if r["features"] != "raw bands" else r["dim"])
            assert r["effective_rank"] > 0 and r["dim_std"] > 0
    raw = report["tasks"]["eurosat"]["rows"][0]
    assert raw["dim"] == 26 and raw["n_train"] == [40, 40] and raw["n_test"] == [10, 10]
    presto = report["tasks"]["presto_algae"]["rows"][0]
    assert presto["dim"] == 12 * 13 and presto["n_test"] == [337, 337]
    md = markdown(report)
    assert "| eurosat | 13 bands | 5-fold CV | accuracy | 0.100 |" in md and "Skipped:" in md
    assert raw["prior"]["accuracy"]["mean"] == 0.1  # balanced classes: any majority is 1/10


def test_runner_is_deterministic(stand_in):
    data, model = stand_in
    quiet = lambda s: None  # noqa: E731
    a = _run(data, model, ("presto_algae",), say=quiet)
    b = _run(data, model, ("presto_algae",), say=quiet)
    assert _numbers(a) == _numbers(b)


def test_rsfm_eval_real_cli_writes_json_and_markdown(stand_in, tmp_path, capsys):
    data, model = stand_in
    out = tmp_path / "out"
    argv = ["eval", "--real", "--data", str(data), "--tasks", "presto_algae,reben", "--quick",
            "--seeds", "2", "--checkpoint", str(model), "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| presto_algae | S1+S2 | fixed 70/30 split | accuracy |" in printed
    assert "[reben] SKIPPED" in printed
    report = json.loads((out / "eval.json").read_text())
    assert (
        set(report["tasks"]) == {"presto_algae", "reben"} and "skipped" in report["tasks"]["reben"]
    )
    assert (out / "eval.md").read_text().startswith("# rsfm eval --real")
    assert cli.main(["eval", "--real", "--tasks", "nope"]) == 2
    assert cli.main(["eval"]) == 2  # synthetic evaluation still needs a model folder


# ---------------------------------------------------------------------------- real data


def test_presto_split_is_reproducible_from_code(real_data):
    d = real_data("presto_algae")
    mask = make_split(np.load(d / "latlon.npy"))
    assert (split_from_uids(np.load(d / "uid.npy")) == mask).all()
    assert mask.sum() == len(TEST_UIDS) == round(0.3 * len(mask))


@pytest.mark.slow
def test_all_five_real_tasks_on_rsfm_tiny(real_data):
    for name in ("eurosat_ms", "reben_s1s2", "salinas_a", "sen1floods11", "presto_algae"):
        root = real_data(name).parent
    settings = EvalSettings(data=str(root), seeds=2, quick=True)
    report = run(settings, build_kinds([], "rsfm_tiny", device="cpu"))
    assert not [n for n, t in report["tasks"].items() if "skipped" in t]
    first = {n: t["rows"][0]["linear"][t["metrics"][0]]["mean"] for n, t in report["tasks"].items()}
    # raw bands (row 0) are far above chance on every task
    assert first["eurosat"] > 0.5 and first["salinas_a"] > 0.8 and first["sen1floods11"] > 0.6
    assert first["reben"] > 0.4 and first["presto_algae"] > 0.3
    for t in report["tasks"].values():
        assert {r["features"] for r in t["rows"]} == {
            "raw bands",
            "random init (rsfm_tiny, seed 0)",
        }


def test_dev_protocols_never_touch_the_test_parts(real_data):
    """--dev selects on training/validation data only: what it scores is disjoint from
    every final test part."""
    from rsfm_train.evalreal.tasks import TASKS

    root = real_data("eurosat_ms").parent
    for name in ("eurosat", "reben", "sen1floods11", "presto_algae"):
        real_data(TASKS[name].folder)
        task = TASKS[name]()
        task.load(root)
        final = {p: task.split(p, 0) for p in task.protocols}
        task.use_dev()
        (dev,) = task.protocols
        for seed in range(3):
            tr, te = task.split(dev, seed)
            assert len(tr) and len(te) and not set(tr) & set(te)
            if name == "eurosat":  # file ids 1-5 only; ids 6-10 are scored on their own
                ids = np.arange(len(task.y)) % 10 + 1
                assert ids[tr].max() <= 5 and ids[te].max() <= 5
                assert ids[final["5-fold CV, ids 6-10"][1]].min() > 5
            elif name == "reben":  # the validation split, as the issue allows; never test
                assert task.train_mask[tr].all() and task.val_mask[te].all()
            else:
                (final_test,) = [te_ for _, te_ in final.values()]
                assert not set(tr) & set(final_test) and not set(te) & set(final_test)
    assert TASKS["salinas_a"]().missing(root, dev=True) is not None  # no split: skipped
