"""train.ema_decay (tgan/train/ema.py): the moving average's arithmetic, and a run that keeps one:
training is unchanged, validation, the best checkpoint, the returned networks and load_networks use
the average, and a resume continues it exactly."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tgan.config import ConfigError, load_config
from tgan.train import checkpoint as ckpt
from tgan.train.ema import WeightAverage
from tgan.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


def test_average_warms_up_then_follows_the_decay_and_copies_integer_buffers():
    net = nn.BatchNorm1d(2)
    avg = WeightAverage({"N": nn.BatchNorm1d(2)}, decay=0.9)
    expected = None
    for t, value in enumerate([1.0, 3.0, -2.0, 5.0], start=1):
        with torch.no_grad():
            net.weight.fill_(value)
            net.running_mean.fill_(2 * value)
        net.num_batches_tracked.fill_(t)
        avg.update({"N": net})
        keep = min(0.9, (1 + t) / (10 + t))
        expected = value if t == 1 else keep * expected + (1 - keep) * value
        assert avg.nets["N"].weight.tolist() == pytest.approx([expected] * 2, rel=1e-6)
        assert avg.nets["N"].running_mean.tolist() == pytest.approx([2 * expected] * 2, rel=1e-6)
        assert int(avg.nets["N"].num_batches_tracked) == t
    assert avg.decay_at(1000) == 0.9 and avg.decay_at(1) == pytest.approx(2 / 11)


def test_a_half_precision_network_is_averaged_in_fp32():
    half = nn.Linear(3, 2).to(torch.bfloat16)
    avg = WeightAverage({"L": nn.Linear(3, 2)}, decay=0.5)
    avg.update({"L": half})
    first = half.weight.float().clone()
    assert avg.nets["L"].weight.dtype == torch.float32 and torch.equal(avg.nets["L"].weight, first)
    with torch.no_grad():
        half.weight.add_(1.0)
    avg.update({"L": half})  # the averaging path, not the first copy
    keep = avg.decay_at(2)
    assert torch.allclose(avg.nets["L"].weight, keep * first + (1 - keep) * half.weight.float(), atol=1e-6)
    assert not any(p.requires_grad for p in avg.nets["L"].parameters())


def test_decay_outside_0_1_is_refused_naming_the_field():
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=rf"train.ema_decay={bad} is invalid: expected a number in \[0, 1\)"):
            load_config(DEBUG, [f"train.ema_decay={bad}"])


def cfg_for(shards, out, *overrides):
    return load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "model.family=tribigan",
                               "train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=4",
                               "eval.every=2", "eval.best_metric=val/map", "data.validation_size=100",
                               "eval.gallery_size=300", *overrides])


def rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_the_average_is_validated_checkpointed_and_evaluated_and_training_is_unchanged(debug_shards, tmp_path):
    plain = train(cfg_for(debug_shards, tmp_path / "plain", "train.steps=4"))
    ema = train(cfg_for(debug_shards, tmp_path / "ema", "train.steps=4", "train.ema_decay=0.9"))

    # The trained weights and the losses are those of the run without an average ...
    a, b = ckpt.load_checkpoint(plain.checkpoint), ckpt.load_checkpoint(ema.checkpoint)
    for name, weights in a["nets"].items():
        for key, value in weights.items():
            assert torch.equal(value, b["nets"][name][key]), f"{name}.{key}"
    losses = lambda out: [{k: v for k, v in r.items() if k.startswith("loss/")} for r in rows(out)]
    assert losses(tmp_path / "plain") == losses(tmp_path / "ema")
    # ... and what is validated, kept and evaluated is the average.
    assert b["ema"]["updates"] == 4 and "ema" not in a
    val = lambda out: [r["val/map"] for r in rows(out) if "val/map" in r]
    assert val(tmp_path / "plain") != val(tmp_path / "ema")
    _, loaded = ckpt.load_networks(ema.checkpoint)
    head = "head.weight"
    assert torch.equal(loaded["E"].state_dict()[head], b["ema"]["nets"]["E"][head])
    assert not torch.equal(loaded["E"].state_dict()[head], b["nets"]["E"][head])
    assert torch.equal(ema.nets["E"].state_dict()[head], b["ema"]["nets"]["E"][head])
    best = json.loads((tmp_path / "ema" / "checkpoints" / "best.json").read_text())
    assert best["value"] == max(val(tmp_path / "ema"))


def test_a_resumed_run_continues_the_average_exactly(debug_shards, tmp_path):
    full = train(cfg_for(debug_shards, tmp_path / "full", "train.steps=4", "train.ema_decay=0.9"))
    train(cfg_for(debug_shards, tmp_path / "half", "train.steps=2", "train.ema_decay=0.9"))
    torch.manual_seed(987)
    resumed = train(cfg_for(debug_shards, tmp_path / "half", "train.steps=4", "train.ema_decay=0.9"))
    for name, net in full.nets.items():
        for key, value in net.state_dict().items():
            assert torch.allclose(value.float(), resumed.nets[name].state_dict()[key].float(), atol=1e-6), key


def test_an_average_switched_on_at_resume_starts_from_the_resumed_weights_and_a_new_best(debug_shards, tmp_path):
    first = train(cfg_for(debug_shards, tmp_path / "run", "train.steps=2"))
    trained = ckpt.load_checkpoint(first.checkpoint)["nets"]
    best = tmp_path / "run" / "checkpoints" / "best.json"
    assert json.loads(best.read_text())["weights"] == "trained"
    best.write_text(json.dumps({**json.loads(best.read_text()), "value": 2.0}))  # unbeatable by trained weights
    resumed = train(cfg_for(debug_shards, tmp_path / "run", "train.steps=3", "train.ema_decay=0.9"))
    # step 3 validates the average: it is not compared with a best scored on the trained weights
    assert {k: v for k, v in json.loads(best.read_text()).items() if k != "value"} == \
        {"step": 3, "metric": "val/map", "mode": "max", "weights": "ema"}
    state = ckpt.load_checkpoint(resumed.checkpoint)
    assert state["ema"]["updates"] == 2  # the resumed weights, then step 3
    keep = min(0.9, 3 / 12)
    step3 = state["nets"]["E"]["head.weight"]
    assert torch.allclose(state["ema"]["nets"]["E"]["head.weight"],
                          keep * trained["E"]["head.weight"] + (1 - keep) * step3, atol=1e-6)
