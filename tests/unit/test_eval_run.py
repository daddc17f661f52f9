"""evaluate() end to end on the offline digits: table rows per family, baselines, pictures and sizes."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from tgan.config import ConfigError, load_config
from tgan.eval.metrics import retrieval_metrics
from tgan.eval.pictures import grad_norm_plot
from tgan.evaluate import EvalData, evaluate, load_eval_data
from tgan.families.base import build_networks as random_init_networks
from tgan.families import get_family
from tgan.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "launch" / "recipes" / "debug.yaml"
SIDE = 16  # debug recipe: 16x16 digits


def grid_size(ncols, nrows, side=SIDE):
    """make_grid's grid: 2-pixel padding around and between the images."""
    return 2 + ncols * (side + 2), 2 + nrows * (side + 2)


def shows_grid(path, ncols, nrows):
    """The PNG holds the grid pixel for pixel or enlarged, plus room for its title and labels."""
    (w, h), (gw, gh) = Image.open(path).size, grid_size(ncols, nrows)
    return w > gw and h > gh


@pytest.fixture(scope="module")
def shards(debug_shards):
    return debug_shards


def cfg_for(shards, out, *overrides):
    return load_config(DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "eval.max_train=200",
                               "eval.max_test=60", *overrides])


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    """A 4-step tribigan run of the debug recipe: its config, networks and run directory."""
    out = tmp_path_factory.mktemp("run")
    cfg = cfg_for(shards, out, "eval.pictures=true")
    return cfg, train(cfg).nets, out


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    cfg, nets, _ = trained
    out = tmp_path_factory.mktemp("eval")
    return evaluate(cfg, nets, out), out


def test_tribigan_table_json_and_pictures(trained, evaluated):
    cfg, _, _ = trained
    result, tmp_path = evaluated

    assert list(result["rows"]) == ["model E", "random-init E", "raw pixels"]
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    assert result["num_train"] == 200 and result["num_test"] == 60
    for row in result["rows"].values():
        assert list(row["knn"]) == [str(k) for k in range(1, cfg.eval.max_k + 1)]
        assert all(0 <= v <= 1 for v in [*row["knn"].values(), row["map"], row["probe_accuracy"]])
    assert result["rows"]["model E"]["dim"] == cfg.model.latent_dim
    assert result["rows"]["raw pixels"]["dim"] == SIDE * SIDE
    # Raw pixels on digits are a strong baseline: far above the 10% of chance.
    assert result["rows"]["raw pixels"]["knn"]["1"] > 0.8

    table = (tmp_path / "eval.md").read_text().splitlines()
    assert table[0] == "| features | dim | 1-NN | 5-NN | mAP | probe (logreg) |"  # debug recipe: max_k = 5
    pixels = result["rows"]["raw pixels"]
    assert table[4] == (f"| raw pixels | 256 | {100 * pixels['knn']['1']:.2f} | {100 * pixels['knn']['5']:.2f} | "
                        f"{100 * pixels['map']:.2f} | {100 * pixels['probe_accuracy']:.2f} |")

    pictures = result["pictures"]
    assert set(pictures) == {"samples", "interpolation", "reconstructions", "grad_norm_G", "loss_curves"}
    assert shows_grid(pictures["samples"], 8, 8) and shows_grid(pictures["interpolation"], 10, 8)
    assert shows_grid(pictures["reconstructions"], 16, 4)  # 32 pairs of x and G(E(x)), 8 pairs a row
    assert all(Path(p).parent == tmp_path for p in pictures.values())


def test_raw_pixel_row_is_the_metric_on_the_same_images(trained, evaluated):
    cfg, _, _ = trained
    data = load_eval_data(cfg)
    direct = retrieval_metrics(data.train_x.flatten(1), data.train_y, data.test_x.flatten(1), data.test_y,
                               max_k=cfg.eval.max_k)
    assert list(evaluated[0]["rows"]["raw pixels"]["knn"].values()) == direct.knn_accuracy
    assert evaluated[0]["rows"]["raw pixels"]["map"] == direct.mean_average_precision


