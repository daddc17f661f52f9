"""One config tree for every layer: nested dataclasses, YAML recipes, dotted overrides.

Precedence (lowest to highest): dataclass defaults, the YAML recipe, `--set key=value` overrides.
Every field is validated in `__post_init__`; an invalid value raises `ConfigError` naming the dotted
field, the value and what would be valid. The resolved config is written into the run directory
(`Config.to_dict()` / `dump_yaml`), so every run can be reproduced from its own folder.

The cluster section lives here too (it is plain data), but only `cluster/` acts on it: `tgan/`
never imports ray, deepspeed or prometheus_client.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import pkgutil
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tgan.errors import ConfigError

# The values some fields may take. They live here, not in the modules that act on them, so that
# building and validating a config imports nothing else from tgan (and no torch); those modules
# import them from here.
AUGMENTATIONS = ("none", "flip", "crop_flip")
"""data.augment values (tgan.data.augment)."""
IMAGE_SIZES = (8, 16, 28, 32, 64)
"""data.image_size values: the sides tgan.models.dcgan has a conv plan for."""
FAMILIES: tuple[str, ...] = tuple(sorted(
    m.name for m in pkgutil.iter_modules([str(Path(__file__).parent / "families")]) if m.name != "base"))
"""model.family values: every module of tgan/families/ except `base` (listed, not imported)."""
DEFAULT_FAMILY = "bigan"
"""model.family when a recipe does not say."""
FORMS = ("softmax", "hinge")
"""loss.triplet_form values (tgan.losses.triplet)."""
MINERS = ("all", "semihard", "hard")
"""loss.miner values (tgan.losses.triplet)."""
L1_REDUCTIONS = ("mean", "sum")
"""loss.l1_reduction values (tgan.losses.mbgan)."""
PRECISIONS = ("fp32", "bf16", "fp16")
"""train.precision values (tgan.train.precision)."""
PROBES = ("logreg", "svm")
"""eval.probe values: L2-regularised logistic regression or linear SVM (tgan.eval.probe)."""

DATA_MODES = ("stream", "memory")
"""data.mode values: stream the shards through loader workers, or hold the rank's share on the device."""
ARCHS = ("dcgan", "mlp")
"""model.arch values: the DCGAN conv nets, or the tripletGAN reference's MLPs (tgan/models/mlp.py)."""
NORMS = ("batch", "weight")
"""model.norm values (tgan/models/regularisers.py)."""
FEATURE_MATCHING = ("output", "hidden")
"""loss.feature_matching values: tripletgan's G matches the mean of D(x) or of D's last hidden layer."""

