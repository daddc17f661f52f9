"""Decoded images per second per loader worker: WebDataset shards vs indexing an in-memory tensor.

    python benchmarks/data_throughput.py [--images 10000] [--out benchmarks/results/data_throughput.md]

For 32x32 and 64x64, grey and RGB, it writes the same images as PNG shards (through the real
prepare path) and times (a) the training stream (`ShardStream`: read tar, shuffle buffer, PNG decode,
batch, float in [-1, 1]) in one and in two DataLoader worker processes, and (b) gathering shuffled
batches from a uint8 tensor already in memory and converting them the same way. The ratio says how
much of the in-memory speed the shards reach per worker. Images: Fashion-MNIST when installed (RGB =
three different images as channels, so the PNGs compress like natural images), else sklearn digits.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tgan.data.codec import to_float  # noqa: E402
from tgan.data.index import load_index  # noqa: E402
from tgan.data.prepare import write_shards  # noqa: E402
from tgan.data.reader import ShardStream  # noqa: E402
from tgan.data.sources import array_source, make_source  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
BATCH = 256


def base_images(n: int, root: Path) -> tuple[np.ndarray, str]:
    """3n grey 28x28 uint8 images (N, H, W, 1) and where they came from."""
    if root.is_dir():
        split = make_source("fashion-mnist", root).splits["train"]
        return np.stack([split.sample(i) for i in range(min(n * 3, len(split)))]), "Fashion-MNIST"
    split = make_source("digits", None, image_size=32).splits["train"]
    return np.stack([split.sample(i % len(split)) for i in range(n * 3)]), "sklearn digits (repeated)"


def make_images(base: np.ndarray, n: int, channels: int) -> np.ndarray:
    if channels == 1:
        return base[:n]
    return np.concatenate([base[:n], base[n:2 * n], base[2 * n:3 * n]], axis=3)


def time_shards(out: Path, workers: int) -> float:
    index = load_index(out)
    shards = index.split("train").shards
    stream = ShardStream([index.shard_path(s) for s in shards], [s.count for s in shards],
                         image_size=index.image_size, channels=index.channels, batch_size=BATCH, seed=0,
                         num_workers=workers, shuffle_buffer=1000, epochs=1)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    start = time.perf_counter()
    n = sum(x.shape[0] for x, _, _ in loader)
    return n / (time.perf_counter() - start)


def time_memory(images: np.ndarray) -> float:
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    perm = torch.randperm(len(tensor), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    n = 0
    for i in range(0, len(tensor), BATCH):
        n += to_float(tensor[perm[i:i + BATCH]]).shape[0]
    return n / (time.perf_counter() - start)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--root", default=str(FMNIST), help="Fashion-MNIST files (else sklearn digits are used)")
    p.add_argument("--repeats", type=int, default=3, help="report the best of this many timings")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "data_throughput.md"))
    args = p.parse_args()
    torch.set_num_threads(1)  # per-worker numbers: one core each, like a loader worker
    load = os.getloadavg()[0]
    base, origin = base_images(args.images, Path(args.root))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (32, 64):
            for channels in (1, 3):
                images = make_images(base, args.images, channels)
                src = array_source("bench", {"train": images}, {"train": np.zeros(len(images), np.int64)}, ["x"],
                                   image_size=size)
                out = Path(tmp) / f"{size}_{channels}"
                index = write_shards(src, out, shard_size=1000, progress=False)
                mean_bytes = sum((out / s.name).stat().st_size for s in index.split("train").shards) / len(images)
                resized = np.stack([src.splits["train"].sample(i) for i in range(len(images))])
                # best of N: the machine may be shared, and interference only ever slows a run down
                memory = max(time_memory(resized) for _ in range(args.repeats))
                one = max(time_shards(out, 1) for _ in range(args.repeats))
                two = max(time_shards(out, 2) for _ in range(args.repeats))
                rows.append((f"{size}x{size}x{channels}", mean_bytes, one, two / 2, memory, one / memory))
    lines = [f"Machine: {machine()}; 1-minute load average {load:.1f} when it started", "",
             f"{args.images} {origin} images per row, batch {BATCH}, shuffle buffer 1000, shards of 1000 PNG samples, "
             f"best of {args.repeats}; in-memory = shuffled gather from a uint8 tensor + the same float conversion, "
             "one thread. Shards: one pass of the training stream (read tar, shuffle, PNG decode, batch, float).", "",
             "| images | bytes/sample in tar | shards, 1 worker (img/s) | shards, 2 workers (img/s per worker) "
             "| in-memory tensor (img/s) | shards/in-memory per worker |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r[0]} | {r[1]:.0f} | {r[2]:,.0f} | {r[3]:,.0f} | {r[4]:,.0f} | {r[5]:.3f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("# Data throughput (benchmarks/data_throughput.py)\n\n" + text)


if __name__ == "__main__":
    main()
