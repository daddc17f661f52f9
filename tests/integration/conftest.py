"""One real local Ray per test module (started like launch/train.py does, with a metrics port),
and helpers shared by the integration tests."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's controller polls its workers every 2 s, and a worker's ray.train.report blocks until
# that poll takes it (a queue of one); the end of a run is also seen only at a poll. Polling every
# 0.5 s (ray/train/v2/_internal/constants.py, passed on to the controller and workers) saves seconds
# per report and per run; tests/unit never start Ray.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

from tgan.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


@pytest.fixture(scope="session")
def shards(debug_shards):
    return debug_shards


@pytest.fixture(scope="module")
def local_ray():
    """A Ray started in this process; cluster.trainer.run reuses it. Yields its metrics URL."""
    import ray

    from cluster.ray_env import connect

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.pop("RAY_ADDRESS", None)
    conn = connect()
    yield conn.metrics_url
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="session")
def debug_cfg(shards):
    """debug_cfg(out_dir, "key=value", ...): the debug recipe on the session's shards, reporting to
    Ray Train at its checkpoints only (each report waits for a poll of Ray's controller, see above)."""
    return lambda out, *overrides: load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}",
                                                       "cluster.report_every=2", *overrides])
