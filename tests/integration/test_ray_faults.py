"""Fault tolerance and bad input on a real local Ray (2 CPU workers).

- A worker killed mid-run (train.fault_step) makes Ray restart the group from the last checkpoint;
  the run still ends at train.steps, and no step is logged twice.
- --resume continues a finished/stopped DeepSpeed ZeRO-2 run (every rank restores its optimizer
  partition) to a larger train.steps without redoing its steps; a run started on a used
  train.out_dir without --resume is refused.
- More workers, CPUs or GPUs than the cluster has, an unwritable storage path, bf16 on CPU and an
  unreachable RAY_ADDRESS fail fast with the setting named.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.ray_env import ClusterError, free_port
from cluster.trainer import run
from tgan.config import ConfigError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _steps(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(local_ray, debug_cfg, tmp_path):
    out = tmp_path / "fault_run"
    cfg = debug_cfg(out, "train.steps=6", "train.fault_step=3", "cluster.max_failures=1")
    result = run(cfg)
    assert (out / ".fault_injected_3").exists()  # rank 1 really died once
    assert result.step == 6 and Path(result.checkpoint.path).name == "step_00000006"
    assert _steps(out) == [1, 2, 3, 4, 5, 6]  # step 3 redone after restoring step 2, logged once


def test_a_killed_worker_without_restarts_fails_the_run(local_ray, debug_cfg, tmp_path):
    cfg = debug_cfg(tmp_path / "fail_run", "train.steps=4", "train.fault_step=2", "cluster.max_failures=0")
    with pytest.raises(Exception, match="(?i)worker|died|exit"):
        run(cfg)


def test_resume_continues_a_stopped_deepspeed_run_without_redoing_steps(local_ray, debug_cfg, tmp_path):
    out = tmp_path / "resume_run"
    ds = ["cluster.backend=deepspeed", "cluster.deepspeed.zero_optimization.stage=2"]
    run(debug_cfg(out, "train.steps=4", *ds))
    first = (out / "metrics.jsonl").read_text().splitlines()
    with pytest.raises(ClusterError, match="pass --resume"):
        run(debug_cfg(out, "train.steps=6", *ds))
    result = run(debug_cfg(out, "train.steps=6", *ds), resume=True)  # ZeRO partitions restored per rank
    assert result.step == 6
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines[:4] == first and _steps(out) == [1, 2, 3, 4, 5, 6]  # steps 1-4 kept as they were
    with pytest.raises(ClusterError, match="nothing to resume"):
        run(debug_cfg(tmp_path / "never_ran"), resume=True)


@pytest.mark.parametrize("overrides, field", [
    (["cluster.num_workers=3"], "cluster.num_workers=3"),
    (["cluster.cpus_per_worker=4"], "cluster.cpus_per_worker=4"),
    (["cluster.use_gpu=true", "cluster.gpus_per_worker=1"], "cluster.use_gpu=true"),
])
def test_a_recipe_bigger_than_the_cluster_fails_fast_naming_the_setting(local_ray, debug_cfg, tmp_path,
                                                                       overrides, field):
    start = time.monotonic()
    with pytest.raises(ClusterError, match=field.replace(".", r"\.")):
        run(debug_cfg(tmp_path / "big", *overrides))
    assert time.monotonic() - start < 10


def test_unwritable_storage_and_half_precision_on_cpu_are_refused(local_ray, debug_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ClusterError, match=r"cluster\.storage_path=.*not writable"):
        run(debug_cfg(tmp_path / "s", f"cluster.storage_path={blocker / 'ray'}"))
    with pytest.raises(ClusterError, match=r"cluster\.storage_path='relative/ray' must be absolute"):
        run(debug_cfg(tmp_path / "s", "cluster.storage_path=relative/ray"))
    with pytest.raises(ConfigError, match=r"cluster\.deepspeed\.bf16\.enabled=true needs GPUs"):
        run(debug_cfg(tmp_path / "s", "cluster.backend=deepspeed", "cluster.deepspeed.bf16.enabled=true"))


def test_unreachable_ray_address_fails_within_a_bounded_wait(debug_cfg, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}  # nothing listens there
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--config",
                           str(ROOT / "launch" / "recipes" / "debug.yaml"), "--set", f"train.out_dir={tmp_path / 'u'}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "RAY_ADDRESS='127.0.0.1:" in proc.stderr and "no Ray cluster reachable" in proc.stderr
    assert time.monotonic() - start < 40
