"""data.mode=memory on 2 Ray Train workers (DDP, gloo): each rank loads its own share of the shards
into one tensor and the debug recipe trains and checkpoints. (That a resumed run repeats the
uninterrupted one's batches and losses exactly is tested in one process: tests/unit/test_train_memory_mode.py.)"""
import json
from pathlib import Path

import pytest

from cluster.trainer import run

pytestmark = pytest.mark.slow


def test_two_workers_train_in_memory_mode(local_ray, debug_cfg, tmp_path):
    out = tmp_path / "memory_run"
    result = run(debug_cfg(out, "data.mode=memory", "cluster.metrics=false"))
    assert result.step == 4 and Path(result.checkpoint.path).name == "step_00000004"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["data/corrupt_samples"] == 0 for r in rows)
