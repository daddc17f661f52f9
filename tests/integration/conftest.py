"""One real local Ray shared by the integration tests (started like launch/train.py does, with a
metrics port), and helpers shared by the integration tests."""
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


_SHARED: dict[str, str] = {}
"""The shared local Ray once started: its GCS address ("gcs"), metrics URL ("url"), and the RAY_ADDRESS
it set aside ("saved_address", when there was one)."""


def _shared_running() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().gcs_address == _SHARED.get("gcs")


@pytest.fixture(scope="module")
def local_ray(s3_endpoint):
    """One Ray started in this process and shared by every module that asks for it (started like
    launch/train.py does, see cluster.ray_env.connect, with its retry of a start that times out),
    which cluster.trainer.run reuses: a start costs seconds on a quiet machine and minutes on a
    loaded one, and the runs that share it leave nothing behind (Ray Train removes each run's
    actors and placement groups). A test that starts its own Ray stops this one first (fixture
    `no_ray`); the next module that asks for it starts it again. The session's S3 server starts
    first: Ray's workers inherit the environment of Ray's start, and test_ray_s3's workers must
    find the server in AWS_ENDPOINT_URL. Its value: the metrics URL."""
    import ray

    from cluster.ray_env import connect

    if not _shared_running():
        if ray.is_initialized():
            ray.shutdown()
        if "RAY_ADDRESS" in os.environ:  # a local Ray, whatever cluster the caller's shell names
            _SHARED["saved_address"] = os.environ.pop("RAY_ADDRESS")
        url = connect().metrics_url
        _SHARED.update(gcs=ray.get_runtime_context().gcs_address, url=url)
    return _SHARED["url"]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the shared Ray after the last test of this directory (the tests after it run without an
    idle Ray's processes beside them) and at the end of the session: nothing of it outlives pytest."""
    if _SHARED and (nextitem is None or nextitem.path.parent != item.path.parent):
        import ray

        if _shared_running():
            ray.shutdown()
        if "saved_address" in _SHARED:
            os.environ["RAY_ADDRESS"] = _SHARED["saved_address"]
        _SHARED.clear()


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