def test_random_init_baseline_is_the_seeded_initial_weights_and_keeps_the_rng(trained):
    cfg, nets, _ = trained
    state = torch.get_rng_state()
    a = random_init_networks(cfg, channels=1, image_size=SIDE, num_classes=10)
    b = random_init_networks(cfg, channels=1, image_size=SIDE, num_classes=10)
    assert torch.equal(torch.get_rng_state(), state)
    for name in nets:
        wa, wb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # 4 training steps moved the weights away from the initial ones
    trained_w, init_w = nets["E"].state_dict(), a["E"].state_dict()
    assert any(not torch.equal(trained_w[k], init_w[k]) for k in init_w if init_w[k].is_floating_point())


def test_conditional_mbgan_rows_have_both_feature_kinds_and_no_reconstructions(shards, tmp_path):
    # Conditional: G is driven with classes for the pictures, D's features get none (all-zero class input).
    cfg = cfg_for(shards, tmp_path / "run", "model.family=mbgan", "model.conditional=true",
                  "eval.pictures=true", "eval.max_train=100", "eval.max_test=30")
    nets = get_family("mbgan").build_networks(cfg.model, channels=1, image_size=SIDE, num_classes=10)
    result = evaluate(cfg, nets, tmp_path / "eval")
    assert list(result["rows"]) == ["model D", "model D_conv", "random-init D", "random-init D_conv", "raw pixels"]
    assert result["rows"]["model D"]["dim"] == cfg.model.embedding_dim
    # Untrained networks built from another seed differ from the seeded initial weights of the run.
    assert result["rows"]["model D_conv"] != result["rows"]["random-init D_conv"]
    assert set(result["pictures"]) == {"samples", "interpolation"}  # no E; no metrics.jsonl in run/
    assert shows_grid(result["pictures"]["samples"], 8, 8)


def test_data_without_classes_gives_pictures_only(shards, tmp_path):
    cfg = cfg_for(shards, tmp_path / "run", "model.family=dcgan", "eval.pictures=true")
    nets = get_family("dcgan").build_networks(cfg.model, channels=1, image_size=SIDE, num_classes=0)
    x = torch.rand(20, 1, SIDE, SIDE) * 2 - 1
    unlabelled = torch.full((20,), -1)
    result = evaluate(cfg, nets, tmp_path, data=EvalData(x, unlabelled, x, unlabelled, num_classes=0))
    assert result["rows"] == {} and "no class labels" in result["note"]
    assert (tmp_path / "eval.md").read_text().startswith("the data set has no class labels")
    assert set(result["pictures"]) == {"samples", "interpolation"}


