"""The Fashion-MNIST quality table: every family trained for the same wall time, over seeds, each
scored on the test split at its best checkpoint on the VALIDATION split; plus the labelled-fraction
curve of tribigan against the triplet-only baseline.

    python benchmarks/fmnist_quality.py --part table [--minutes 3] [--seeds 0 1 2] [--gallery 5000]
    python benchmarks/fmnist_quality.py --part curve --labels 12 300 [--seeds 0 1]
    python benchmarks/fmnist_quality.py --part report      # only rewrite the results file from runs/
    python benchmarks/fmnist_quality.py --part curve --labels 60 --set train.ema_decay=0.99 --out runs/fmnist_ema \
        --results benchmarks/results/fmnist_quality_ema_runs.md   # --set: a new --out and --results

Every run is `launch/train_local.py --no-eval` on launch/recipes/fmnist_<family>.yaml (whose
hyperparameters were chosen on the validation split, see the recipes' comments) with
train.time_limit_s = --minutes (live validation included: selection is part of the cost), one torch
thread, model.width --width, train.seed = the seed; live validation every --every steps on the
recipe's held-out split keeps checkpoints/best (val/map for the encoder families, val/probe for the
discriminator families, whose bar is the probe). Then `launch/evaluate.py <run>/checkpoints/best`:
10,000 test queries against the first --gallery training images (k-NN gallery and probe training
set), the same networks at their initial weights and raw pixels scored the same way.

Runs go two at a time, as pairs, so that the models compared with each other share the machine
alike: (tribigan, triplet) and (mbgan, dcgan) of one seed, then the bigan runs two by two; the curve
pairs (tribigan, triplet) at each label count. A run whose evaluation exists is not run again, so an
interrupted part continues where it stopped; the results file is rewritten after every pair from
all the runs found under --out (so runs with other --set overrides need an --out of their own).
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
FEATURES = {"tribigan": ["model E"], "triplet": ["model E"], "bigan": ["model E"],
            "mbgan": ["model D", "model D_conv"], "dcgan": ["model D_conv"]}
"""The trained rows each family contributes (mbgan: its metric embedding D(x) and DCGAN's protocol)."""
BEST_METRIC = {"tribigan": "val/map", "triplet": "val/map", "bigan": "val/map", "mbgan": "val/probe",
               "dcgan": "val/probe"}
BASELINES = (("random-init E", "tribigan"), ("random-init D", "mbgan"), ("random-init D_conv", "mbgan"),
             ("random-init D_conv", "dcgan"), ("raw pixels", None))
"""The untrained rows: the same architecture at the run's initial weights (E is the same network in
tribigan, triplet and bigan), and raw pixels."""
LABELLED = ("tribigan", "triplet")
TABLE_LABELS = 60  # the recipes' 60 per class: 600 of 60,000 = 1%
METRICS = (("1-NN", lambda r: r["knn"]["1"]), ("9-NN", lambda r: r["knn"]["9"]), ("mAP", lambda r: r["map"]),
           ("probe", lambda r: r["probe_accuracy"]))


def run_dir(args, family: str, seed: int, labels: int) -> Path:
    return Path(args.out) / (f"{family}_l{labels}_s{seed}" if family in LABELLED else f"{family}_s{seed}")


def command(args, family: str, seed: int, labels: int) -> str:
    """Training, then the CLI's test evaluation of the best-on-validation checkpoint."""
    out = run_dir(args, family, seed, labels)
    d_family = BEST_METRIC[family] == "val/probe"
    train = [sys.executable, "launch/train_local.py", "--config", f"launch/recipes/fmnist_{family}.yaml", "--no-eval"]
    sets = [f"data.shards={args.shards}", f"train.out_dir={out}", "train.resume=never", "train.device=cpu",
            "train.steps=1000000", f"train.time_limit_s={args.minutes * 60:g}", "train.checkpoint_every=1000000",
            "train.log_every=25", f"train.seed={seed}", f"model.width={args.width}",
            f"eval.every={args.every_d if d_family else args.every}", f"eval.best_metric={BEST_METRIC[family]}",
            f"eval.live_probe={str(d_family).lower()}"]
    if family in LABELLED:
        sets.append(f"data.labels_per_class={labels}")
    sets += args.set
    evaluate = [sys.executable, "launch/evaluate.py", str(out / "checkpoints" / "best"), "--out", str(out / "test"),
                "--set", f"eval.max_train={args.gallery}", "--set", "eval.pictures=false",
                "--set", "eval.fid_samples=0"]
    train += [a for s in sets for a in ("--set", s)]
    return f"{shlex.join(train)} && {shlex.join(evaluate)}"


def run_pairs(args, pairs: list[list[tuple[str, int, int]]]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for pair in pairs:
        todo = [job for job in pair if not (run_dir(args, *job) / "test" / "eval.json").exists()]
        if not todo:
            continue
        t0, load = time.time(), os.getloadavg()[0]
        procs = {}
        for job in todo:
            out = run_dir(args, *job)
            out.mkdir(parents=True, exist_ok=True)
            cmd = command(args, *job)
            (out / "command.sh").write_text(cmd + "\n")
            procs[job] = subprocess.Popen(cmd, shell=True, cwd=ROOT, env=env, stdout=(out / "log.txt").open("w"),
                                          stderr=subprocess.STDOUT)
        for job, proc in procs.items():
            if proc.wait() != 0:
                print(f"{job} failed: see {run_dir(args, *job) / 'log.txt'}", file=sys.stderr)
            else:
                info = {"wall_s": round(time.time() - t0, 1), "load_at_start": load, "load_at_end": os.getloadavg()[0],
                        "side_by_side": [list(j) for j in todo if j != job]}
                (run_dir(args, *job) / "wall.json").write_text(json.dumps(info) + "\n")
        print(f"{' + '.join(map(str, todo))}: {time.time() - t0:.0f} s, load {os.getloadavg()}", flush=True)
        report(args)


def collect(args) -> dict:
    """{(family, labels): [per-seed run summary]} from every finished run under --out."""
    runs: dict = {}
    for out in sorted(Path(args.out).glob("*_s*")):
        if not (out / "test" / "eval.json").exists():
            continue
        family, rest = out.name.split("_", 1)
        labels = int(rest.split("_")[0][1:]) if family in LABELLED else None
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        best = json.loads((out / "checkpoints" / "best.json").read_text())
        at_best = next(r for r in rows if r["step"] == best["step"])
        runs.setdefault((family, labels), []).append({
            "seed": int(out.name.rsplit("_s", 1)[1]), "steps": rows[-1]["step"], "best": best, "at_best": at_best,
            "val_s": sum(r.get("perf/validation_s", 0) for r in rows), "last": rows[-1],
            "val": [(r["step"], r[best["metric"]]) for r in rows if best["metric"] in r],
            "eval": json.loads((out / "test" / "eval.json").read_text()),
            "wall": json.loads((out / "wall.json").read_text()) if (out / "wall.json").exists() else {}})
    return runs


def stats(values: list[float]) -> str:
    return f"{100 * mean(values):.2f} ({100 * min(values):.2f}..{100 * max(values):.2f})"


def values(runs: list[dict], row: str, metric: str) -> list[float]:
    get = dict(METRICS)[metric]
    return [get(r["eval"]["rows"][row]) for r in runs]


def table(runs: dict, keys: list) -> list[str]:
    lines = ["| model | labels/class | seeds | steps | best step (val) | features | dim | 1-NN | 9-NN | mAP | probe |",
             "| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for key in keys:
        family, labels = key
        group = runs[key]
        steps = "/".join(str(r["steps"]) for r in group)
        best = "/".join(str(r["best"]["step"]) for r in group)
        for row in FEATURES[family]:
            dim = group[0]["eval"]["rows"][row]["dim"]
            cells = " | ".join(stats(values(group, row, m)) for m, _ in METRICS)
            lines.append(f"| {family} | {labels or '-'} | {len(group)} | {steps} | {best} | {row} | {dim} | {cells} |")
    for row, family in BASELINES:
        group = [r for (f, labels), g in runs.items() if f == family or family is None for r in g
                 if labels in (None, TABLE_LABELS) and row in r["eval"]["rows"]]
        if not group:
            continue
        # Every run scores them; they depend on the seed (random init) or on nothing (raw pixels).
        seeds = sorted({r["seed"] for r in group})
        one_per_seed = [next(r for r in group if r["seed"] == s) for s in seeds]
        cells = " | ".join(stats(values(one_per_seed, row, m)) for m, _ in METRICS)
        dim = one_per_seed[0]["eval"]["rows"][row]["dim"]
        lines.append(f"| {row} ({family or 'any'}) | - | {len(seeds)} | - | - | {row} | {dim} | {cells} |")
    return lines


def bar(name: str, a: list[float], b: list[float]) -> str:
    """PASS only when the mean margin is positive and larger than the seeds' spread of both arms."""
    margin = 100 * (mean(a) - mean(b))
    spread = 100 * max(max(a) - min(a), max(b) - min(b))
    paired = [100 * (x - y) for x, y in zip(a, b)]
    verdict = ("PASS" if margin > spread else "level" if margin > -spread else "MISS") if len(a) > 1 else \
        ("pass (1 seed)" if margin > 0 else "miss (1 seed)")
    return (f"- {verdict}: {name}: {100 * mean(a):.2f} vs {100 * mean(b):.2f}, margin {margin:+.2f} points; "
            f"seed spread (max-min of either arm) {spread:.2f}; per-seed differences "
            f"{', '.join(f'{d:+.2f}' for d in paired)}")


def paired(a_runs: list[dict], b_runs: list[dict]) -> tuple[list[dict], list[dict]]:
    seeds = sorted({r["seed"] for r in a_runs} & {r["seed"] for r in b_runs})
    pick = lambda runs: [next(r for r in runs if r["seed"] == s) for s in seeds]  # noqa: E731
    return pick(a_runs), pick(b_runs)


def bars(runs: dict) -> list[str]:
    lines = []
    tri, trip = runs.get(("tribigan", TABLE_LABELS)), runs.get(("triplet", TABLE_LABELS))
    if tri and trip:
        a, b = paired(tri, trip)
        for m in ("mAP", "9-NN"):
            lines.append(bar(f"(a) tribigan E {m} > triplet-only E {m} at 1% labels",
                             values(a, "model E", m), values(b, "model E", m)))
        for m in ("mAP", "9-NN"):
            lines.append(bar(f"(context) tribigan E {m} > raw pixels", values(tri, "model E", m),
                             values(tri, "raw pixels", m)))
            lines.append(bar(f"(context) tribigan E {m} > random-init E", values(tri, "model E", m),
                             values(tri, "random-init E", m)))
    mb, dc = runs.get(("mbgan", None)), runs.get(("dcgan", None))
    if mb and dc:
        a, b = paired(mb, dc)
        for row in ("model D_conv", "model D"):
            lines.append(bar(f"(b) mbgan {row[6:]} probe >= dcgan D_conv probe", values(a, row, "probe"),
                             values(b, "model D_conv", "probe")))
        lines.append(bar("(context) mbgan D_conv probe > random-init D_conv", values(mb, "model D_conv", "probe"),
                         values(mb, "random-init D_conv", "probe")))
    return lines


def curve(runs: dict) -> list[str]:
    lines = ["| labels/class (fraction) | seeds | tribigan mAP | triplet mAP | mAP margin | tribigan 9-NN | "
             "triplet 9-NN | 9-NN margin | per-seed mAP margins |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for labels in sorted({k[1] for k in runs if k[0] == "tribigan"}):
        if ("triplet", labels) not in runs:
            continue
        a, b = paired(runs[("tribigan", labels)], runs[("triplet", labels)])
        if not a:
            continue
        cells = []
        for m in ("mAP", "9-NN"):
            va, vb = values(a, "model E", m), values(b, "model E", m)
            cells += [stats(va), stats(vb), f"{100 * (mean(va) - mean(vb)):+.2f}"]
        maps = zip(values(a, "model E", "mAP"), values(b, "model E", "mAP"))
        per_seed = ", ".join(f"{100 * (x - y):+.2f}" for x, y in maps)
        lines.append(f"| {labels} ({labels * 10 / 600:.1f}%) | {len(a)} | {' | '.join(cells)} | {per_seed} |")
    return lines


def dynamics(runs: dict) -> list[str]:
    """What the runs' metrics.jsonl say at the selected (best) step and at the last step."""
    keys = ("loss/triplet", "grad_norm/E", "d/real", "d/fake", "loss/d", "loss/g")
    lines = ["| run | seed | best step | " + " | ".join(f"{k} at best / last" for k in keys)
             + " | validation s | load | val metric by step |",
             "| --- | ---: | ---: | " + " | ".join("---" for _ in keys) + " | ---: | --- | --- |"]
    for (family, labels), group in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        for r in sorted(group, key=lambda r: r["seed"]):
            cells = [f"{r['at_best'][k]:.3g} / {r['last'][k]:.3g}" if k in r["at_best"] and k in r["last"] else "-"
                     for k in keys]
            lines.append(f"| {family}{f' l{labels}' if labels else ''} | {r['seed']} | {r['best']['step']} | "
                         f"{' | '.join(cells)} | {r['val_s']:.0f} | {load(r)} | {r['best']['metric']} "
                         + ", ".join(f"{step}: {100 * v:.1f}" for step, v in thin(r["val"], r["best"]["step"])) + " |")
    return lines


def thin(points: list[tuple[int, float]], keep: int, most: int = 8) -> list[tuple[int, float]]:
    """At most `most` evenly spaced points of a trajectory, plus the step `keep` (the best) and the last."""
    if len(points) <= most:
        return points
    picked = {round(i * (len(points) - 1) / (most - 1)) for i in range(most)}
    return [p for i, p in enumerate(points) if i in picked or p[0] == keep]


def load(run: dict) -> str:
    """The 1-minute load average when the run's pair started and ended (other users' work included)."""
    w = run["wall"]
    return f"{w['load_at_start']:.1f}/{w['load_at_end']:.1f}" if w else "-"


def report(args) -> None:
    runs = collect(args)
    table_keys = [k for k in (("tribigan", TABLE_LABELS), ("triplet", TABLE_LABELS), ("bigan", None),
                              ("mbgan", None), ("dcgan", None)) if k in runs]
    walls = [r["wall"] for g in runs.values() for r in g if r["wall"]]
    loads = [w[k] for w in walls for k in ("load_at_start", "load_at_end")]
    lines = ["# Fashion-MNIST quality: equal wall time, 3 seeds, best checkpoint on validation", "",
             "Written by `benchmarks/fmnist_quality.py` (see its docstring); the plan, the hyperparameters and "
             "the reading are in benchmarks/results/fmnist_quality.md's hand-written part.", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} CPUs; 1 torch thread per run, two runs at a time; "
             "1-minute load average at the start/end of the pairs: "
             f"{min(loads, default=0):.1f}..{max(loads, default=0):.1f}",
             f"- {args.minutes:g} min of training per run (train.time_limit_s, live validation included), "
             f"model.width {args.width}, batch 100; live validation every {args.every} steps (E families, val/map) "
             f"or {args.every_d} (D families, val/probe) on 2,000 held-out training images against a "
             "2,000-image gallery",
             f"- test evaluation of checkpoints/best: 10,000 test queries against the first {args.gallery} training "
             "images (k-NN gallery and probe training set); cells: mean (min..max) over seeds, in %", "",
             "## Table (1% labels for tribigan and triplet)", "", *(table(runs, table_keys) if table_keys else []), "",
             "## Bars", "", *bars(runs), "", "## Labelled-fraction curve (tribigan vs triplet-only)", "", *curve(runs),
             "", "## Training dynamics (metrics.jsonl)", "", *dynamics(runs), ""]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("table", "curve", "report"), default="table")
    p.add_argument("--minutes", type=float, default=3.0, help="training wall time per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--labels", type=int, nargs="+", default=[12, 300], help="--part curve: labels per class")
    p.add_argument("--width", type=float, default=0.25, help="model.width")
    p.add_argument("--every", type=int, default=50, help="eval.every of the encoder families (val/map)")
    p.add_argument("--every-d", type=int, default=100, help="eval.every of mbgan/dcgan (val/probe: a probe fit each)")
    p.add_argument("--gallery", type=int, default=5000, help="eval.max_train of the test evaluation")
    p.add_argument("--shards", default="data/fashion-mnist-28")
    p.add_argument("--out", default="runs/fmnist_quality")
    p.add_argument("--results", default="benchmarks/results/fmnist_quality_runs.md")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every run of this call (e.g. train.ema_decay=0.99), after the others")
    args = p.parse_args()
    os.chdir(ROOT)
    if args.part == "table":
        pairs = [[(f, s, TABLE_LABELS) for f in pair] for s in args.seeds for pair in (LABELLED, ("mbgan", "dcgan"))]
        bigan = [("bigan", s, TABLE_LABELS) for s in args.seeds]
        pairs += [bigan[i:i + 2] for i in range(0, len(bigan), 2)]
    elif args.part == "curve":
        pairs = [[(f, s, labels) for f in LABELLED] for s in args.seeds for labels in args.labels]
    else:
        pairs = []
    run_pairs(args, pairs)
    report(args)
    print(f"written: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
