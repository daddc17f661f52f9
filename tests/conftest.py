"""Fixtures shared by every test directory."""
from pathlib import Path

import pytest

DEBUG = Path(__file__).resolve().parents[1] / "launch" / "recipes" / "debug.yaml"


@pytest.fixture(scope="session")
def debug_shards(tmp_path_factory):
    """The debug recipe's 16x16 digits shards, made once per test session by the loop's own
    preparation path (tgan.train.shards.ensure_shards)."""
    from tgan.config import load_config
    from tgan.train.shards import ensure_shards

    path = tmp_path_factory.mktemp("shards") / "digits-16"
    ensure_shards(load_config(DEBUG, [f"data.shards={path}"]).data)
    return path