def test_grad_norm_plot_needs_the_file_and_the_key(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert grad_norm_plot(metrics, tmp_path / "a.png", key="grad_norm/G") is None
    metrics.write_text(json.dumps({"step": 1, "loss/d": 1.0}) + "\n")
    assert grad_norm_plot(metrics, tmp_path / "a.png", key="grad_norm/G") is None
    metrics.write_text("".join(json.dumps({"step": s, "grad_norm/G": 1.0 / s}) + "\n" for s in (3, 1, 2)))
    assert grad_norm_plot(metrics, tmp_path / "a.png", key="grad_norm/G") == tmp_path / "a.png"
    assert Image.open(tmp_path / "a.png").size[0] > 400


def test_grad_norm_plot_skips_null_values_and_a_partial_last_line(tmp_path):
    """A non-finite value is written as null (train.loop), a killed run leaves half a line."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "grad_norm/G": None, "nonfinite": ["grad_norm/G"]}) + "\n"
                       '{"step": 2, "grad_norm/G": 0.')
    assert grad_norm_plot(metrics, tmp_path / "a.png", key="grad_norm/G") is None  # no finite point
    metrics.write_text(json.dumps({"step": 1, "grad_norm/G": 0.5}) + "\n" + metrics.read_text())
    assert grad_norm_plot(metrics, tmp_path / "a.png", key="grad_norm/G") == tmp_path / "a.png"


def test_baseline_run_is_scored_beside_the_model_as_its_own_evaluation_scores_it(shards, trained, evaluated,
                                                                                 tmp_path):
    """eval.baseline (the main recipe's triplet-only row): another run's trained E, on the same images."""
    cfg, nets, run_dir = trained
    base_cfg = cfg_for(shards, tmp_path / "triplet", "model.family=triplet")
    own = evaluate(base_cfg, train(base_cfg).nets, tmp_path / "own")
    beside = evaluate(cfg_for(shards, run_dir, f"eval.baseline={tmp_path / 'triplet'}"), nets, tmp_path / "beside")
    assert list(beside["rows"]) == ["model E", "baseline triplet E", "random-init E", "raw pixels"]
    assert beside["rows"]["baseline triplet E"] == own["rows"]["model E"]
    assert beside["rows"]["model E"] == evaluated[0]["rows"]["model E"]
    assert "| baseline triplet E | 16 |" in (tmp_path / "beside" / "eval.md").read_text()

    from tgan.evaluate import baseline_features
    other = cfg_for(shards, run_dir, f"eval.baseline={tmp_path / 'triplet'}", "data.dataset=fashion-mnist")
    with pytest.raises(ConfigError, match=r"eval.baseline=.* is a run on digits at 16 px: expected fashion-mnist"):
        baseline_features(other, load_eval_data(other), torch.device("cpu"))


def test_cli_evaluates_the_newest_checkpoint_of_a_run_and_prints_the_table(trained, tmp_path, capsys):
    from launch.evaluate import main

    _, _, run_dir = trained
    assert main([str(run_dir), "--set", "eval.max_test=50", "--set", "eval.pictures=false",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "checkpoints/step_00000004: 50 test queries against 200 training images" in printed
    assert (tmp_path / "eval.md").read_text() in printed
    assert load_config(tmp_path / "config.yaml").eval.max_test == 50  # the resolved config is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "eval.json", "eval.md", "index.html"]


def test_cli_default_output_and_grad_norm_plot_come_from_the_run_directory(trained, capsys):
    from launch.evaluate import main

    _, _, run_dir = trained
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    assert main([str(checkpoint), "--set", "eval.max_test=20", "--set", "eval.max_train=100"]) == 0
    out = run_dir / "eval" / "step_00000002"
    assert json.loads((out / "eval.json").read_text())["pictures"]["grad_norm_G"] == str(out / "grad_norm_G.png")


def test_cli_errors_name_the_problem(trained, tmp_path, capsys):
    from launch.evaluate import main

    _, _, run_dir = trained
    assert main([str(run_dir), "--set", "model.width=2"]) == 2
    assert "--set model.width=2: only eval.*, data.*" in capsys.readouterr().err
    assert main([str(run_dir), "--set", "train.seed=3"]) == 2  # would change the random-init baseline
    capsys.readouterr()
    assert main([str(tmp_path)]) == 1
    assert f"{tmp_path} is neither a checkpoint directory" in capsys.readouterr().err
    assert main([str(run_dir), "--set", f"data.shards={tmp_path / 'none'}"]) == 1
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_a_baseline_or_run_whose_newest_checkpoint_is_damaged_falls_back_to_the_older_one(trained, tmp_path, capsys):
    """As for resume: a damaged newest checkpoint is named in one line and the previous one is used,
    before training (check_eval_inputs), at its evaluation and by launch/evaluate.py."""
    from launch.evaluate import main
    from tgan.eval_inputs import check_eval_inputs, load_baseline
    from tgan.train.checkpoint import load_networks

    cfg, _, run_dir = trained
    base = tmp_path / "base"
    shutil.copytree(run_dir, base, ignore=shutil.ignore_patterns("eval"))
    newest = base / "checkpoints" / "step_00000004" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with_baseline = cfg_for(cfg.data.shards, run_dir, f"eval.baseline={base}")
    check_eval_inputs(with_baseline)
    _, nets = load_baseline(with_baseline)
    _, older = load_networks(base / "checkpoints" / "step_00000002")
    assert all(torch.equal(a, b) for n in nets for a, b in zip(nets[n].state_dict().values(),
                                                                older[n].state_dict().values()))
    skipped = f"eval.baseline={str(base)!r}: checkpoint {newest.parent} skipped: {newest} has 100 bytes but"
    assert capsys.readouterr().err.count(skipped) == 2

    assert main([str(run_dir), "--set", f"eval.baseline={base}", "--set", "eval.max_test=20",
                 "--out", str(tmp_path / "ev")]) == 0
    assert "| baseline tribigan E |" in capsys.readouterr().out
    assert main([str(base), "--set", "eval.max_test=20", "--out", str(tmp_path / "ev_base")]) == 0
    out, err = capsys.readouterr()
    assert f"checkpoint {newest.parent} skipped: {newest} has 100 bytes" in err
    assert "checkpoints/step_00000002: 20 test queries" in out

    (base / "checkpoints" / "step_00000002" / "state.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"^eval.baseline='{base}': none of the 2 checkpoints of {base} can be "
                                          rf"loaded \(newest: {newest} has 100 bytes"):
        check_eval_inputs(with_baseline)


@pytest.mark.parametrize("setting", ["baseline-of-other-images", "damaged-inception-weights"])
def test_eval_inputs_are_refused_before_training_starts(trained, tmp_path, capsys, setting):
    """Found at the end of training before: a whole run spent for an evaluation that could not run."""
    from launch.train_local import main

    cfg, _, run_dir = trained
    if setting == "baseline-of-other-images":
        sets, expected = [f"eval.baseline={run_dir}", "data.image_size=32"], (
            f"error: eval.baseline={str(run_dir)!r} is a run on digits at 16 px: expected digits at 32 px, "
            "the images this model is scored on")
    else:
        weights = tmp_path / "inception.pth"
        torch.save({"fc.weight": torch.zeros(1008, 2048)}, weights)  # the right first key, nothing else
        sets, expected = [f"eval.inception_weights={weights}", "eval.fid_samples=16"], (
            f"error: eval.inception_weights={str(weights)!r} is not torch-fidelity's Inception state dict (")
    out = tmp_path / "run"
    argv = ["--config", str(DEBUG), "--set", f"data.shards={cfg.data.shards}", "--set", f"train.out_dir={out}"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert not out.exists()


def test_html_report_shows_the_table_and_every_picture_in_a_real_browser(trained, evaluated):
    """Headless Chromium loads eval/index.html: the table has the result's rows, every picture
    loaded (its caption then shows its pixel size; a picture that fails says "missing"), and the
    run's phases from run.json are listed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    result, out = evaluated
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", (out / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    table = dom[dom.index('<table id="eval-table">'):]
    for name, row in result["rows"].items():
        assert f"<td>{name}</td><td>{row['dim']}</td><td>{100 * row['knn']['1']:.2f}</td>" in table
    sizes = re.findall(r'<b>([\w.]+)</b><span class="size"> \((\d+)x(\d+) px\)</span>', dom)
    assert {name for name, _, _ in sizes} == {Path(p).name for p in result["pictures"].values()}
    for name, w, h in sizes:
        assert Image.open(out / name).size == (int(w), int(h))
    assert 'class="missing"' not in dom
    phases = dom[dom.index('<table id="phases">'):]
    assert "<td>data prep</td>" in phases and "<td>training</td>" in phases
    assert "one query is 1.7 points" in dom  # 60 test queries
