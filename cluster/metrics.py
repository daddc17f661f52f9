"""Prometheus metrics of every Ray Train worker, through Ray's own metrics pipeline.

Why ray.util.metrics and not prometheus_client: Ray Train workers are actors, several per node, and
restarted on other ports after a failure; a prometheus_client server per worker would need one
port each, collide on shared nodes, and be invisible to a Prometheus that does not know about them.
Values recorded with ray.util.metrics leave through each node's metrics agent, which serves them
(with a `ray_` prefix) on the node's metrics export port: 8080 in KubeRay pods, where KubeRay's
PodMonitor (k8s/podmonitor.yaml) already scrapes; `ray start --metrics-export-port=N` on a
hand-made cluster; the port `cluster.ray_env.connect` picks for a local in-process Ray. So a
worker that restarts on another node keeps reporting with no configuration change.

Every series carries the labels run (the run directory's name), family and rank.

Exported names (as scraped, i.e. with Ray's prefix) and the loop scalar each comes from:
- ray_tgan_images_per_second{scope="rank"|"global"}: batch_size / step time, and perf/images_per_s
- ray_tgan_step_time_seconds (histogram): perf/step_time_s
- ray_tgan_data_wait_seconds: perf/data_wait_s
- ray_tgan_loss{term=...}: every loss/<term> (d, g, triplet, ...)
- ray_tgan_grad_norm{network=G|E|D}: grad_norm/<net>, measured before clipping
- ray_tgan_triplets_mined: triplets (mined over the global labelled batch of the step)
- ray_tgan_nonfinite_steps_skipped: nonfinite_skipped (run total, survives restarts)
- ray_tgan_corrupt_samples_skipped: data/corrupt_samples (run total over all ranks)
- ray_tgan_step: the step the values belong to; ray_tgan_train_steps: train.steps, where the run stops
- ray_tgan_validation{metric=map|knn1|knn<k>|probe}: val/<metric>, the live validation metrics
  (eval.every; same value on every rank), exported only by runs that compute them

Counters (Prometheus conventions: `_total`, only grow, use rate()/increase()) beside those gauges:
- ray_tgan_images_total: images this rank has trained on (step x data.batch_size)
- ray_tgan_steps_total: steps completed
Each worker process is its own series (Ray labels them WorkerId) and starts at the run's totals so
far, so a worker restarted from a checkpoint continues the count; rate() and increase() ignore
where a new series starts. Sum images over ranks: sum by (run) (rate(ray_tgan_images_total[5m])).
The skip totals stay gauges (use delta()): a Ray counter cannot be created at 0, so one that
appeared at its first skip would hide that skip from increase().
"""
from __future__ import annotations

from typing import Mapping

from ray.util.metrics import Counter, Gauge, Histogram

LABELS = ("run", "family", "rank")
STEP_TIME_BUCKETS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]

# Prometheus names (without Ray's ray_ prefix) that a scrape must show; tests and the Grafana
# dashboard use the same list.
METRIC_NAMES = ("tgan_images_per_second", "tgan_step_time_seconds", "tgan_data_wait_seconds", "tgan_loss",
                "tgan_grad_norm", "tgan_triplets_mined", "tgan_nonfinite_steps_skipped",
                "tgan_corrupt_samples_skipped", "tgan_step", "tgan_train_steps", "tgan_images_total",
                "tgan_steps_total")
VALIDATION_METRIC = "tgan_validation"
"""Exported only by runs whose loop reports val/* scalars."""


class WorkerMetrics:
    """Records one rank's scalars; created inside the worker (a Ray actor), where Ray can export them."""

    def __init__(self, *, run: str, family: str, rank: int, batch_size: int, steps: int):
        self.tags = {"run": run, "family": family, "rank": str(rank)}
        self.batch_size = batch_size
        self.planned = Gauge("tgan_train_steps", "train.steps: the step the run stops at", tag_keys=LABELS)
        self.planned.set(steps, tags=self.tags)
        self.images = Gauge("tgan_images_per_second", "training images per second", tag_keys=LABELS + ("scope",))
        self.step_time = Histogram("tgan_step_time_seconds", "wall time of one training step (D and G/E phases)",
                                   boundaries=STEP_TIME_BUCKETS, tag_keys=LABELS)
        self.data_wait = Gauge("tgan_data_wait_seconds", "time the step waited for its batch", tag_keys=LABELS)
        self.loss = Gauge("tgan_loss", "loss term of the last logged step", tag_keys=LABELS + ("term",))
        self.grad_norm = Gauge("tgan_grad_norm", "L2 gradient norm of a network before clipping",
                               tag_keys=LABELS + ("network",))
        self.triplets = Gauge("tgan_triplets_mined", "triplets mined from the global labelled batch", tag_keys=LABELS)
        self.nonfinite = Gauge("tgan_nonfinite_steps_skipped", "steps skipped for a non-finite loss or gradient, "
                               "run total", tag_keys=LABELS)
        self.corrupt = Gauge("tgan_corrupt_samples_skipped", "corrupt samples skipped by the data stream, run total "
                             "over all ranks", tag_keys=LABELS)
        self.step = Gauge("tgan_step", "training step of the last recorded values", tag_keys=LABELS)
        self.validation = Gauge(VALIDATION_METRIC, "live validation metric of the held-out split (eval.every)",
                                tag_keys=LABELS + ("metric",))
        self.counters = {
            "images": Counter("tgan_images_total", "images this rank has trained on", tag_keys=LABELS),
            "steps": Counter("tgan_steps_total", "training steps completed", tag_keys=LABELS)}
        self.counted = dict.fromkeys(self.counters, 0.0)
        """Run totals this process has added to each counter so far."""

    def _count(self, key: str, total: float) -> None:
        """Advance a counter to the run total `total` (the first call adds all of it)."""
        if total > self.counted[key]:
            self.counters[key].inc(total - self.counted[key], tags=self.tags)
            self.counted[key] = total

    def record(self, step: int, scalars: Mapping[str, float]) -> None:
        tags = self.tags
        self.step.set(step, tags=tags)
        self._count("steps", step)
        self._count("images", step * self.batch_size)
        step_time = scalars.get("perf/step_time_s")
        if step_time:
            self.step_time.observe(step_time, tags=tags)
            self.images.set(self.batch_size / step_time, tags={**tags, "scope": "rank"})
        if "perf/images_per_s" in scalars:
            self.images.set(scalars["perf/images_per_s"], tags={**tags, "scope": "global"})
        if "perf/data_wait_s" in scalars:
            self.data_wait.set(scalars["perf/data_wait_s"], tags=tags)
        if "triplets" in scalars:
            self.triplets.set(scalars["triplets"], tags=tags)
        if "nonfinite_skipped" in scalars:
            self.nonfinite.set(scalars["nonfinite_skipped"], tags=tags)
        if "data/corrupt_samples" in scalars:
            self.corrupt.set(scalars["data/corrupt_samples"], tags=tags)
        for name, value in scalars.items():
            kind, _, sub = name.partition("/")
            if kind == "loss" and sub:
                self.loss.set(value, tags={**tags, "term": sub})
            elif kind == "grad_norm" and sub:
                self.grad_norm.set(value, tags={**tags, "network": sub})
            elif kind == "val" and sub:
                self.validation.set(value, tags={**tags, "metric": sub})
