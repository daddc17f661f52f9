"""Evaluate a trained model: k-NN accuracy, mAP and a linear probe on its features, beside two
baselines computed the same way (the same networks at their initial weights, and raw pixels), plus
pictures. Writes eval.json and eval.md into the output directory and returns the same dict.

The orchestrator sits above tgan/eval (the metrics, probe and drawing it calls), the families and
the checkpoints (train); the families draw with the functions handed to them (PictureInputs.draw).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tgan import dist
from tgan.config import Config
from tgan.data.index import load_index
from tgan.data.streams import load_split
from tgan.eval.generation import generation_metrics
from tgan.eval_inputs import load_baseline
from tgan.eval.metrics import retrieval_metrics
from tgan.eval import pictures
from tgan.eval.probe import linear_probe
from tgan.eval.report import write_report
from tgan.families import get_family
from tgan.families.base import Family, PictureInputs, build_networks
from tgan.progress import Progress

TABLE_K = 9
"""The table shows 1-NN and 9-NN (the authors' choices); eval.json has every k up to eval.max_k."""
NUM_SAMPLES, NUM_PAIRS, NUM_RECONSTRUCTIONS = 64, 8, 32


@dataclass
class EvalData:
    """Training split (gallery and probe training set) and test split (queries), images in [-1, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    """0 for a data set without classes (CelebA): then only the pictures are made."""


def load_eval_data(cfg: Config) -> EvalData:
    """The first eval.max_train training and eval.max_test test images of data.shards (0 = all)."""
    index = load_index(cfg.data.shards)
    verify = cfg.data.verify_checksums
    train_x, train_y = load_split(cfg.data.shards, "train", cfg.eval.max_train, verify_checksums=verify)
    test_x, test_y = load_split(cfg.data.shards, "test", cfg.eval.max_test, verify_checksums=verify)
    return EvalData(train_x, train_y, test_x, test_y, index.num_classes)


def _device(nets: dict[str, nn.Module]) -> torch.device:
    return next(next(iter(nets.values())).parameters()).device


def _fork_rng(device: torch.device):
    """Seeded draws for the evaluation that leave the caller's RNG streams as they were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def feature_sets(family: Family, nets: dict[str, nn.Module], random_nets: dict[str, nn.Module],
                 data: EvalData, baseline: dict | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Row name -> (training features, test features): every feature of the model, the baseline run's
    rows beside them (baseline_features), the same features of the random-init networks, and the raw pixels."""
    rows = {}
    for label, these in (("model", nets), ("random-init", random_nets)):
        train, test = family.features(these, data.train_x), family.features(these, data.test_x)
        for key in train:
            rows[f"{label} {key}"] = (train[key], test[key])
        if label == "model":
            rows.update(baseline or {})
    rows["raw pixels"] = (data.train_x.flatten(1), data.test_x.flatten(1))
    return rows


def baseline_features(cfg: Config, data: EvalData,
                      device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Row name -> (training features, test features) of the eval.baseline run's trained networks (its
    own family and config), on the images this model is scored on; empty without a baseline."""
    baseline = load_baseline(cfg)
    if baseline is None:
        return {}
    saved, nets = baseline
    for net in nets.values():
        net.to(device)
    family = get_family(saved.model.family)
    train, test = family.features(nets, data.train_x), family.features(nets, data.test_x)
    return {f"baseline {saved.model.family} {key}": (train[key], test[key]) for key in train}


def score(train_f: torch.Tensor, test_f: torch.Tensor, data: EvalData, cfg: Config,
          device: torch.device | str = "cpu") -> dict:
    """k-NN accuracies, mAP (computed on `device`) and linear-probe accuracy (sklearn, CPU) of one feature set."""
    r = retrieval_metrics(train_f.to(device), data.train_y, test_f.to(device), data.test_y, max_k=cfg.eval.max_k)
    probe = linear_probe(train_f, data.train_y, test_f, data.test_y, kind=cfg.eval.probe, seed=cfg.train.seed)
    return {"dim": train_f.shape[1], "knn": {str(k): acc for k, acc in enumerate(r.knn_accuracy, start=1)},
            "map": r.mean_average_precision, "queries_without_relevant": r.num_queries_without_relevant,
            "probe_accuracy": probe["accuracy"], "probe_C": probe["C"]}


def write_pictures(cfg: Config, family: Family, nets: dict[str, nn.Module], test_x: torch.Tensor, out: Path,
                   metrics_path: Path) -> dict[str, str]:
    """The family's pictures (e.g. sample grid, interpolation, reconstructions, gradient-norm plot),
    then the loss curves of the run's metrics.jsonl (every family, when the file is there)."""
    device = _device(nets)
    z = z_left = z_right = None
    if family.prior is not None:
        with _fork_rng(device):
            # Fixed z per seed, so pictures of successive checkpoints of one run are comparable.
            torch.manual_seed(dist.rank_seed(cfg.train.seed, 0, "eval-pictures"))
            z = family.sample_z(NUM_SAMPLES, cfg.model.latent_dim, device=device)
            z_left = family.sample_z(NUM_PAIRS, cfg.model.latent_dim, device=device)
            z_right = family.sample_z(NUM_PAIRS, cfg.model.latent_dim, device=device)
    inputs = PictureInputs(z=z, z_left=z_left, z_right=z_right, x=test_x[:NUM_RECONSTRUCTIONS].to(device),
                           metrics=metrics_path, draw=pictures)
    written = family.pictures(nets, inputs, out)
    curves = pictures.loss_curves(metrics_path, out / "loss_curves.png")
    if curves is not None:
        written["loss_curves"] = curves
    return {name: str(path) for name, path in written.items()}


def table_cells(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the evaluation table: feature sets x (dim, 1-NN, 9-NN or max_k-NN when
    eval.max_k < 9, mAP, probe), in %. The markdown table and the HTML report show the same cells."""
    k = min(TABLE_K, result["max_k"])
    header = ["features", "dim", "1-NN", f"{k}-NN", "mAP", f"probe ({result['probe']})"]
    rows = [[name, str(row["dim"]), f"{100 * row['knn']['1']:.2f}", f"{100 * row['knn'][str(k)]:.2f}",
             f"{100 * row['map']:.2f}", f"{100 * row['probe_accuracy']:.2f}"] for name, row in result["rows"].items()]
    return header, rows


def markdown_table(result: dict) -> str:
    header, rows = table_cells(result)
    lines = ["| " + " | ".join(header) + " |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def generation_line(gen: dict | None) -> str:
    """One line under the table: FID/KID of G's samples (empty without a generation result)."""
    if not gen:
        return ""
    parts = []
    if "fid_classifier" in gen:
        parts.append(f"dataset-classifier features (its test accuracy {100 * gen['classifier_test_accuracy']:.1f}%): "
                     f"FID {gen['fid_classifier']:.3f}, KID {gen['kid_classifier']:.4f} +- {gen['kid_classifier_std']:.4f}")
    if "fid_inception" in gen:
        parts.append(f"Inception features: FID {gen['fid_inception']:.2f}, "
                     f"KID {gen['kid_inception']:.4f} +- {gen['kid_inception_std']:.4f}")
    return f"\ngeneration, {gen['samples']} samples of G vs as many test images: " + "; ".join(parts) + "\n"


def report_text(result: dict) -> str:
    """What eval.md holds and the command lines print: the table (or the note) and the generation line."""
    return (markdown_table(result) if result["rows"] else result["note"] + "\n") + generation_line(result.get("generation"))


def evaluated_files(result: dict) -> str:
    """What evaluate() wrote, for the closing lines of the command lines: pictures only when made."""
    pictures = ", ".join(Path(p).name for p in result["pictures"].values())
    return "eval.json, eval.md, index.html" + (f", {pictures}" if pictures else ", no pictures (eval.pictures=false)")


def evaluate(cfg: Config, nets: dict[str, nn.Module], out_dir: str | Path, *, data: EvalData | None = None,
             metrics_path: str | Path | None = None) -> dict:
    """Evaluate `nets` (a family's trained networks) and write eval.json, eval.md, the pictures and
    index.html (tgan.eval.report: the table, the pictures, the run's run.json, how to read them).

    data: the splits to use (default: load_eval_data(cfg)). metrics_path: the run's metrics.jsonl for
    the gradient-norm and loss plots (default: <train.out_dir>/metrics.jsonl).
    """
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(5, desc="eval", unit="stage", every_s=0)
    progress.update(0, note="loading the test and training images")
    data = load_eval_data(cfg) if data is None else data
    family = get_family(cfg.model.family)
    channels, image_size = data.train_x.shape[1], data.train_x.shape[-1]
    result: dict = {"family": cfg.model.family, "num_train": len(data.train_y), "num_test": len(data.test_y),
                    "max_k": cfg.eval.max_k, "probe": cfg.eval.probe, "rows": {}, "pictures": {}}

    has_classes = data.num_classes > 0 and bool((data.train_y >= 0).all()) and bool((data.test_y >= 0).all())
    if has_classes:
        # The weights the run started from (the loop builds them the same way).
        random_nets = build_networks(cfg, channels=channels, image_size=image_size, num_classes=data.num_classes)
        for net in random_nets.values():
            net.to(_device(nets))
        progress.update(1, note=f"features of {len(data.train_y)} training and {len(data.test_y)} test images")
        features = feature_sets(family, nets, random_nets, data, baseline_features(cfg, data, _device(nets)))
        progress.update(2, note=f"k-NN, mAP and {cfg.eval.probe} probe of {', '.join(features)}")
        for name, (train_f, test_f) in features.items():
            # The distance ranking runs where the networks do: seconds on a GPU for 10k x 60k.
            result["rows"][name] = score(train_f, test_f, data, cfg, _device(nets))
    else:
        result["note"] = "the data set has no class labels: k-NN, mAP and the probe need them; pictures only"

    if cfg.eval.fid_samples and family.generator is not None:
        result["generation"] = generation_metrics(cfg, nets[family.generator], data.test_x, sample_z=family.sample_z)

    metrics = Path(cfg.train.out_dir) / "metrics.jsonl" if metrics_path is None else Path(metrics_path)
    if cfg.eval.pictures:
        progress.update(3, note="pictures")
        result["pictures"] = write_pictures(cfg, family, nets, data.test_x, out, metrics)

    result["seconds"] = round(time.monotonic() - started, 3)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "eval.md").write_text(report_text(result))
    write_report(out, result, *table_cells(result), run_dir=metrics.parent)
    progress.update(5, note=f"written to {out}")
    return result
