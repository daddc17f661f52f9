"""eval.baseline_recipe (tgan/app/baseline.py): the one-command main job trains its triplet-only
baseline when eval.baseline holds no checkpoint, reuses it when it does, and shows both in one table;
a baseline recipe that cannot give a fair row is refused in one line before anything trains."""
from pathlib import Path

import pytest
import yaml

from tgan.app.baseline import baseline_config
from launch.train_local import main
from tgan.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


def write_baseline_recipe(path: Path, out_dir: Path, **changes) -> Path:
    """The debug recipe as a triplet-only run into `out_dir`, with live validation (its best checkpoint)."""
    recipe = yaml.safe_load(DEBUG.read_text())
    recipe["model"]["family"] = "triplet"
    recipe["train"]["out_dir"] = str(out_dir)
    recipe["data"]["validation_size"] = 50
    recipe["eval"]["every"] = 2
    for dotted, value in changes.items():
        section, name = dotted.split("__")
        recipe.setdefault(section, {})[name] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def main_args(shards, tmp_path, recipe, out="main", *extra):
    return ["--config", str(DEBUG), "--set", f"data.shards={shards}", "--set", "data.validation_size=50",
            "--set", f"train.out_dir={tmp_path / out}", "--set", f"eval.baseline={tmp_path / 'base'}",
            "--set", f"eval.baseline_recipe={recipe}", *[a for x in extra for a in ("--set", x)]]


def test_main_job_trains_its_baseline_once_then_reuses_it_and_shows_both(debug_shards, tmp_path, capsys):
    recipe = write_baseline_recipe(tmp_path / "base.yaml", tmp_path / "base", train__steps=99)
    assert main(main_args(debug_shards, tmp_path, recipe)) == 0
    first = capsys.readouterr().out
    assert f"baseline: training triplet ({recipe}, 4 steps, the same labels) into {tmp_path / 'base'}" in first
    assert "| baseline triplet E |" in first and "| model E |" in first  # one table, both rows
    base_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "base").rglob("*") if p.is_file()}
    assert (tmp_path / "base" / "checkpoints" / "best").is_dir()

    assert main(main_args(debug_shards, tmp_path, recipe, "again")) == 0
    second = capsys.readouterr().out
    assert f"baseline: reusing {tmp_path / 'base' / 'checkpoints'}" in second and "baseline: training" not in second
    assert "| baseline triplet E |" in second
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "base").rglob("*") if p.is_file()} == base_files

    # A baseline trained on other labels is not shown beside this model: refused before training.
    assert main(main_args(debug_shards, tmp_path, recipe, "other", "data.labels_per_class=5")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained on other labels or another budget" in err[0]
    assert not (tmp_path / "other").exists()


def test_baseline_takes_the_main_runs_data_budget_and_cluster_but_keeps_its_own_model(tmp_path):
    recipe = write_baseline_recipe(tmp_path / "base.yaml", tmp_path / "base", data__labels_per_class=3,
                                   train__steps=99, optim__lr=0.01)
    cfg = load_config(DEBUG, ["data.validation_size=50", "data.labels_per_class=7", "train.steps=6",
                              "train.seed=3", "cluster.num_workers=1", f"eval.baseline={tmp_path / 'base'}",
                              f"eval.baseline_recipe={recipe}"])
    base = baseline_config(cfg)
    assert base.data == cfg.data and base.cluster == cfg.cluster
    assert (base.train.steps, base.train.seed, base.train.out_dir) == (6, 3, str(tmp_path / "base"))
    assert (base.model.family, base.optim.lr) == ("triplet", 0.01)  # its own model and optimiser
    assert (base.eval.baseline, base.eval.baseline_recipe) == ("", "")


@pytest.mark.parametrize("change, extra, message", [
    ({}, ["eval.baseline="], "eval.baseline_recipe='{recipe}' needs eval.baseline"),
    ({}, ["eval.baseline_recipe={tmp}/nope.yaml"],
     "eval.baseline_recipe='{tmp}/nope.yaml': recipe {tmp}/nope.yaml does not exist"),
    ({"data__dataset": "fashion-mnist"}, [], "trains on data.dataset=fashion-mnist: expected digits"),
    ({"train__out_dir": "elsewhere"}, [], "trains into train.out_dir='elsewhere' but eval.baseline="),
    ({"eval__every": 0}, [], "has eval.every=0: set it > 0"),
])
def test_a_baseline_recipe_that_cannot_give_a_fair_row_is_refused_in_one_line(tmp_path, change, extra, message):
    recipe = write_baseline_recipe(tmp_path / "base.yaml", tmp_path / "base", **change)
    overrides = ["data.validation_size=50", f"eval.baseline={tmp_path / 'base'}", f"eval.baseline_recipe={recipe}",
                 *[e.format(tmp=tmp_path) for e in extra]]
    with pytest.raises(ConfigError) as e:
        baseline_config(load_config(DEBUG, overrides))
    assert message.format(recipe=recipe, tmp=tmp_path) in str(e.value) and "\n" not in str(e.value)
