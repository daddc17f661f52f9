"""What a person sees: the main job's console, as a new user runs it (launch/train.py on the debug
recipe, a local Ray, none of the RAY_* settings the other tests use), shows rank 0's progress lines
and the evaluation's, and none of Ray's per-report dumps (`Reporting training result N:
TrainingReport(...)`), no PlacementGroupCleaner failures (the State API it polls is served), and no
warning our code causes; its run directory has timestamped metrics and run.json's phases."""
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_main_job_console_shows_progress_and_no_ray_noise(shards, tmp_path):
    out = tmp_path / "console_run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_DEDUP_LOGS", "RAY_TRAIN_ENABLE_PRINT_PATCH",
                        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")}
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--config",
                           str(ROOT / "launch" / "recipes" / "debug.yaml"), "--set", f"data.shards={shards}",
                           "--set", f"train.out_dir={out}", "--set", "eval.pictures=true"],
                          capture_output=True, text=True, timeout=420, env=env, cwd=tmp_path)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    progress = re.findall(r"train (\d)/4 \(\d+%\) \| [\d.]+ (?:s/step|step/s) \| \d+ img/s \| ETA \S+ \| d [\d.]+ g [\d.]+ "
                          r"triplet [\d.]+$", proc.stdout, re.M)
    assert progress[0] == "1" and progress[-1] == "4", proc.stdout[-3000:]
    assert re.search(r"^eval 5/5 \(100%\)", proc.stdout, re.M)
    for noise in ("TrainingReport(", "PlacementGroupCleaner", "PreemptionWatcher", "Warning:"):
        assert noise not in console, [line for line in console.splitlines() if noise in line][:3]
    assert (f"evaluation: {out / 'eval'} (eval.json, eval.md, index.html, samples.png, interpolation.png, "
            "reconstructions.png, grad_norm_G.png, loss_curves.png; open index.html)") in proc.stdout

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["time"] > 0 and r["elapsed_s"] > 0 for r in rows)
    summary = json.loads((out / "run.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == ["data_prep", "training", "ray_fit", "evaluation"]
    assert f"run: started {summary['started']}; data prep" in proc.stdout


def test_verbose_brings_ray_trains_own_logs_back(shards, tmp_path):
    from cluster.trainer import build_trainer, quiet_report_logs
    from tgan.config import load_config

    cfg = load_config(ROOT / "launch" / "recipes" / "debug.yaml", [f"train.out_dir={tmp_path}"])
    for verbose, level in ((False, "WARNING"), (True, "INFO")):
        trainer = build_trainer(cfg, str(tmp_path), verbose=verbose)
        assert trainer.run_config.logging_config.log_level == level
        assert trainer.train_loop_config["verbose"] is verbose
    import ray.train.v2._internal.execution.context as reporting  # where Ray logs each report

    quiet_report_logs()  # what a worker does unless verbose
    assert logging.getLogger(reporting.__file__).getEffectiveLevel() == logging.WARNING
