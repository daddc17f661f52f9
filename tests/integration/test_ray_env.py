"""cluster.ray_env: address parsing and reachability, storage paths, worker env, and a local start that
times out on a busy machine (the one test here that starts Ray)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import cluster
from cluster.ray_env import ClusterError, free_port, storage_path, wait_reachable, worker_env
from tgan.config import ClusterConfig


def test_malformed_address_is_named():
    with pytest.raises(ClusterError, match=r"RAY_ADDRESS='headnode' is not of the form host:port"):
        wait_reachable("headnode")


def test_listening_address_passes_and_a_closed_one_fails_after_the_bounded_wait():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        wait_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}", timeout_s=2)
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"no Ray cluster reachable at 127\.0\.0\.1:\d+ within 1 s"):
        wait_reachable(f"127.0.0.1:{free_port()}", timeout_s=1)
    assert time.monotonic() - start < 5
    wait_reachable("auto", timeout_s=0)  # resolved by Ray itself


def test_storage_path_defaults_under_out_dir_and_passes_uris_whose_bucket_exists(tmp_path, s3_bucket):
    assert storage_path(ClusterConfig(), tmp_path / "run") == str((tmp_path / "run" / "ray").resolve())
    assert (tmp_path / "run" / "ray").is_dir() and not list((tmp_path / "run" / "ray").iterdir())
    assert storage_path(ClusterConfig(storage_path=f"{s3_bucket}/runs"), tmp_path) == f"{s3_bucket}/runs"
    with pytest.raises(ClusterError, match=r"^cluster\.storage_path: s3://no-such-bucket/runs: bucket "
                                           r"'no-such-bucket' does not exist at http://127\.0\.0\.1:\d+ "):
        storage_path(ClusterConfig(storage_path="s3://no-such-bucket/runs"), tmp_path)


def test_worker_env_finds_this_checkout_and_picks_deepspeeds_cpu_accelerator_only_on_cpu():
    cpu, gpu = worker_env(ClusterConfig(use_gpu=False)), worker_env(ClusterConfig(use_gpu=True))
    assert cpu["DS_ACCELERATOR"] == "cpu" and "DS_ACCELERATOR" not in gpu
    assert cpu["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert cpu["PYTHONPATH"].split(os.pathsep)[0] == str(Path(cluster.__file__).resolve().parents[1])


def test_a_local_ray_that_times_out_starting_is_stopped_and_started_again(no_ray, monkeypatch, capsys):
    """Ray gives a new node 30 s to register; on a loaded machine the first start can miss that.
    The failed start's processes (here a stand-in child) are killed and a real Ray starts next."""
    import ray

    from cluster.ray_env import connect

    real_init, left = ray.init, []

    def times_out(*args, **kwargs):
        monkeypatch.setattr(ray, "init", real_init)
        left.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", times_out)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        conn = connect()
        assert conn.address == "local" and ray.is_initialized()
        assert not psutil.pid_exists(left[0].pid)  # it slept 600 s: it ended because it was killed
        assert ("local Ray did not start (The current node timed out during startup. This could happen because "
                "...); stopped the 1 process(es) it had left, try 2 of 3") in capsys.readouterr().out
    finally:
        ray.shutdown()


def test_a_local_ray_that_never_starts_names_the_tries_and_what_to_do(no_ray, monkeypatch):
    import ray

    from cluster.ray_env import connect

    def times_out(*args, **kwargs):
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", times_out)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match=r"^could not start a local Ray in this process \(The current node timed "
                                           r"out during startup\.\), 3 tries: retry when the machine is less busy, "
                                           r"or set RAY_ADDRESS to join a running cluster$"):
        connect()


def test_a_local_start_that_fails_otherwise_is_not_tried_again(no_ray, monkeypatch):
    import ray

    from cluster.ray_env import connect

    calls = []

    def fails(*args, **kwargs):
        calls.append(1)
        raise ValueError("Invalid dashboard_port")

    monkeypatch.setattr(ray, "init", fails)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match=r"^could not start a local Ray in this process \(Invalid dashboard_port\): "
                                           r"set RAY_ADDRESS to join a running cluster, or see Ray's log in "):
        connect()
    assert calls == [1]
