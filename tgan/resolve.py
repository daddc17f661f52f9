"""The checks a config needs the family registry or the miner for, one layer above tgan.config.

tgan.config validates every field and the fields against each other without importing the rest of
tgan (or torch); what depends on the chosen family (labels, a conditional form, a generator for live
FID) or on the miner's memory model is checked here, by every entry point that builds a config from
user input: the command lines (tgan.app, cluster.cli), the sweep's trial configs and evaluation's
overrides.
"""
from __future__ import annotations

from tgan import config
from tgan.config import Config, ConfigError
from tgan.families import get_family


def check(cfg: Config) -> Config:
    """`cfg` if its family and its miner accept it, else ConfigError naming the field."""
    family = get_family(cfg.model.family)
    if cfg.eval.live_fid_samples != 0 and not (cfg.eval.every > 0 and family.generator):
        raise ConfigError(f"eval.live_fid_samples={cfg.eval.live_fid_samples!r} is invalid: expected 0 unless "
                          f"eval.every > 0 and model.family has a generator ({cfg.model.family} with eval.every="
                          f"{cfg.eval.every})")
    if cfg.model.arch not in family.archs:
        raise ConfigError(f"model.arch={cfg.model.arch!r} is invalid: expected {config._one_of(family.archs)} for "
                          f"model.family={cfg.model.family}")
    family.check(cfg)  # what only the family knows (labels, conditional, ...)
    if family.mines_triplets:
        from tgan.losses.mining import check_mining_memory  # torch, for the miner's own constants

        check_mining_memory(cfg, mining_dim(cfg))
    return cfg


def mining_dim(cfg: Config) -> int:
    """The width of the rows the family mines triplets over (its Family.embedding_size field)."""
    return getattr(cfg.model, get_family(cfg.model.family).embedding_size)


def load_config(path=None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """tgan.config.load_config, then `check`."""
    return check(config.load_config(path, overrides))
