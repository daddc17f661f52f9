"""Parsing --grid flags and building each trial's config (no Ray needed)."""
from pathlib import Path

import pytest

from cluster.sweep import parse_grid, trial_config
from tgan.config import ConfigError, load_config

DEBUG = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"


def test_grid_values_are_typed_like_yaml():
    grid = parse_grid(["loss.alpha=0.2,2,20", "model.embedding_dim=100,500", "data.labelled_fraction=0.01,0.1"])
    assert grid == {"loss.alpha": [0.2, 2, 20], "model.embedding_dim": [100, 500],
                    "data.labelled_fraction": [0.01, 0.1]}


@pytest.mark.parametrize("item", ["loss.alpha", "loss.alpha=", "=1,2"])
def test_a_malformed_grid_flag_names_the_expected_form(item):
    with pytest.raises(ConfigError, match=r"section\.field=v1,v2"):
        parse_grid([item])


def test_a_trial_config_has_the_point_and_its_own_out_dir():
    base = load_config(DEBUG, ["train.out_dir=/tmp/sweep"])  # debug chooses labels_per_class=10
    cfg = trial_config(base, {"loss.alpha": 2, "data.labelled_fraction": 0.1})
    assert cfg.loss.alpha == 2.0 and cfg.data.labelled_fraction == 0.1 and cfg.data.labels_per_class is None
    assert cfg.train.out_dir == "/tmp/sweep/alpha=2_labelled_fraction=0.1"
    with pytest.raises(ConfigError, match=r"loss\.alpha=-1\.0 is invalid"):
        trial_config(base, {"loss.alpha": -1})


def test_the_sweep_command_reports_a_bad_grid_flag_without_starting_ray():
    import subprocess
    import sys

    root = DEBUG.parents[2]
    proc = subprocess.run([sys.executable, str(root / "launch" / "sweep.py"), "--config", str(DEBUG),
                           "--grid", "loss.alpha"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --grid 'loss.alpha' is not of the form section.field=v1,v2,... "
                                   "(e.g. --grid loss.alpha=0.2,2,20)")
