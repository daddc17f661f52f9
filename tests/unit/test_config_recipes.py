"""The YAML recipes in launch/recipes and the one-process command line (--set, --dry-run, errors)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tgan.config import load_config
from tgan.app.recipe import world_arithmetic

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "launch" / "recipes"
EXPECTED = {"debug", "digits_tribigan", "fmnist_bigan", "fmnist_tribigan", "fmnist_mbgan", "fmnist_dcgan",
            "cifar10_tribigan", "cifar10_mbgan", "svhn_tribigan", "celeba_mbgan"}


def recipe(name):
    return load_config(RECIPES / f"{name}.yaml")


def test_every_recipe_exists_and_validates():
    assert EXPECTED <= {p.stem for p in RECIPES.glob("*.yaml")}
    for path in RECIPES.glob("*.yaml"):
        cfg = load_config(path)
        assert cfg.model.family in path.stem or path.stem == "debug", path


def test_debug_recipe_is_tiny():
    cfg = recipe("debug")
    assert cfg.data.dataset == "digits" and cfg.data.image_size in (16, 32)
    assert (cfg.model.width, cfg.data.batch_size, cfg.train.steps) == (0.125, 16, 4)
    assert cfg.train.device == "cpu"


def test_fashion_mnist_recipes_are_28x28_and_tribigan_uses_one_percent_of_labels():
    for fam in ("bigan", "tribigan", "mbgan", "dcgan"):
        cfg = recipe(f"fmnist_{fam}")
        assert cfg.data.image_size == 28 and cfg.model.family == fam
    assert recipe("fmnist_tribigan").data.labels_per_class == 60  # 600 of 60000 = 1%


def test_tripletgan_recipe_and_its_baseline_train_the_same_network_on_the_same_labels():
    gan, base = recipe("fmnist_tripletgan"), recipe("fmnist_triplet_mlp")
    assert (gan.model.family, base.model.family) == ("tripletgan", "triplet")
    assert gan.model.embedding_dim == base.model.latent_dim == 16
    for field in ("arch", "norm", "input_noise", "hidden_noise", "dropout"):
        assert getattr(gan.model, field) == getattr(base.model, field), field
    assert gan.data == base.data and gan.optim == base.optim and gan.train.steps == base.train.steps


@pytest.mark.parametrize("name", ["cifar10_tribigan", "cifar10_mbgan", "svhn_tribigan", "celeba_mbgan"])
def test_gpu_recipes_use_paper_widths_and_gpu_workers(name):
    cfg = recipe(name)
    assert cfg.model.width == 1.0 and cfg.model.latent_dim == 100
    assert cfg.cluster.use_gpu and cfg.cluster.num_workers == 8
    assert cfg.optim.lr == 2e-4 and cfg.optim.beta1 == 0.5


def test_world_arithmetic_multiplies_per_rank_batches_by_the_workers():
    text = world_arithmetic(load_config(RECIPES / "debug.yaml", ["cluster.num_workers=3"]))
    assert "3 x 16 (data.batch_size) = 48" in text
    assert "3 x 8 (data.labelled_batch_size) = 24" in text


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "train_local.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_dry_run_prints_the_resolved_config_with_overrides_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--config", str(RECIPES / "debug.yaml"), "--dry-run", "--set", "loss.alpha=3",
                   "--set", f"train.out_dir={out}", "--set", "cluster.num_workers=4")
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["loss"]["alpha"] == 3.0 and resolved["train"]["out_dir"] == str(out)
    assert resolved["model"]["family"] == "tribigan"
    assert "global batch: 4 x 16 (data.batch_size) = 64" in proc.stdout
    assert not out.exists()


def test_invalid_value_exits_non_zero_with_the_config_error():
    proc = run_cli("--config", str(RECIPES / "debug.yaml"), "--dry-run", "--set", "loss.alpha=-1")
    assert proc.returncode != 0
    assert "loss.alpha=-1.0 is invalid" in proc.stderr
    proc = run_cli("--config", str(RECIPES / "nope.yaml"), "--dry-run")
    assert proc.returncode != 0 and "nope.yaml does not exist" in proc.stderr


def test_a_baseline_run_without_a_checkpoint_is_refused_before_training(tmp_path):
    proc = run_cli("--config", str(RECIPES / "debug.yaml"), "--dry-run", "--set", f"eval.baseline={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: eval.baseline={str(tmp_path)!r} holds no checkpoint: train "
                                                "that run first (its recipe's train.out_dir, e.g. launch/recipes/"
                                                "digits_triplet.yaml) or set eval.baseline=''"]


def test_main_recipe_shows_its_triplet_only_baseline_trained_the_same_way():
    main, base = recipe("digits_tribigan"), recipe("digits_triplet")
    assert main.eval.baseline == base.train.out_dir and base.model.family == "triplet"
    assert RECIPES / Path(main.eval.baseline_recipe).name == RECIPES / "digits_triplet.yaml"  # trained when missing
    assert (main.data, main.train.steps, main.optim) == (base.data, base.train.steps, base.optim)


# Training-set sizes of the torchvision datasets (the splits prepare_data.py writes as train).
TRAIN_IMAGES = {"cifar10": 50_000, "svhn": 73_257, "celeba": 162_770, "fashion-mnist": 60_000}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shards_made_with_the_default_size_give_every_reader_of_a_recipe_its_own(path):
    """Otherwise the recipe stops at its first step: one shard per rank x loader worker."""
    from tgan.data.prepare import DEFAULT_SHARD_SIZE
    from tgan.train.shards import DIGITS_SHARD_SIZE

    cfg = load_config(path)
    if cfg.data.resampled:
        return
    if cfg.data.dataset == "digits":
        shards = -(-1437 // DIGITS_SHARD_SIZE)  # 80% of the 1,797 digits are the training split
    else:
        shards = -(-TRAIN_IMAGES[cfg.data.dataset] // DEFAULT_SHARD_SIZE)
    assert shards >= cfg.cluster.num_workers * max(1, cfg.data.num_workers), path.name
