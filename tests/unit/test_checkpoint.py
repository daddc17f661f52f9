"""Checkpoints: resume gives the same per-step losses as an uninterrupted run, saves are atomic, the
RNG and data position come back, networks load for evaluation, a killed run resumes by itself.
Resume semantics: new learning rates take effect and are recorded, fields that define the checkpoint
are refused before anything is written; a planted pickle never runs; a damaged checkpoint falls back
to the previous one (also for random byte damage, property-based); non-finite weights are never saved."""
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_metrics import per_step

from tgan.config import ConfigError, load_config
from tgan.train import checkpoint as ckpt
from tgan.train import resume as resume_lib
from tgan.train.loop import NonFiniteError, train

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


@pytest.fixture(scope="module")
def shards(debug_shards):
    return debug_shards


def cfg_for(shards, out, *overrides):
    return load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "train.log_every=1", *overrides])


def scramble_process_state():
    """What a fresh process would have: none of the RNG state the first half left behind."""
    torch.manual_seed(987)
    np.random.seed(987)
    random.seed(987)


def test_resume_gives_the_same_losses_and_weights_as_an_uninterrupted_run(shards, tmp_path):
    full = train(cfg_for(shards, tmp_path / "full", "train.steps=6", "train.checkpoint_every=0"))

    half = tmp_path / "half"
    train(cfg_for(shards, half, "train.steps=3", "train.checkpoint_every=0"))
    scramble_process_state()
    resumed = train(cfg_for(shards, half, "train.steps=6", "train.checkpoint_every=0"))

    a, b = per_step(tmp_path / "full"), per_step(half)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=1e-6, abs=1e-6)
    for name, net in full.nets.items():
        for (k, va), vb in zip(net.state_dict().items(), resumed.nets[name].state_dict().values()):
            assert torch.allclose(va.float(), vb.float(), atol=1e-6), f"{name}.{k}"


def test_checkpoint_holds_networks_optimizers_step_rng_and_data_position(shards, tmp_path):
    out = tmp_path / "run"
    result = train(cfg_for(shards, out, "train.steps=2"))
    path = result.checkpoint
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 2 and state["world_size"] == 1
    assert set(state["nets"]) == {"G", "E", "D"} and state["config"]["train"]["steps"] == 2
    assert state["meta"] == {"channels": 1, "image_size": 16, "num_classes": 10}
    assert set(torch.load(path / "optim.pt", weights_only=True)) == {"D", "G"}
    rank = ckpt.load_rank_state(path, 0)
    assert {"torch", "numpy", "python"} <= set(rank["rng"]) and rank["data"]
    with pytest.raises(ConfigError, match="written by 1 ranks but this run has 2: resume with cluster.num_workers=1"):
        ckpt.check_world_size(path, state, 2)


def test_rng_state_round_trips():
    saved = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    scramble_process_state()
    ckpt.set_rng_state(saved)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_a_half_written_checkpoint_is_ignored_and_the_previous_one_resumes(shards, tmp_path):
    out = tmp_path / "run"
    train(cfg_for(shards, out, "train.steps=2"))
    # A run killed during its next save leaves only the temporary directory behind.
    partial = out / "checkpoints" / ".tmp_step_00000004"
    partial.mkdir()
    (partial / "rank_0.pt").write_bytes(b"truncated")
    assert ckpt.latest_checkpoint(out).name == "step_00000002"
    result = train(cfg_for(shards, out, "train.steps=4"))
    assert result.step == 4 and not partial.exists()
    assert [r["step"] for r in per_step(out)] == [1, 2, 3, 4]


