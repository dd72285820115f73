"""Two ranks (torchrun's environment, gloo, CPU) give the same files as one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

import pyarrow.parquet as pq

from rsfm_core.inference.distributed import plan_bands
from rsfm_core.inference.tiles import make_layout
from rsfm_core.sample import Grid

from .conftest import inputs_of, read_cog

REPO = Path(__file__).resolve().parents[2]
OPTS = dict(tile=32, overlap=8, batch=2, rows_per_band=1, dtype="float32", progress=False)
WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from tests.inference.conftest import micro_embedder, inputs_of
from pathlib import Path
scene, out, opts = json.loads(sys.argv[1])
scene = {k: [Path(p) for p in v] for k, v in scene.items()}
res = micro_embedder().embed_rasters(inputs_of(scene), out + ".tif", parquet=out + ".parquet", **opts)
print("RESULT", res.computed, res.skipped)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bands_cover_the_token_rows_once():
    L = make_layout(Grid(None, (1, 0, 0, 0, -1, 0), 200, 40), 4, 32, 8)  # 50 token rows
    for world, per in ((1, None), (2, 1), (3, 2)):
        bands = plan_bands(L, world, per)
        own = [r for b in bands for r in range(b.out_start, b.out_end)]
        assert own == list(range(50))
        for b in bands:  # each band computes every tile row touching its rows
            assert L.row_start(b.tile_rows[0]) <= b.out_start
            assert L.row_start(b.tile_rows[-1]) + L.tile_tok >= b.out_end


def test_two_ranks_equal_one(micro, scene, tmp_path):
    single = {**OPTS, "rows_per_band": None}  # one band: no halo rows recomputed
    one = micro.embed_rasters(
        inputs_of(scene), tmp_path / "one.tif", parquet=tmp_path / "one.parquet", **single
    )
    port, procs = _free_port(), []
    arg = json.dumps(
        [{k: [str(p) for p in v] for k, v in scene.items()}, str(tmp_path / "two"), OPTS]
    )
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, arg], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    a, _ = read_cog(one.out)
    b, m = read_cog(tmp_path / "two.tif")
    np.testing.assert_array_equal(a, b)  # bit-identical: same batches, same blend order
    assert pq.read_table(one.parquet).equals(pq.read_table(tmp_path / "two.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.parquet",
        "one.stac.json",
        "one.tif",
        "two.parquet",
        "two.stac.json",
        "two.tif",
    ]
    assert "RESULT" in logs[0]
