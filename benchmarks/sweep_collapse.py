"""Which trials of a GAN sweep collapsed: the discriminator's loss and the generator's samples of
every trial's last checkpoint (results: benchmarks/results/sweeps/).

    python benchmarks/sweep_collapse.py RUNS/SWEEP_OUT_DIR [--samples 1000] [--out table.md]

Per trial (RUNS/.../trials/<id>): the swept values (from sweep.csv), the steps trained, loss/d over
the second half of training (mean, and the share of logged steps below 0.01: "D stuck at 0"), and
of `--samples` samples of G (one torch thread, CPU): FID against as many training images in the
feature space of tgan's dataset classifier (tgan/eval/generation.py), the number of classes the
classifier assigns at least 2% of the samples to, and the normalised entropy of that class
histogram (1 = every class equally often, 0 = one class). A collapsed generator shows as few
classes / low entropy / a high FID; a discriminator that wins outright as loss/d stuck near 0.
The classifier is trained and cached on first use (it reads the test split only for its accuracy).
"""
import argparse
import csv
import json
import math
from pathlib import Path

import torch

from tgan.data.streams import load_split
from tgan.eval.generation import _batched, dataset_classifier, fid_kid, generate
from tgan.families import get_family
from tgan.train import checkpoint as ckpt

torch.set_num_threads(1)

p = argparse.ArgumentParser()
p.add_argument("sweep_dir")
p.add_argument("--samples", type=int, default=1000)
p.add_argument("--out", help="also write the markdown table here")
args = p.parse_args()

root = Path(args.sweep_dir)
rows = list(csv.DictReader((root / "sweep.csv").open()))
fixed = {"trial", "steps", "stopped_early", "error", "out_dir"}
keys = [k for k in rows[0] if k not in fixed and not k.startswith(("val_", "test_"))]
real = None
lines = ["| " + " | ".join([*keys, "steps", "loss/d (2nd half)", "loss/d < 0.01", "FID (classifier)",
                            "classes >= 2%", "class entropy"]) + " |"]
lines.append("|" + " --- |" * (len(keys) + 6))
for row in sorted(rows, key=lambda r: [float(r[k]) for k in keys]):
    trial = Path(row["out_dir"])
    cfg, nets = ckpt.load_networks(ckpt.latest_checkpoint(trial))
    if real is None:  # the same real images for every trial (the first 20000 training images, key order)
        x, _ = load_split(cfg.data.shards, "train", limit=20000)
        real = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:args.samples]]
        classifier, _ = dataset_classifier(cfg)
    fake = generate(nets["G"], args.samples, sample_z=get_family(cfg.model.family).sample_z,
                    latent_dim=cfg.model.latent_dim, seed=0)
    device = torch.device("cpu")
    fid = fid_kid(_batched(classifier.features, real, device), _batched(classifier.features, fake, device))["fid"]
    share = torch.bincount(_batched(classifier, fake, device).argmax(1), minlength=10).float() / args.samples
    entropy = float(-(share[share > 0] * share[share > 0].log()).sum() / math.log(len(share)))
    logged = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    steps = logged[-1]["step"]
    late = [r["loss/d"] for r in logged if r["step"] > steps / 2 and r.get("loss/d") is not None]
    lines.append("| " + " | ".join([*(row[k] for k in keys), str(steps), f"{sum(late) / len(late):.3g}",
                                    f"{sum(v < 0.01 for v in late)}/{len(late)}", f"{fid:.1f}",
                                    str(int((share >= 0.02).sum())), f"{entropy:.2f}"]) + " |")
    print(lines[-1], flush=True)
table = "\n".join(lines) + "\n"
print(table)
if args.out:
    Path(args.out).write_text(table)
