"""benchmarks/gpu_suite.py, the one-call device benchmark, in its CPU smoke mode: it runs every
configuration of its CPU list in its own process and writes the table, and a configuration that
fails (DeepSpeed bf16, which DeepSpeed refuses on a CPU, as a broken setup would fail on a GPU) is a
row naming the error while the others still run. Timings are not checked."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_suite import CPU_CONFIGS  # noqa: E402

FAILING = "cifar10_tribigan/deepspeed-bf16"


def test_quick_cpu_suite_writes_its_table_and_reports_a_failing_configuration(tmp_path):
    out = tmp_path / "gpu_cpu.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--quick",
                           "--out", str(out), "--work", str(tmp_path / "work"), "--configs", FAILING, *CPU_CONFIGS],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line for line in out.read_text().splitlines() if line.startswith("| ")}
    assert "failed" in rows[FAILING] and "cluster.deepspeed.bf16.enabled" in rows[FAILING]
    for name in CPU_CONFIGS:  # after the failure, every other configuration measured
        assert "failed" not in rows[name], rows[name]
    recipe_row = rows["cifar10_tribigan/ddp-fp32"].split(" | ")
    assert float(recipe_row[1]) > 0 and recipe_row[5] != "-"  # images/s, and the tribigan step mines
    assert "32 anchors x 512 rows" in rows["miner/all"]
