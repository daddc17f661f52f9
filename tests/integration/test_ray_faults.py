"""Fault tolerance and bad input on a real local Ray (2 CPU workers).

- A worker killed mid-run (train.fault_step) makes Ray restart the group from the last checkpoint
  Ray registered (ray.train.get_checkpoint); the run still ends at train.steps, and no step is
  logged twice.
- The same command continues a finished/stopped DeepSpeed ZeRO-2 run (every rank restores its
  optimizer partition) to a larger train.steps without redoing its steps, with the losses of an
  uninterrupted run: a retried job just works.
- A worker's own error (here: too many non-finite steps) is printed as one line by launch/train.py.
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


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _steps(out):
    return [r["step"] for r in _rows(out)]


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(local_ray, debug_cfg, tmp_path):
    out = tmp_path / "fault_run"
    # train.resume=never: the restarted group may only resume from ray.train.get_checkpoint(), not
    # by finding out_dir/checkpoints itself (with never, a non-empty out_dir would be refused).
    # Ray's controller takes one report per worker per poll (0.5 s here) and a worker's next report waits
    # for it, so when rank 1 dies at step 7 the checkpoint of step 4 is registered (step 6's may
    # still be in flight): the group restarts from step 4 or 6 and redoes what follows.
    cfg = debug_cfg(out, "train.steps=8", "train.fault_step=7", "cluster.max_failures=1", "train.resume=never")
    result = run(cfg)
    assert (out / ".fault_injected_7").exists()  # rank 1 really died once
    assert result.step == 8 and Path(result.checkpoint.path).name == "step_00000008"
    assert _steps(out) == [1, 2, 3, 4, 5, 6, 7, 8]  # the redone steps are logged once


def test_a_killed_worker_without_restarts_fails_the_run(local_ray, debug_cfg, tmp_path):
    cfg = debug_cfg(tmp_path / "fail_run", "train.steps=4", "train.fault_step=2", "cluster.max_failures=0")
    with pytest.raises(Exception, match="(?i)worker|died|exit"):
        run(cfg)


def test_the_same_command_continues_a_stopped_deepspeed_run_without_redoing_steps(local_ray, debug_cfg, tmp_path):
    out = tmp_path / "resume_run"
    ds = ["cluster.backend=deepspeed", "cluster.deepspeed.zero_optimization.stage=2"]
    run(debug_cfg(out, "train.steps=4", *ds))
    first = (out / "metrics.jsonl").read_text().splitlines()
    result = run(debug_cfg(out, "train.steps=6", *ds))  # no --resume; ZeRO partitions restored per rank
    assert result.step == 6
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines[:4] == first and _steps(out) == [1, 2, 3, 4, 5, 6]  # steps 1-4 kept as they were
    # Steps 5-6 after the resume equal an uninterrupted run's: both engines' Adam states (ZeRO
    # partitions), RNG and data position came back, not only the weights.
    run(debug_cfg(tmp_path / "straight", "train.steps=6", *ds))
    resumed, straight = _rows(out)[4:], _rows(tmp_path / "straight")[4:]
    for a, b in zip(resumed, straight):
        for key in ("loss/d", "loss/g", "loss/triplet", "grad_norm/G", "grad_norm/E", "grad_norm/D"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_a_diverging_run_stops_with_the_workers_message_on_the_command_line(local_ray, tmp_path, shards):
    """The loop's NonFiniteError, raised inside the Ray workers, reaches the user as one line."""
    import ray

    # launch/train.py joins the module's Ray (as under `ray job submit`) rather than starting its own:
    # the error takes the same path from the workers to the command line, without a Ray start.
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--config",
                           str(ROOT / "launch" / "recipes" / "debug.yaml"), "--set", f"data.shards={shards}",
                           "--set", f"train.out_dir={tmp_path / 'nan'}", "--set", "optim.lr=1e38",
                           "--set", "train.max_nonfinite_in_row=2", "--set", "train.steps=20"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    assert proc.returncode == 1, proc.stderr[-3000:]
    # Ray's own log lines (worker tracebacks, the controller) stream to stderr too, in any order.
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and ours[0].startswith("error: 2 steps in a row"), proc.stderr[-3000:]
    assert "train.max_nonfinite_in_row=2" in ours[0]


@pytest.mark.parametrize("overrides, field", [
    (["cluster.num_workers={cpus_plus_1}"], r"cluster\.num_workers=\d+ x"),
    (["cluster.cpus_per_worker={cpus_plus_1}"], r"cluster\.cpus_per_worker=\d+ ="),
    (["cluster.use_gpu=true", "cluster.gpus_per_worker={gpus_plus_1}"],
     r"cluster\.use_gpu=true|cluster\.gpus_per_worker=\d+ ="),  # no GPU at all, or too few
])
def test_a_recipe_bigger_than_the_cluster_fails_fast_naming_the_setting(local_ray, debug_cfg, tmp_path,
                                                                       overrides, field):
    import ray

    # One more than the local Ray has, whatever machine runs the tests.
    have = ray.cluster_resources()
    sizes = {"cpus_plus_1": int(have.get("CPU", 0)) + 1, "gpus_plus_1": int(have.get("GPU", 0)) + 1}
    start = time.monotonic()
    with pytest.raises(ClusterError, match=field):
        run(debug_cfg(tmp_path / "big", *[o.format(**sizes) for o in overrides]))
    assert time.monotonic() - start < 10


def test_unwritable_storage_and_half_precision_on_cpu_are_refused(local_ray, debug_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ClusterError, match=r"cluster\.storage_path=.*not writable"):
        run(debug_cfg(tmp_path / "s", f"cluster.storage_path={blocker / 'ray'}"))
    with pytest.raises(ConfigError, match=r"cluster\.storage_path='relative/ray' is invalid: expected .*absolute"):
        debug_cfg(tmp_path / "s", "cluster.storage_path=relative/ray")
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
