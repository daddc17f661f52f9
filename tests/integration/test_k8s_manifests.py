"""The deployment files agree with the code: every exported metric is on the Grafana dashboard, the
PodMonitor scrapes the port the pods name "metrics" and Ray exports on, and the manifests parse."""
import json
from pathlib import Path

import yaml

from cluster.metrics import METRIC_NAMES

K8S = Path(__file__).resolve().parents[2] / "k8s"
CLOUD = Path(__file__).resolve().parents[2] / "cluster" / "cloud.yaml"


def test_dashboard_plots_every_exported_metric():
    dash = json.loads((K8S / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    missing = [m for m in METRIC_NAMES if f"ray_{m}" not in exprs]
    assert not missing, missing


def _pod_specs(doc):
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [(g["rayStartParams"], g["template"]["spec"]["containers"][0]) for g in groups]


def test_podmonitor_scrapes_the_ray_metrics_port_of_every_pod():
    monitor = yaml.safe_load((K8S / "podmonitor.yaml").read_text())
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    for name in ("raycluster.yaml", "rayjob.yaml"):
        for params, container in _pod_specs(yaml.safe_load((K8S / name).read_text())):
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports[endpoint["port"]] == int(params["metrics-export-port"]) == 8080, name


def test_rayjob_runs_the_launcher_with_shared_storage_and_cloud_yaml_exports_metrics():
    job = yaml.safe_load((K8S / "rayjob.yaml").read_text())
    assert job["spec"]["entrypoint"].startswith("python launch/train.py --config launch/recipes/")
    assert "cluster.storage_path=/mnt/shared" in job["spec"]["entrypoint"]
    cloud = yaml.safe_load(CLOUD.read_text())
    starts = " ".join(cloud["head_start_ray_commands"] + cloud["worker_start_ray_commands"])
    assert starts.count("--metrics-export-port=8080") == 2
