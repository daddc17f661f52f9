"""The empty autoscaling pool: a head with no worker CPUs and one worker type (min 0, max 2) on
Ray's fake multi-node autoscaler (local processes, the provider ray.cluster_utils.AutoscalingCluster
uses). launch/train.py's run and a 2-trial sweep ask the autoscaler for their workers, wait for the
nodes and finish; a cluster without an autoscaler still fails at once.

The head is started with ray.cluster_utils.Cluster and the fake provider's config written here,
rather than AutoscalingCluster.start(): that runs `ray stop --force`, which kills every Ray on the
machine (other test sessions' too), and its config template is not shipped in the Ray wheel. The
teardown stops only the processes this cluster started.
"""
import os
import time

import pytest
import ray
import yaml

from cluster import ray_env
from cluster.sweep import sweep
from cluster.sweep_report import ranked
from cluster.sweep_spec import parse_spec
from cluster.trainer import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def fake_pool_config(gcs_address: str) -> dict:
    return {"cluster_name": "tgan-test", "max_workers": 2,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                "cpu_worker": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}},
            "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
            "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": []}


@pytest.fixture(scope="module")
def empty_pool(tmp_path_factory):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in ("RAY_FAKE_CLUSTER", "AUTOSCALER_UPDATE_INTERVAL_S", "RAY_ADDRESS")}
    # Read by the autoscaler (the head's monitor process, started below) and its fake provider.
    os.environ.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    port = ray_env.free_port()
    config = tmp_path_factory.mktemp("pool") / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(fake_pool_config(f"{ray._private.services.get_node_ip_address()}:{port}")))
    pool = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "gcs_server_port": port,
                                                         "autoscaling_config": str(config), "include_dashboard": False})
    os.environ["RAY_ADDRESS"] = pool.address
    ray_env.connect()
    deadline = time.monotonic() + 60  # the autoscaler publishes its status after its first update
    while not ray_env.autoscaler_node_types() and time.monotonic() < deadline:
        time.sleep(1)
    yield pool
    # Let the autoscaler remove its idle nodes (it started them), then stop the head's processes.
    deadline = time.monotonic() + 60
    while len([n for n in ray.nodes() if n["Alive"]]) > 1 and time.monotonic() < deadline:
        time.sleep(1)
    ray.shutdown()
    pool.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_a_training_run_and_a_sweep_start_on_an_empty_pool_and_finish(empty_pool, debug_cfg, tmp_path, capsys):
    assert sum(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]) == 0
    assert ray_env.autoscaler_node_types() == ["ray.head.default"]

    result = run(debug_cfg(tmp_path / "run", "cluster.num_workers=2", "train.steps=2", "cluster.autoscale_timeout_s=240"))
    assert result.step == 2
    assert "waiting for 2 CPUs: 0 available" in capsys.readouterr().out

    spec = parse_spec({"set": {"model.family": "mbgan", "data.labelled_batch_size": 0, "data.validation_size": 100,
                               "eval.every": 2, "eval.gallery_size": 300, "train.steps": 2},
                       "space": {"loss.alpha": {"grid": [2.0, 20.0]}}, "max_concurrent": 2,
                       "resources": {"num_workers": 1, "cpus_per_worker": 1}}, "test spec")
    base = debug_cfg(tmp_path / "sweep", "cluster.autoscale_timeout_s=240", *spec.overrides)
    results, base = sweep(base, spec)
    rows = ranked(results, base, spec)  # no report
    assert len(rows) == 2 and all(r.error is None and r.metrics["step"] == 2 for r in rows)
