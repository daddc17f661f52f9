"""Real Ray Tune sweeps of the debug recipe on the local Ray: trials report live validation during
training, ASHA stops a trial early, PBT hands a checkpoint from one trial to another, and an
interrupted Optuna sweep is finished by --resume without rerunning its finished trial."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cluster.sweep import sweep
from cluster.sweep_report import finish
from cluster.sweep_spec import parse_spec
from tgan.config import load_config

# Each trial starts a Ray Train run (a few processes): minutes per test on a busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
# Every trial: the debug mbgan, 6 steps (fewer in some tests), validation, a checkpoint and a report every 2 steps, 1 worker.
LIVE = {"model.family": "mbgan", "data.labelled_batch_size": 0, "data.validation_size": 100, "eval.every": 2,
        "eval.gallery_size": 300, "train.steps": 6, "train.checkpoint_every": 2, "cluster.report_every": 2}
RESOURCES = {"num_workers": 1, "cpus_per_worker": 0.5}


@pytest.fixture(scope="module")
def sweep_ray():
    """A local Ray started the way launch/sweep.py starts one (with the dashboard, see
    cluster.ray_env.connect); yields its metrics URL."""
    import ray

    from cluster.ray_env import connect

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.pop("RAY_ADDRESS", None)
    yield connect().metrics_url  # a local Ray with the dashboard, as sweeps need
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


def run_spec(shards, out, raw):
    spec = parse_spec({"set": LIVE, "resources": RESOURCES, **raw}, "test spec")
    base = load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", *spec.overrides])
    results, base = sweep(base, spec)
    return finish(results, base, spec), results


def reported(results):
    """trial id -> the metrics of each of its reports to Tune, in order."""
    return {r.metrics["trial_id"]: r.metrics_dataframe.to_dict("records") for r in results}


def test_asha_stops_the_worse_trial_early_on_live_validation(sweep_ray, shards, tmp_path):
    # A 10-image gallery (one per class) gives a far higher validation mAP than a 300-image one, so
    # the second trial is the worse one at ASHA's first rung (step 2) and is stopped there.
    scraped, stop = [], threading.Event()

    def scrape():  # a dead worker's values leave the metrics endpoint, so look while trials run
        while not stop.wait(1.0):
            text = urllib.request.urlopen(sweep_ray, timeout=10).read().decode()
            scraped.extend(line for line in text.splitlines() if line.startswith("ray_tgan_validation{"))

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    rows, results = run_spec(shards, tmp_path / "asha", {
        "set": {**LIVE, "train.steps": 4}, "space": {"eval.gallery_size": {"grid": [10, 300]}}, "scheduler": "asha",
        "asha": {"grace_period": 2, "reduction_factor": 2}, "max_concurrent": 1})
    stop.set()
    scraper.join()
    by_size = {r.point["eval.gallery_size"]: r for r in rows}
    full, stopped = by_size[10], by_size[300]
    assert not full.stopped_early and full.metrics["step"] == 4
    assert stopped.stopped_early and stopped.metrics["step"] == 2
    # The finished trial reported its validation metric to Tune during training, at every eval.every.
    assert [step for step, _ in full.curve] == [2, 4]
    assert [r["step"] for r in reported(results)[full.trial]] == [2, 4]

    out = tmp_path / "asha"
    table = list(csv.DictReader((out / "sweep.csv").open()))
    assert [t["trial"] for t in table] == [full.trial, stopped.trial]  # finished trials rank first
    assert table[0]["test_map"] and not table[1]["test_map"]  # only the selected trial is tested
    assert {"eval.gallery_size", "steps", "stopped_early", "val_map", "val_knn1", "val_knn5"} <= set(table[0])
    assert (out / "sweep.md").read_text().count(full.trial) == 1
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["curves.png", "val_map_vs_eval.gallery_size.png"]
    assert (Path(full.out_dir) / "eval" / "eval.json").is_file()

    # The same values went to Prometheus through the workers' metrics agent while they trained.
    assert any('metric="map"' in line for line in scraped), scraped
    assert any('metric="knn5"' in line for line in scraped)


@pytest.mark.skip(reason="not passing yet (issue 10): no exploit seen in the 4-step PBT window on the 2-core VM")
def test_pbt_copies_the_better_trials_checkpoint_and_the_copy_continues_from_its_step(sweep_ray, shards,
                                                                                     tmp_path):
    rows, results = run_spec(shards, tmp_path / "pbt", {
        "set": {**LIVE, "train.steps": 4}, "space": {"optim.lr_d": {"choice": [1e-4, 1e-3]}}, "search": "random", "num_samples": 2,
        "scheduler": "pbt", "pbt": {"perturbation_interval": 2, "synch": True,
                                    "mutations": {"optim.lr_d": {"loguniform": [1e-4, 1e-3]}}}})
    assert all(r.error is None and r.metrics["step"] == 4 for r in rows)
    histories = reported(results)
    exploits = [(trial, rep) for trial, reps in histories.items() for rep in reps
                if isinstance(rep.get("started_from"), str) and rep["started_from"] != trial]
    assert exploits, histories
    trial, first = exploits[0]
    assert first["started_from"] in histories  # the other trial's checkpoint...
    assert first["step"] == first["started_at"] + 2  # ...continued, not restarted from step 0
    steps = [r["step"] for r in histories[trial]]
    assert steps == sorted(steps) and steps[-1] == 4


@pytest.mark.skip(reason="not passing yet (issue 10): exceeds its wait on the 2-core VM; the sweep itself ran")
@pytest.mark.timeout(2400)
def test_an_interrupted_optuna_sweep_resumes_only_its_unfinished_trial(shards, tmp_path):
    out = tmp_path / "optuna"
    spec = tmp_path / "optuna.yaml"
    # 10 steps, so that the second trial is still running when the test interrupts it at step 4; each
    # trial's worker dies once at step 5 (train.fault_step), and Tune retries the trial (max_failures).
    spec.write_text(yaml.safe_dump({"set": {**LIVE, "train.steps": 10, "train.fault_step": 5}, "max_failures": 1,
                                    "resources": RESOURCES, "search": "optuna", "num_samples": 2,
                                    "space": {"optim.lr_d": {"loguniform": [1e-4, 1e-3]}}, "max_concurrent": 1}))
    cmd = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(DEBUG), "--sweep", str(spec),
           "--set", f"data.shards={shards}", "--set", f"train.out_dir={out}"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def progress():  # trial id -> steps in its metrics.jsonl
        return {p.parent.name: len(p.read_text().splitlines()) for p in out.glob("trials/*/metrics.jsonl")}

    deadline = time.monotonic() + 1200  # the first trial and a retry: minutes on a loaded 2-core machine
    while not (len(progress()) == 2 and max(progress().values()) == 10 and min(progress().values()) >= 4):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(1)
    done, unfinished = sorted(progress(), key=lambda t: -progress()[t])
    first.send_signal(signal.SIGINT)  # Tune saves its state and stops
    text = first.communicate(timeout=120)[0]
    assert first.returncode == 1 and "interrupted" in text, text[-3000:]

    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    table = {t["trial"]: t for t in csv.DictReader((out / "sweep.csv").open())}
    assert set(table) == {done, unfinished} and all(t["steps"] == "10" for t in table.values())
    # The finished trial failed once and was retried from its own step-4 checkpoint, and --resume did not
    # run it again; the unfinished one continued in further Ray Train runs.
    assert len(list((out / "trials" / done / "ray").glob("train_*"))) == 2
    assert len(list((out / "trials" / unfinished / "ray").glob("train_*"))) >= 2
    (result_file,) = out.glob(f"tune/*{done}*/result.json")  # what the trial reported to Tune
    history = [json.loads(line) for line in result_file.read_text().splitlines()]
    assert [(r["step"], r.get("started_at")) for r in history] == [(2, None), (4, None), (6, 4), (8, 4), (10, 4)]
