"""Live validation in the one-process loop: validation metrics every eval.every steps (and at the
last step) in metrics.jsonl, equal to an offline computation on the same split, and training itself
untouched by them."""
import json
import shutil
from pathlib import Path

import pytest

from tgan.config import ConfigError, load_config
from tgan.data.streams import build_streams
from tgan.eval_inputs import open_networks
from tgan.eval.metrics import retrieval_metrics
from tgan.eval.validation import validation_keys
from tgan.families import get_family
from tgan.train.checkpoint import find_checkpoint, list_checkpoints, load_checkpoint, load_networks
from tgan.train.loop import train

DEBUG = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"


def _run(shards, out, *overrides):
    cfg = load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "train.steps=3",
                              "train.checkpoint_every=0", "train.log_every=1", "data.validation_size=100",
                              "eval.gallery_size=300", *overrides])
    train(cfg)
    return cfg, [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_validation_metrics_come_every_eval_every_steps_and_leave_training_as_it_was(debug_shards, tmp_path):
    cfg, rows = _run(debug_shards, tmp_path / "val", "eval.every=2", "eval.live_probe=true")
    assert validation_keys(cfg) == ["val/map", "val/knn1", "val/knn5", "val/probe", "perf/validation_s"]
    with_val = [r["step"] for r in rows if "val/map" in r]
    assert with_val == [2, 3]  # every 2 steps, and the last one
    for r in rows:
        if "val/map" in r:
            assert all(0.0 <= r[k] <= 1.0 for k in ("val/map", "val/knn1", "val/knn5", "val/probe"))

    # The last step's values are the retrieval metrics of the saved networks on the same split.
    _, nets = load_networks(tmp_path / "val" / "checkpoints" / "step_00000003")
    streams = build_streams(cfg.data, rank=0, world_size=1, seed=0, gallery_size=cfg.eval.gallery_size)
    to_x = (lambda held: held.images.float() / 127.5 - 1.0)
    family = get_family(cfg.model.family)
    r = retrieval_metrics(family.features(nets, to_x(streams.gallery))["E"], streams.gallery.labels,
                          family.features(nets, to_x(streams.validation))["E"], streams.validation.labels, max_k=5)
    assert rows[-1]["val/map"] == pytest.approx(r.mean_average_precision, abs=1e-5)
    assert rows[-1]["val/knn5"] == pytest.approx(r.knn_accuracy[4], abs=1e-9)

    _, plain = _run(debug_shards, tmp_path / "plain", "eval.every=0")
    losses = (lambda rs: [{k: v for k, v in r.items() if k.startswith("loss/")} for r in rs])
    assert losses(plain) == losses(rows)


def test_the_best_checkpoint_on_validation_is_kept_across_a_restart(debug_shards, tmp_path):
    out = tmp_path / "best"
    keep = ["eval.every=1", "eval.best_metric=val/knn1", "train.keep_checkpoints=1"]
    _run(debug_shards, out, *keep)
    _, rows = _run(debug_shards, out, *keep, "train.steps=6")  # continues the run to step 6
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    values = [r["val/knn1"] for r in rows]
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    # The first step with the highest value over both starts: the restart compared against the first
    # start's best, not against nothing. Only steps 3 and 6 are regular checkpoints (the last of each start).
    assert best == {"step": values.index(max(values)) + 1, "metric": "val/knn1", "mode": "max", "value": max(values),
                    "weights": "trained"}
    assert load_checkpoint(out / "checkpoints" / "best")["step"] == best["step"]
    assert [p.name for p in list_checkpoints(out)] == ["step_00000006"]  # keep_checkpoints ignores best

    # A run trained on Ray keeps its step checkpoints in Ray's storage only: its run directory holds
    # the best one, which evaluation and eval.baseline then use.
    assert find_checkpoint(out) == out / "checkpoints" / "step_00000006"
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    assert find_checkpoint(out) == out / "checkpoints" / "best"
    assert open_networks(out)[0] == out / "checkpoints" / "best"


def test_a_best_metric_that_validation_does_not_produce_is_refused_before_the_run(debug_shards, tmp_path):
    with pytest.raises(ConfigError, match=r"eval.best_metric='val/probe' .* val/map, val/knn1, val/knn5 "
                                          r"\(val/probe needs eval.live_probe=true\)"):
        _run(debug_shards, tmp_path / "bad", "eval.every=1", "eval.best_metric=val/probe")
    assert not (tmp_path / "bad").exists()


def test_live_fid_is_the_offline_generation_metric_of_g_on_the_validation_split(debug_shards, tmp_path):
    from tgan.eval.generation import generation_metrics

    cfg, rows = _run(debug_shards, tmp_path / "fid", "eval.every=3", "eval.live_fid_samples=40")
    assert validation_keys(cfg) == ["val/map", "val/knn1", "val/knn5", "val/fid", "val/kid", "perf/validation_s"]
    last = rows[-1]
    cfg_saved, nets = load_networks(tmp_path / "fid" / "checkpoints" / "step_00000003")
    streams = build_streams(cfg.data, rank=0, world_size=1, seed=0, gallery_size=cfg.eval.gallery_size)
    family = get_family(cfg.model.family)
    gen = generation_metrics(cfg, nets["G"], streams.validation.images.float() / 127.5 - 1.0,
                             sample_z=family.sample_z, num_samples=40)
    assert gen["samples"] == 40 and last["val/fid"] > 0
    assert last["val/fid"] == pytest.approx(gen["fid_classifier"], rel=1e-4)
    assert last["val/kid"] == pytest.approx(gen["kid_classifier"], rel=1e-4, abs=1e-6)

    # FID is better when lower: the best checkpoint on val/fid is the step with the lowest.
    cfg, rows = _run(debug_shards, tmp_path / "best_fid", "eval.every=1", "eval.live_fid_samples=40",
                     "eval.best_metric=val/fid")
    values = [r["val/fid"] for r in rows]
    best = json.loads((tmp_path / "best_fid" / "checkpoints" / "best.json").read_text())
    assert best == {"step": values.index(min(values)) + 1, "metric": "val/fid", "mode": "min", "value": min(values),
                    "weights": "trained"}
