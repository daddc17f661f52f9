"""The deployment files agree with the code: every exported metric is on the Grafana dashboard, and
every metric name the dashboard and the alert rules query is one tgan exports (cluster/metrics.py)
or one of Ray 2.60's node metrics; the PodMonitor scrapes the port the pods name "metrics" and Ray
exports on, and adds the ray_io_cluster label the dashboard filters on; the manifests parse."""
import json
import re
import subprocess
from pathlib import Path

import yaml

from cluster.metrics import METRIC_NAMES, VALIDATION_METRIC

K8S = Path(__file__).resolve().parents[2] / "k8s"
CLOUD = Path(__file__).resolve().parents[2] / "cluster" / "cloud.yaml"
NAME = re.compile(r"\bray_[a-z0-9_]+\b")
LABELS = re.compile(r"\{[^}]*\}|\b(by|on|without|ignoring)\s*\([^)]*\)")
"""Label matchers and groupings: what remains of an expression then names only metrics."""


def _dashboard_exprs():
    dash = json.loads((K8S / "grafana-dashboard.json").read_text())
    return dash, [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _rules():
    doc = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    assert doc["kind"] == "PrometheusRule" and doc["apiVersion"] == "monitoring.coreos.com/v1"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def _known_names():
    """tgan's exported names (histogram series too) and Ray's node metrics, as Prometheus sees them."""
    from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES  # Ray's per-node metrics

    ours = {f"ray_{m}" for m in (*METRIC_NAMES, VALIDATION_METRIC)}
    ours |= {f"ray_tgan_step_time_seconds_{s}" for s in ("bucket", "sum", "count")}
    return ours | {f"ray_{m}" for m in METRICS_GAUGES}


def _balanced(expr):
    depth = {"(": 0, "{": 0, "[": 0}
    for a, b in ("()", "{}", "[]"):
        depth[a] = expr.count(a) - expr.count(b)
    return not any(depth.values())


def test_dashboard_plots_every_exported_metric():
    _, exprs = _dashboard_exprs()
    missing = [m for m in METRIC_NAMES if not any(re.search(rf"\bray_{m}(_bucket)?\b", e) for e in exprs)]
    assert not missing, missing


def test_dashboard_and_alerts_query_only_metrics_that_exist_and_filter_by_cluster():
    dash, exprs = _dashboard_exprs()
    rules = _rules()
    known = _known_names()
    queried = exprs + [r["expr"] for r in rules]
    unknown = {name for e in queried for name in NAME.findall(LABELS.sub(" ", e))} - known
    assert not unknown, unknown
    assert all(_balanced(e) for e in queried), [e for e in queried if not _balanced(e)]
    # GPU utilisation and memory per worker from Ray's own node metrics, validation metrics, data wait share
    names = " ".join(exprs)
    for wanted in ("ray_node_gpus_utilization", "ray_node_gram_used", "ray_tgan_validation", "ray_tgan_images_total"):
        assert wanted in names, wanted
    assert any("ray_tgan_data_wait_seconds" in e and "ray_tgan_step_time_seconds_sum" in e for e in exprs)
    # Every query filters by the cluster variable, fed by the PodMonitor's ray_io_cluster label.
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "ray_io_cluster" in variables["cluster"]["query"] and "$cluster" in variables["run"]["query"]
    assert all('ray_io_cluster=~"$cluster"' in e for e in exprs), [e for e in exprs if "$cluster" not in e]
    monitor = yaml.safe_load((K8S / "podmonitor.yaml").read_text())
    relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"], "targetLabel": "ray_io_cluster"} in relabel
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_cover_stalls_nonfinite_steps_corrupt_data_and_data_wait():
    rules = {r["alert"]: r for r in _rules()}
    assert set(rules) == {"TganNoStepProgress", "TganNonFiniteSteps", "TganCorruptSamplesRising",
                          "TganDataWaitAboveHalfTheStep"}
    assert "increase(ray_tgan_steps_total[15m])" in rules["TganNoStepProgress"]["expr"]
    assert "delta(ray_tgan_nonfinite_steps_skipped[10m])" in rules["TganNonFiniteSteps"]["expr"]
    assert "delta(ray_tgan_corrupt_samples_skipped[15m])" in rules["TganCorruptSamplesRising"]["expr"]
    assert rules["TganDataWaitAboveHalfTheStep"]["expr"].rstrip().endswith("> 0.5")
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
        # Counters are aggregated over ranks and worker processes, by cluster and run.
        assert "by (ray_io_cluster, run)" in rule["expr"]


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


def _pod_templates(doc):
    """Every pod template of a RayCluster or RayJob: head, worker groups, and a RayJob's submitter."""
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    return pods + ([doc["spec"]["submitterPodTemplate"]] if "submitterPodTemplate" in doc["spec"] else [])


def test_every_pod_runs_as_the_images_non_root_user_with_no_capabilities_and_the_ray_token():
    dockerfile = (K8S / "Dockerfile").read_text()
    assert "USER 1000:100" in dockerfile  # the uid:gid the pods name, checked to be `ray` at build time
    for name in ("raycluster.yaml", "rayjob.yaml"):
        pods = _pod_templates(yaml.safe_load((K8S / name).read_text()))
        assert len(pods) == (3 if name == "rayjob.yaml" else 2), name
        for pod in pods:
            sc = pod["spec"]["securityContext"]
            assert sc["runAsNonRoot"] is True and (sc["runAsUser"], sc["runAsGroup"]) == (1000, 100), name
            for container in pod["spec"]["containers"]:
                csc = container["securityContext"]
                assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"], name
                env = {e["name"]: e for e in container["env"]}
                assert env["RAY_AUTH_MODE"]["value"] == "token", name
                ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "tgan-ray-token", "key": "auth_token"}, name
    assert "kubectl create secret generic tgan-ray-token --from-literal=auth_token=" in \
        (K8S / "raycluster.yaml").read_text()  # says how to make that Secret


