"""Live validation with the generation metric on 2 spawned gloo ranks: rank 0 computes val/fid alone
inside the process group (torchmetrics must not all-gather there, or rank 0 waits for rank 1
forever), and every rank reports the same values."""
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tgan.config import load_config
from tgan.train.loop import train
from spawned import leave

DEBUG = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"
WORLD = 2


def _worker(rank, init_file, shards, tmp):
    # A short timeout turns a hang in a collective into an error, so the test fails instead of waiting.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=90))
    try:
        torch.set_num_threads(1)
        seen = []
        cfg = load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={tmp}/run", "train.steps=2",
                                  "train.checkpoint_every=0", "data.validation_size=100", "eval.gallery_size=300",
                                  "eval.every=1", "eval.live_fid_samples=40"])
        train(cfg, reporter=lambda step, scalars, path: seen.append((step, scalars["val/fid"], scalars["val/kid"])))
        torch.save(seen, f"{tmp}/seen{rank}.pt")
        leave()
    finally:
        dist.destroy_process_group()


def test_live_fid_on_two_ranks_is_computed_once_and_reported_by_both(debug_shards, tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(debug_shards), str(tmp_path)), nprocs=WORLD, join=True)
    seen = [torch.load(tmp_path / f"seen{r}.pt") for r in range(WORLD)]
    assert [step for step, _, _ in seen[0]] == [1, 2]
    assert seen[0] == seen[1] and all(fid > 0 for _, fid, _ in seen[0])
