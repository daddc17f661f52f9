"""The config tree: defaults, precedence (defaults < recipe < overrides), validation naming the field."""
import dataclasses
import typing

import pytest
import yaml

from tgan.config import Config, ConfigError, config_from_dict, dump_yaml, load_config


def write(tmp_path, values):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg == Config()
    assert config_from_dict(cfg.to_dict()) == cfg
    dump_yaml(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_recipe_overrides_defaults_and_set_overrides_recipe(tmp_path):
    path = write(tmp_path, {"loss": {"alpha": 2.0}, "optim": {"lr": 1e-3}})
    cfg = load_config(path, ["loss.alpha=0.2", "train.steps=7", "optim.lr_d=1e-4", "model.family=mbgan"])
    assert (cfg.loss.alpha, cfg.optim.lr, cfg.optim.lr_d, cfg.train.steps) == (0.2, 1e-3, 1e-4, 7)
    assert cfg.model.family == "mbgan"
    assert cfg.optim.beta1 == 0.5  # untouched default (Adam beta1 of the papers)


def test_integers_are_accepted_for_floats_but_not_strings_for_numbers(tmp_path):
    assert load_config(None, ["loss.alpha=20"]).loss.alpha == 20.0
    with pytest.raises(ConfigError, match="loss.alpha"):
        load_config(None, ["loss.alpha=abc"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=true"])


def _float_fields(cls=Config, prefix=""):
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _float_fields(hint, f"{prefix}{f.name}.")
        elif float in (typing.get_args(hint) or (hint,)):
            yield f"{prefix}{f.name}"


def test_every_float_field_refuses_non_finite_numbers_in_one_line(tmp_path):
    """optim.lr=inf passed `lr > 0`, and a run then skipped every checkpoint as non-finite."""
    fields = list(_float_fields())
    assert "optim.lr" in fields and "optim.lr_d" in fields and len(fields) >= 15
    for field in fields:
        for value in ("inf", "-inf", "nan", "1e999"):
            with pytest.raises(ConfigError) as refused:
                load_config(None, [f"{field}={value}"])
            assert str(refused.value) == f"{field}={value!r} is invalid: expected a finite number"
    with pytest.raises(ConfigError, match=r"^optim\.lr=inf is invalid: expected a finite number$"):
        load_config(write(tmp_path, {"optim": {"lr": float("inf")}}))  # a recipe's .inf


@pytest.mark.parametrize("override, field", [
    ("loss.alpha=-1", "loss.alpha"),
    ("model.embedding_dim=0", "model.embedding_dim"),
    ("data.labelled_fraction=1.5", "data.labelled_fraction"),
    ("data.labelled_fraction=0", "data.labelled_fraction"),
    ("data.image_size=30", "data.image_size"),
    ("optim.beta1=1.0", "optim.beta1"),
    ("optim.grad_clip=-0.1", "optim.grad_clip"),
    ("loss.g_steps_per_d_step=0", "loss.g_steps_per_d_step"),
    ("train.max_nonfinite_in_row=0", "train.max_nonfinite_in_row"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.resume=", "train.resume"),
    ("cluster.backend=horovod", "cluster.backend"),
    ("data.labelled_augment=rotate", "data.labelled_augment"),
])
def test_invalid_values_name_the_dotted_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="both set"):
        load_config(None, ["data.labelled_fraction=0.1", "data.labels_per_class=10"])
    # The family's rules: checked by tgan.resolve, one layer above the config.
    from tgan import resolve

    with pytest.raises(ConfigError, match="model.family=tribigan"):
        resolve.load_config(None, ["model.family=tribigan"])
    with pytest.raises(ConfigError, match="model.conditional"):
        resolve.load_config(None, ["model.conditional=true"])
    cfg = resolve.load_config(None, ["model.family=tribigan", "data.labels_per_class=10"])
    assert cfg.data.has_labels


def test_unknown_keys_and_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="loss.alpah"):
        load_config(None, ["loss.alpah=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["loss.alpha"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
        load_config(tmp_path / "list.yaml")


def test_building_a_config_loads_neither_torch_nor_the_rest_of_tgan():
    """tgan.config sits below every other layer: a recipe is loaded and validated without torch, the
    families or the data code (their checks run in tgan.resolve, one layer up)."""
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"
    probe = ("import sys, tgan.config; tgan.config.load_config(sys.argv[1], ['loss.alpha=3']); "
             "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('tgan.')))")
    proc = subprocess.run([sys.executable, "-c", probe, str(recipe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['tgan.config',", "'tgan.errors']"]
