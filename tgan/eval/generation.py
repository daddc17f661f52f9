"""Generation quality: FID and KID of G's samples against real images, computed by torchmetrics.

Two feature spaces:
- tgan's own dataset classifier (always, offline): a small CNN trained on the labelled training
  split of `data.shards` and cached next to the shards, the way Ray's PBT DCGAN example scores
  MNIST samples with an MNIST classifier. Its numbers compare runs on one dataset; they are not
  comparable with published FIDs.
- Inception-v3 (only when `eval.inception_weights` names torch-fidelity's FID weights file; nothing
  is ever downloaded at run time): the standard FID/KID of the literature.

Features are computed once per image set and handed to torchmetrics' FrechetInceptionDistance and
KernelInceptionDistance through an identity "extractor", so both metrics share one forward pass.
`generation_metrics` is what the end-of-training evaluation, launch/evaluate.py and live validation
call.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from tgan import dist
from tgan.config import INCEPTION_HINT, Config, ConfigError
from tgan.data.index import load_index
from tgan.data.streams import load_split

CLASSIFIER_VERSION = 1
"""Part of the cache key: bump when FeatureClassifier or its training recipe changes."""
CLASSIFIER_BATCH, CLASSIFIER_LR = 64, 2e-3
KID_SUBSETS, KID_SUBSET_SIZE = 20, 1000
BATCH = 250


class FeatureClassifier(nn.Module):
    """Two small conv blocks and a 128-d feature layer: x in [-1, 1] -> features(x) [B, 128] -> logits."""

    num_features = 128

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, self.num_features), nn.ReLU())
        self.out = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def _batched(fn, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + BATCH].to(device)).cpu() for i in range(0, x.shape[0], BATCH)])


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, steps: int, seed: int = 0) -> FeatureClassifier:
    """Adam on cross-entropy over random minibatches of (x, y) for `steps` steps, on the CPU, one
    thread: the net is too small for intra-op threads to pay (on a busy 2-core machine 2 threads
    made it 5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(x, y, num_classes, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int, seed: int) -> FeatureClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(x.shape[1], num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=CLASSIFIER_LR)
        for _ in range(steps):
            idx = torch.randint(x.shape[0], (min(CLASSIFIER_BATCH, x.shape[0]),))
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def classifier_cache_path(cfg: Config) -> Path:
    """<data.shards>/feature_classifier/<dataset>-<hash>.pt; the hash covers the shards' index (their
    checksums), the classifier's version and its step count, so new data or a new recipe retrains."""
    index_text = (Path(cfg.data.shards) / "index.json").read_text()
    key = json.dumps([index_text, CLASSIFIER_VERSION, cfg.eval.classifier_steps])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cfg.data.shards) / "feature_classifier" / f"{load_index(cfg.data.shards).dataset}-{digest}.pt"


@lru_cache(maxsize=4)
def _load_cached(path: str) -> tuple[FeatureClassifier, float]:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    net = FeatureClassifier(saved["channels"], saved["num_classes"])
    net.load_state_dict(saved["state_dict"])
    return net.eval(), saved["test_accuracy"]


def dataset_classifier(cfg: Config) -> tuple[FeatureClassifier, float]:
    """The cached classifier of data.shards and its test accuracy; trained (eval.classifier_steps
    steps on the whole labelled training split) and cached on first use."""
    path = classifier_cache_path(cfg)
    if not path.is_file():
        index = load_index(cfg.data.shards)
        verify = cfg.data.verify_checksums
        x, y = load_split(cfg.data.shards, "train", verify_checksums=verify)
        xt, yt = load_split(cfg.data.shards, "test", verify_checksums=verify)
        net = train_classifier(x, y, index.num_classes, steps=cfg.eval.classifier_steps)
        accuracy = float((_batched(net, xt, torch.device("cpu")).argmax(1) == yt).float().mean())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": net.state_dict(), "channels": x.shape[1], "num_classes": index.num_classes,
                    "test_accuracy": accuracy}, tmp)
        tmp.replace(path)  # atomic: concurrent runs on the same shards never read half a file
    return _load_cached(str(path))


