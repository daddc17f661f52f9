"""The one-process training loop on the debug recipe: run directory, metrics, phases, seeds, the
non-finite guard and shard preparation. Resume is in test_checkpoint.py."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tgan.config import ConfigError, OptimConfig, load_config
from tgan.losses.base import Batch, GANLoss
from tgan.families import get_family
from tgan.families.base import Group, Role
from tgan.train.backend import TorchBackend
from tgan.dist import resolve_device
from tgan.train.loop import NonFiniteError, PhaseRunner, train
from tgan.train.shards import ensure_shards

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


@pytest.fixture(scope="module")
def shards(debug_shards):
    return debug_shards


def debug_cfg(shards, out, *overrides):
    return load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", *overrides])


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_missing_digits_shards_are_prepared_and_other_datasets_name_the_command(shards, tmp_path):
    assert (shards / "index.json").is_file()
    cfg = load_config(DEBUG, [f"data.shards={tmp_path / 'cifar'}", "data.dataset=cifar10"])
    with pytest.raises(FileNotFoundError, match=r"launch/prepare_data.py --dataset cifar10 --root .* --out .*cifar"):
        ensure_shards(cfg.data)


def test_time_limit_stops_early_with_a_checkpoint_and_the_cli_then_evaluates(shards, tmp_path):
    out = tmp_path / "timed"
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train_local.py"), "--config", str(DEBUG),
                           "--set", f"data.shards={shards}", "--set", f"train.out_dir={out}",
                           "--set", "train.steps=1000", "--set", "train.time_limit_s=0.000001"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "train.time_limit_s=1e-06 reached: stopped at step 1 of 1000" in proc.stdout
    # Not a terminal: progress lines, the first one at step 1, then the evaluation's stages.
    assert re.search(r"^train 1/1000 \(0%\) \| [\d.]+ (?:s/step|step/s) \| \d+ img/s \| ETA \S+ \| d [\d.]+ g [\d.]+ triplet",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^eval 5/5 \(100%\)", proc.stdout, re.M) and "run: started " in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001"]
    assert [r["step"] for r in metrics(out)] == [1]
    # The evaluation table of the end of training: trained E, random-init E, raw pixels.
    assert "| model E |" in proc.stdout and "| raw pixels |" in proc.stdout
    assert json.loads((out / "eval" / "eval.json").read_text())["num_test"] == 200


def test_run_writes_config_metrics_and_keeps_the_last_checkpoints(shards, tmp_path):
    out = tmp_path / "run"
    cfg = debug_cfg(shards, out, "train.steps=6", "train.log_every=2", "train.checkpoint_every=2",
                    "train.keep_checkpoints=2")
    reports = []
    result = train(cfg, reporter=lambda step, scalars, path: reports.append((step, dict(scalars), path)))

    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg.to_dict()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    assert result.step == 6 and result.checkpoint == out / "checkpoints" / "step_00000006"
    rows = metrics(out)
    assert [r["step"] for r in rows] == [2, 4, 6]
    required = {"loss/d", "loss/g", "loss/triplet", "grad_norm/G", "grad_norm/E", "grad_norm/D", "perf/images_per_s",
                "perf/step_time_s", "perf/data_wait_s", "nonfinite_skipped", "data/corrupt_samples"}
    assert required <= set(rows[-1])
    assert all(r["perf/images_per_s"] > 0 and r["perf/data_wait_s"] < r["perf/step_time_s"] for r in rows)
    assert rows[-1]["perf/images_per_s"] == pytest.approx(16 / rows[-1]["perf/step_time_s"])
    assert [(s, p) for s, _, p in reports] == [(2, out / "checkpoints" / "step_00000002"),
                                               (4, out / "checkpoints" / "step_00000004"), (6, result.checkpoint)]
    assert reports[-1][1] == {k: v for k, v in rows[-1].items() if k not in ("step", "time", "elapsed_s")}


def test_every_metrics_row_has_a_timestamp_and_the_run_json_its_phases(shards, tmp_path):
    out = tmp_path / "run"
    before = time.time()
    train(debug_cfg(shards, out, "train.steps=3"))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]  # debug recipe: log_every 1
    assert all(before <= r["time"] <= time.time() for r in rows)
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed) and 0 < elapsed[0] and elapsed[-1] < time.time() - before
    summary = json.loads((out / "run.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == ["data_prep", "training"]
    assert summary["phases"][1]["steps"] == [0, 3] and summary["phases"][1]["completed"] is True
    assert summary["phases"][1]["seconds"] >= elapsed[-1]
    assert before - 1 <= summary["started_unix"] <= rows[0]["time"]
    assert {"host", "cpu_count", "gpus", "torch", "ray", "load_average"} <= set(summary["machine"])


def test_fixed_seed_is_repeatable_and_the_seed_matters(shards, tmp_path):
    def losses(name, seed):
        train(debug_cfg(shards, tmp_path / name, f"train.seed={seed}"))
        return [{k: v for k, v in r.items() if not k.startswith("perf/") and k not in ("time", "elapsed_s")}
                for r in metrics(tmp_path / name)]

    first = losses("a", 3)
    torch.manual_seed(12345)  # the loop seeds itself: global RNG state before it must not matter
    assert losses("b", 3) == first
    assert losses("c", 4) != first


def test_g_steps_per_d_step_runs_more_generator_optimizer_steps(shards, tmp_path):
    out = tmp_path / "run"
    train(debug_cfg(shards, out, "loss.g_steps_per_d_step=3", "train.steps=2", "model.family=bigan"))
    optim = torch.load(out / "checkpoints" / "step_00000002" / "optim.pt", weights_only=True)
    assert {int(s["step"]) for s in optim["D"]["state"].values()} == {2}
    assert {int(s["step"]) for s in optim["G"]["state"].values()} == {6}


class RecordingLoss(GANLoss):
    """A real (tiny) two-phase objective that also records how each network reached it."""

    def __init__(self):
        self.seen = []

    def _record(self, nets):
        self.seen.append({n: (type(m).__name__, all(p.requires_grad for p in m.parameters())) for n, m in nets.items()})

    def d_loss(self, nets, batch):
        self._record(nets)
        return nets["D"](batch.x).mean() + nets["G"](batch.x).mean(), {"loss/d": 0.0}

    def g_loss(self, nets, batch):
        self._record(nets)
        return nets["D"](nets["G"](batch.x)).mean(), {"loss/g": 0.0}


def test_phase_passes_trained_networks_and_frozen_raw_others_then_restores_them():
    nets = {"G": torch.nn.Linear(2, 2), "D": torch.nn.Linear(2, 1)}
    backend = TorchBackend()
    d = Group("D", ("D",), RecordingLoss.d_loss, Role.DISCRIMINATOR)
    g = Group("G", ("G",), RecordingLoss.g_loss, Role.GENERATOR)
    backend.setup(nets, (d, g), OptimConfig(), torch.device("cpu"))
    loss = RecordingLoss()
    run = PhaseRunner(backend, loss, ["G", "D"])
    d_before = nets["D"].weight.detach().clone()
    run(g, Batch(torch.ones(3, 2), torch.zeros(3, dtype=torch.int64)))
    assert loss.seen[-1] == {"G": ("Linear", True), "D": ("Linear", False)}
    assert torch.equal(nets["D"].weight, d_before)  # frozen: no gradient reached D, no step
    assert all(p.requires_grad for net in nets.values() for p in net.parameters())
    _, result = run(d, Batch(torch.ones(3, 2), torch.zeros(3, dtype=torch.int64)))
    assert loss.seen[-1] == {"G": ("Linear", False), "D": ("Linear", True)} and list(result.grad_norms) == ["D"]


def test_diverging_run_skips_and_counts_non_finite_steps_then_stops_naming_the_setting(shards, tmp_path):
    out = tmp_path / "run"
    cfg = debug_cfg(shards, out, "optim.lr=1e38", "train.max_nonfinite_in_row=2", "train.steps=20")
    with pytest.raises(NonFiniteError, match=r"train.max_nonfinite_in_row=2"):
        train(cfg)
    rows = metrics(out)
    assert len(rows) < 20 and rows[-1]["nonfinite_skipped"] >= 2
    # Skipped steps leave the weights as they were, so the last checkpoint never holds NaN.
    assert not (out / "checkpoints").exists() or all(
        torch.isfinite(t).all() for p in (out / "checkpoints").iterdir()
        for net in torch.load(p / "state.pt", weights_only=False)["nets"].values() for t in net.values())


def test_a_run_that_never_wrote_a_finite_checkpoint_fails_in_one_line_instead_of_evaluating(shards, tmp_path, capsys):
    """Fewer steps than train.max_nonfinite_in_row, every checkpoint refused as non-finite: the run
    once exited 0 with `checkpoint None` and an evaluation table of its diverged networks."""
    from launch.train_local import main

    assert main(["--config", str(DEBUG), "--set", f"data.shards={shards}", "--set", f"train.out_dir={tmp_path}",
                 "--set", "optim.lr=1e38", "--set", "train.steps=2", "--set", "train.max_nonfinite_in_row=100"]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1] == (
        "error: no checkpoint written in 2 steps: the weights held non-finite values at every checkpoint (see the "
        "lines above); lower optim.lr or set optim.grad_clip and start again")
    assert "done:" not in out and not (tmp_path / "eval").exists() and not (tmp_path / "checkpoints").exists()


def test_resume_never_refuses_an_out_dir_with_checkpoints(shards, tmp_path):
    out = tmp_path / "run"
    train(debug_cfg(shards, out, "train.steps=2"))
    with pytest.raises(ConfigError, match="train.resume=never"):
        train(debug_cfg(shards, out, "train.steps=2", "train.resume=never"))
    with pytest.raises(ConfigError, match="train.resume='/nonexistent'"):
        train(debug_cfg(shards, out, "train.resume=/nonexistent"))


@pytest.mark.parametrize("family", ["bigan", "mbgan", "dcgan"])
def test_every_family_trains_through_the_same_loop(shards, tmp_path, family):
    cfg = debug_cfg(shards, tmp_path / family, f"model.family={family}", "train.steps=2", "data.labelled_batch_size=0")
    result = train(cfg)
    assert set(result.nets) == set(get_family(family).build_networks(
        cfg.model, channels=1, image_size=16, num_classes=10))
    assert all(v == v for k, v in result.scalars.items() if k.startswith("loss/"))  # not NaN


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="train.device='cuda'"):
            resolve_device("cuda")


def test_deterministic_setting_switches_to_deterministic_kernels(shards, tmp_path):
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    try:
        train(debug_cfg(shards, tmp_path / "run", "train.steps=1", "train.deterministic=true"))
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic = before[1]
