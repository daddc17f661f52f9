"""What a run directory promises across processes and restarts (docs/RUNS.md; issue 20's findings):
one process at a time per train.out_dir for every command, Ctrl-C ends with a checkpoint, a full
disk in one line, a dead attempt's files archived, the best metric recorded, silent cases said."""
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tgan.config import load_config
from tgan.runlock import LOCK_NAME
from tgan.train import checkpoint as ckpt
from tgan.train.checkpoint import CheckpointError
from tgan.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def debug_cfg(shards, out, *overrides):
    return load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", *overrides])


def steps_of(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def command(script, shards, out, *extra):
    return [sys.executable, str(ROOT / "launch" / script), "--config", str(DEBUG), "--set", f"data.shards={shards}",
            "--set", f"train.out_dir={out}", *extra]


@pytest.fixture
def holder(tmp_path):
    """Another live process holding train.out_dir's lock (as a run would): yields the directory."""
    out = tmp_path / "run"
    code = textwrap.dedent("""
        import sys
        from tgan.runlock import hold
        with hold(sys.argv[1], "train.out_dir"):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc.pid
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=30)


@pytest.mark.parametrize("entry, extra", [
    ("launch.train_local:main", []),
    ("launch.train:main", []),  # before Ray starts
    ("launch.sweep:main", ["--sweep", str(ROOT / "launch" / "sweeps" / "debug.yaml")]),  # launch/sweep.py
])
def test_a_second_process_into_a_held_out_dir_is_refused_in_one_line(debug_shards, holder, entry, extra, capsys):
    """Finding 1: two runs into one out_dir both exited 0 and trampled each other's files."""
    out, pid = holder
    module, _, name = entry.partition(":")
    main = getattr(importlib.import_module(module), name)
    assert main(["--config", str(DEBUG), "--set", f"data.shards={debug_shards}", "--set", f"train.out_dir={out}",
                 *extra]) == 1
    err = capsys.readouterr().err
    [line] = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert f"is in use by pid {pid} on host " in line and "choose another train.out_dir" in line, err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the refused run


def test_ctrl_c_writes_a_checkpoint_and_exits_130_in_one_line(debug_shards, tmp_path):
    """Finding 10: a terminal's Ctrl-C (SIGINT to the whole process group, loader workers included)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(command("train_local.py", debug_shards, out, "--set", "train.steps=100000",
                                    "--set", "train.checkpoint_every=0", "--set", "data.num_workers=1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
                            start_new_session=True)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    [line] = [ln for ln in stderr.splitlines() if "interrupted" in ln]
    step = ckpt.checkpoint_step(ckpt.latest_checkpoint(out))
    assert step >= 2 and f"step_{step:08d} written at step {step} of 100000" in line
    assert steps_of(out) == list(range(1, step + 1)) and not (out / LOCK_NAME).exists()


def test_ctrl_c_of_prepare_data_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "prepare_data.py"), "--dataset", "digits",
                             "--out", str(tmp_path / "shards"), "--shard-size", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "shards").glob("train-*.tar")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first shard is complete: it is writing
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted (Ctrl-C): the shards completed in ")


def test_a_rerun_after_an_attempt_that_died_before_its_first_checkpoint_archives_its_files(
        debug_shards, tmp_path, capsys):
    """Finding 4: the rerun appended to the dead attempt's metrics.jsonl and kept its start in run.json."""
    out = tmp_path / "run"

    def dies_at_step_2(step, scalars, saved):
        if step == 2:
            raise RuntimeError("the machine went away")

    with pytest.raises(RuntimeError, match="went away"):
        train(debug_cfg(debug_shards, out, "train.checkpoint_every=0"), reporter=dies_at_step_2)
    dead = json.loads((out / "run.json").read_text())
    assert steps_of(out) == [1, 2] and not ckpt.list_checkpoints(out)
    time.sleep(1.1)  # run.json's start has a resolution of a second
    capsys.readouterr()
    train(debug_cfg(debug_shards, out, "train.steps=1"))
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if "ended before its first checkpoint" in ln]
    [archive] = (out / "abandoned").iterdir()
    assert f"metrics.jsonl and run.json moved to {archive}" in line
    assert steps_of(out) == [1] and steps_of(archive) == [1, 2]
    assert json.loads((archive / "run.json").read_text()) == dead
    assert json.loads((out / "run.json").read_text())["started_unix"] > dead["started_unix"]


def test_a_resume_with_another_best_metric_starts_a_new_best_and_says_so(debug_shards, tmp_path, capsys):
    """Finding 3: best.json's metric was never checked, so val/fid was compared with a stored val/map."""
    out = tmp_path / "run"
    val = ["data.validation_size=100", "eval.gallery_size=300", "eval.every=2", "train.checkpoint_every=0"]
    train(debug_cfg(debug_shards, out, *val, "eval.best_metric=val/map", "train.steps=2"))
    before = ckpt.read_best(out)
    assert before["metric"] == "val/map" and before["mode"] == "max"
    capsys.readouterr()
    train(debug_cfg(debug_shards, out, *val, "eval.best_metric=val/knn1", "train.steps=3"))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "eval.best_metric changed" in ln]
    assert lines == [f"eval.best_metric changed from val/map to val/knn1: a new best starts (the next validation "
                     f"replaces step {before['step']}'s best checkpoint)"]
    after = ckpt.read_best(out)
    # The first validation after the change (step 3) is the new best, whatever val/map's stored value.
    assert after["metric"] == "val/knn1" and after["step"] == 3 and after["mode"] == "max"