class _InceptionFeatures(nn.Module):
    """Images in [-1, 1] (1 or 3 channels) -> torch-fidelity Inception pool features [B, 2048]."""

    def __init__(self, weights: str):
        super().__init__()
        path, hint = Path(weights), INCEPTION_HINT
        try:  # refuse anything but a plain tensor state dict before torch-fidelity unpickles it
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(f"eval.inception_weights={weights!r} is not a weights file ({type(e).__name__}): {hint}")
        if not isinstance(state, dict) or "fc.weight" not in state:
            raise ConfigError(f"eval.inception_weights={weights!r} is not torch-fidelity's Inception state dict: {hint}")
        from torchmetrics.image.fid import NoTrainInceptionV3
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=str(path))
        except RuntimeError as e:  # load_state_dict: missing, unexpected or misshapen tensors
            first = str(e).strip().splitlines()[-1].strip()[:200]
            raise ConfigError(f"eval.inception_weights={weights!r} is not torch-fidelity's Inception state dict "
                              f"({first}): {hint}") from e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


@lru_cache(maxsize=2)
def inception_features(weights: str) -> _InceptionFeatures:
    return _InceptionFeatures(weights)


class _Given(nn.Module):
    """The identity 'extractor' that lets torchmetrics take features computed once for both metrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_kid(real: torch.Tensor, fake: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean and std over subsets) between two feature sets [N, D] (torchmetrics)."""
    n = min(real.shape[0], fake.shape[0])
    if n < 2:
        raise ValueError(f"FID/KID need at least 2 real and 2 generated images, got {real.shape[0]} and {fake.shape[0]}")
    # sync_on_compute=False: live validation calls this on rank 0 alone inside a process group, where
    # torchmetrics' default all-gather at compute() would wait forever for the other ranks.
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]), sync_on_compute=False)
    with warnings.catch_warnings():  # "KID keeps all features in a buffer": they are what we hand it
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=KID_SUBSETS, sync_on_compute=False,
                                      subset_size=min(KID_SUBSET_SIZE, max(2, n // 2)))  # < n: subsets differ
    for metric in (fid, kid):
        metric.update(real.double(), real=True)
        metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # KID draws its subsets from the global RNG
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


@torch.no_grad()
def generate(G: nn.Module, n: int, *, sample_z, latent_dim: int, seed: int) -> torch.Tensor:
    """n samples of G in eval mode (BN running statistics), seeded; a conditional G gets uniform classes."""
    device = next(G.parameters()).device
    mode = G.training
    G.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = []
            for i in range(0, n, BATCH):
                m = min(BATCH, n - i)
                y = torch.randint(G.num_classes, (m,), device=device) if G.num_classes else None
                out.append(G(sample_z(m, latent_dim, device=device), y).cpu())
    finally:
        G.train(mode)
    return torch.cat(out)


def _named(scores: dict[str, float], space: str) -> dict[str, float]:
    return {"fid_" + space: scores["fid"], "kid_" + space: scores["kid"], f"kid_{space}_std": scores["kid_std"]}


def generation_metrics(cfg: Config, G: nn.Module, real: torch.Tensor, *, sample_z,
                       num_samples: int | None = None, inception: bool = True) -> dict[str, float]:
    """FID/KID of `num_samples` (default eval.fid_samples) samples of G against `real` images in [-1, 1].

    Keys: fid_classifier, kid_classifier, kid_classifier_std and classifier_test_accuracy (when the
    dataset has classes), fid_inception, kid_inception, kid_inception_std (when eval.inception_weights
    is set and `inception`), samples. `sample_z(n, latent_dim, device=)` is the family's prior. Only the first
    `num_samples` real images are used, so both sets have the same size: FID is biased by the sample
    size, so compare numbers of the same size. For live validation pass the validation images.
    """
    n = min(cfg.eval.fid_samples if num_samples is None else num_samples, real.shape[0])
    device = next(G.parameters()).device
    fake = generate(G, n, sample_z=sample_z, latent_dim=cfg.model.latent_dim,
                    seed=dist.rank_seed(cfg.train.seed, 0, "eval-generation"))
    real = real[:n]
    out: dict[str, float] = {"samples": n}
    if load_index(cfg.data.shards).num_classes:
        net, accuracy = dataset_classifier(cfg)
        net.to(device)
        out.update(_named(fid_kid(_batched(net.features, real, device), _batched(net.features, fake, device)),
                          "classifier"))
        out["classifier_test_accuracy"] = accuracy
    if cfg.eval.inception_weights and inception:
        net = inception_features(cfg.eval.inception_weights).to(device)
        out.update(_named(fid_kid(_batched(net, real, device), _batched(net, fake, device)), "inception"))
    return out
