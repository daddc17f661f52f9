"""A run that needs nothing shared but a bucket: 2 Ray workers read the debug shards from s3://,
checkpoint to s3:// (cluster.storage_path), one worker is killed, and the restarted group resumes
from the bucket; a start that may not continue the run is refused because of what the bucket holds,
and --resume continues it from the bucket, falling back to the older checkpoint when the newest is
damaged.

The S3 API is moto's server on loopback (tests/conftest.py); Ray reaches it through an explicit
pyarrow S3FileSystem built from AWS_ENDPOINT_URL (cluster.ray_env.storage_filesystem).
"""
import json
from pathlib import Path

import pytest
import s3fs

from cluster.ray_env import ClusterError
from cluster.trainer import run
from tgan.config import load_config

pytestmark = pytest.mark.slow
DEBUG = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"


def _steps(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_train_from_a_bucket_checkpoint_to_it_and_resume_from_it(s3_debug_shards, s3_bucket,
                                                                             local_ray, tmp_path, capsys):
    out = tmp_path / "s3_run"
    storage = f"{s3_bucket}/runs"

    def cfg(*overrides):
        return load_config(DEBUG, [f"data.shards={s3_debug_shards}", f"train.out_dir={out}",
                                   f"cluster.storage_path={storage}", "cluster.report_every=2", *overrides])

    # train.resume=never: the restarted group can only resume from ray.train.get_checkpoint() (the
    # bucket), and a fresh start would log steps 1.. a second time.
    result = run(cfg("train.steps=8", "train.fault_step=7", "cluster.max_failures=1", "train.resume=never"))
    assert (out / ".fault_injected_7").exists()  # rank 1 really died once
    assert result.step == 8 and result.run_dir == f"{storage}/s3_run"
    assert result.checkpoint.path == "tgan-test/runs/s3_run/step_00000008"  # in the bucket
    assert _steps(out) == [1, 2, 3, 4, 5, 6, 7, 8]

    # Each rank handed over only its own files, listed in its own manifest; Ray merged them into one
    # directory in the bucket, and no checkpoint stayed on the workers' disk.
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    stored = {p.rpartition("/")[2] for p in fs.ls("tgan-test/runs/s3_run/step_00000008")}
    assert {"state.pt", "optim.pt", "rank_0.pt", "rank_1.pt", "manifest_rank_0.json", "manifest_rank_1.json"} <= stored
    rank_1 = json.loads(fs.cat("tgan-test/runs/s3_run/step_00000008/manifest_rank_1.json"))
    assert set(rank_1["files"]) == {"rank_1.pt"} and rank_1["world_size"] == 2
    assert not (out / "checkpoints").exists() and not list((out / "ray_staging").rglob("*.pt"))

    # What the bucket holds is the run: train.resume=never is refused before Ray starts.
    with pytest.raises(ClusterError, match=r"train.resume=never but s3://tgan-test/runs/s3_run already holds"):
        run(cfg("train.steps=10", "train.resume=never"))

    # --resume from any machine: the run continues from the bucket. Its newest checkpoint is damaged
    # there, so the check before Ray starts and then every worker fall back to the older one Ray kept.
    fs.pipe("tgan-test/runs/s3_run/step_00000008/state.pt", b"damaged")
    result = run(cfg("train.steps=10"), resume=True)
    assert "checkpoint step_00000008 skipped: " in capsys.readouterr().out
    assert result.step == 10 and _steps(out) == list(range(1, 11))  # steps 7-8 redone from step 6, logged once
