"""Cost of live validation at the recipes' defaults: the time of one validation (perf/validation_s)
against the training time between two validations (eval.every x perf/step_time_s), both measured
in the same one-process run of the recipe (its networks, batch, validation and gallery sizes).

    python benchmarks/validation_overhead.py [--steps 12] [--recipes digits_tribigan fmnist_mbgan ...]

Fashion-MNIST recipes run on synthetic shards of the same shape (12,000 random 28x28 grey images,
10 classes) when data/fashion-mnist-28 is absent: the cost depends on shapes, not pixel values.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tgan.config import load_config  # noqa: E402
from tgan.data.index import INDEX_NAME  # noqa: E402
from tgan.data.prepare import write_shards  # noqa: E402
from tgan.data.sources import array_source  # noqa: E402
from tgan.train.loop import train  # noqa: E402


def synthetic_fmnist(out: Path) -> Path:
    if not (out / INDEX_NAME).is_file():
        rng = np.random.default_rng(0)
        labels = np.arange(12000) % 10
        images = rng.integers(0, 256, (12000, 28, 28, 1), dtype=np.uint8)
        src = array_source("fashion-mnist", {"train": images, "test": images[:1000]},
                           {"train": labels, "test": labels[:1000]}, [str(c) for c in range(10)], image_size=28)
        write_shards(src, out, shard_size=2000, progress=False)
    return out


def measure(recipe: str, steps: int, scratch: Path) -> dict:
    path = ROOT / "launch" / "recipes" / f"{recipe}.yaml"
    cfg = load_config(path)
    shards = cfg.data.shards
    if cfg.data.dataset == "fashion-mnist" and not (Path(shards) / INDEX_NAME).is_file():
        shards = str(synthetic_fmnist(scratch / "fmnist-synthetic"))
    every = cfg.eval.every
    out = scratch / recipe
    run = load_config(path, [f"data.shards={shards}", f"train.out_dir={out}", f"train.steps={steps}",
                             "train.log_every=1", "train.checkpoint_every=0", f"eval.every={steps}",
                             "train.device=cpu", "train.resume=never"])
    train(run)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_s = statistics.median(r["perf/step_time_s"] for r in rows[1:])  # the first step warms up
    val_s = rows[-1]["perf/validation_s"]
    return {"recipe": recipe, "eval.every": every, "validation": run.data.validation_size,
            "gallery": run.eval.gallery_size, "live_probe": run.eval.live_probe, "step_s": step_s,
            "validation_s": val_s, "overhead": val_s / (every * step_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--recipes", nargs="+", default=["digits_tribigan", "fmnist_mbgan", "fmnist_tribigan"])
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(r, args.steps, Path(tmp)) for r in args.recipes]
    print("| recipe | eval.every | validation / gallery | step (s) | one validation (s) | overhead |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['recipe']} | {r['eval.every']} | {r['validation']} / {r['gallery']} | {r['step_s']:.3f} | "
              f"{r['validation_s']:.2f} | {100 * r['overhead']:.2f}% |")


if __name__ == "__main__":
    main()
