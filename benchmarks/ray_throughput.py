"""Throughput of the training loop bare vs on Ray Train, side by side in one run.

CPU (default; the numbers in benchmarks/results/ray_throughput_cpu.md):
  python benchmarks/ray_throughput.py [--recipe launch/recipes/digits_tribigan.yaml] [--steps 30]
  1. bare: tgan.train.loop.train in this process, 1 thread, no Ray;
  2. Ray Train DDP, 1 worker with 1 CPU (so 1 thread): the Ray overhead (target >= 0.9 of bare);
  3. Ray Train DDP, 2 workers with 1 CPU each: scaling on a 2-core machine, and where a step's time
     goes (data wait, DDP all-reduce, the mining all-gather, the rest = compute), the collectives
     timed on the live process group with the run's own tensor sizes.
GPU box:
  python benchmarks/ray_throughput.py --device cuda --recipe launch/recipes/cifar10_tribigan.yaml
  bare (1 GPU) vs Ray DDP fp32 vs Ray DDP bf16 (train.precision) vs Ray DeepSpeed bf16 on all GPUs,
  each also as achieved FLOP/s (torch.utils.flop_counter over two real training steps of the bare
  loop, so only matmuls and convolutions count) against the card's bf16 matmul peak measured in
  the same run (8192^3 products). With no shards for the recipe it writes SYNTHETIC shards of the
  recipe's shape (random images, random labels) and says so in the results.

Throughput = global batch / the median wall interval between consecutive steps (every per-step
overhead included: reporting, metrics); the first --warmup steps are excluded. The configurations
run interleaved for --rounds rounds and each keeps its best round, so a burst of other work on a
shared machine hits all of them alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

import torch  # noqa: E402

from tgan.config import Config, config_from_dict, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _timed(cfg: Config, reporter=None):
    """A reporter that stamps the wall time of every step (and forwards to `reporter`)."""
    stamps = []

    def report(step, scalars, saved):
        stamps.append({"step": step, "t": time.perf_counter(), **scalars})
        if reporter is not None:
            reporter(step, scalars, saved)

    return stamps, report


def _comm_costs(cfg: Config, nets: dict, reps: int = 20) -> dict:
    """Time, on the live process group, one step's collectives at this run's sizes: DDP's gradient
    all-reduce of every trained network, and the mining all-gather (forward and backward)."""
    import torch.distributed as dist

    from tgan.losses.mining import gather_rows

    device = next(iter(nets.values())).parameters().__next__().device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    grads = torch.zeros(sum(p.numel() for n in nets.values() for p in n.parameters()), device=device)
    emb = torch.randn(cfg.data.labelled_batch_size, cfg.model.latent_dim, device=device, requires_grad=True)
    labels = torch.zeros(cfg.data.labelled_batch_size, dtype=torch.int64, device=device)
    out = {}
    for name, fn in (("allreduce_s", lambda: dist.all_reduce(grads)),
                     ("allgather_s", lambda: gather_rows(emb, labels)[0].sum().backward())):
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        out[name] = (time.perf_counter() - t0) / reps
    return out


def ray_worker(config: dict) -> None:
    """Ray Train worker: the real worker path (backend, reporter, metrics) plus timestamps."""
    import ray.train

    from cluster.trainer import make_backend, make_reporter
    from tgan.train.loop import train

    cfg = config_from_dict(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    backend = make_backend(cfg)
    stamps, report = _timed(cfg, make_reporter(cfg, rank))
    result = train(cfg, backend=backend, reporter=report)
    comm = _comm_costs(cfg, result.nets) if cfg.cluster.num_workers > 1 else {}
    if rank == 0:
        (Path(cfg.train.out_dir) / "bench.json").write_text(json.dumps({"stamps": stamps, "comm": comm}))


def summarize(stamps: list[dict], warmup: int, global_batch: int, comm: dict) -> dict:
    timed = [s for s in stamps if s["step"] > warmup]
    # Median of the step-to-step wall intervals: robust to other processes bursting on a shared box.
    gaps = sorted((b["t"] - a["t"]) / (b["step"] - a["step"]) for a, b in zip(timed, timed[1:]))
    per_step = gaps[len(gaps) // 2]
    data = sorted(s["perf/data_wait_s"] for s in timed)[len(timed) // 2]
    row = {"images_per_s": global_batch / per_step, "step_s": per_step, "data_wait_s": data}
    if comm:
        row.update(comm)
        row["compute_s"] = per_step - data - comm["allreduce_s"] - comm["allgather_s"]
    return row


def run_bare(cfg: Config, warmup: int) -> dict:
    from tgan.train.loop import train

    stamps, report = _timed(cfg)
    train(cfg, reporter=report)
    return summarize(stamps, warmup, cfg.data.batch_size, {})


def step_flops(cfg: Config) -> float:
    """Matmul and convolution FLOPs of one training step on one rank, counted over the real steps
    of the bare loop (forward and backward of every phase; Adam's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from tgan.train.loop import train

    with FlopCounterMode(display=False) as counter:
        train(cfg)
    return counter.get_total_flops() / cfg.train.steps


def bf16_matmul_peak(n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of an n x n x n bf16 matrix product on the current GPU (mean of `reps` after warm-up)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def run_ray(cfg: Config, warmup: int) -> dict:
    from cluster import ray_env
    from cluster.trainer import absolute_paths, build_trainer

    cfg = absolute_paths(cfg)
    ray_env.connect()
    ray_env.check_resources(cfg.cluster)
    build_trainer(cfg, ray_env.storage_path(cfg.cluster, cfg.train.out_dir), worker=ray_worker).fit()
    bench = json.loads((Path(cfg.train.out_dir) / "bench.json").read_text())
    return summarize(bench["stamps"], warmup, cfg.data.batch_size * cfg.cluster.num_workers, bench["comm"])


def synthetic_shards(cfg: Config, train: int = 20000, test: int = 2000) -> str:
    """Random images and labels of the recipe's shape, written with the data layer's own writer into
    <data.shards>-synthetic (kept: a second run reuses it)."""
    import numpy as np

    from tgan.data.prepare import write_shards
    from tgan.data.sources import array_source

    rng = np.random.default_rng(0)
    side, channels, classes = cfg.data.image_size, 3 if cfg.data.dataset in ("cifar10", "svhn", "celeba") else 1, 10
    sizes = {"train": train, "test": test}
    images = {k: rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8) for k, n in sizes.items()}
    labels = {k: rng.integers(0, classes, n) for k, n in sizes.items()}
    out = Path(cfg.data.shards + "-synthetic")
    if not (out / "index.json").is_file():
        source = array_source(f"synthetic-{cfg.data.dataset}", images, labels, [str(c) for c in range(classes)],
                              image_size=side, notes={"synthetic": "random images: throughput only"})
        write_shards(source, out, progress=False)
    return str(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=str(ROOT / "launch" / "recipes" / "digits_tribigan.yaml"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--results", default=None, help="markdown file to write (default benchmarks/results/...)")
    p.add_argument("--extra-row", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
                   help="one more Ray run: the GPU (or CPU) settings plus these overrides, e.g. "
                        "'DDP bf16, data in GPU memory=train.precision=bf16,data.mode=memory'")
    args = p.parse_args()

    base = load_config(args.recipe)
    shards, synthetic = base.data.shards, False
    if not (Path(shards) / "index.json").is_file() and base.data.dataset != "digits":
        shards, synthetic = synthetic_shards(base), True
    common = [f"data.shards={shards}", f"train.steps={args.steps}", "train.log_every=1", "train.checkpoint_every=0",
              f"train.device={args.device}", f"cluster.report_every={args.steps}", "eval.pictures=false"]
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def cfg_for(name, *more):
        return load_config(args.recipe, [*common, f"train.out_dir={args.out}/{stamp}-{name}", *more])

    from tgan.train.shards import ensure_shards

    ensure_shards(cfg_for("prep").data)
    if args.device == "cpu":
        torch.set_num_threads(1)
        one = ["cluster.use_gpu=false", "cluster.cpus_per_worker=1"]
        plan = {"bare loop, 1 process, 1 thread": (run_bare, ()),
                "Ray Train DDP, 1 worker x 1 CPU": (run_ray, (*one, "cluster.num_workers=1")),
                "Ray Train DDP, 2 workers x 1 CPU": (run_ray, (*one, "cluster.num_workers=2"))}
    else:
        gpus = torch.cuda.device_count()
        gpu = ["cluster.use_gpu=true", "cluster.gpus_per_worker=1", f"cluster.num_workers={gpus}",
               f"cluster.cpus_per_worker={max(1, (os.cpu_count() or 2) // gpus - 1)}"]
        plan = {"bare loop, 1 GPU": (run_bare, ()),
                f"Ray Train DDP fp32, {gpus} GPU(s)": (run_ray, tuple(gpu)),
                f"Ray Train DDP bf16 autocast, {gpus} GPU(s)": (run_ray, (*gpu, "train.precision=bf16")),
                f"Ray Train DeepSpeed bf16 ZeRO-1, {gpus} GPU(s)": (run_ray, (
                    *gpu, "cluster.backend=deepspeed", "cluster.deepspeed.bf16.enabled=true",
                    "cluster.deepspeed.zero_optimization.stage=1"))}
    for extra in args.extra_row:
        name, _, overrides = extra.partition("=")
        plan[name] = (run_ray, (*(gpu if args.device == "cuda" else one), *overrides.split(",")))
    flops = peak = None
    if args.device == "cuda":
        peak = bf16_matmul_peak()
        flops = step_flops(cfg_for("flops", "train.steps=2"))
    rows: dict[str, dict] = {}
    for r in range(args.rounds):
        for i, (name, (fn, more)) in enumerate(plan.items()):
            try:
                row = fn(cfg_for(f"r{r}-c{i}", *more), args.warmup)
            except Exception as e:  # one failing configuration must not lose the others' numbers
                row = {"images_per_s": 0.0, "error": str(e).strip().splitlines()[-1][:200]}
            print(f"round {r}: {name}: {row}", flush=True)
            if name not in rows or row["images_per_s"] > rows[name]["images_per_s"]:
                rows[name] = row

    names = list(rows)
    lines = [f"# Ray Train throughput ({args.device})", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
             + (f", {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}" if args.device == "cuda" else ""),
             f"- torch {torch.__version__}; recipe {Path(args.recipe).name}, per-rank batch {base.data.batch_size} "
             f"(+{base.data.labelled_batch_size} labelled), {args.steps} steps, first {args.warmup} not timed, "
             f"best of {args.rounds} interleaved rounds",
             f"- load average when done: {os.getloadavg()[0]:.1f} (other work shares this machine)",
             f"- data: {'SYNTHETIC random images of the recipe shape (throughput only)' if synthetic else shards}", "",
             *([f"- work per step and rank: {flops / 1e9:.0f} GFLOP ({flops / base.data.batch_size / 1e9:.2f} "
                f"GFLOP per unlabelled image; torch.utils.flop_counter, matmuls and convolutions only); "
                f"measured bf16 matmul peak of this card: {peak / 1e12:.0f} TFLOP/s"] if flops else []), "",
             "| run | images/s | TFLOP/s | % of bf16 peak | step (ms) | data wait (ms) | all-reduce (ms) "
             "| mining all-gather (ms) | rest = compute (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        r = rows[name]
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | |")
            continue
        ms = lambda k: f"{1000 * r[k]:.1f}" if k in r else "-"  # noqa: E731
        achieved = flops * r["images_per_s"] / base.data.batch_size if flops else None
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {f'{achieved / 1e12:.1f}' if achieved else '-'} "
                     f"| {f'{100 * achieved / peak:.1f}' if achieved else '-'} | {ms('step_s')} | {ms('data_wait_s')} | {ms('allreduce_s')} "
                     f"| {ms('allgather_s')} | {ms('compute_s')} |")
    ips = [rows[n]["images_per_s"] for n in names]
    lines += ["", *(f"- {names[i]} / {names[j]}: {ips[i] / ips[j]:.3f}" for i, j in ((1, 0), (2, 1)) if ips[j])]
    text = "\n".join(lines) + "\n"
    print(text)
    results = Path(args.results or ROOT / "benchmarks" / "results" / f"ray_throughput_{args.device}.md")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
