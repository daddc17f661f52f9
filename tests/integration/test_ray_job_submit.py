"""A real `ray start --head` on loopback (every port free and random, its own temp dir), a real job
submission of `python launch/train.py` with the debug recipe, SUCCEEDED, a checkpoint in the job's
run directory, then the head is stopped by its process id (never `ray stop`, which would kill every
Ray on the machine)."""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.ray_env import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _start_head() -> tuple[subprocess.Popen, str]:
    ports = {flag: free_port() for flag in (
        "--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port", "--object-manager-port",
        "--metrics-export-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port")}
    temp = tempfile.mkdtemp(prefix="tgr_", dir="/tmp")  # short: Ray's unix sockets live under it
    cmd = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp}",
           *[f"{flag}={port}" for flag, port in ports.items()]]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return head, f"http://127.0.0.1:{ports['--dashboard-port']}"


def _stop_head(head: subprocess.Popen) -> None:
    try:
        os.killpg(head.pid, signal.SIGTERM)  # the head and every process it started share its group
    except ProcessLookupError:
        return
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def _answers(head: subprocess.Popen, url: str) -> bool:
    """Whether the head's dashboard answers at `url` before the head exits or 90 s pass."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 90
    while head.poll() is None and time.monotonic() < deadline:
        try:
            JobSubmissionClient(url)
            return True
        except Exception:  # the dashboard is still starting
            time.sleep(1)
    return False


@pytest.fixture
def ray_head():
    """The head's dashboard URL once it answers. `ray start` exits when its node misses Ray's fixed 30 s
    registration wait (a loaded machine): the start is then tried again, up to 3 times."""
    for attempt in range(1, 4):
        head, url = _start_head()
        if _answers(head, url):
            break
        output = head.stdout.read().decode(errors="replace") if head.poll() is not None else "(still starting)"
        _stop_head(head)
        assert attempt < 3, f"`ray start --head` did not come up in 3 tries: {output[-2000:]}"
    try:
        yield url
    finally:
        _stop_head(head)


def test_ray_job_submit_runs_the_debug_recipe_on_a_started_head(ray_head, shards, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    out = tmp_path / "job_run"
    entrypoint = (f"{sys.executable} {ROOT / 'launch' / 'train.py'} --config {ROOT / 'launch' / 'recipes' / 'debug.yaml'}"
                  f" --set data.shards={shards} --set train.out_dir={out} --set cluster.report_every=2")
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": {
        "PYTHONPATH": str(ROOT), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_AUTH_MODE": "disabled"}})
    deadline = time.monotonic() + 240
    status = client.get_job_status(job)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "done: 4 steps" in logs and "| model E |" in logs  # the evaluation table ends the job's output
    for line in (f"checkpoints: {out / 'ray' / out.name} (last: step_00000004)", f"metrics: {out / 'metrics.jsonl'}",
                 f"evaluation: {out / 'eval'}"):
        assert line in logs, line
    stored = out / "ray" / out.name / "step_00000004"
    assert (stored / "state.pt").is_file() and not (out / "checkpoints").exists()  # Ray's storage holds them
