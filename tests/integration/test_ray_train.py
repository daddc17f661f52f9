"""Real Ray Train runs of the debug recipe on a local Ray (2 CPU workers, gloo), sharing one Ray.

- DDP: finishes, checkpoints into Ray storage, evaluates; a live HTTP scrape of the metrics endpoint
  sees every exported metric with changing values; the triplet count of step 1 equals the count
  mined from the two ranks' labelled batches concatenated.
- DeepSpeed (ZeRO-2): finishes with per-engine checkpoints, evaluates, and its losses of the first
  steps equal the DDP run's (same seed, same batches) to 1e-4.
- Both: step 1's triplet loss equals the one-process computation on the global labelled batch
  (1e-5). The other 2-worker loss terms depend on z, which each rank draws from its own seed, and
  on per-rank BatchNorm statistics, so they are compared backend against backend; with 1 worker
  (global batch = the one process's batch) every loss and grad norm of both backends equals the
  one-process loop's (1e-5).
- DeepSpeed run on missing digits shards: rank 0 prepares them while rank 1 waits.
- data.mode=memory trains on 2 workers.
"""
import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from cluster.metrics import METRIC_NAMES
from cluster.trainer import evaluate_checkpoint, run

pytestmark = pytest.mark.slow
SERIES = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


class Scraper(threading.Thread):
    """Polls the Prometheus endpoint; keeps, per metric name of this run, the values seen."""

    def __init__(self, url, run_name):
        super().__init__(daemon=True)
        self.url, self.run_name, self.seen, self.stop = url, run_name, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                text = urllib.request.urlopen(self.url, timeout=2).read().decode()
            except OSError:
                text = ""
            for line in text.splitlines():
                m = SERIES.match(line)
                if m and f'run="{self.run_name}"' in m.group(2):
                    self.seen.setdefault(m.group(1), set()).add((m.group(2), float(m.group(3))))
            time.sleep(0.3)


