"""The triplet family (tgan/families/triplet.py) in one process on the debug recipe: it trains only E
with the triplet loss, checkpoints and resumes to the same losses, and evaluates E."""
from pathlib import Path

import pytest
import torch
from run_metrics import per_step

from tgan import resolve
from tgan.config import ConfigError, apply_overrides, load_config
from tgan.evaluate import evaluate
from tgan.families.base import build_networks
from tgan.train import checkpoint as ckpt
from tgan.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


def cfg_for(shards, out, *overrides):
    return load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "model.family=triplet",
                               "train.log_every=1", "train.checkpoint_every=0", "eval.max_train=200",
                               "eval.max_test=60", "eval.pictures=true", *overrides])


def test_triplet_trains_only_e_resumes_to_the_same_losses_and_evaluates(debug_shards, tmp_path):
    full = train(cfg_for(debug_shards, tmp_path / "full", "train.steps=4"))
    half = tmp_path / "half"
    train(cfg_for(debug_shards, half, "train.steps=2"))
    torch.manual_seed(987)  # a resumed process starts from other RNG state
    cfg = cfg_for(debug_shards, half, "train.steps=4")
    resumed = train(cfg)

    a, b = per_step(tmp_path / "full"), per_step(half)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert set(a[0]) >= {"loss/triplet", "triplets", "grad_norm/E"} and not any(k.startswith("loss/g") for k in a[0])
    assert all(r["triplets"] > 0 for r in a)  # the labelled stream gives triplets every step
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=1e-6, abs=1e-6)
    assert set(resumed.nets) == {"E"}
    init = build_networks(cfg, channels=1, image_size=16, num_classes=10)["E"]
    assert not torch.equal(init.state_dict()["head.weight"], resumed.nets["E"].state_dict()["head.weight"])
    for key, value in full.nets["E"].state_dict().items():
        assert torch.allclose(value.float(), resumed.nets["E"].state_dict()[key].float(), atol=1e-6), key
    assert set(torch.load(resumed.checkpoint / "optim.pt", weights_only=True)) == {"E"}

    loaded_cfg, nets = ckpt.load_networks(resumed.checkpoint)
    # The generation metric is asked for, but the family has no generator: no generation entry.
    result = evaluate(apply_overrides(loaded_cfg, {"eval.fid_samples": 50}), nets, tmp_path / "eval")
    assert "generation" not in result
    assert list(result["rows"]) == ["model E", "random-init E", "raw pixels"]
    # no G: no samples, interpolations or reconstructions; the loss curves of every run
    assert list(result["pictures"]) == ["grad_norm_E", "loss_curves"]
    assert (tmp_path / "eval" / "grad_norm_E.png").is_file()


def test_triplet_needs_labels_and_refuses_conditional():
    with pytest.raises(ConfigError, match="model.family=triplet"):
        resolve.load_config(None, ["model.family=triplet"])
    with pytest.raises(ConfigError, match="data.labelled_batch_size=1"):
        resolve.load_config(None, ["model.family=triplet", "data.labels_per_class=5", "data.labelled_batch_size=1"])
    with pytest.raises(ConfigError, match="model.conditional=true is invalid for model.family=triplet"):
        resolve.load_config(None, ["model.family=triplet", "data.labels_per_class=5", "model.conditional=true"])