def test_networkpolicy_admits_only_this_namespace_to_the_ray_pods():
    policy = yaml.safe_load((K8S / "networkpolicy.yaml").read_text())
    head = yaml.safe_load((K8S / "raycluster.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    # KubeRay labels every Ray pod ray.io/is-ray-node=yes, the head included (the PodMonitor selects on it too).
    assert policy["spec"]["podSelector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    head_spec = head["spec"]["headGroupSpec"]["template"]["spec"]
    assert {6379, 8265} <= {p["containerPort"] for p in head_spec["containers"][0]["ports"]}
    open_rules = [r for r in policy["spec"]["ingress"] if "ports" not in r]
    assert open_rules == [{"from": [{"podSelector": {}}]}]  # all ports, but only from this namespace's pods
    for rule in policy["spec"]["ingress"]:
        if "ports" in rule:  # another namespace: named, to one port only (metrics or the operator's status polls)
            assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
            assert [p["port"] for p in rule["ports"]] in ([8080], [8265])


def test_cloud_yaml_turns_token_authentication_on_with_the_token_file():
    cloud = yaml.safe_load(CLOUD.read_text())
    options = " ".join(cloud["docker"]["run_options"])
    assert "-e RAY_AUTH_MODE=token" in options
    path = options.split("RAY_AUTH_TOKEN_PATH=")[1].split()[0]
    assert cloud["file_mounts"][path] == "~/.ray/auth_token"


def test_cloud_yaml_mounts_efs_on_the_host_and_fails_the_node_when_the_mount_fails():
    cloud = yaml.safe_load(CLOUD.read_text())
    init = cloud["initialization_commands"]
    assert any("mount -t nfs4" in c and "/mnt/shared" in c for c in init)
    assert init[-1] == "mountpoint /mnt/shared"  # exits non-zero, failing the node, when nothing is mounted
    assert not any("mount" in c for c in cloud.get("setup_commands", []))  # inside the container: too late
    assert "-v /mnt/shared:/mnt/shared" in cloud["docker"]["run_options"]


def test_cloud_yaml_stops_a_node_whose_efs_id_is_still_the_placeholder():
    def check(text):  # the first initialization command, run on the host as Ray would (bash -c)
        command = yaml.safe_load(text)["initialization_commands"][0]
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True)

    shipped = check(CLOUD.read_text())
    assert shipped.returncode == 1 and len(shipped.stderr.splitlines()) == 1
    assert "cluster/cloud.yaml: initialization_commands: the EFS id is the placeholder fs-XXXXXXXX" in shipped.stderr
    filled = check(CLOUD.read_text().replace("fs-XXXXXXXX", "fs-0123456789abcdef"))  # what the user does
    assert filled.returncode == 0 and filled.stderr == ""
