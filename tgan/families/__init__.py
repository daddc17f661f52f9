"""The GAN families: one module per family, each defining `FAMILY`, a `tgan.families.base.Family`.

The training loop, the backends, evaluation, checkpoints and the config know a family only through
that object (its networks, optimizer groups, loss phases, evaluation features, pictures and config
checks); adding a family is one new module here plus a recipe (docs/CONTRIBUTING.md).

This file imports neither torch nor the family modules: tgan.config lists the module names as
FAMILIES (the valid model.family values) without importing them, and `get_family` imports one on demand.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tgan.config import FAMILIES

if TYPE_CHECKING:
    from tgan.families.base import Family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"model.family={name!r} is not registered: expected one of {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}").FAMILY
