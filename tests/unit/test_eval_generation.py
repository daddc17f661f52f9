"""Generation metric (tgan/eval/generation.py): FID/KID in the dataset classifier's feature space,
its cache, the Inception weights refusals, and the end-of-training evaluation's generation line."""
import json
import re
from pathlib import Path

import pytest
import torch

from tgan import resolve
from tgan.config import ConfigError, load_config
from tgan.data.streams import load_split
from tgan.eval import generation
from tgan.eval.generation import classifier_cache_path, dataset_classifier, fid_kid, generation_metrics
from tgan.evaluate import evaluate
from tgan.families import get_family

DEBUG = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"


@pytest.fixture(scope="module")
def cfg(debug_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    # The debug recipe's 150 steps: the 16x16 digits classifier reaches ~96% test accuracy.
    return load_config(DEBUG, [f"data.shards={debug_shards}", f"train.out_dir={out}"])


@pytest.fixture(scope="module")
def classifier(cfg):
    return dataset_classifier(cfg)


@pytest.fixture(scope="module")
def real(cfg):
    return load_split(cfg.data.shards, "train", verify_checksums=False)[0]


def features(net, x):
    with torch.no_grad():
        return net.features(x)


def test_classifier_is_cached_next_to_the_shards_and_learns_the_classes(cfg, classifier):
    net, accuracy = classifier
    path = classifier_cache_path(cfg)
    assert path.is_file() and path.parent.parent == Path(cfg.data.shards)
    assert accuracy > 0.85  # far above the 10% of chance: its features know what digits look like
    # A second call reads the cache: the same weights, no retraining.
    generation._load_cached.cache_clear()
    again, again_accuracy = dataset_classifier(cfg)
    assert again_accuracy == accuracy
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    # Another step count is another classifier: a different cache file.
    other = load_config(DEBUG, [f"data.shards={cfg.data.shards}", "eval.classifier_steps=151"])
    assert classifier_cache_path(other) != path


def test_fid_is_near_zero_for_two_halves_of_the_real_set_and_large_for_noise(classifier, real):
    net, _ = classifier
    half = real.shape[0] // 2
    shuffled = real[torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(0))]
    a, b = features(net, shuffled[:half]), features(net, shuffled[half:2 * half])
    noise = features(net, torch.rand(half, *real.shape[1:], generator=torch.Generator().manual_seed(1)) * 2 - 1)
    same, far = fid_kid(a, b), fid_kid(a, noise)
    assert far["fid"] > 100 * same["fid"]
    # KID is unbiased: for one distribution it is 0 within its spread over subsets.
    assert abs(same["kid"]) < 3 * same["kid_std"] and far["kid"] > 100 * same["kid_std"]


def test_generation_metrics_score_a_generator_between_real_and_noise(cfg, classifier, real):
    family = get_family(cfg.model.family)
    torch.manual_seed(0)
    G = family.build_networks(cfg.model, channels=1, image_size=16, num_classes=10)["G"]
    out = generation_metrics(cfg, G, real, sample_z=family.sample_z, num_samples=200)
    assert out["samples"] == 200 and out["classifier_test_accuracy"] == classifier[1]
    assert out["fid_classifier"] > 0 and out["kid_classifier_std"] >= 0
    assert "fid_inception" not in out
    # Seeded: the same generator gives the same numbers (sweeps compare them across trials).
    assert generation_metrics(cfg, G, real, sample_z=family.sample_z, num_samples=200) == out


def test_evaluation_reports_the_generation_metric(cfg, classifier):
    family = get_family(cfg.model.family)
    torch.manual_seed(0)
    nets = family.build_networks(cfg.model, channels=1, image_size=16, num_classes=10)
    out = Path(cfg.train.out_dir)
    result = evaluate(load_config(DEBUG, [f"data.shards={cfg.data.shards}", f"train.out_dir={out}",
                                          "eval.fid_samples=50"]), nets, f"{out}/eval")
    gen = result["generation"]
    assert gen["samples"] == 50 and gen["fid_classifier"] > 0
    assert json.loads((out / "eval" / "eval.json").read_text())["generation"] == gen
    assert f"FID {gen['fid_classifier']:.3f}" in (out / "eval" / "eval.md").read_text()


def test_inception_weights_refuse_a_missing_file_with_where_to_get_it(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(DEBUG, [f"eval.inception_weights={tmp_path}/nope.pth"])
    msg = str(e.value)
    assert "eval.inception_weights" in msg and "nope.pth" in msg and "\n" not in msg
    assert "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth" in msg


def test_inception_weights_refuse_a_file_that_is_not_the_state_dict(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="not torch-fidelity's Inception state dict"):
        generation.inception_features(str(bad))
    (tmp_path / "text.pth").write_text("not a tensor file")
    with pytest.raises(ConfigError, match="is not a weights file"):
        generation.inception_features(str(tmp_path / "text.pth"))


@pytest.mark.parametrize("field, value, expected", [
    ("eval.fid_samples", -1, "0 (off) or an integer >= 2"),
    ("eval.fid_samples", 1, "0 (off) or an integer >= 2"),
    ("eval.classifier_steps", 0, "an integer >= 1"),
    ("eval.live_fid_samples", 1, "0 (off) or an integer >= 2"),
])
def test_generation_fields_are_validated(field, value, expected):
    with pytest.raises(ConfigError, match=re.escape(f"{field}={value} is invalid: expected {expected}")):
        load_config(DEBUG, [f"{field}={value}"])


@pytest.mark.parametrize("overrides, why", [
    (["model.family=triplet"], "(triplet with eval.every=2)"),  # no generator
    (["eval.every=0"], "(tribigan with eval.every=0)"),  # no live validation
])
def test_live_fid_needs_live_validation_and_a_generator(overrides, why):
    with pytest.raises(ConfigError, match=re.escape(f"eval.live_fid_samples=50 is invalid: expected 0 unless "
                                                    f"eval.every > 0 and model.family has a generator {why}")):
        resolve.load_config(DEBUG, ["data.validation_size=100", "eval.every=2", "eval.live_fid_samples=50", *overrides])
