"""Real Ray Tune sweeps of the debug recipe on the local Ray: a sweep interrupted by Ctrl-C is finished
by --resume, its interrupted trial continuing from its checkpoint; trials report live validation
during training, ASHA stops a trial early, PBT (launch/sweeps/debug_pbt.yaml) hands a checkpoint
from one trial to another."""
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
from cluster.sweep_report import finish, ranked
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


def run_spec(shards, out, raw, *, report=True):
    """The sweep's trials ranked; report=False leaves out the sweep's report (the best trial's test
    evaluation, sweep.csv, plots: seconds of work that only the ASHA test checks)."""
    spec = parse_spec({"set": LIVE, "resources": RESOURCES, **raw}, "test spec")
    base = load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", *spec.overrides])
    results, base = sweep(base, spec)
    if not report:
        return ranked(results, base, spec), results
    return finish(results, base, spec), results


def tracebacks(text: str) -> list[str]:
    """The lines of a sweep's console output that show a traceback or an ActorDiedError, except those
    of Ray Train's controller, which logs a warning with a traceback when the machine is too loaded
    to answer its autoscaling request within 5 s ("Failed to send resource request ... it's safe to
    ignore this error"), without harm to the run."""
    return [line for line in text.splitlines()
            if ("Traceback" in line or "ActorDiedError" in line) and "(TrainController pid=" not in line]


def reported(results):
    """trial id -> the metrics of each of its reports to Tune, in order."""
    return {r.metrics["trial_id"]: r.metrics_dataframe.to_dict("records") for r in results}


def test_a_sweep_interrupted_by_ctrl_c_finishes_with_resume_and_its_trial_continues(shards, tmp_path):
    # The shipped debug sweep, 2 trials one at a time, 10 steps (so that the first is still running
    # when the test sees its step-2 checkpoint), started as a user does. Runs before the module's
    # Ray starts: each command starts its own.
    out = tmp_path / "sweep"
    spec = tmp_path / "debug2.yaml"
    spec.write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "launch" / "sweeps" / "debug.yaml").read_text()),
                                    "num_samples": 2, "max_concurrent": 1}))
    cmd = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(DEBUG), "--sweep", str(spec),
           "--set", f"data.shards={shards}", "--set", f"train.out_dir={out}", "--set", "train.steps=10"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    # Its own session, so that the test's Ctrl-C reaches the whole process group, as a terminal's does.
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 900  # an upper bound for a machine at load 20; a minute or two here
    while not list(out.glob("trials/*/ray/train_*/step_00000002")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.2)
    (trial,) = [p.name for p in out.glob("trials/*")]
    os.killpg(first.pid, signal.SIGINT)  # Tune saves its state and stops
    interrupted = first.communicate(timeout=300)[0]
    assert first.returncode == 1 and "sweep interrupted with" in interrupted, interrupted[-3000:]

    second = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=900)
    resumed = second.stdout
    assert second.returncode == 0 and "sweep of 2 trials" in resumed, resumed[-3000:]
    for text in (interrupted, resumed):  # Ctrl-C, the trials' ends (stopped by ASHA or not): no traceback
        assert not tracebacks(text), text[-5000:]
    table = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(table) == 2 and not any(row["error"] for row in table) and table[0]["test_map"]
    assert {row["trial"] for row in table} >= {trial} and (out / "plots" / "curves.png").is_file()
    assert next(row for row in table if row["trial"] == trial)["steps"] == "10"
    # The interrupted trial continued from its own checkpoint: its metrics count on (the resumed run
    # dropped the lines after that checkpoint and redid those steps), and its reports say where from.
    steps = [json.loads(line)["step"] for line in (out / "trials" / trial / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))
    (tune_result,) = out.glob(f"tune/*{trial}*/result.json")
    last = json.loads(tune_result.read_text().splitlines()[-1])
    assert last["step"] == 10 and last["started_from"] == trial and last["started_at"] >= 2


def test_asha_stops_the_worse_trial_early_on_live_validation(local_ray, shards, tmp_path):
    # A 10-image gallery (one per class) gives a far higher validation mAP than a 300-image one, so
    # the second trial is the worse one at ASHA's first rung (step 2) and is stopped there.
    scraped, stop = [], threading.Event()

    def scrape():  # a dead worker's values leave the metrics endpoint, so look while trials run
        while not stop.wait(1.0):
            text = urllib.request.urlopen(local_ray, timeout=10).read().decode()
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
    # The test columns are those of the trial's best checkpoint by the sweep's metric (eval.best_metric).
    best = json.loads((Path(full.out_dir) / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "val/map" and best["value"] == max(v for _, v in full.curve)
    assert table[0]["test_step"] == str(best["step"])

    # The same values went to Prometheus through the workers' metrics agent while they trained.
    assert any('metric="map"' in line for line in scraped), scraped
    assert any('metric="knn5"' in line for line in scraped)


def test_pbt_copies_the_better_trials_checkpoint_and_the_copy_continues_from_its_step(local_ray, shards,
                                                                                     tmp_path):
    # The shipped PBT spec: synchronous PBT with two trials: at step 2 both wait, one is the lower
    # quantile and must clone the other (whatever their scores), so an exploit always happens. 3
    # steps: the one perturbation at step 2 (step 3 is less than an interval later).
    raw = yaml.safe_load((ROOT / "launch" / "sweeps" / "debug_pbt.yaml").read_text())
    rows, results = run_spec(shards, tmp_path / "pbt", raw, report=False)
    assert all(r.error is None and r.metrics["step"] == 3 for r in rows)
    histories = reported(results)
    exploited = [t for t, reps in histories.items()  # (a report without the key has NaN there)
                 if any(isinstance(r.get("started_from"), str) and r["started_from"] != t for r in reps)]
    assert len(exploited) == 1, histories
    (trial,) = exploited
    (source,) = set(histories) - {trial}
    # Its reports: step 2 of its own run, then step 3 of the run continued from the other trial's step-2
    # checkpoint (a restart from step 0 would report step 2 again).
    assert [r["step"] for r in histories[trial]] == [2, 3]
    assert (histories[trial][1]["started_from"], histories[trial][1]["started_at"]) == (source, 2)
    # Its run directory records the hand-over: from step 3 on, the other trial's run continues here.
    history = (Path(rows[0].out_dir).parent / trial / "config_history.jsonl").read_text().splitlines()
    moved = json.loads(history[0])
    assert moved["from_step"] == 3 and [Path(p).name for p in moved["changes"]["train.out_dir"]] == [source, trial]
