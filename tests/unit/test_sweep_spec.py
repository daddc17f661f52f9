"""Sweep specs and the --grid shortcut: parsed, and refused before Ray starts when they cannot run
(no Ray needed here; the sweeps themselves are in tests/integration/test_ray_sweep.py)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.sweep_spec import parse_grid
from cluster.sweep import max_trials_at_once
from cluster.sweep_spec import check_spec, load_spec, parse_spec, trial_config
from tgan.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
LIVE = ["data.validation_size=100", "eval.every=2", "train.steps=6"]


def base(*overrides):
    return load_config(DEBUG, ["train.out_dir=/tmp/sweep", *LIVE, *overrides])


def test_grid_values_are_typed_like_yaml():
    grid = parse_grid(["loss.alpha=0.2,2,20", "model.embedding_dim=100,500", "data.labelled_fraction=0.01,0.1"])
    assert grid == {"loss.alpha": [0.2, 2, 20], "model.embedding_dim": [100, 500],
                    "data.labelled_fraction": [0.01, 0.1]}
    with pytest.raises(ConfigError, match=r"section\.field=v1,v2"):
        parse_grid(["loss.alpha="])


def test_a_trial_config_has_the_point_and_its_own_out_dir():
    cfg = trial_config(base(), {"loss.alpha": 2, "data.labelled_fraction": 0.1}, "/tmp/sweep/trials/a")
    assert cfg.loss.alpha == 2.0 and cfg.data.labelled_fraction == 0.1 and cfg.data.labels_per_class is None
    assert cfg.train.out_dir == "/tmp/sweep/trials/a"


def test_every_shipped_spec_is_valid_for_its_recipe():
    recipes = {"debug": "debug", "debug_pbt": "debug", "fmnist_mbgan_alpha_k": "fmnist_mbgan", "fmnist_tribigan_optuna": "fmnist_tribigan",
               "fmnist_tribigan_labels": "fmnist_tribigan"}
    for path in sorted((ROOT / "launch" / "sweeps").glob("*.yaml")):
        spec = load_spec(path)
        cfg = load_config(ROOT / "launch" / "recipes" / f"{recipes[path.stem]}.yaml", spec.overrides)
        check_spec(spec, cfg)


@pytest.mark.parametrize("raw,message", [
    ({"space": {"loss.alhpa": {"grid": [1, 2]}}}, r"spec.yaml: space.loss.alhpa: unknown key loss.alhpa in loss"),
    ({"space": {}}, r"spec.yaml: space: is empty"),
    ({"space": {"loss.alpha": {"grid": []}}}, r"spec.yaml: space.loss.alpha.grid: \[\] is empty"),
    ({"space": {"optim.lr_d": {"loguniform": [0, 1e-3]}}, "search": "random"},
     r"spec.yaml: space.optim.lr_d.loguniform: \[0, 0.001\] is invalid: both bounds must be > 0"),
    ({"space": {"loss.alpha": {"grid": [1]}}, "metric": "val/probe"},
     r"spec.yaml: metric: 'val/probe' is not produced by these trials: they report val/map, val/knn1, val/knn5"),
    ({"space": {"loss.alpha": {"grid": [1]}}, "metric": "test_map"}, r"spec.yaml: metric: 'test_map' is not produced"),
    ({"space": {"loss.alpha": {"grid": [1, -1]}}}, r"spec.yaml: space.loss.alpha: loss.alpha=-1.0 is invalid"),
    ({"space": {"loss.alpha": {"uniform": [1, 2]}}}, r"spec.yaml: space.loss.alpha: is a uniform domain but search is grid"),
    ({"space": {"loss.alpha": {"grid": [1]}}, "search": "optuna"}, r"spec.yaml: space.loss.alpha: is a grid domain"),
    ({"space": {"loss.alpha": {"grid": [1]}}, "scheduler": "pbt"}, r"spec.yaml: pbt.perturbation_interval: is missing"),
    ({"space": {"loss.alpha": {"grid": [1]}}, "scheduler": "hyperband"}, r"spec.yaml: scheduler: 'hyperband' is invalid"),
    ({"space": {"loss.alpha": {"grid": [1]}}, "resources": {"gpus": 1}}, r"spec.yaml: resources.gpus: unknown field"),
    ({"space": {"loss.alpha": {"grid": [1]}}, "sampler": "tpe"}, r"spec.yaml: sampler: unknown field"),
])
def test_bad_specs_are_refused_naming_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        check_spec(parse_spec(raw, "spec.yaml"), base())


def test_live_validation_must_be_on_for_any_metric():
    with pytest.raises(ConfigError, match=r"metric: 'val/map' is not produced by these trials: they report nothing"):
        check_spec(parse_spec({"space": {"loss.alpha": {"grid": [1]}}}, "spec.yaml"), load_config(DEBUG))


def test_concurrency_counts_gpus_as_well_as_cpus():
    cpu = base("cluster.num_workers=2", "cluster.cpus_per_worker=1")
    assert max_trials_at_once(cpu, {"CPU": 8.0}) == 4
    gpu = base("cluster.num_workers=2", "cluster.cpus_per_worker=1", "cluster.use_gpu=true", "cluster.gpus_per_worker=0.5")
    assert max_trials_at_once(gpu, {"CPU": 16.0, "GPU": 2.0}) == 2  # 4 trials' CPUs fit, only 2 trials' GPUs


def test_the_sweep_command_refuses_a_bad_spec_without_starting_ray(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"space": {"optim.lr_d": {"loguniform": [-1, 1]}}, "search": "random"}))
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(DEBUG), "--sweep", str(spec),
                           "--set", f"train.out_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {spec}: space.optim.lr_d.loguniform: [-1, 1] is invalid: both bounds must be > 0"
    assert not (tmp_path / "out").exists()
