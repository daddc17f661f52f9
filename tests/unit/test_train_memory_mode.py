"""data.mode=memory in the training loop: the one-process CLI trains the debug recipe from the
rank's share held as one tensor, a run stopped and resumed repeats the uninterrupted run's losses
(the data position is in the checkpoint), and drawing a batch makes no host synchronisation."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from host_syncs import HostSyncs
from run_metrics import per_step

from tgan.config import load_config
from tgan.data.streams import build_streams
from tgan.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"


def cfg_for(shards, out, *overrides):
    return load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "data.mode=memory",
                               "data.augment=crop_flip", *overrides])


def test_the_cli_trains_in_memory_mode_and_a_resumed_run_repeats_it(debug_shards, tmp_path):
    full = tmp_path / "full"
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train_local.py"), "--config", str(DEBUG),
                           "--set", f"data.shards={debug_shards}", "--set", f"train.out_dir={full}",
                           "--set", "data.mode=memory", "--set", "data.augment=crop_flip",
                           "--set", "train.steps=6", "--no-eval"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "done: 6 steps" in proc.stdout
    half = tmp_path / "half"
    train(cfg_for(debug_shards, half, "train.steps=3", "train.checkpoint_every=0"))
    train(cfg_for(debug_shards, half, "train.steps=6", "train.checkpoint_every=0"))
    a, b = per_step(full), per_step(half)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=1e-6, abs=1e-6)


def test_a_memory_mode_batch_makes_no_host_synchronisation(debug_shards):
    streams = build_streams(cfg_for(debug_shards, "unused").data, rank=0, world_size=1, seed=0)
    next(streams.unlabelled), next(streams.labelled)  # the first pass's permutations
    with HostSyncs() as syncs:
        for _ in range(3):
            next(streams.unlabelled), next(streams.labelled)
    assert syncs.count == 0, syncs.where