INCEPTION_HINT = ("download https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                  "weights-inception-2015-12-05-6726825d.pth (torch-fidelity's FID Inception) once and set "
                  "eval.inception_weights to its path, or leave it empty for the offline classifier FID only")


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: expected {expected}")


def _one_of(values: tuple) -> str:
    return "one of " + ", ".join(map(str, values))


MAX_DIM = 65536
"""Upper bound of latent_dim and embedding_dim: far above any paper's size, far below what would
make the first Linear layer ask for terabytes."""
MIN_WIDTH, MAX_WIDTH = 1 / 64, 16.0
"""model.width range: at 1/64 D's first layer (64 x width channels) keeps one channel; at 16 its last
has 8192."""


@dataclass(kw_only=True)
class DataConfig:
    """Where the shards are and how each rank reads them."""

    shards: str = "data/digits"
    """Directory or URL prefix (s3://, gs://, http(s)://) holding `index.json` and the `train-*.tar` /
    `test-*.tar` shards (from prepare_data); URLs take credentials and endpoint from the environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for s3://)."""
    dataset: str = "digits"
    """Dataset name that `launch/prepare_data.py` uses when the shards are missing and can be made."""
    image_size: int = 32
    """Image side in pixels; must equal the index's image size (28, 32 or 64)."""
    batch_size: int = 64
    """Unlabelled images per rank per step (the global batch is this times the world size)."""
    labelled_batch_size: int = 32
    """Labelled images per rank per step, drawn from the labelled stream (0 = no labelled stream)."""
    labelled_fraction: float | None = None
    """Fraction of training examples that are labelled, in (0, 1]; exclusive with labels_per_class."""
    labels_per_class: int | None = None
    """Number of labelled examples per class ("N labels" in the papers); exclusive with labelled_fraction."""
    label_seed: int = 0
    """Seed of the labelled-subset choice (independent of the training seed)."""
    validation_size: int = 0
    """Training examples held out as the validation split (stratified by class, chosen by hash like the
    labelled subset, never trained on); model selection reads it, the test split is only reported. 0 = none."""
    validation_seed: int = 0
    """Seed of the validation-split choice (independent of label_seed and the training seed)."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = read in the training process)."""
    shuffle_buffer: int = 1000
    """Size of the seeded shuffle buffer of the unlabelled stream."""
    augment: str = "none"
    """Augmentation of training images: none (as in the papers), flip, or crop_flip."""
    labelled_augment: str | None = None
    """Augmentation of the labelled stream only (none, flip or crop_flip; unset = data.augment). The
    triplet loss memorises a few hundred labelled images within minutes and then gives E no gradient;
    crop_flip keeps it learning (benchmarks/results/gan_diagnosis.md)."""
    resampled: bool = False
    """Draw shards with replacement, for clusters with fewer shards than ranks x loader workers."""
    verify_checksums: bool = True
    """Check each shard's sha256 against the index when it is read, before any of its samples is used."""
    mode: str = "stream"
    """stream: loader workers read, decode and shuffle the shards step by step (any data set size). memory:
    each rank decodes its share of the training shards once at start-up into one uint8 tensor on the
    training device (the GPU for cuda) and gathers shuffled batches there, augmentation included, so no
    loader worker feeds the step (for sets that fit: CIFAR-10, SVHN, Fashion-MNIST). The labelled stream
    lives on the same device. Refused when the rank's share exceeds data.memory_limit_gb."""
    memory_limit_gb: float = 0.0
    """Largest uint8 share of the training split one rank may hold with data.mode=memory, in GB; 0 = half
    the training device's free memory when the streams are built (GPU memory for cuda, available RAM for cpu)."""

    def __post_init__(self) -> None:
        _check(self.shards.strip() != "", "data.shards", self.shards,
               "the shard directory (empty would read and write the current directory)")
        _check(self.image_size in IMAGE_SIZES, "data.image_size", self.image_size, _one_of(IMAGE_SIZES))
        _check(self.batch_size >= 1, "data.batch_size", self.batch_size, "an integer >= 1")
        _check(self.labelled_batch_size >= 0, "data.labelled_batch_size", self.labelled_batch_size, "an integer >= 0")
        if self.labelled_fraction is not None and self.labels_per_class is not None:
            raise ConfigError(f"data.labelled_fraction={self.labelled_fraction!r} and data.labels_per_class="
                              f"{self.labels_per_class!r} are both set (say, one by the recipe, one by --set): keep "
                              "one, e.g. --set data.labels_per_class=null to use the fraction")
        if self.labelled_fraction is not None:
            f = self.labelled_fraction
            _check(0 < f <= 1, "data.labelled_fraction", f, "a number in (0, 1]")
        if self.labels_per_class is not None:
            _check(self.labels_per_class >= 1, "data.labels_per_class", self.labels_per_class, "an integer >= 1")
        _check(self.validation_size >= 0, "data.validation_size", self.validation_size, "an integer >= 0 (0 = none)")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        _check(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "an integer >= 1")
        _check(self.augment in AUGMENTATIONS, "data.augment", self.augment, _one_of(AUGMENTATIONS))
        _check(self.mode in DATA_MODES, "data.mode", self.mode, _one_of(DATA_MODES))
        _check(self.memory_limit_gb >= 0, "data.memory_limit_gb", self.memory_limit_gb,
               "a number of GB >= 0 (0 = half the free memory of the training device)")
        _check(not (self.mode == "memory" and self.resampled), "data.resampled", self.resampled,
               "false with data.mode=memory (each rank holds its own shards; resampling is for streams)")
        _check(self.labelled_augment is None or self.labelled_augment in AUGMENTATIONS, "data.labelled_augment",
               self.labelled_augment, _one_of(AUGMENTATIONS) + " (or unset: data.augment)")

    @property
    def has_labels(self) -> bool:
        return self.labelled_fraction is not None or self.labels_per_class is not None


@dataclass(kw_only=True)
class ModelConfig:
    """Which GAN family and how wide its networks are."""

    family: str = DEFAULT_FAMILY
    """One of tgan.families.FAMILIES (a module of tgan/families/ each): bigan, dcgan, mbgan, tribigan, triplet,
    tripletgan."""
    latent_dim: int = 100
    """Size of z (100 in both papers)."""
    embedding_dim: int = 500
    """K: the size of MBGAN's and tripletGAN's D(x) (tripletgan's embedding); for tribigan and triplet the
    size of E(x) is latent_dim (the triplet loss acts on E(x))."""
    width: float = 1.0
    """Channel multiplier of the DCGAN tables (1.0 = the paper's 64..512 channels; 0.25 for CPU runs)."""
    conditional: bool = False
    """Feed a one-hot class to G and D (MBGAN paper section 3.3); families without a conditional form refuse it."""
    sync_batchnorm: bool = False
    """BatchNorm statistics over the global batch (torch.nn.SyncBatchNorm) instead of per rank, so W ranks
    train exactly like one process with the global batch. Needs GPU workers: torch's SyncBatchNorm
    refuses CPU tensors, so a multi-rank CPU run with it is refused."""
    channels_last: bool = False
    """Networks in channels_last memory layout (faster convolutions on tensor-core GPUs)."""
    arch: str = "dcgan"
    """dcgan (the conv nets of the DCGAN tables) or mlp (the tripletGAN reference's MLPs: tripletgan and
    triplet only; any image size, meant for 28x28)."""
    norm: str = "batch"
    """D's and E's normalisation: batch, or weight (weight norm with the reference's data-dependent init
    and fixed hidden scale, tgan/models/regularisers.py)."""
    input_noise: float = 0.0
    """Sigma of Gaussian noise on D's and E's input in training (in [0, 1]-pixel units; reference 0.3)."""
    hidden_noise: float = 0.0
    """Sigma of Gaussian noise after each hidden layer of D and E in training (reference 0.5)."""
    dropout: float = 0.0
    """Dropout probability after each hidden layer of D and E in training."""

    def __post_init__(self) -> None:
        _check(self.family in FAMILIES, "model.family", self.family, _one_of(FAMILIES))
        _check(1 <= self.latent_dim <= MAX_DIM, "model.latent_dim", self.latent_dim, f"an integer in 1..{MAX_DIM}")
        _check(1 <= self.embedding_dim <= MAX_DIM, "model.embedding_dim", self.embedding_dim, f"K in 1..{MAX_DIM}")
        _check(MIN_WIDTH <= self.width <= MAX_WIDTH, "model.width", self.width,
               f"a number in [1/64, {MAX_WIDTH:g}] (below 1/64 a layer would have no channel)")
        _check(self.arch in ARCHS, "model.arch", self.arch, _one_of(ARCHS))
        _check(self.norm in NORMS, "model.norm", self.norm, _one_of(NORMS))
        for name in ("input_noise", "hidden_noise"):
            _check(getattr(self, name) >= 0, f"model.{name}", getattr(self, name), "a sigma >= 0 (0 = off)")
        _check(0 <= self.dropout < 1, "model.dropout", self.dropout, "a probability in [0, 1) (0 = off)")


@dataclass(kw_only=True)
class LossConfig:
    """Loss terms and their weights."""

    nonsaturating: bool = True
    """BiGAN/DCGAN: G and E minimise -log D(fake) (True) instead of log(1 - D(fake))."""
    triplet_weight: float = 1.0
    """tribigan: weight of the triplet term in the G/E loss."""
    triplet_form: str = "softmax"
    """softmax (Hoffer & Ailon: softplus(d+ - d-), the authors' code) or hinge (max(0, m + d+ - d-))."""
    triplet_margin: float = 1.0
    """Margin m of the hinge form and of semi-hard mining."""
    miner: str = "all"
    """Triplet miner over the global labelled batch: all, semihard or hard (batch-hard)."""
    mining_memory_gb: float = 2.0
    """Most memory (GiB) triplet mining may take per rank; a run whose estimate (printed by --dry-run,
    for the worst label layout) is larger is refused before it starts."""
    alpha: float = 20.0
    """MBGAN: margin weight in h = alpha * ||x_j - G(z)||_1 (paper studies 0.2, 2, 20, 200)."""
    l1_reduction: str = "mean"
    """MBGAN: L1 norm of the margin averaged (mean) or summed (sum) over pixels."""
    g_steps_per_d_step: int = 1
    """N of Algorithm 1: generator steps per discriminator step."""
    feature_matching: str = "output"
    """tripletgan: G matches the batch mean of D(x) (output, the reference's scripts) or of D's last
    hidden layer (hidden, Improved-GAN's choice)."""
    consistency_weight: float = 0.0
    """tripletgan and tribigan: weight of the consistency term on unlabelled images, the mean squared
    distance between the embedding of x and of a noised copy (0 = off)."""
    consistency_sigma: float = 0.15
    """Sigma of the pixel noise of that copy, in [0, 1]-pixel units (the network's own noise and dropout
    differ between the two passes too)."""

    def __post_init__(self) -> None:
        _check(self.triplet_weight >= 0, "loss.triplet_weight", self.triplet_weight, "a number >= 0")
        _check(self.triplet_form in FORMS, "loss.triplet_form", self.triplet_form, _one_of(FORMS))
        _check(self.triplet_margin >= 0, "loss.triplet_margin", self.triplet_margin, "a number >= 0")
        _check(self.miner in MINERS, "loss.miner", self.miner, _one_of(MINERS))
        _check(self.mining_memory_gb > 0, "loss.mining_memory_gb", self.mining_memory_gb, "a number > 0")
        _check(self.alpha >= 0, "loss.alpha", self.alpha, "a number >= 0")
        _check(self.l1_reduction in L1_REDUCTIONS, "loss.l1_reduction", self.l1_reduction, _one_of(L1_REDUCTIONS))
        _check(self.g_steps_per_d_step >= 1, "loss.g_steps_per_d_step", self.g_steps_per_d_step, "an integer >= 1")
        _check(self.feature_matching in FEATURE_MATCHING, "loss.feature_matching", self.feature_matching,
               _one_of(FEATURE_MATCHING))
        _check(self.consistency_weight >= 0, "loss.consistency_weight", self.consistency_weight,
               "a number >= 0 (0 = off)")
        _check(self.consistency_sigma >= 0, "loss.consistency_sigma", self.consistency_sigma, "a sigma >= 0")


@dataclass(kw_only=True)
class OptimConfig:
    """Adam for every network group, as in both papers."""

    lr: float = 2e-4
    """Learning rate of every group unless lr_d / lr_g are set."""
    lr_d: float | None = None
    """Discriminator learning rate (defaults to lr)."""
    lr_g: float | None = None
    """Generator (and encoder) learning rate (defaults to lr)."""
    beta1: float = 0.5
    beta2: float = 0.999
    grad_clip: float = 0.0
    """Clip each group's gradient norm to this value (0 = no clipping; the norm is reported before clipping)."""

    def __post_init__(self) -> None:
        for name in ("lr", "lr_d", "lr_g"):
            v = getattr(self, name)
            _check(v is None or v > 0, f"optim.{name}", v, "a number > 0")
        _check(0 <= self.beta1 < 1, "optim.beta1", self.beta1, "a number in [0, 1)")
        _check(0 <= self.beta2 < 1, "optim.beta2", self.beta2, "a number in [0, 1)")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "a number >= 0 (0 = off)")


