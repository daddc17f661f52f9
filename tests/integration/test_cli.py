"""The `tgan` command: every subcommand's --help, from the installed script and from launch/*.py, and
`tgan train`'s flags without a cluster: --dry-run and config errors start no Ray."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import main as tgan

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
PROBE = ("import sys; from launch.cli import main; code = main(['train', *{argv!r}]); "
         "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(code)")


def _cli(*argv):
    return subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv))],
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


SCRIPTS = {"train": "train.py", "train-local": "train_local.py", "sweep": "sweep.py", "evaluate": "evaluate.py",
           "prepare": "prepare_data.py"}


@pytest.mark.parametrize("command", SCRIPTS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        tgan([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tgan {command} ")


def test_the_launch_scripts_and_the_installed_command_are_the_same_parser():
    """launch/*.py (what `ray job submit -- python launch/train.py` runs, with launch/ first on sys.path)
    and pyproject's console script both reach launch.cli."""
    assert '[project.scripts]\ntgan = "launch.cli:main"' in (ROOT / "pyproject.toml").read_text()
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / SCRIPTS["sweep"]), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: tgan sweep "), proc.stderr
    installed = shutil.which("tgan")
    if installed is None:
        pytest.skip("no `tgan` on PATH: `pip install -e .` puts it there")
    proc = subprocess.run([installed, "evaluate", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: tgan evaluate "), proc.stderr


def test_parsing_loads_no_torch():
    """`tgan --help` and argument errors answer at once: the parsers import no torch."""
    proc = subprocess.run([sys.executable, "-c", "import sys, launch.cli; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_evaluate_reads_set_with_the_shared_grammar_and_allows_only_data_eval_and_device():
    from tgan.app.evaluate import overridable
    from tgan.config import parse_overrides

    allowed = ["eval.max_test=5", "data.shards=/d", "train.device=cpu", " train.device = cpu"]
    assert all(map(overridable, allowed)) and set(parse_overrides(allowed)) == {"eval.max_test", "data.shards",
                                                                                 "train.device"}
    assert not any(map(overridable, ["train.seed=3", "model.width=2", "train.devicex=cuda"]))
