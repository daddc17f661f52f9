"""The GAN families: one module per family, each defining `FAMILY`, a `tgan.families.base.Family`.

The training loop, the backends, evaluation, checkpoints and the config know a family only through
that object (its networks, optimizer groups, loss phases, evaluation features, pictures and config
checks); adding a family is one new module here plus a recipe (docs/CONTRIBUTING.md).

This file imports neither torch nor the family modules: the config validates `model.family` against
FAMILIES (the module names) without building anything, and `get_family` imports one module on demand.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tgan.families.base import Family

FAMILIES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"))
"""Valid values of model.family: every module of this package except `base`."""
DEFAULT_FAMILY = "bigan"
"""model.family when a recipe does not say."""


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"model.family={name!r} is not registered: expected one of {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}").FAMILY
