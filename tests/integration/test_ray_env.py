"""cluster.ray_env without starting Ray: address parsing and reachability, storage paths, worker env."""
import os
import socket
import time
from pathlib import Path

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


def test_storage_path_defaults_under_out_dir_and_passes_uris(tmp_path):
    assert storage_path(ClusterConfig(), tmp_path / "run") == str((tmp_path / "run" / "ray").resolve())
    assert (tmp_path / "run" / "ray").is_dir() and not list((tmp_path / "run" / "ray").iterdir())
    assert storage_path(ClusterConfig(storage_path="s3://bucket/runs"), tmp_path) == "s3://bucket/runs"


def test_worker_env_finds_this_checkout_and_picks_deepspeeds_cpu_accelerator_only_on_cpu():
    cpu, gpu = worker_env(ClusterConfig(use_gpu=False)), worker_env(ClusterConfig(use_gpu=True))
    assert cpu["DS_ACCELERATOR"] == "cpu" and "DS_ACCELERATOR" not in gpu
    assert cpu["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert cpu["PYTHONPATH"].split(os.pathsep)[0] == str(Path(cluster.__file__).resolve().parents[1])
