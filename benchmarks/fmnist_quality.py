"""The Fashion-MNIST quality table: every model trained for the same wall time, then evaluated.

    python benchmarks/fmnist_quality.py [--minutes 30] [--threads 1] [--width 0.25]

Two models train at a time, side by side, so that the models compared with each other share the
machine alike: first tribigan and bigan (the triplet term vs none), then mbgan and dcgan (MBGAN's
comparison). Each is `python launch/train_local.py` on its launch/recipes/fmnist_*.yaml recipe with
train.time_limit_s = --minutes, torch limited to --threads threads (on a 2-core machine two 1-thread
runs fill it), 1% of the labels for tribigan (60 per class, the recipe's), then the CLI's own
evaluation: trained networks, the same networks at their initial weights, and raw pixels, all
scored the same way (k-NN, mAP, linear probe).

The evaluation uses all 10,000 test images as queries and the first --gallery training images as
the k-NN/mAP gallery and the probe's training set: on a 2-core machine the full 60,000 would take
longer than the training (see tgan/eval/metrics.py). The bars of the core issue are checked and
written with their margins. Needs the shards: launch/prepare_data.py --dataset fashion-mnist ...
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("tribigan", "bigan"), ("mbgan", "dcgan"))


def launch(family: str, args: argparse.Namespace, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "launch/train_local.py", "--config", f"launch/recipes/fmnist_{family}.yaml",
           "--set", f"data.shards={args.shards}", "--set", f"train.out_dir={out}", "--set", "train.resume=never",
           "--set", "train.device=cpu", "--set", "train.steps=1000000",
           "--set", f"train.time_limit_s={args.minutes * 60:g}", "--set", "train.checkpoint_every=1000",
           "--set", f"model.width={args.width}", "--set", f"eval.max_train={args.gallery}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    log = (out.parent / f"{family}.log").open("w")
    print(" ".join(cmd[1:]), flush=True)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def summary(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["perf/step_time_s"] for r in rows]
    return {"steps": rows[-1]["step"], "median_step_s": sorted(steps)[len(steps) // 2],
            "eval": json.loads((out / "eval" / "eval.json").read_text())}


def pct(row: dict, key: str) -> float:
    return 100 * (row["map"] if key == "map" else row["knn"]["9"] if key == "9nn" else row["probe_accuracy"])


def bars(runs: dict) -> list[str]:
    """The core issue's bars, each with its margin in percentage points."""
    checks = []
    tri, bi = runs["tribigan"]["eval"]["rows"], runs["bigan"]["eval"]["rows"]
    for key, name in (("9nn", "9-NN"), ("map", "mAP")):
        for label, other in (("bigan E", bi["model E"]), ("random-init E", tri["random-init E"])):
            checks.append((f"tribigan {name} > {label}", pct(tri["model E"], key), pct(other, key)))
    checks.append(("tribigan mAP > raw pixels", pct(tri["model E"], "map"), pct(tri["raw pixels"], "map")))
    mb = runs["mbgan"]["eval"]["rows"]
    for feat in ("D", "D_conv"):
        checks.append((f"mbgan probe on {feat} > random-init {feat}", pct(mb[f"model {feat}"], "probe"),
                       pct(mb[f"random-init {feat}"], "probe")))
    return [f"- {'PASS' if a > b else 'MISS'}: {what}: {a:.2f} vs {b:.2f} ({a - b:+.2f} points)"
            for what, a, b in checks]


def table(runs: dict) -> list[str]:
    lines = ["| model | steps | features | dim | 1-NN | 9-NN | mAP | probe |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for family, run in runs.items():
        for name, row in run["eval"]["rows"].items():
            lines.append(f"| {family} | {run['steps']} | {name} | {row['dim']} | {100 * row['knn']['1']:.2f} | "
                         f"{pct(row, '9nn'):.2f} | {pct(row, 'map'):.2f} | {pct(row, 'probe'):.2f} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training wall time per model")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (two runs at a time)")
    p.add_argument("--width", type=float, default=0.25, help="model.width (0.25: ~0.45 s/step on one core)")
    p.add_argument("--gallery", type=int, default=10000, help="eval.max_train: gallery and probe training images")
    p.add_argument("--shards", default="data/fashion-mnist-28")
    p.add_argument("--out", default="runs/fmnist_quality")
    p.add_argument("--results", default="benchmarks/results/fmnist_quality.md")
    args = p.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    started, runs, walls = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), {}, {}
    for pair in PAIRS:
        t0 = time.time()
        procs = {family: launch(family, args, out / family) for family in pair}
        while len(walls) < len(runs) + len(procs):
            for family, proc in procs.items():
                if family in walls or proc.poll() is None:
                    continue
                if proc.returncode != 0:
                    print(f"{family} failed: see {out / (family + '.log')}", file=sys.stderr)
                    return 1
                walls[family] = time.time() - t0
            time.sleep(1)
        runs.update({family: summary(out / family) for family in pair})
        print(f"{' and '.join(pair)}: {time.time() - t0:.0f} s, training and evaluation", flush=True)

    lines = ["# Fashion-MNIST quality, equal wall time per model", "",
             f"`python benchmarks/fmnist_quality.py --minutes {args.minutes:g} --threads {args.threads} "
             f"--width {args.width} --gallery {args.gallery}`", "",
             f"- started {started}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{platform.processor() or 'cpu'}; torch threads per run: {args.threads}, two runs at a time",
             f"- training: {args.minutes:g} min of wall time per model (train.time_limit_s), model.width "
             f"{args.width}, batch 100, tribigan with 60 labels per class (600, 1%), Adam 2e-4/0.5",
             f"- evaluation: 10,000 test queries against the first {args.gallery} training images "
             "(k-NN gallery and probe training set); probe = logistic regression, C on a validation split",
             "- wall time per model, training + evaluation: " +
             ", ".join(f"{f} {walls[f] / 60:.1f} min ({runs[f]['steps']} steps, median step "
                       f"{runs[f]['median_step_s']:.2f} s)" for f in runs), "",
             *table(runs), "", "Bars (core issue):", *bars(runs), ""]
    Path(ROOT / args.results).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
