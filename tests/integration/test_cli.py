"""launch/train.py's flags without a cluster: --dry-run and config errors start no Ray."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
PROBE = ("import sys; sys.path.insert(0, {root!r}); from cluster.cli import main; code = main({argv!r}); "
         "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(code)")


def _cli(*argv):
    return subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), argv=list(argv))],
                          capture_output=True, text=True, timeout=60)


def test_dry_run_prints_the_config_and_world_arithmetic_without_ray():
    proc = _cli("--config", str(DEBUG), "--set", "cluster.num_workers=4", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "num_workers: 4" in proc.stdout and "global batch: 4 x 16 (data.batch_size) = 64" in proc.stdout
    assert "triplet mining (loss.miner=all): 32 global labelled rows, at most" in proc.stdout
    assert proc.stdout.rstrip().endswith("NO_RAY")


def test_dry_run_refuses_mining_that_cannot_fit():
    proc = _cli("--config", str(DEBUG), "--set", "cluster.num_workers=2048", "--set", "data.labelled_batch_size=32",
                "--dry-run")
    assert proc.returncode == 2, proc.stdout
    line, = proc.stderr.strip().splitlines()
    assert "triplet mining over 65536 labelled rows needs about" in line and "loss.mining_memory_gb=2" in line
    assert "data.labelled_batch_size (32) or cluster.num_workers (2048), use loss.miner=hard" in line


def test_invalid_override_exits_2_naming_the_field():
    proc = _cli("--config", str(DEBUG), "--set", "cluster.backend=horovod", "--resume")
    assert proc.returncode == 2 and "cluster.backend='horovod' is invalid" in proc.stderr
    assert "NO_RAY" in proc.stdout