def test_a_run_already_past_train_steps_says_so_and_keeps_its_recorded_settings(debug_shards, tmp_path, capsys):
    """Finding 11: train.steps=2 on a run at step 4 said `done: 4 steps ... last {}` and recorded steps 4 -> 2."""
    out = tmp_path / "run"
    train(debug_cfg(debug_shards, out, "train.steps=2"))
    config, history = (out / "config.yaml").read_text(), (out / "config_history.jsonl").read_text()
    capsys.readouterr()
    result = train(debug_cfg(debug_shards, out, "train.steps=1"))
    assert result.step == 2
    assert (f"train.steps=1: the run in {out} is already at step 2, so nothing is trained (raise train.steps to "
            "continue it)") in capsys.readouterr().out.splitlines()
    assert (out / "config.yaml").read_text() == config and (out / "config_history.jsonl").read_text() == history
    assert steps_of(out) == [1, 2]


def test_live_fid_samples_above_the_validation_set_says_what_it_uses(debug_shards, tmp_path, capfd):
    """Finding 11: eval.live_fid_samples=1000000 was cut to the validation set's size without a word."""
    train(debug_cfg(debug_shards, tmp_path / "run", "train.steps=1", "data.validation_size=100",
                    "eval.gallery_size=300", "eval.every=1", "eval.live_fid_samples=1000000"))
    assert ("eval.live_fid_samples=1000000 is more than the 100 validation images: live FID/KID use 100 samples "
            "(data.validation_size sets how many)") in capfd.readouterr().err.splitlines()


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (needs root, as in CI's container): a disk that really fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_during_a_checkpoint_is_one_line_naming_the_file_and_leaves_no_temporary_files(
        debug_shards, small_disk, capsys):
    """Finding 9: three chained exceptions, the run-info writer's hiding the real one; the temporary
    checkpoint and .run.json.tmp stayed and kept the disk full."""
    out = small_disk / "run"
    filler = small_disk / "filler"

    def fill_after_step_1(step, scalars, saved):
        if step == 1:  # the step-1 checkpoint is written: leave no room for the next one
            with filler.open("wb", buffering=0) as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)

    cfg = debug_cfg(debug_shards, out, "train.checkpoint_every=1")
    with pytest.raises(CheckpointError) as e:
        train(cfg, reporter=fill_after_step_1)
    message = str(e.value)
    assert "\n" not in message and message.startswith("checkpoint of step 2 not written: No space left on device "
                                                      f"writing {out / 'checkpoints' / '.tmp_step_00000002'}")
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith((".tmp", ".run.json"))]
    assert leftovers == [] and [p.name for p in ckpt.list_checkpoints(out)] == ["step_00000001"]
    filler.unlink()
    assert train(cfg).step == 4  # resumed from step 1 once there is room
