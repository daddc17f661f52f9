"""Where the run executes: join a Ray cluster or start one in-process, and check that it can hold
the run before anything is scheduled.

Ray itself neither fails fast on an unreachable address (ray.init retries the GCS for about a
minute) nor on a request bigger than the cluster (Ray Train waits forever for its placement group),
so both are checked here with a bounded wait and a message naming the setting to change.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import pyarrow.fs
import ray

from tgan.config import ClusterConfig
from tgan.data.storage import endpoint as endpoint_of
from tgan.train.checkpoint import checkpoint_step

REPO_ROOT = Path(__file__).resolve().parents[1]
CONNECT_TIMEOUT_S = 10.0
"""How long an address may stay unreachable before we give up (ray.init alone retries ~60 s)."""
LOCAL_START_ATTEMPTS = 3
"""Tries to start a local Ray: Ray gives a new node a fixed 30 s to register with its GCS
(ray/_private/node.py), which a loaded machine can miss."""


class ClusterError(RuntimeError):
    """The Ray cluster cannot run this recipe; the message names the setting or address to change."""


@dataclass
class RayConnection:
    address: str
    """The address joined, or "local" for a Ray started in this process."""
    metrics_url: str | None
    """Prometheus endpoint of this node's metrics agent when we started it (None when joined: the
    cluster operator's Prometheus scrapes the nodes' own metrics ports)."""


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of a GCS or Ray-client address; None for auto/local (resolved by Ray itself)."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"RAY_ADDRESS={address!r} is not of the form host:port (e.g. 10.0.0.1:6379 or ray://head:10001)")
    return host.strip("[]"), int(port)


def wait_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ClusterError when nothing accepts TCP connections at `address` within `timeout_s`."""
    target = _host_port(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(target, timeout=min(2.0, timeout_s)):
                return
        except OSError as e:  # refused, unresolvable host, or no route
            last = e
            time.sleep(0.5)
    raise ClusterError(f"RAY_ADDRESS={address!r}: no Ray cluster reachable at {target[0]}:{target[1]} within "
                       f"{timeout_s:.0f} s ({last}); start one with `ray start --head`, fix RAY_ADDRESS, "
                       "or unset it to run on a local Ray started in this process")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(metrics_export_port: int | None = None) -> RayConnection:
    """Join the cluster named by RAY_ADDRESS (also what `ray job submit` sets for its drivers), or
    start a local Ray in this process. A local Ray exports metrics on `metrics_export_port` (a free
    port when None) at /metrics, like the metrics agent of every KubeRay node does on port 8080.

    A local Ray starts its dashboard (loopback, a free port): it serves the State API that Ray
    Train's PlacementGroupCleaner queries. Sweeps need that most: Tune stops and pauses trials (ASHA,
    PBT) by killing their driver, and the cleaner frees the killed run's placement groups only if it
    can query the State API; without it their CPUs stay reserved and later trials wait forever."""
    if ray.is_initialized():
        return RayConnection(address=os.environ.get("RAY_ADDRESS", "local"), metrics_url=None)
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        wait_reachable(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as e:
            raise ClusterError(f"RAY_ADDRESS={address!r}: could not join the Ray cluster: {e}") from e
        return RayConnection(address=address, metrics_url=None)
    port = metrics_export_port or free_port()
    # Ray Train's preemption watcher follows node draining on clusters; a single machine is never
    # drained, and starting it makes the controller log an error-level line about its restarts.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        before = _descendants()
        try:
            _start_local(port)
            break
        except Exception as e:  # Ray raises a bare Exception when its node times out starting on a busy machine
            left = _descendants() - before  # the half-started node's GCS, raylet, dashboard, ...
            _stop(left)
            ray.shutdown()  # forget the failed start
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "timed out" not in first:
                raise ClusterError(f"could not start a local Ray in this process ({first}): set RAY_ADDRESS to "
                                   "join a running cluster, or see Ray's log in /tmp/ray/session_latest/logs") from e
            if attempt == LOCAL_START_ATTEMPTS:
                raise ClusterError(f"could not start a local Ray in this process ({first}), {attempt} tries: retry "
                                   "when the machine is less busy, or set RAY_ADDRESS to join a running cluster") from e
            print(f"local Ray did not start ({first}); stopped the {len(left)} process(es) it had left, try "
                  f"{attempt + 1} of {LOCAL_START_ATTEMPTS}", flush=True)
    return RayConnection(address="local", metrics_url=f"http://127.0.0.1:{port}/metrics")


def _start_local(port: int) -> None:
    # Ray Train's PlacementGroupCleaner (an actor) asks Ray's State API every second whether the
    # controller is alive. The State API is served by the dashboard, so it must run (with
    # include_dashboard=False every query fails and logs "Failed to query Ray Train Controller actor
    # state"), and the actor must know which cluster to ask: a local Ray records its address
    # nowhere, so with another Ray on the machine the query fails ("Found multiple active Ray
    # instances"). So the GCS gets a port chosen here and every task and actor gets its address.
    gcs = f"{ray.util.get_node_ip_address()}:{free_port()}"
    os.environ["RAY_GCS_SERVER_PORT"] = gcs.rsplit(":", 1)[1]  # read while ray.init starts the head
    try:
        # address="local": a new Ray even when a `ray start` head runs on this machine (ray.init()
        # would join that one, and refuse this call's _system_config).
        ray.init(address="local", _metrics_export_port=port, runtime_env={"env_vars": {"RAY_ADDRESS": gcs}},
                 include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                 # Push worker metrics to the agent every second instead of every 10 s, so short
                 # local runs show up in a scrape; clusters keep Ray's default.
                 _system_config={"metrics_report_interval_ms": 1000})
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]  # a later `ray start` from this process picks its own


def _descendants() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


def _stop(processes: set[psutil.Process]) -> None:
    """Kill `processes` and reap them: a failed ray.init leaves its node's processes running (Ray's
    reaper stops them only when this process exits), and they would load the machine for the next try."""
    for proc in processes:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def check_resources(cfg: ClusterConfig) -> None:
    """Fail now, naming the setting, when the cluster cannot place `cfg.num_workers` workers.

    Each worker needs cpus_per_worker CPUs (and gpus_per_worker GPUs when use_gpu) on one node; the
    whole group needs num_workers times that. (`ensure_resources` first lets an autoscaler grow.)
    """
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
    need_cpu = cfg.num_workers * cfg.cpus_per_worker
    where = f"the Ray cluster has {total_cpu:g} CPUs and {total_gpu:g} GPUs on {len(nodes)} node(s)"
    if cfg.use_gpu:
        need_gpu = cfg.num_workers * cfg.gpus_per_worker
        if total_gpu == 0:
            raise ClusterError(f"cluster.use_gpu=true but {where}: set cluster.use_gpu=false or join a GPU cluster")
        if need_gpu > total_gpu:
            raise ClusterError(f"cluster.num_workers={cfg.num_workers} x cluster.gpus_per_worker={cfg.gpus_per_worker:g} "
                               f"= {need_gpu:g} GPUs but {where}: lower cluster.num_workers or cluster.gpus_per_worker")
        if not any(n.get("GPU", 0.0) >= cfg.gpus_per_worker for n in nodes):
            raise ClusterError(f"cluster.gpus_per_worker={cfg.gpus_per_worker:g} GPUs fit on no single node ({where})")
    if need_cpu > total_cpu:
        raise ClusterError(f"cluster.num_workers={cfg.num_workers} x cluster.cpus_per_worker={cfg.cpus_per_worker:g} "
                           f"= {need_cpu:g} CPUs but {where}: lower cluster.num_workers or cluster.cpus_per_worker")
    if not any(n.get("CPU", 0.0) >= cfg.cpus_per_worker for n in nodes):
        raise ClusterError(f"cluster.cpus_per_worker={cfg.cpus_per_worker:g} CPUs fit on no single node ({where})")


def autoscaler_node_types() -> list[str]:
    """Node types the cluster's autoscaler manages; empty when none runs.

    Read from the status the autoscaler publishes in Ray's internal KV (what `ray status` prints). A
    cluster started without an autoscaling config runs Ray's read-only provider, which names every
    node's type "node_<node id>": such a cluster cannot grow.
    """
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALING_STATUS_KEY)
    report = (json.loads(raw).get("autoscaler_report") or {}) if raw else {}
    mapping = report.get("node_type_mapping") or {}
    return sorted({kind for node, kind in mapping.items() if kind != f"node_{node}"})