@dataclass(kw_only=True)
class TrainConfig:
    """Length of the run, seeds, checkpoints and guards."""

    steps: int = 1000
    """Number of D steps (each followed by loss.g_steps_per_d_step G/E steps)."""
    time_limit_s: float = 0.0
    """Stop early, with a checkpoint, at the first step that ends this many seconds after training
    started in this process (0 = no limit): equal-wall-time comparisons of models. Rank 0's clock
    decides for every rank; a resumed run gets the full limit again."""
    seed: int = 0
    """Base seed; rank r uses tgan.dist.rank_seed(seed, r)."""
    out_dir: str = "runs/default"
    """Run directory: resolved config, checkpoints, samples, evaluation."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    log_every: int = 10
    checkpoint_every: int = 200
    """Steps between checkpoints (0 = only at the end)."""
    keep_checkpoints: int = 3
    max_nonfinite_in_row: int = 5
    """Stop with an error after this many consecutive non-finite steps (each is skipped and counted)."""
    fault_step: int = -1
    """Testing aid for fault tolerance: rank 1 (or 0 in a 1-worker run) exits once at this step (-1 = off)."""
    deterministic: bool = False
    """Use only deterministic kernels (cuDNN/cuBLAS pick run-dependent algorithms otherwise), so a fixed
    seed repeats bit for bit on GPUs too, at some speed cost. CPU runs repeat either way."""
    resume: str = "auto"
    """auto: continue from the newest checkpoint in out_dir/checkpoints when there is one; never: start
    fresh (out_dir must hold no checkpoints); or the path of a checkpoint directory to start from."""
    precision: str = "fp32"
    """Arithmetic of the networks in the DDP / one-process step: fp32; bf16 (torch.autocast); or fp16
    (autocast plus a GradScaler, whose scale is checkpointed). The triplet loss is computed in fp32
    either way. The DeepSpeed backend takes its precision from cluster.deepspeed instead."""
    compile: bool = False
    """torch.compile every trained network (slow first steps while it compiles; for long GPU runs)."""
    ema_decay: float = 0.0
    """0 = off. Otherwise live validation, the best checkpoint and the evaluation use an exponential
    moving average of every network's weights, updated after each step with this decay (0.99 averages
    over ~100 steps, 0.999 over ~1000; warmed up over the first steps as TensorFlow's EMA does, see
    tgan/train/ema.py). Checkpoints hold both; training and resume go on from the trained weights."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "train.steps", self.steps, "an integer >= 1")
        _check(self.out_dir.strip() != "", "train.out_dir", self.out_dir,
               "a run directory (empty would write into the current directory)")
        _check(self.time_limit_s >= 0, "train.time_limit_s", self.time_limit_s, "a number of seconds >= 0 (0 = off)")
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", self.device, "auto, cpu or cuda")
        _check(self.log_every >= 1, "train.log_every", self.log_every, "an integer >= 1")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", self.checkpoint_every, "an integer >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(self.max_nonfinite_in_row >= 1, "train.max_nonfinite_in_row", self.max_nonfinite_in_row,
               "an integer >= 1")
        _check(self.resume != "", "train.resume", self.resume, "auto, never or a checkpoint directory")
        _check(self.precision in PRECISIONS, "train.precision", self.precision, _one_of(PRECISIONS))
        _check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", self.ema_decay,
               "a number in [0, 1) (0 = off; 0.99 or 0.999 are usual)")


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluation protocol (k-NN, mAP, linear probe) run at the end of training and by evaluate.py."""

    max_k: int = 10
    """k-NN accuracy is reported for k = 1..max_k."""
    max_train: int = 0
    """Use at most this many training images as the gallery/probe training set (0 = all)."""
    max_test: int = 0
    """Use at most this many test images as queries (0 = all)."""
    probe: str = "logreg"
    """Linear probe: logreg or svm (L2-regularised, C chosen on a validation split)."""
    pictures: bool = True
    """Write the family's pictures (sample grid, interpolation, reconstructions, grad-norm plot) and the
    loss curves as titled, labelled PNGs, shown in eval/index.html."""
    every: int = 0
    """Steps between live validation metrics (val/map, val/knn1, val/knn<k>, val/probe): rank 0 ranks the
    validation split (data.validation_size) against a fixed gallery of training examples, every rank
    reports the result; also at the last step. 0 = off."""
    gallery_size: int = 1000
    """Training examples (stratified, never validation ones) in the live-validation gallery."""
    best_metric: str = "val/map"
    """With live validation on: the validation metric (the highest wins; the lowest for val/fid and val/kid) that picks
    the run's best checkpoint, kept as <out_dir>/checkpoints/best (best.json beside it: step and value).
    A validation step that beats the best so far also writes a checkpoint. Sweeps set it to their metric."""
    live_probe: bool = False
    """Also fit the linear probe (eval.probe) on the gallery and report its validation accuracy as val/probe
    (seconds per evaluation on CPU, so off by default)."""
    live_fid_samples: int = 0
    """Live validation also scores this many samples of G against as many validation images with the
    offline FID/KID (dataset-classifier features, trained and cached on first use), as val/fid and
    val/kid: generation quality for model selection. Families with a generator on data with classes;
    0 = off. A few hundred cost well under a second per validation on a CPU."""
    fid_samples: int = 2000
    """FID and KID of this many samples of G against as many test images (fewer when the test split is
    smaller), in the feature space of tgan's dataset classifier and, with inception_weights, of
    Inception-v3 (tgan/eval/generation.py); 0 = skip. FID grows as the sample shrinks: compare equal sizes."""
    classifier_steps: int = 1000
    """Adam steps (batch 64) that train the dataset classifier of the offline FID; it is cached next to
    the shards, keyed by their index and this value."""
    inception_weights: str = ""
    """Path of torch-fidelity's Inception weights (weights-inception-2015-12-05-6726825d.pth) for the
    standard FID/KID; empty = classifier features only. Nothing is downloaded at run time."""
    baseline: str = ""
    """A run directory (or one of its checkpoints) whose trained features the table shows beside this
    model's, scored on the same images: e.g. runs/digits_triplet, the triplet-only baseline of
    digits_tribigan.yaml. Its last checkpoint must exist when training starts (unless
    eval.baseline_recipe trains it); empty = none."""
    baseline_recipe: str = ""
    """The recipe of the eval.baseline run (its train.out_dir must be eval.baseline): when eval.baseline
    holds no checkpoint, that run is trained first, in the same job, on this run's data section,
    train.steps, train.seed and cluster section (the same labels and budget); when it holds one, it
    is reused (tgan/app/baseline.py). Empty = eval.baseline must have been trained before."""

    def __post_init__(self) -> None:
        _check(self.max_k >= 1, "eval.max_k", self.max_k, "an integer >= 1")
        _check(self.every >= 0, "eval.every", self.every, "an integer >= 0 (0 = off)")
        _check(self.gallery_size >= 1, "eval.gallery_size", self.gallery_size, "an integer >= 1")
        _check(self.max_train >= 0, "eval.max_train", self.max_train, "an integer >= 0 (0 = all)")
        _check(self.max_test >= 0, "eval.max_test", self.max_test, "an integer >= 0 (0 = all)")
        _check(self.probe in PROBES, "eval.probe", self.probe, _one_of(PROBES))
        _check(self.fid_samples == 0 or self.fid_samples >= 2, "eval.fid_samples", self.fid_samples,
               "0 (off) or an integer >= 2")
        _check(self.live_fid_samples == 0 or self.live_fid_samples >= 2, "eval.live_fid_samples",
               self.live_fid_samples, "0 (off) or an integer >= 2")
        _check(self.classifier_steps >= 1, "eval.classifier_steps", self.classifier_steps, "an integer >= 1")
        if self.baseline_recipe and not self.baseline:
            raise ConfigError(f"eval.baseline_recipe={self.baseline_recipe!r} needs eval.baseline: the run "
                              "directory it trains into (its recipe's train.out_dir)")
        if self.inception_weights and not Path(self.inception_weights).is_file():
            raise ConfigError(f"eval.inception_weights={self.inception_weights!r} does not exist: {INCEPTION_HINT}")


@dataclass(kw_only=True)
class ClusterConfig:
    """How `cluster/` runs the loop on Ray Train (ignored by the one-process loop)."""

    backend: str = "ddp"
    """ddp or deepspeed."""
    num_workers: int = 2
    """Ray Train workers (ranks); one per GPU on a GPU cluster."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    """GPUs per worker when use_gpu (a fraction lets workers share a GPU)."""
    storage_path: str = ""
    """Absolute path or URI (s3://, gs://) for checkpoints; empty = <out_dir>/ray (absolute). Multi-node needs shared storage."""
    max_failures: int = 0
    """Ray Train restarts of the worker group from the last checkpoint."""
    deepspeed: dict = field(default_factory=lambda: {"zero_optimization": {"stage": 0}})
    """DeepSpeed config section merged into each engine's config (zero_optimization, bf16, fp16, ...)."""
    metrics: bool = True
    """Export Prometheus metrics through Ray's per-node metrics endpoint."""
    autoscale_timeout_s: float = 600.0
    """When the cluster lacks the run's CPUs/GPUs and an autoscaler runs, ask it for them and wait at most
    this long (progress every 10 s); without an autoscaler, or at 0, fail at once naming the shortfall."""
    report_every: int = 0
    """Steps between ray.train.report calls (what Ray Train and Tune see); checkpoints are always
    reported; 0 = every train.log_every steps. Ray Train's controller takes about one report per 2 s
    and a worker that reports faster waits for it, so keep reports seconds apart."""

    def __post_init__(self) -> None:
        _check(self.backend in ("ddp", "deepspeed"), "cluster.backend", self.backend, "ddp or deepspeed")
        _check(self.num_workers >= 1, "cluster.num_workers", self.num_workers, "an integer >= 1")
        _check(self.cpus_per_worker > 0, "cluster.cpus_per_worker", self.cpus_per_worker, "a number > 0")
        _check(self.gpus_per_worker > 0, "cluster.gpus_per_worker", self.gpus_per_worker,
               "a number > 0 (fractions share a GPU; it counts only with cluster.use_gpu)")
        _check(self.storage_path == "" or Path(self.storage_path).is_absolute() or "://" in self.storage_path,
               "cluster.storage_path", self.storage_path,
               "empty, an absolute path or a URI such as s3://bucket/runs (every node resolves it)")
        _check(self.max_failures >= -1, "cluster.max_failures", self.max_failures, "an integer >= -1")
        _check(self.autoscale_timeout_s >= 0, "cluster.autoscale_timeout_s", self.autoscale_timeout_s,
               "a number of seconds >= 0 (0 = never wait)")
        _check(self.report_every >= 0, "cluster.report_every", self.report_every, "an integer >= 0 (0 = train.log_every)")


@dataclass(kw_only=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        _check(self.eval.every == 0 or self.data.validation_size > 0, "eval.every", self.eval.every,
               "0 unless data.validation_size > 0 (live validation needs a validation split)")
        _check(self.train.precision == "fp32" or self.cluster.backend != "deepspeed", "train.precision",
               self.train.precision, "fp32 with cluster.backend=deepspeed (set bf16/fp16 in cluster.deepspeed)")
        # What only the family or the miner knows (labels, conditional, generator, mining memory) is
        # checked one layer up, in tgan.resolve.

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"unknown key {prefix}{unknown[0]} in {where}: valid keys are {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a mapping, got {value!r}")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for t in options:
        number = None
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if t is float and isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number it is meant to be.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            # inf passes every range check (lr > 0) and nan fails none written as "not (x < 0)".
            if not math.isfinite(number):
                raise ConfigError(f"{name}={value!r} is invalid: expected a finite number")
            return number
        if t in (int, str, bool, dict) and isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value
    raise ConfigError(f"{name}={value!r} has the wrong type: expected {hint}")


def _duplicate_key(node: yaml.Node, prefix: str = "") -> str | None:
    """'train.steps (lines 2 and 3)' for the first key given twice in a mapping; YAML keeps the last silently."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            if key.value in seen:
                return f"{name} (lines {seen[key.value]} and {key.start_mark.line + 1})"
            seen[key.value] = key.start_mark.line + 1
            found = _duplicate_key(value, f"{name}.")
            if found:
                return found
    return None


def parse_yaml(text: str, where: str) -> Any:
    """YAML (safe: no Python tags) with syntax errors and duplicate keys as one-line ConfigErrors naming `where`."""
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{where} is not valid YAML{at}: {what}") from e
    if duplicate:
        raise ConfigError(f"{where}: duplicate key {duplicate}: give each key once")
    return value


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """["loss.alpha=20", "train.steps=5"] (--set) -> {"loss.alpha": 20, "train.steps": 5}; values are YAML."""
    parsed = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. loss.alpha=20)")
        parsed[key.strip()] = parse_yaml(raw, f"--set {item!r}") if raw != "" else ""
    return parsed


def apply_overrides(base: Config | dict, overrides: Mapping[str, Any]) -> Config:
    """The one way a config is changed: `base` (a Config or a dict of sections) with each dotted key
    ("loss.alpha") set to its value, validated as a whole. `base` itself is left as it was."""
    values = copy.deepcopy(base.to_dict() if isinstance(base, Config) else base)
    for dotted, value in overrides.items():
        *sections, name = dotted.split(".")
        node = values
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}={value!r}: {section} is not a section")
        node[name] = value
    return _build(Config, values, "")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML recipe at `path` <- dotted `overrides` ("loss.alpha=20")."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"recipe {p} is a directory: give a YAML file, e.g. launch/recipes/debug.yaml")
        if not p.is_file():
            raise ConfigError(f"recipe {p} does not exist (recipes live in launch/recipes/)")
        try:
            text = p.read_text()
        except UnicodeDecodeError as e:
            raise ConfigError(f"recipe {p} is not a text file ({e.reason} at byte {e.start}): "
                              "give a YAML recipe") from e
        values = parse_yaml(text, f"recipe {p}") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"recipe {p} must be a YAML mapping of sections (data, model, loss, ...)")
    return apply_overrides(values, parse_overrides(overrides))


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` (e.g. the copy saved in a checkpoint)."""
    return _build(Config, values, "")


def dump_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
