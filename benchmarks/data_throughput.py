"""Images/s the data can deliver per loader worker, side by side with the images/s one training step consumes.

    python benchmarks/data_throughput.py [--recipe launch/recipes/digits_tribigan.yaml] [--device cpu]
    python benchmarks/data_throughput.py --recipe launch/recipes/cifar10_tribigan.yaml --device cuda \\
        --synthetic-cifar 50000 [--set train.precision=bf16]

For one recipe, on one machine, in one run:
- **stream, per worker**: the training stream of data.mode=stream (`ShardStream` in DataLoader worker
  processes: read tar, shuffle buffer, PNG decode, batch, float, the recipe's augmentation) with 1
  and with `--workers` workers, images/s divided by the workers;
- **memory gather**: data.mode=memory's `MemoryStream` on the device (shuffled gather from the
  rank's uint8 tensor, float conversion, augmentation, all on the device), images/s;
- **step**: one training step of the recipe (every optimizer phase, backward and optimizer step) on
  a fixed batch already on the device, images/s = data.batch_size / step time, as the loop reports it.
`workers needed` = step / stream with 1 worker: the loader workers one rank needs so that the stream keeps
up. The shards are the recipe's own (digits are made offline), or with `--synthetic-cifar N` N
generated images written as CIFAR-10's python batches (the exact on-disk format, read by the stock
torchvision reader with its md5 table filled in for the generated files) and converted by the real
prepare path, so that shard sizes and decode costs are CIFAR-10's without the download.

Results go into --out as a section per (recipe, device); a rerun replaces its own section.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tgan.config import load_config  # noqa: E402
from tgan.data import sources  # noqa: E402
from tgan.data.index import load_index  # noqa: E402
from tgan.data.prepare import write_shards  # noqa: E402
from tgan.data.reader import ShardStream  # noqa: E402
from tgan.data.streams import build_streams  # noqa: E402
from tgan.families import get_family  # noqa: E402
from tgan.families.base import build_networks  # noqa: E402
from tgan.losses.base import Batch  # noqa: E402
from tgan.train.backend import TorchBackend  # noqa: E402
from tgan.train.loop import PhaseRunner  # noqa: E402
from tgan.train.shards import ensure_shards  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def synthetic_cifar(root: Path, n: int) -> type:
    """n training images (and n/5 test) as CIFAR-10's pickled python batches; returns the torchvision class
    that reads them (the stock one with its md5 table set to the generated files, as the tests do).
    Images are smooth random fields plus a little noise, so that their PNGs compress like photos."""
    from torchvision.datasets import CIFAR10
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_batch = -(-n // 5)

    def images(count: int) -> np.ndarray:
        coarse = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
        smooth = np.stack([np.asarray(Image.fromarray(c).resize((32, 32), Image.BICUBIC)) for c in coarse])
        noisy = smooth.astype(np.int16) + rng.integers(-12, 13, smooth.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(count, 3072)

    def md5(path: Path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest()

    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", per_batch)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": images(count), "labels": rng.integers(0, 10, count).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": per_batch}, f)

    class GeneratedCIFAR10(CIFAR10):
        train_list = [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
        test_list = [["test_batch", md5(folder / "test_batch")]]
        meta = {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")}

    return GeneratedCIFAR10


def time_stream(cfg, workers: int, images: int) -> float:
    """Images/s of the training stream in `workers` loader worker processes (first `images` images)."""
    index = load_index(cfg.data.shards)
    shards = index.split("train").shards
    stream = ShardStream([index.shard_path(s) for s in shards], [s.count for s in shards],
                         image_size=index.image_size, channels=index.channels, batch_size=cfg.data.batch_size,
                         seed=0, num_workers=workers, shuffle_buffer=cfg.data.shuffle_buffer,
                         augment=cfg.data.augment, epochs=1, checksums=[s.sha256 for s in shards])
    loader = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    next(loader)  # the workers have started and fetched their first shard
    start, n = time.perf_counter(), 0
    for x, _, _ in loader:
        n += x.shape[0]
        if n >= images:
            break
    return n / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_memory(cfg, device: torch.device, batches: int) -> float:
    """Images/s of data.mode=memory's gather on `device` (after the one-time load)."""
    streams = build_streams(cfg.data, rank=0, world_size=1, seed=0, device=device)
    for _ in range(3):
        next(streams.unlabelled)
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        next(streams.unlabelled)
    sync(device)
    return batches * cfg.data.batch_size / (time.perf_counter() - start)


