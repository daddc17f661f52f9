"""One real local Ray for the whole session (started like launch/train.py does, with a metrics port),
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


@pytest.fixture(scope="session")
def _session_ray():
    """The session's shared local Ray: {"gcs": its GCS address, "url": its metrics URL} once started."""
    shared: dict[str, str] = {}
    saved = os.environ.pop("RAY_ADDRESS", None)  # a local Ray, whatever cluster the caller's shell names
    yield shared
    import ray

    if shared and ray.is_initialized() and ray.get_runtime_context().gcs_address == shared["gcs"]:
        ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def local_ray(_session_ray):
    """One Ray started in this process for the whole session (started like launch/train.py does, see
    cluster.ray_env.connect), which cluster.trainer.run reuses: each start costs seconds to tens of
    seconds on a loaded machine, and the runs that share it leave nothing behind (Ray Train removes
    each run's actors and placement groups). A test module that starts its own cluster stops this one
    first (fixture `no_ray`); it is started again by the next module that asks for it. Yields its
    metrics URL."""
    import ray

    from cluster.ray_env import connect

    if not (_session_ray and ray.is_initialized() and ray.get_runtime_context().gcs_address == _session_ray["gcs"]):
        if ray.is_initialized():
            ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        url = connect().metrics_url
        _session_ray.update(gcs=ray.get_runtime_context().gcs_address, url=url)
    return _session_ray["url"]


@pytest.fixture
def no_ray():
    """For tests that start a Ray of their own (or test how one starts): no Ray in this process."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def debug_cfg(shards):
    """debug_cfg(out_dir, "key=value", ...): the debug recipe on the session's shards, reporting to
    Ray Train at its checkpoints only (each report waits for a poll of Ray's controller, see above)."""
    return lambda out, *overrides: load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}",
                                                       "cluster.report_every=2", *overrides])
