"""Start-up of the data layer per rank, before and after lazy shard verification, side by side.

    python benchmarks/startup.py [--baseline 0fe7361] [--shards 10 200] [--ranks 1 4] [--shard-size 100] [--out benchmarks/results/startup.md]

For each shard count it writes a synthetic 32x32 RGB, 10-class data set (random pixels,
`--shard-size` samples per shard) through the real prepare path, then for each rank count spawns that many gloo ranks that
each time `build_streams` (the tribigan setting: 10 labels per class) plus the first unlabelled and
labelled batch, i.e. everything before step 1 can run. "old" is the tgan package of the `--baseline`
commit (extracted with `git archive`), "new" this checkout's; both run in the same invocation.

Bytes read per rank: every shard or index file a rank opens, counted through Python's audit hook
("open" events on the data directory) and sized on disk; both versions read a file they open whole
(sha256, header scan, or the reader's fetch), so this is the storage traffic a bucket would see.
Time: wall seconds per rank from a barrier to its first batches; the table shows the slowest rank,
since step 1 waits for it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rank_main(args: argparse.Namespace) -> None:
    """One rank: runs with PYTHONPATH at the old or new tree; prints one JSON line."""
    import torch.distributed as dist

    from tgan.config import DataConfig
    from tgan.data.streams import build_streams

    data = str(Path(args.data).resolve())
    opened: dict[str, int] = {}

    def audit(event: str, hook_args: tuple) -> None:
        if event == "open" and isinstance(hook_args[0], str) and hook_args[0].startswith(data):
            opened[hook_args[0]] = opened.get(hook_args[0], 0) + 1

    dist.init_process_group("gloo", init_method=f"file://{args.init}", rank=args.rank, world_size=args.world)
    labels = {"labelled_batch_size": 32, "labels_per_class": 10} if args.labelled else {"labelled_batch_size": 0}
    cfg = DataConfig(shards=data, image_size=32, batch_size=64, shuffle_buffer=100, **labels)
    dist.barrier()
    sys.addaudithook(audit)
    start = time.perf_counter()
    streams = build_streams(cfg, rank=args.rank, world_size=args.world, seed=0)
    next(streams.unlabelled)
    if args.labelled:
        next(streams.labelled)
    seconds = time.perf_counter() - start
    files = dict(opened)
    print(json.dumps({"seconds": seconds, "bytes": sum(os.path.getsize(f) * n for f, n in files.items()),
                      "opens": sum(files.values())}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(tree: Path, data: Path, world: int, labelled: bool) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--world", str(world), "--init",
                                   str(init), "--data", str(data), *(["--labelled"] if labelled else [])], env=env, stdout=subprocess.PIPE, text=True)
                 for r in range(world)]
        outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a rank failed under {tree}: {outs}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def make_data(root: Path, shards: int, shard_size: int) -> Path:
    import numpy as np

    from tgan.data.prepare import write_shards
    from tgan.data.sources import array_source

    out = root / f"shards-{shards}"
    rng = np.random.default_rng(shards)
    n = shards * shard_size
    images = {"train": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
              "test": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)}
    labels = {s: np.arange(len(x)) % 10 for s, x in images.items()}
    write_shards(array_source("random", images, labels, [str(c) for c in range(10)], image_size=32), out,
                 shard_size=shard_size, progress=False)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="0fe7361", help="commit with the old start-up (every rank checks every shard)")
    p.add_argument("--shards", type=int, nargs="+", default=[10, 200])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 4])
    p.add_argument("--shard-size", type=int, default=100, help="samples per shard")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "startup.md"))
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, help=argparse.SUPPRESS)
    p.add_argument("--init", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--labelled", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank is not None:
        return rank_main(args)
    sys.path.insert(0, str(REPO))
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "tgan"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for shards in args.shards:
            data = make_data(Path(tmp), shards, args.shard_size)
            size = sum(f.stat().st_size for f in data.glob("train-*.tar"))
            for labelled in (True, False):
                for world in args.ranks:
                    res = {name: run_ranks(tree, data, world, labelled) for name, tree in (("old", old), ("new", REPO))}
                    rows.append((shards, size, labelled, world, res))
                    print(shards, labelled, world, {k: [round(r["seconds"], 2) for r in v] for k, v in res.items()},
                          flush=True)
    mb = 1 / 2**20
    lines = [
        "# Data start-up per rank (benchmarks/startup.py)", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; 1-minute load average "
        f"{load:.1f} when it started (shared with other work: times are noisy, bytes are exact).", "",
        f"Command: `python benchmarks/startup.py --baseline {args.baseline} --shards {' '.join(map(str, args.shards))} "
        f"--ranks {' '.join(map(str, args.ranks))} --shard-size {args.shard_size}`", "",
        f"Synthetic 32x32 RGB, 10 classes, {args.shard_size} samples per shard, checksums on; with labels = the tribigan "
        "setting (10 labels per class), without = bigan / unconditional mbgan; gloo ranks on this machine, one "
        "process each, no loader workers. Start-up = `build_streams` + first unlabelled (and labelled) batch; "
        "time of the slowest rank; MB = shard and index "
        "bytes read per rank (mean over ranks). old = every rank sha256s and header-scans every shard; new = "
        "each shard is checked by the reader that fetches it, and the labelled-subset scan is split over the ranks.", "",
        "| shards | data MB | labels | ranks | old: s | new: s | old: MB read per rank | new: MB read per rank |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for shards, size, labelled, world, res in rows:
        o, n = res["old"], res["new"]
        lines.append(f"| {shards} | {size * mb:.1f} | {'10/class' if labelled else 'none'} | {world} | {max(r['seconds'] for r in o):.2f} | "
                     f"{max(r['seconds'] for r in n):.2f} | {sum(r['bytes'] for r in o) / len(o) * mb:.1f} | "
                     f"{sum(r['bytes'] for r in n) / len(n) * mb:.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
