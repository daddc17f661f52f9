"""launch/train.py's driver (cluster.trainer.run) on an existing run directory, and the local start.

- A config that changes what the run's checkpoint holds, another world size, or train.resume=never
  on a used train.out_dir are refused before Ray starts and before anything is written (the one-line
  error names every differing field). Continuing with the same command is tested on a real Ray in
  test_ray_faults.py (the DeepSpeed resume).
- With no RAY_ADDRESS, a stale ray_current_cluster file (left by an earlier `ray start --head`)
  does not stop launch/train.py from starting its own local Ray.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster.ray_env import ClusterError, free_port
from cluster.trainer import run
from tgan.config import ConfigError
from tgan.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def test_a_start_that_would_change_the_run_is_refused_before_anything_is_written(debug_cfg, tmp_path):
    out = tmp_path / "run"
    train(debug_cfg(out, "train.steps=2", "cluster.num_workers=1"))  # the one-process loop: world size 1
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"cannot continue .*step_00000002 with a different model.family 'tribigan' "
                                          r"-> 'bigan'; model.latent_dim 16 -> 8: "):
        run(debug_cfg(out, "train.steps=4", "cluster.num_workers=1", "model.family=bigan", "model.latent_dim=8"))
    with pytest.raises(ConfigError, match=r"written by 1 ranks but this run has 2: resume with cluster.num_workers=1"):
        run(debug_cfg(out, "train.steps=4"))
    with pytest.raises(ConfigError, match="train.resume=never"):
        run(debug_cfg(out, "train.steps=4", "cluster.num_workers=1", "train.resume=never"))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # no config.yaml, no ray/


def test_a_stale_ray_current_cluster_file_does_not_stop_the_local_start():
    # A short temp dir of our own: Ray's socket paths under it must fit in 107 bytes, and other
    # Rays on this machine keep theirs.
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}\n")  # nothing listens
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(tmp)}
        code = "from cluster.ray_env import connect; print('address', connect().address)"
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=180)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "address local" in proc.stdout


def test_resume_flag_still_insists_on_a_run_to_continue(debug_cfg, tmp_path):
    with pytest.raises(ClusterError, match="nothing to resume"):
        run(debug_cfg(tmp_path / "never_ran"), resume=True)
