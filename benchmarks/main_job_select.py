"""Choose the digits main recipe's settings on the VALIDATION split (benchmarks/results/main_job.md).

    python benchmarks/main_job_select.py --steps 800 --every 100 --parallel 15 \
        --run "tri50_s1|data.labels_per_class=50 train.seed=1" \
        --run "trip50_s1|data.labels_per_class=50 model.family=triplet train.seed=1"
    python benchmarks/main_job_select.py --baselines      # raw pixels and random-init E on the same split

Every --run is the main recipe (launch/recipes/digits_tribigan.yaml) on the one-process path
(launch/train_local.py, no final evaluation, so the test split is never read) with the global batch of
its 2 Ray workers (2 x 64 unlabelled + 2 x 32 labelled) and the given overrides, one torch thread
each, --parallel at a time. It prints val/map, val/knn1 and val/knn9 (in %) every --every steps: the
live validation of tgan/eval/validation.py, 200 held-out training images against a 1,000-image gallery.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "launch" / "recipes" / "digits_tribigan.yaml"
# The 2 workers' global batch in one process; no comparison row (eval.baseline) and no checkpoints between.
SAME_AS_MAIN_JOB = ["data.batch_size=128", "data.labelled_batch_size=64", "eval.baseline=",
                    "train.checkpoint_every=100000", "train.log_every=50"]


def run(name: str, overrides: list[str], args: argparse.Namespace) -> list[str]:
    out = Path(args.out) / name
    sets = SAME_AS_MAIN_JOB + [f"train.steps={args.steps}", f"eval.every={args.every}", f"train.out_dir={out}",
                               *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "launch" / "train_local.py"), "--config", str(RECIPE), "--no-eval"]
    proc = subprocess.run(cmd + [a for s in sets for a in ("--set", s)], env=env, capture_output=True, text=True)
    if proc.returncode:
        return [f"{name}: failed: {proc.stderr.strip().splitlines()[-1]}"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [f"{name}\t{r['step']}\t{100 * r['val/map']:.2f}\t{100 * r['val/knn1']:.2f}\t{100 * r['val/knn9']:.2f}"
            f"\t{r['elapsed_s']:.0f}s" for r in rows if "val/map" in r]


def baselines() -> None:
    """Raw pixels and the random-init E of train.seed 0, 1, 2 on the live-validation split and gallery."""
    from tgan.config import load_config
    from tgan.data.codec import to_float
    from tgan.data.streams import build_streams
    from tgan.eval.metrics import retrieval_metrics
    from tgan.families import get_family
    from tgan.families.base import build_networks

    cfg = load_config(RECIPE, ["eval.baseline="])
    s = build_streams(cfg.data, rank=0, world_size=1, seed=0, gallery_size=cfg.eval.gallery_size)
    queries, gallery = to_float(s.validation.images), to_float(s.gallery.images)

    def show(name, g, q):
        r = retrieval_metrics(g, s.gallery.labels, q, s.validation.labels, max_k=9)
        print(f"{name}\tmap {100 * r.mean_average_precision:.2f}\tknn1 {100 * r.knn_accuracy[0]:.2f}"
              f"\tknn9 {100 * r.knn_accuracy[8]:.2f}")

    show("raw pixels", gallery.flatten(1), queries.flatten(1))
    family = get_family(cfg.model.family)
    for seed in (0, 1, 2):
        cfg.train.seed = seed
        nets = build_networks(cfg, channels=queries.shape[1], image_size=queries.shape[-1], num_classes=10)
        show(f"random-init E, seed {seed}", family.features(nets, gallery)["E"], family.features(nets, queries)["E"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", default=[], metavar="NAME|K=V K=V",
                   help="a run: its name, '|', then space-separated overrides of the main recipe")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default="/tmp/main_job_select")
    p.add_argument("--baselines", action="store_true")
    args = p.parse_args()
    if args.baselines:
        baselines()
    specs = [(r.split("|")[0], r.split("|", 1)[1].split() if "|" in r else []) for r in args.run]
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for lines in pool.map(lambda spec: run(*spec, args), specs):
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
