"""`rsfm eval`: the frozen-encoder evaluation of exported models, from the rsfm command."""

from __future__ import annotations

import json

from rsfm_core import cli
from rsfm_core.model import build_model


def test_rsfm_eval_prints_and_writes_json(tmp_path, capsys):
    model = tmp_path / "m"
    build_model(
        "rsfm_tiny", dim=32, depth=1, heads=2, fusion_depth=1, hyper_dim=16
    ).save_pretrained(model)
    out = tmp_path / "r" / "eval.json"
    argv = ["eval", str(model), "--random-baseline", "--scenes", "2", "--size", "32"]
    assert cli.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "probe_acc" in printed and "random init" in printed
    r = json.loads(out.read_text())
    assert r["settings"] == {"scenes": 2, "size": 32, "shots": 10}
    assert set(r["results"]) == {str(model), "random init"}
    for v in r["results"].values():
        assert 0 <= v["probe_acc"] <= 1 and 0 <= v["retrieval_top1"] <= 1
        assert v["retrieval_chance"] == 1 / v["retrieval_candidates"]
