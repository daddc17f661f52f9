"""A real Ray Tune sweep on the local Ray: one Ray Train run per grid point, each evaluated, the
trials ranked by their evaluation; the grid is validated before any trial starts."""
import json
from pathlib import Path

import pytest
import yaml

from cluster.sweep import markdown, sweep
from tgan.config import ConfigError

pytestmark = pytest.mark.slow


def test_a_grid_over_alpha_runs_one_evaluated_training_run_per_point(local_ray, debug_cfg, tmp_path):
    out = tmp_path / "sweep"
    base = debug_cfg(out, "model.family=mbgan", "data.labelled_batch_size=0", "train.steps=3")
    trials = sweep(base, {"loss.alpha": [0.2, 20.0]}, metric="map", max_concurrent=1)

    assert sorted(t.point["loss.alpha"] for t in trials) == [0.2, 20.0]
    assert all(t.error is None for t in trials), [t.error for t in trials]
    assert trials[0].metrics["map"] >= trials[1].metrics["map"]  # best first
    for t in trials:
        run_dir = Path(t.metrics["out_dir"])
        assert run_dir.parent == out and run_dir.name == f"alpha={t.point['loss.alpha']}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["loss"]["alpha"] == t.point["loss.alpha"]
        assert (run_dir / "checkpoints" / "step_00000003" / "state.pt").is_file()
        evaluated = json.loads((run_dir / "eval" / "eval.json").read_text())["rows"]["model D"]
        assert t.metrics["map"] == pytest.approx(evaluated["map"]) and t.metrics["step"] == 3
    table = markdown(trials, {"loss.alpha": [0.2, 20.0]})
    assert table.splitlines()[0].startswith("| loss.alpha | steps | mAP") and len(table.splitlines()) == 4


def test_an_invalid_grid_point_fails_before_any_trial_starts(local_ray, debug_cfg, tmp_path):
    base = debug_cfg(tmp_path / "bad")
    with pytest.raises(ConfigError, match=r"loss\.alpha=-1\.0 is invalid"):
        sweep(base, {"loss.alpha": [2.0, -1.0]})
    assert not (tmp_path / "bad").exists()