def time_step(cfg, device: torch.device, steps: int) -> float:
    """Images/s one training step consumes (data.batch_size per step) on a fixed batch on `device`."""
    index = load_index(cfg.data.shards)
    family = get_family(cfg.model.family)
    nets = build_networks(cfg, channels=index.channels, image_size=index.image_size, num_classes=index.num_classes)
    for net in nets.values():
        net.to(device).train()
    backend = TorchBackend.for_config(cfg)
    backend.setup(nets, family.groups_in_order, cfg.optim, device)
    run = PhaseRunner(backend, family.make_loss(cfg.loss, cfg.model, index.num_classes), list(nets))
    gen = torch.Generator().manual_seed(0)
    shape = (index.channels, index.image_size, index.image_size)
    b, bl = cfg.data.batch_size, cfg.data.labelled_batch_size
    batch = Batch(*(t.to(device) for t in (torch.rand(b, *shape, generator=gen) * 2 - 1,
                                           torch.randint(0, max(1, index.num_classes), (b,), generator=gen),
                                           torch.rand(bl, *shape, generator=gen) * 2 - 1,
                                           torch.arange(bl) % max(1, index.num_classes))))

    def step() -> None:
        for group in family.groups_in_order:
            for _ in range(group.steps(cfg.loss)):
                run(group, batch)

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator, torch.compile when set
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * b / (time.perf_counter() - start)


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu}, {os.cpu_count()} logical CPUs{gpu}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def write_section(out: Path, heading: str, body: str) -> None:
    """Put `## heading` + body into `out`, replacing an earlier section of the same heading."""
    title = "# Data throughput (benchmarks/data_throughput.py)\n"
    text = out.read_text() if out.is_file() else title
    head, *sections = text.split("\n## ")
    sections = [s for s in sections if s.split("\n", 1)[0] != heading] + [f"{heading}\n\n{body}"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n## ".join([head.rstrip("\n") + "\n", *(s.rstrip("\n") + "\n" for s in sections)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(ROOT / "launch" / "recipes" / "digits_tribigan.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--synthetic-cifar", type=int, default=0, metavar="N",
                   help="generate N CIFAR-10-format training images instead of using the recipe's shards")
    p.add_argument("--workers", type=int, default=2, help="loader workers of the second stream timing")
    p.add_argument("--images", type=int, default=5000, help="images per stream timing")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process (the step on cpu)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_throughput.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"train.device={args.device}", f"train.out_dir={tmp}/run", *args.set]
        if args.synthetic_cifar:
            cls = synthetic_cifar(Path(tmp) / "cifar", args.synthetic_cifar)
            src = sources.cifar10(Path(tmp) / "cifar", download=False, image_size=32, dataset_cls=cls)
            write_shards(src, Path(tmp) / "shards", progress=False)
            overrides.append(f"data.shards={Path(tmp) / 'shards'}")
        cfg = load_config(args.recipe, overrides)
        ensure_shards(cfg.data)
        index = load_index(cfg.data.shards)
        tar_bytes = sum(Path(index.shard_path(s)).stat().st_size for s in index.split("train").shards)
        per_image = tar_bytes / index.split("train").count
        memory_cfg = load_config(args.recipe, [*overrides, "data.mode=memory"])
        step = time_step(cfg, device, args.steps)
        gather = time_memory(memory_cfg, device, batches=max(50, args.steps))
        one = time_stream(cfg, 1, args.images)
        many = time_stream(cfg, args.workers, args.images) / args.workers
    origin = (f"{args.synthetic_cifar} generated images in CIFAR-10's on-disk format, through prepare_data's path"
              if args.synthetic_cifar else f"the recipe's shards ({cfg.data.shards})")
    heading = f"{Path(args.recipe).name} on {device.type}" + (f" ({' '.join(args.set)})" if args.set else "")
    body = "\n".join([
        f"Machine: {machine(device)}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} when it started",
        "", f"Command: `python benchmarks/data_throughput.py {' '.join(sys.argv[1:])}`", "",
        f"Data: {origin}; {index.image_size}x{index.image_size}x{index.channels}, {per_image:.0f} bytes per sample "
        f"in the tars. Batch {cfg.data.batch_size} (+{cfg.data.labelled_batch_size} labelled), augment "
        f"{cfg.data.augment}, {cfg.model.family} width {cfg.model.width}, precision {cfg.train.precision}, "
        f"{args.threads} torch thread(s) in the main process.", "",
        f"| step consumes (img/s) | stream, 1 worker (img/s) | stream, {args.workers} workers (img/s per worker) "
        "| memory gather on the device (img/s) | workers needed by the stream | memory gather / step |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {step:,.0f} | {one:,.0f} | {many:,.0f} | {gather:,.0f} | {step / one:.2f} | {gather / step:.1f} |",
    ]) + "\n"
    print(body)
    write_section(Path(args.out), heading, body)


if __name__ == "__main__":
    main()