AUTOSCALING_STATUS_KEY = "__autoscaling_status"
PROGRESS_EVERY_S = 10.0


def _available(cfg: ClusterConfig) -> tuple[str, str, float]:
    """('<n> available', 'GPU' or 'CPU', per-worker amount) of the resource the run waits for."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    kind = "GPU" if cfg.use_gpu else "CPU"
    per_worker = cfg.gpus_per_worker if cfg.use_gpu else cfg.cpus_per_worker
    return f"{sum(n.get(kind, 0.0) for n in nodes):g} available", kind, per_worker


def ensure_resources(cfg: ClusterConfig, *, groups: int = 1) -> None:
    """check_resources, after letting an autoscaler grow the cluster for `groups` worker groups.

    Without an autoscaler (or with cluster.autoscale_timeout_s=0) this is check_resources: it fails
    at once. With one, the shortfall is requested (ray.autoscaler.sdk.request_resources) and waited
    for, at most cluster.autoscale_timeout_s, printing progress; the request is withdrawn once the
    nodes are there (the run's own placement groups then keep them busy).
    """
    try:
        check_resources(cfg)
        return
    except ClusterError as shortfall:
        if cfg.autoscale_timeout_s <= 0 or not autoscaler_node_types():
            raise
        first = shortfall
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})}
    request_resources(bundles=[bundle] * (cfg.num_workers * groups))
    start = time.monotonic()
    last_print = -PROGRESS_EVERY_S
    try:
        while True:
            try:
                check_resources(cfg)
                return
            except ClusterError:
                waited = time.monotonic() - start
                have, kind, per_worker = _available(cfg)
                if waited >= cfg.autoscale_timeout_s:
                    raise ClusterError(f"the autoscaler did not grow the cluster within cluster.autoscale_timeout_s="
                                       f"{cfg.autoscale_timeout_s:g} ({have} {kind}s): {first}") from None
                if waited - last_print >= PROGRESS_EVERY_S:
                    need = cfg.num_workers * groups * per_worker
                    print(f"waiting for {need:g} {kind}s: {have} ({waited:.0f} s of "
                          f"cluster.autoscale_timeout_s={cfg.autoscale_timeout_s:g})", flush=True)
                    last_print = waited
                time.sleep(1.0)
    finally:
        request_resources(bundles=[])


def storage_path(cfg: ClusterConfig, out_dir: str | Path) -> str:
    """The absolute path or URI of the run's Ray storage, checked to be writable when local.

    Empty means <out_dir>/ray. A URI (s3://, gs://, ...) is passed on as is: it is what a
    multi-node cluster needs, since every node must read the checkpoints the others wrote.
    """
    raw = cfg.storage_path or str(Path(out_dir).resolve() / "ray")
    if "://" in raw:
        run_storage(raw)  # its bucket exists
        return raw
    path = Path(raw)  # absolute: the config refuses a relative cluster.storage_path
    probe = path / f".write_probe_{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ClusterError(f"cluster.storage_path={raw!r} is not writable ({e.strerror or e}): "
                           "choose a directory you can write, or a URI such as s3://bucket/runs") from e
    return str(path)


def storage_filesystem(storage: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """(storage_path, storage_filesystem) for RunConfig. An s3:// URI with AWS_ENDPOINT_URL set (an
    S3 API server such as MinIO) gets an explicit S3FileSystem on that endpoint, so the endpoint
    travels with the run config to Ray's controller and every worker, whatever their environment;
    credentials still come from each node's own environment or instance role. Anything else is
    left to Ray (pyarrow resolves the URI)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip()
    if storage.startswith("s3://") and endpoint:
        return storage[len("s3://"):].rstrip("/"), pyarrow.fs.S3FileSystem(endpoint_override=endpoint)
    return storage, None


def run_storage(run_dir: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(file system, path on it) of Ray's run directory, a path or URI; for a URI, ClusterError unless
    its store answers and its bucket exists (Ray would fail in the middle of its start-up instead)."""
    path, fs = storage_filesystem(run_dir)
    if fs is None:
        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
        except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (a ValueError) for a URI it cannot use
            raise ClusterError(f"cluster.storage_path: cannot use {run_dir} ({e}); expected an absolute path or a "
                               "URI such as s3://bucket/runs") from e
    if "://" in run_dir:
        bucket = path.split("/")[0]
        try:
            found = fs.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
        except OSError as e:  # pyarrow's message names the operation and the connection error
            raise ClusterError(f"cluster.storage_path: {run_dir}: cannot reach {endpoint_of(run_dir)} "
                               f"({str(e).strip().splitlines()[0]})") from None
        if not found:
            raise ClusterError(f"cluster.storage_path: {run_dir}: bucket {bucket!r} does not exist at "
                               f"{endpoint_of(run_dir)}: create it (Ray does not) or choose another")
    return fs, path


def stored_steps(fs: pyarrow.fs.FileSystem, path: str) -> list[str]:
    """The checkpoint directories (step_N) in Ray's run directory `path`, newest first; none when it
    does not exist yet."""
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except OSError as e:
        raise ClusterError(f"cluster.storage_path: cannot list {path} ({e}); check the URI and the storage "
                           "credentials (AWS_* environment variables for s3://)") from e
    names = [e.base_name for e in entries if e.type == pyarrow.fs.FileType.Directory
             and checkpoint_step(Path(e.base_name)) is not None]
    return sorted(names, key=lambda n: checkpoint_step(Path(n)), reverse=True)


def fetched(fs: pyarrow.fs.FileSystem, parent: str, names: list[str]) -> Iterator[Path]:
    """Each checkpoint `parent/name` as a local directory named like it, one at a time and only when
    the caller asks for the next (tgan.train.resume falls back to it when the one before cannot be
    loaded): local storage as it is, anything else downloaded into a temporary directory that
    lives until the next one is asked for or the iterator is closed."""
    from ray.train import Checkpoint

    for name in names:
        if isinstance(fs, pyarrow.fs.LocalFileSystem):
            yield Path(parent) / name
            continue
        with tempfile.TemporaryDirectory(prefix="tgan_checkpoint_") as tmp:
            local = Path(tmp) / name
            Checkpoint(f"{parent}/{name}", filesystem=fs).to_directory(str(local))
            yield local


def worker_env(cfg: ClusterConfig) -> dict[str, str]:
    """Environment of the Ray Train workers: find this checkout's packages when tgan is not installed,
    keep Ray's print patching off (it garbles the loop's lines), and pick DeepSpeed's CPU accelerator
    on CPU runs (it would otherwise probe for CUDA)."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if not cfg.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env
