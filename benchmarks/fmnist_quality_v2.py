"""Quality table v2 (issue 18): tripletgan against the triplet-only baseline with the SAME network and
regularisers (the reference's MLP D, weight norm, noise 0.3 / 0.5; launch/recipes/fmnist_tripletgan.yaml
and fmnist_triplet_mlp.yaml) on Fashion-MNIST at few labels, raw pixels, random init.

    python benchmarks/fmnist_quality_v2.py --labels 10 --seeds 0 1 2 --minutes 3
    python benchmarks/fmnist_quality_v2.py --report      # only rewrite the results file from --out

Every run: `launch/train_local.py --no-eval` on its recipe, one torch thread, one run at a time,
train.time_limit_s = --minutes (live validation included), train.seed = data.label_seed = the seed (both
families of a seed see the same labelled images), the best checkpoint on the VALIDATION split (val/map,
data.validation_size 2000, every --every steps). Then, at that checkpoint, all 10,000 test queries
against two galleries: the first 10,000 training images and all 60,000 (the reference's protocol),
scored on D(x) / E(x) (16-d); 9-NN and mAP. Random init (the same network at seed 0's initial
weights) and raw pixels are scored once, the same way. Nothing is chosen on the test split: the
hyperparameters are the reference's (recipes), the checkpoint the validation split's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"tripletgan": "fmnist_tripletgan", "triplet": "fmnist_triplet_mlp"}
ROW = {"tripletgan": "D", "triplet": "E"}
GALLERIES = (10000, 60000)


def run_dir(args, family: str, labels: int, seed: int) -> Path:
    return Path(args.out) / f"{family}_l{labels}_s{seed}"


def train(args, family: str, labels: int, seed: int) -> None:
    out = run_dir(args, family, labels, seed)
    sets = [f"data.shards={args.shards}", f"train.out_dir={out}", "train.resume=never", "train.device=cpu",
            "train.steps=1000000", f"train.time_limit_s={args.minutes * 60:g}", "train.checkpoint_every=1000000",
            "train.log_every=50", f"train.seed={seed}", f"data.label_seed={seed}", f"data.labels_per_class={labels}",
            f"eval.every={args.every}", "eval.best_metric=val/map", *args.set]
    cmd = [sys.executable, "launch/train_local.py", "--config", f"launch/recipes/{RECIPES[family]}.yaml", "--no-eval",
           *[a for s in sets for a in ("--set", s)]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.sh").write_text(shlex.join(cmd) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0, load = time.time(), os.getloadavg()[0]
    with (out / "log.txt").open("w") as log:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    (out / "wall.json").write_text(json.dumps({"wall_s": round(time.time() - t0, 1), "load_at_start": load,
                                               "load_at_end": os.getloadavg()[0]}) + "\n")


def scores(train_f, train_y, test_f, test_y) -> dict:
    from tgan.eval.metrics import retrieval_metrics

    out = {}
    for g in GALLERIES:
        r = retrieval_metrics(train_f[:g], train_y[:g], test_f, test_y, max_k=9)
        out[str(g)] = {"knn9": r.knn_accuracy[8], "map": r.mean_average_precision}
    return out


def evaluate(args, family: str, labels: int, seed: int, data) -> None:
    """Test scores of the best-on-validation checkpoint (and, once, of random init and raw pixels)."""
    from tgan.families import get_family
    from tgan.families.base import build_networks
    from tgan.train.checkpoint import load_networks

    out = run_dir(args, family, labels, seed)
    cfg, nets = load_networks(out / "checkpoints" / "best")
    fam = get_family(family)
    feats = [fam.features(nets, x)[ROW[family]] for x in (data[0], data[2])]
    result = {"best": json.loads((out / "checkpoints" / "best.json").read_text()),
              **scores(feats[0], data[1], feats[1], data[3])}
    (out / "test.json").write_text(json.dumps(result) + "\n")
    baselines = Path(args.out) / "baselines.json"
    if args.baselines and not baselines.exists():  # raw pixels against 60,000 images: minutes on a busy CPU
        init = build_networks(cfg, channels=1, image_size=28, num_classes=10)
        rand = [fam.features(init, x)[ROW[family]] for x in (data[0], data[2])]
        raw = [x.flatten(1) for x in (data[0], data[2])]
        baselines.write_text(json.dumps({"random init": scores(rand[0], data[1], rand[1], data[3]),
                                         "raw pixels": scores(raw[0], data[1], raw[1], data[3])}) + "\n")


def row(name: str, runs: list[dict], steps: str) -> str:
    cells = []
    for g in map(str, GALLERIES):
        for m in ("knn9", "map"):
            v = [100 * r[g][m] for r in runs]
            cells.append(f"{mean(v):.2f} ({min(v):.2f}..{max(v):.2f})" if len(v) > 1 else f"{v[0]:.2f}")
    return f"| {name} | {len(runs)} | {steps} | " + " | ".join(cells) + " |"


def report(args) -> None:
    lines = ["# Fashion-MNIST quality v2: tripletgan against triplet-only with the same MLP D and regularisers",
             "", f"Machine: {platform.machine()}, {os.cpu_count()} cores ({platform.platform()}), shared with other "
             "jobs; one run at a time, one torch thread. Command: "
             f"`python benchmarks/fmnist_quality_v2.py --minutes {args.minutes:g} --every {args.every} ...` "
             "(each run's exact command is in its command.sh).", "",
             "Test: 10,000 queries; 9-NN accuracy and mAP (%), mean (min..max) over seeds, against the first "
             "10,000 training images and against all 60,000. Checkpoint: best val/map on the 2,000-image "
             "validation split. Steps: per seed, reached / best.", "",
             "| model | seeds | steps | 9-NN 10k | mAP 10k | 9-NN 60k | mAP 60k |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for labels in sorted({int(p.name.split("_l")[1].split("_")[0]) for p in Path(args.out).glob("*_l*_s*")}):
        for family in RECIPES:
            runs, steps = [], []
            for out in sorted(Path(args.out).glob(f"{family}_l{labels}_s*")):
                if (out / "test.json").exists():
                    t = json.loads((out / "test.json").read_text())
                    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
                    wall = json.loads((out / "wall.json").read_text())
                    runs.append(t)
                    steps.append(f"{last['step']}/{t['best']['step']} (load {wall['load_at_start']:.0f})")
            if runs:
                lines.append(row(f"{family}, {labels} labels/class", runs, "; ".join(steps)))
    base = Path(args.out) / "baselines.json"
    if base.exists():
        for name, s in json.loads(base.read_text()).items():
            lines.append(row(name, [s], "-"))
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, nargs="+", default=[10], help="labels per class")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--every", type=int, default=250, help="steps between validations")
    p.add_argument("--shards", default="data/fashion-mnist-28")
    p.add_argument("--out", default="runs/fmnist_quality_v2")
    p.add_argument("--results", default="benchmarks/results/fmnist_quality_v2.md")
    p.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    p.add_argument("--baselines", action="store_true", help="also score random init and raw pixels")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if not args.report:
        import torch

        from tgan.data.streams import load_split

        torch.set_num_threads(1)
        data = [*load_split(args.shards, "train", 0), *load_split(args.shards, "test", 0)]
        for labels in args.labels:
            for seed in args.seeds:
                for family in RECIPES:
                    out = run_dir(args, family, labels, seed)
                    if not (out / "wall.json").exists():  # an interrupted part continues where it stopped
                        train(args, family, labels, seed)
                    if not (out / "test.json").exists():
                        evaluate(args, family, labels, seed, data)
                        report(args)
    report(args)


if __name__ == "__main__":
    main()