@pytest.fixture(scope="module")
def ddp_run(local_ray, debug_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ddp_run"
    cfg = debug_cfg(out, "train.steps=40", "train.checkpoint_every=10", "cluster.report_every=20")
    scraper = Scraper(local_ray, out.name)
    scraper.start()
    result = run(cfg)
    time.sleep(2.5)  # the last values leave the workers with the next metrics push
    scraper.stop.set()
    scraper.join()
    return cfg, out, result, scraper.seen


def test_ddp_run_checkpoints_in_ray_storage_and_evaluates(ddp_run):
    cfg, out, result, _ = ddp_run
    assert result.step == 40 and result.metrics["step"] == 40
    assert {"loss/d", "loss/g", "loss/triplet", "triplets", "grad_norm/D", "perf/images_per_s"} <= set(result.metrics)
    ray_ckpts = sorted(p.name for p in Path(result.run_dir).glob("step_*"))  # 4 written, last 2 kept
    assert ray_ckpts == ["step_00000030", "step_00000040"] and Path(result.checkpoint.path).name == "step_00000040"
    stored = Path(result.checkpoint.path)
    assert {"state.pt", "optim.pt", "rank_0.pt", "rank_1.pt"} <= {p.name for p in stored.iterdir()}
    table = evaluate_checkpoint(result.checkpoint, out / "eval")
    assert (out / "eval" / "eval.json").is_file() and table


def test_metrics_endpoint_shows_every_metric_with_changing_values(ddp_run):
    seen = ddp_run[3]
    names = {name.removeprefix("ray_").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
             for name in seen}
    assert set(METRIC_NAMES) <= names, set(METRIC_NAMES) - names
    steps = {v for _, v in seen["ray_tgan_step"]}
    assert len(steps) >= 2, steps  # scraped while training, not only at the end
    for name in ("ray_tgan_images_per_second", "ray_tgan_data_wait_seconds", "ray_tgan_grad_norm",
                 "ray_tgan_step_time_seconds_count", "ray_tgan_triplets_mined"):
        assert len({v for _, v in seen[name]}) >= 2, (name, seen[name])
    for term in ("d", "g", "triplet"):  # every loss term, each changing
        assert len({v for lbl, v in seen["ray_tgan_loss"] if f'term="{term}"' in lbl}) >= 2, term
    # The triplet counts are the logged ones (they vary with the classes in each global batch);
    # the skip counters stay 0 in a healthy run (their sources: test_train_loop.py, test_data_streams.py).
    assert {v for _, v in seen["ray_tgan_triplets_mined"]} <= {r["triplets"] for r in _rows(ddp_run[1])}
    labels = " ".join(lbl for lbl, _ in seen["ray_tgan_grad_norm"])
    for want in ('rank="0"', 'rank="1"', 'family="tribigan"', 'network="G"', 'network="E"', 'network="D"'):
        assert want in labels
    scopes = " ".join(lbl for lbl, _ in seen["ray_tgan_images_per_second"])
    assert 'scope="rank"' in scopes and 'scope="global"' in scopes
    # Counters: run totals of each rank (batch 16 a step), growing while scraped; train.steps beside.
    images = {v for _, v in seen["ray_tgan_images_total"]}
    assert len(images) >= 2 and all(v % 16 == 0 and 0 < v <= 40 * 16 for v in images), images
    # (steps_total and images_total are scraped at different moments: compare ranges, not pairs)
    step_totals = {v for _, v in seen["ray_tgan_steps_total"]}
    assert len(step_totals) >= 2 and all(v == int(v) and 0 < v <= 40 for v in step_totals), step_totals
    assert {v for _, v in seen["ray_tgan_train_steps"]} == {40}


def test_validation_scalars_are_exported_per_metric(local_ray):
    """val/* scalars (runs that validate while training) become ray_tgan_validation{metric=...}."""
    from cluster.metrics import WorkerMetrics

    metrics = WorkerMetrics(run="validation_probe", family="tribigan", rank=0, batch_size=16, steps=10)
    metrics.record(5, {"val/map": 0.25, "val/knn9": 0.75, "loss/d": 1.0})
    scraper = Scraper(local_ray, "validation_probe")
    scraper.start()
    deadline = time.monotonic() + 30
    while "ray_tgan_validation" not in scraper.seen and time.monotonic() < deadline:
        time.sleep(0.5)
    scraper.stop.set()
    scraper.join()
    values = {(re.search(r'metric="(\w+)"', lbl).group(1), v) for lbl, v in scraper.seen["ray_tgan_validation"]}
    assert values == {("map", 0.25), ("knn9", 0.75)}


@pytest.fixture(scope="module")
def first_labelled_batches(ddp_run):
    """Step 1's labelled batch of each of the two ranks, drawn from the data layer directly."""
    from tgan.data.streams import build_streams

    cfg = ddp_run[0]
    batches = []
    for rank in range(2):
        streams = build_streams(cfg.data, rank=rank, world_size=2, seed=cfg.train.seed)
        batches.append(next(streams.labelled))
        streams.close()
    return batches


def test_triplets_reported_are_mined_from_the_global_labelled_batch(ddp_run, first_labelled_batches):
    from tgan.losses.triplet import triplet_loss

    labels = [yl for _, yl in first_labelled_batches]
    both = torch.cat(labels)
    _, expected = triplet_loss(torch.randn(len(both), 4), both, form="softmax", miner="all", margin=1.0)
    _, one_rank = triplet_loss(torch.randn(len(labels[0]), 4), labels[0], form="softmax", miner="all", margin=1.0)
    assert _rows(ddp_run[1])[0]["triplets"] == expected > one_rank


def one_process_step1_triplet_loss(cfg, batches, net="E") -> float:
    """Step 1's triplet term computed in one process on the global labelled batch: the embedding
    network `net` is still at its (seeded, rank-independent) initial weights when the phase that
    mines runs in step 1. Each rank's rows go through it separately, as under DDP (BatchNorm uses
    per-rank batch statistics)."""
    from tgan.dist import rank_seed
    from tgan.losses.triplet import triplet_loss
    from tgan.families import get_family

    torch.manual_seed(rank_seed(cfg.train.seed, 0, "init"))  # the loop's initialisation
    side = cfg.data.image_size
    nets = get_family(cfg.model.family).build_networks(cfg.model, channels=1, image_size=side, num_classes=10)
    with torch.no_grad():
        emb = torch.cat([nets[net](xl) for xl, _ in batches])
    loss, _ = triplet_loss(emb, torch.cat([yl for _, yl in batches]), form=cfg.loss.triplet_form,
                           miner=cfg.loss.miner, margin=cfg.loss.triplet_margin)
    return loss.item()


def test_ddp_step1_triplet_loss_equals_one_process_on_the_global_batch(ddp_run, first_labelled_batches):
    cfg, out, _, _ = ddp_run
    expected = one_process_step1_triplet_loss(cfg, first_labelled_batches)
    assert _rows(out)[0]["loss/triplet"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_deepspeed_run_checkpoints_evaluates_and_matches_ddp_losses(ddp_run, first_labelled_batches, local_ray,
                                                                    debug_cfg, tmp_path):
    out = tmp_path / "ds_run"
    # Shards not made yet: rank 0 of the 2 workers prepares the offline digits while rank 1 waits.
    fresh = tmp_path / "fresh" / "digits-16"
    cfg = debug_cfg(out, "cluster.backend=deepspeed", "cluster.deepspeed.zero_optimization.stage=2",
                    f"data.shards={fresh}")
    result = run(cfg)
    assert result.step == 4 and (fresh / "index.json").is_file()
    stored = Path(result.checkpoint.path)
    for group in ("D", "G"):
        files = [p.name for p in (stored / f"deepspeed_{group}" / "ds").iterdir()]
        assert sum("optim_states" in f for f in files) == 2, files  # one ZeRO partition per rank
    assert evaluate_checkpoint(result.checkpoint, out / "eval")
    ddp_rows, ds_rows = _rows(ddp_run[1])[:4], _rows(out)
    for a, b in zip(ddp_rows, ds_rows):
        for key in ("loss/d", "loss/g", "loss/triplet", "triplets"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), (a["step"], key)
    expected = one_process_step1_triplet_loss(cfg, first_labelled_batches)
    assert ds_rows[0]["loss/triplet"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_one_worker_runs_of_both_backends_repeat_the_one_process_losses(local_ray, debug_cfg, tmp_path):
    """With one worker the global batch is the one process's batch: the same seed gives the same
    losses and gradient norms, step for step (1e-5; ZeRO-0 DeepSpeed keeps torch's fp32 arithmetic)."""
    from tgan.train.loop import train

    common = ["cluster.num_workers=1", "train.steps=3", "train.checkpoint_every=0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the 1-CPU Ray worker
    try:
        train(debug_cfg(tmp_path / "one_process", *common))
    finally:
        torch.set_num_threads(threads)
    run(debug_cfg(tmp_path / "ddp_1", *common))
    run(debug_cfg(tmp_path / "ds_1", *common, "cluster.backend=deepspeed"))
    keys = ("loss/d", "loss/g", "loss/triplet", "triplets", "grad_norm/G", "grad_norm/E", "grad_norm/D")
    reference = _rows(tmp_path / "one_process")
    for name in ("ddp_1", "ds_1"):
        rows = _rows(tmp_path / name)
        assert [r["step"] for r in rows] == [1, 2, 3]
        for a, b in zip(reference, rows):
            for key in keys:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (name, a["step"], key)


@pytest.mark.parametrize("family, net", [("triplet", "E"), ("tripletgan", "D")])
def test_triplet_families_train_resume_and_evaluate_on_two_workers(local_ray, debug_cfg, tmp_path, family, net):
    """tgan/families/triplet.py (only E trains) and tripletgan.py (the triplet term on D's outputs, in
    the D phase) on 2 DDP workers: a run stopped at step 2 and resumed through Ray repeats the
    uninterrupted run's losses; step 1's triplet loss is the one-process triplet loss of the global
    labelled batch (cross-rank mining; the network is still at its initial weights when it is
    computed); the last checkpoint evaluates."""
    from tgan.data.streams import build_streams

    common = [f"model.family={family}", "model.embedding_dim=8", "train.checkpoint_every=2", "cluster.metrics=false"]
    run(debug_cfg(tmp_path / "full", *common))
    half = tmp_path / "half"
    run(debug_cfg(half, *common, "train.steps=2"))
    cfg = debug_cfg(half, *common)
    resumed = run(cfg, resume=True)
    assert resumed.step == 4
    full_rows, half_rows = _rows(tmp_path / "full"), _rows(half)
    assert [r["step"] for r in half_rows] == [1, 2, 3, 4] and ("loss/g" in half_rows[0]) == (family == "tripletgan")
    keys = ("loss/triplet", "triplets", f"grad_norm/{net}") + (("loss/unlabelled", "loss/g") if net == "D" else ())
    for a, b in zip(full_rows, half_rows):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    batches = []
    for rank in range(2):
        streams = build_streams(cfg.data, rank=rank, world_size=2, seed=cfg.train.seed)
        batches.append(next(streams.labelled))
        streams.close()
    expected = one_process_step1_triplet_loss(cfg, batches, net)
    assert half_rows[0]["loss/triplet"] == pytest.approx(expected, rel=1e-5)
    table = evaluate_checkpoint(resumed.checkpoint, tmp_path / "eval")
    assert f"model {net}" in table["rows"] and f"random-init {net}" in table["rows"]


def test_two_workers_train_in_memory_mode(local_ray, debug_cfg, tmp_path):
    """data.mode=memory: each rank loads its own share of the shards into one tensor, and the debug recipe
    trains and checkpoints (exact resume in memory mode: tests/unit/test_train_memory_mode.py)."""
    out = tmp_path / "memory_run"
    result = run(debug_cfg(out, "data.mode=memory", "cluster.metrics=false"))
    assert result.step == 4 and Path(result.checkpoint.path).name == "step_00000004"
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4] and all(r["data/corrupt_samples"] == 0 for r in _rows(out))


def test_main_job_trains_its_missing_baseline_as_a_second_ray_train_run(local_ray, shards, tmp_path, capsys):
    """launch/train.py with eval.baseline_recipe and no baseline yet: one command trains the triplet-only
    baseline (a Ray Train run of its own, same labels and steps), then the model, then prints one table
    with both (reuse when present: tests/unit/test_app_baseline.py)."""
    from launch.train import main

    debug = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"
    recipe = yaml.safe_load(debug.read_text())
    recipe["model"]["family"] = "triplet"
    recipe["train"]["out_dir"] = str(tmp_path / "base")
    recipe["data"]["validation_size"] = 50
    recipe["eval"]["every"] = 2
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(recipe))
    sets = [f"data.shards={shards}", "data.validation_size=50", f"train.out_dir={tmp_path / 'main'}",
            f"eval.baseline={tmp_path / 'base'}", f"eval.baseline_recipe={tmp_path / 'base.yaml'}",
            "cluster.metrics=false", "cluster.report_every=2"]
    assert main(["--config", str(debug), *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert f"baseline: training triplet ({tmp_path / 'base.yaml'}, 4 steps, the same labels)" in out
    assert (tmp_path / "base" / "ray" / "base").is_dir() and (tmp_path / "main" / "ray" / "main").is_dir()
    assert "| model E |" in out and "| baseline triplet E |" in out