def test_load_networks_rebuilds_the_trained_networks_for_evaluation(shards, tmp_path):
    result = train(cfg_for(shards, tmp_path / "run", "train.steps=2"))
    cfg, nets = ckpt.load_networks(result.checkpoint)
    assert cfg.model.family == "tribigan" and cfg.train.steps == 2
    for name, net in nets.items():
        assert not net.training
        for a, b in zip(net.state_dict().values(), result.nets[name].state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(ckpt.CheckpointError, match="manifest_rank_0.json is missing"):
        ckpt.load_checkpoint(tmp_path)


@pytest.mark.slow
def test_a_process_killed_mid_run_resumes_from_its_checkpoint_with_the_same_losses(shards, tmp_path):
    """train.fault_step kills the process once; running the same command again finishes the run."""
    def run(out, *extra):
        return subprocess.run([sys.executable, str(ROOT / "launch" / "train_local.py"), "--config", str(DEBUG),
                               "--set", f"data.shards={shards}", "--set", f"train.out_dir={out}",
                               "--set", "train.log_every=1", "--set", "train.steps=5", *extra],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)

    first = run(tmp_path / "faulty", "--set", "train.fault_step=4")
    assert first.returncode == 3 and "exits on purpose" in first.stderr
    assert [r["step"] for r in per_step(tmp_path / "faulty")] == [1, 2, 3]
    second = run(tmp_path / "faulty", "--set", "train.fault_step=4")
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "step_00000002" in second.stdout
    train(cfg_for(shards, tmp_path / "clean", "train.steps=5"))
    a, b = per_step(tmp_path / "clean"), per_step(tmp_path / "faulty")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=1e-6, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deterministic_cuda_run_repeats_and_resumes_bit_for_bit(shards, tmp_path):
    """Without train.deterministic, cuDNN's run-dependent algorithms drift a few steps apart (0.7 in
    loss after 6 steps measured on an H100); with it a run repeats and resumes exactly."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    try:
        common = ("train.device=cuda", "train.deterministic=true", "train.checkpoint_every=0")
        train(cfg_for(shards, tmp_path / "a", "train.steps=4", *common))
        train(cfg_for(shards, tmp_path / "b", "train.steps=4", *common))
        train(cfg_for(shards, tmp_path / "c", "train.steps=2", *common))
        scramble_process_state()
        train(cfg_for(shards, tmp_path / "c", "train.steps=4", *common))
        assert per_step(tmp_path / "a") == per_step(tmp_path / "b") == per_step(tmp_path / "c")
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic = before[1]


# Resume semantics, checkpoint safety and fallback (issue 9). They share one 4-step run (checkpoints
# of steps 2 and 4) and work on copies of it.

@pytest.fixture(scope="module")
def four_steps(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    train(cfg_for(shards, out, "train.steps=4"))
    return out


@pytest.fixture
def run_copy(four_steps, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(four_steps, out)
    return out


def history_of(out):
    """config_history.jsonl without the train.out_dir change that copying the run makes."""
    rows = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["changes"].pop("train.out_dir")[1] == str(out)
    return rows


def final_weights(result):
    return torch.cat([p.detach().flatten() for n in sorted(result.nets) for p in result.nets[n].parameters()])


def test_resume_applies_new_learning_rates_and_betas_and_records_them(shards, run_copy, tmp_path):
    same = tmp_path / "same"
    shutil.copytree(run_copy, same)
    kept = train(cfg_for(shards, same, "train.steps=5"))
    changed = train(cfg_for(shards, run_copy, "train.steps=5", "optim.lr=0.05", "optim.beta1=0.9"))
    # Adam's load_state_dict restores the saved lr and betas; the new ones must win.
    assert (final_weights(changed) - final_weights(kept)).abs().max() > 1e-2
    history = history_of(run_copy)
    assert history == [{"from_step": 5, "changes": {"train.steps": [4, 5], "optim.lr": [2e-4, 0.05],
                                                    "optim.beta1": [0.5, 0.9]}}]
    saved = ckpt.load_checkpoint(changed.checkpoint)["config_history"]
    assert [{**h, "changes": {k: v for k, v in h["changes"].items() if k != "train.out_dir"}} for h in saved] == history
    assert history_of(same) == [{"from_step": 5, "changes": {"train.steps": [4, 5]}}]


def test_resume_refuses_fields_that_define_the_checkpoint_before_writing_anything(shards, run_copy):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError) as refused:
        train(cfg_for(shards, run_copy, "train.steps=6", "model.width=0.25", "data.label_seed=3"))
    message = str(refused.value)
    assert "\n" not in message and "model.width 0.125 -> 0.25" in message and "data.label_seed 0 -> 3" in message
    assert "train.steps" not in message  # a field that may change is not listed
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


class Planted:
    """Unpickling this creates the file `marker`: what a malicious state.pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("manifest", ["left as it was", "rewritten by the attacker"])
def test_a_planted_pickle_is_never_executed_by_resume_or_evaluate(shards, run_copy, tmp_path, manifest, capsys):
    from launch.evaluate import main as evaluate_main

    marker = tmp_path / "pwned"
    newest = run_copy / "checkpoints" / "step_00000004"
    torch.save({"config": Planted(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the plant is real: full unpickling runs it
    assert marker.exists()
    marker.unlink()
    shutil.copy(tmp_path / "evil.pt", newest / "state.pt")
    if manifest == "rewritten by the attacker":
        ckpt.write_manifest(newest, rank=0, world_size=1, step=4)
    # The checkpoint itself is refused in one line naming the file ...
    assert evaluate_main([str(newest), "--set", "eval.pictures=false"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(newest / "state.pt") in error and not marker.exists()
    # ... and the run directory's evaluation skips it (one line) for the older one, as resume does.
    assert evaluate_main([str(run_copy), "--set", "eval.pictures=false"]) == 0
    out, error = capsys.readouterr()
    assert error.count("\n") == 1 and f"checkpoint {newest} skipped: {newest / 'state.pt'}" in error
    assert "checkpoints/step_00000002:" in out and not marker.exists()
    # Resume skips it (one line naming the file) and continues from the older checkpoint.
    result = train(cfg_for(shards, run_copy, "train.steps=5"))
    assert result.step == 5 and not marker.exists()
    assert f"checkpoint step_00000004 skipped: {newest / 'state.pt'}" in capsys.readouterr().err
    assert [r["step"] for r in per_step(run_copy)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("damage, why", [
    (lambda d: (d / "state.pt").write_bytes((d / "state.pt").read_bytes()[:100]), "state.pt has 100 bytes"),
    (lambda d: (d / "rank_0.pt").write_bytes(b""), "rank_0.pt has 0 bytes"),
    (lambda d: (d / "rank_0.pt").unlink(), "rank_0.pt is missing"),
    (lambda d: (d / "optim.pt").write_bytes(b"x" * (d / "optim.pt").stat().st_size), "optim.pt does not match"),
    (lambda d: (d / "manifest_rank_0.json").unlink(), "manifest_rank_0.json is missing"),
    (lambda d: (d / "extra.pt").write_bytes(b"x"), "extra.pt is not listed in any of the 1 manifests"),
    (lambda d: (d / "manifest_rank_1.json").write_text("{}"), "manifest_rank_1.json is not listed"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(shards, run_copy, damage, why, capsys):
    newest, older = ckpt.list_checkpoints(run_copy)[::-1]
    damage(newest)
    lines = []
    resumed = resume_lib.open_resume(cfg_for(shards, run_copy, "train.steps=6"), world_size=1, rank=0,
                                     report=lines.append)
    assert resumed.path == older and resumed.step == 2
    assert len(lines) == 1 and lines[0].startswith("checkpoint step_00000004 skipped: ") and why in lines[0]
    assert "fewer" not in lines[0]


def two_rank_checkpoint(root):
    """step_00000004 as Ray Train merges it: each rank's own files and manifest, written apart (a
    DeepSpeed-like nested file per rank), copied into one directory."""
    merged = root / "step_00000004"
    for r in range(2):
        own = root / f"rank_dir_{r}"
        (own / "deepspeed_D" / "ds").mkdir(parents=True)
        torch.save({"rank": r}, own / f"rank_{r}.pt")
        torch.save({"partition": torch.full((4,), float(r))}, own / "deepspeed_D" / "ds" / f"zero_pp_rank_{r}.pt")
        ckpt.write_manifest(own, rank=r, world_size=2, step=4)
        shutil.copytree(own, merged, dirs_exist_ok=True)
    return merged


@pytest.mark.parametrize("damage, why", [
    (lambda d: (d / "manifest_rank_1.json").unlink(),
     r"manifest_rank_1.json is missing: .* was written by 2 ranks and rank 1's files never arrived"),
    (lambda d: (d / "rank_1.pt").unlink(), r"rank_1.pt is missing \(listed in manifest_rank_1.json\)"),
    (lambda d: (d / "deepspeed_D" / "ds" / "zero_pp_rank_1.pt").write_bytes(b"x" * 10), "zero_pp_rank_1.pt has 10 bytes"),
    (lambda d: (d / "manifest_rank_1.json").write_text(
        json.dumps({**json.loads((d / "manifest_rank_1.json").read_text()), "step": 6})),
     "manifest_rank_1.json is of step 6 with 2 ranks but manifest_rank_0.json of step 4 with 2: files of two "
     "different saves"),
    (lambda d: (d / "deepspeed_D" / "ds" / "zero_pp_rank_2.pt").write_bytes(b"x"),
     "zero_pp_rank_2.pt is not listed in any of the 2 manifests"),
])
def test_each_rank_lists_its_own_files_and_verification_needs_every_ranks_manifest(tmp_path, damage, why):
    merged = two_rank_checkpoint(tmp_path)
    ckpt.verify_checkpoint(merged)  # the union of the two manifests covers every file
    damage(merged)
    with pytest.raises(ckpt.CheckpointError, match=why):
        ckpt.verify_checkpoint(merged)


def test_the_run_fails_in_one_line_only_when_no_checkpoint_loads(shards, run_copy):
    for path in ckpt.list_checkpoints(run_copy):
        (path / "state.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"none of the 2 checkpoints .* can be loaded \(newest: .*"
                                                   r"step_00000004/state.pt has 0 bytes") as failed:
        train(cfg_for(shards, run_copy, "train.steps=6"))
    assert "\n" not in str(failed.value)
    # A checkpoint the user names is used or refused, never replaced by another one.
    with pytest.raises(ckpt.CheckpointError, match="step_00000002/state.pt has 0 bytes"):
        train(cfg_for(shards, run_copy, f"train.resume={run_copy / 'checkpoints' / 'step_00000002'}"))


def test_non_finite_weights_are_never_saved_and_the_error_names_the_last_finite_checkpoint(shards, run_copy, capsys):
    # lr 1e38 drives the weights or their BatchNorm statistics to non-finite values within two steps.
    with pytest.raises(NonFiniteError, match=r"continue from the last finite checkpoint, .*step_00000004, by running "
                                             r"the same command again with a lower optim.lr"):
        train(cfg_for(shards, run_copy, "train.steps=12", "optim.lr=1e38", "train.max_nonfinite_in_row=3"))
    assert "step 6: checkpoint not written: the weights hold non-finite values" in capsys.readouterr().err
    assert [p.name for p in ckpt.list_checkpoints(run_copy)] == ["step_00000002", "step_00000004"]
    # The same command with a lower lr continues from step 4 with that lr, and finishes finite.
    result = train(cfg_for(shards, run_copy, "train.steps=6"))
    assert result.step == 6 and torch.isfinite(final_weights(result)).all()
    assert history_of(run_copy) == [{"from_step": 5, "changes": {"train.steps": [4, 6]}}]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_damage_to_a_checkpoint_is_refused_naming_the_file_or_changes_nothing(
        shards, four_steps, tmp_path, data):
    """Property (hypothesis): bytes flipped, cut off or appended anywhere in the newest checkpoint's
    files, manifest included: resume either falls back to the older checkpoint with one line naming
    the damaged checkpoint's file, or (damage that leaves the manifest's meaning intact, e.g. one
    whitespace byte swapped for another) loads the newest one unchanged. Never another exception."""
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"
    shutil.copytree(four_steps, out)
    newest, older = ckpt.list_checkpoints(out)[::-1]
    files = sorted(p for p in newest.rglob("*") if p.is_file())
    file = data.draw(st.sampled_from(files), label="file")
    raw = bytearray(file.read_bytes())
    how = data.draw(st.sampled_from(["flip", "cut", "append"]), label="how")
    if how == "flip":
        for offset in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4, unique=True), label="offsets"):
            raw[offset] ^= data.draw(st.integers(1, 255), label="xor")
    elif how == "cut":
        del raw[data.draw(st.integers(0, len(raw) - 1), label="length"):]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64), label="appended")
    file.write_bytes(bytes(raw))
    lines = []
    resumed = resume_lib.open_resume(cfg_for(shards, out, "train.steps=6"), world_size=1, rank=0, report=lines.append)
    if resumed.path == newest:
        assert ckpt.is_manifest(file.name) and lines == []
    else:
        assert resumed.path == older and resumed.step == 2
        assert len(lines) == 1 and "\n" not in lines[0] and str(newest) in lines[0], lines
    shutil.rmtree(out.parent)
