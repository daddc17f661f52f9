"""Live validation: cheap metrics of the model's features on the held-out validation split, during
training, for model selection (sweep schedulers, the best trial); the test split is only reported.

Every eval.every steps (and at the last step) rank 0 embeds the validation split (the queries) and a
fixed, stratified gallery of eval.gallery_size training examples with the family's first feature set
(bigan/tribigan E(x), mbgan D(x), dcgan pooled D activations: the first row of the final evaluation),
ranks the queries against the gallery (k-NN accuracy and mAP, tgan.eval.metrics) and, with
eval.live_probe, fits the linear probe on the gallery and scores it on the queries; with
eval.live_fid_samples, scores that many samples of G against the validation images with the offline
FID/KID (tgan.eval.generation, dataset-classifier features). The values are
broadcast, so every rank returns the same keys and values: Ray Train's report is collective, and
the loop's reporter hands the same dict to Tune and Prometheus on every rank.
"""
from __future__ import annotations

import sys
import time

import torch
import torch.distributed as torch_dist
from torch import nn

from tgan import dist
from tgan.config import Config, ConfigError
from tgan.data.codec import to_float
from tgan.eval.generation import dataset_classifier, generation_metrics
from tgan.eval.metrics import retrieval_metrics
from tgan.eval.probe import linear_probe

TABLE_K = 9
"""Besides 1-NN, k-NN at k = min(9, eval.max_k), like the final evaluation table."""
LOWER_IS_BETTER = ("val/fid", "val/kid")
"""The generation metrics; every other val/* is better when higher (the best checkpoint follows this)."""


def validation_keys(cfg: Config) -> list[str]:
    """The scalar names live validation adds to a step's report under `cfg` (empty when it is off)."""
    if cfg.eval.every == 0:
        return []
    keys = ["val/map", "val/knn1", f"val/knn{min(TABLE_K, cfg.eval.max_k)}"]
    if cfg.eval.live_probe:
        keys.append("val/probe")
    if cfg.eval.live_fid_samples:
        keys += ["val/fid", "val/kid"]
    return keys + ["perf/validation_s"]


def check_best_metric(cfg: Config) -> None:
    """Refuse an eval.best_metric that live validation does not produce, before a run starts."""
    metrics = [k for k in validation_keys(cfg) if k.startswith("val/")]
    if metrics and cfg.eval.best_metric not in metrics:
        raise ConfigError(f"eval.best_metric={cfg.eval.best_metric!r} is not a live validation metric of this run: "
                          f"use one of {', '.join(metrics)}" + ("" if cfg.eval.live_probe else
                                                                " (val/probe needs eval.live_probe=true)"))


class LiveValidation:
    """Built on every rank from the training streams' validation split and gallery (see build_streams)."""

    def __init__(self, cfg: Config, family, streams, device: torch.device):
        self.cfg, self.family, self.device = cfg, family, device
        self.keys = validation_keys(cfg)
        if streams.validation is None or streams.gallery is None:
            raise ValueError("live validation needs build_streams(..., gallery_size > 0) with data.validation_size > 0")
        self.queries, self.gallery = streams.validation, streams.gallery
        # Only rank 0 computes, so only rank 0 keeps the images as floats on the device.
        if dist.rank() == 0:
            self.query_x = to_float(self.queries.images).to(device)
            self.gallery_x = to_float(self.gallery.images).to(device)
            if cfg.eval.live_fid_samples:
                dataset_classifier(cfg)  # trained (or read from its cache) now, not inside a training step's timing
            if cfg.eval.live_fid_samples > len(self.query_x):  # generation_metrics compares sets of equal size
                print(f"eval.live_fid_samples={cfg.eval.live_fid_samples} is more than the {len(self.query_x)} "
                      f"validation images: live FID/KID use {len(self.query_x)} samples (data.validation_size sets "
                      "how many)", file=sys.stderr, flush=True)

    def due(self, step: int, last: bool) -> bool:
        return step % self.cfg.eval.every == 0 or last

    def __call__(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        """The validation scalars of `nets` (raw modules), equal on every rank. Collective."""
        values = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
        if dist.rank() == 0:
            t0 = time.perf_counter()
            # Seeded or not, feature extraction must not shift the training RNG streams.
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                scalars = self._compute(nets)
            scalars["perf/validation_s"] = time.perf_counter() - t0
            values = torch.tensor([scalars[k] for k in self.keys], dtype=torch.float64, device=self.device)
        if dist.is_dist():
            torch_dist.broadcast(values, src=0)
        return dict(zip(self.keys, values.tolist()))

    def _compute(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        gallery = self.family.features(nets, self.gallery_x)
        name = next(iter(gallery))
        queries = self.family.features(nets, self.query_x)[name]
        k = min(TABLE_K, self.cfg.eval.max_k)
        r = retrieval_metrics(gallery[name], self.gallery.labels, queries, self.queries.labels, max_k=k)
        out = {"val/map": r.mean_average_precision, "val/knn1": r.knn_accuracy[0], f"val/knn{k}": r.knn_accuracy[k - 1]}
        if self.cfg.eval.live_probe:
            out["val/probe"] = linear_probe(gallery[name], self.gallery.labels, queries, self.queries.labels,
                                            kind=self.cfg.eval.probe, seed=self.cfg.train.seed)["accuracy"]
        if self.cfg.eval.live_fid_samples:
            # Classifier features only: Inception on every validation would cost more than the training.
            gen = generation_metrics(self.cfg, nets[self.family.generator], self.query_x, sample_z=self.family.sample_z,
                                     num_samples=self.cfg.eval.live_fid_samples, inception=False)
            out.update({"val/fid": gen["fid_classifier"], "val/kid": gen["kid_classifier"]})
        return out
