"""Imports point down only (docs/CONTRIBUTING.md): read from the source, every import, lazy ones too."""
import ast
from pathlib import Path

import pytest

TGAN = Path(__file__).resolve().parents[2] / "tgan"

# package (or module) -> what it must never import
BELOW = {
    "config": ("tgan.",),  # but tgan.errors, allowed below
    "eval": ("tgan.families", "tgan.train", "tgan.evaluate", "tgan.resolve", "tgan.app"),
    "families": ("tgan.eval", "tgan.train", "tgan.evaluate", "tgan.resolve", "tgan.app"),
    "losses": ("tgan.families", "tgan.train", "tgan.eval", "tgan.evaluate", "tgan.resolve", "tgan.app"),
    "models": ("tgan.families", "tgan.losses", "tgan.train", "tgan.eval", "tgan.evaluate", "tgan.app"),
    "data": ("tgan.families", "tgan.losses", "tgan.models", "tgan.train", "tgan.eval", "tgan.evaluate", "tgan.app"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("layer", BELOW)
def test_no_upward_imports(layer):
    files = [TGAN / f"{layer}.py"] if (TGAN / f"{layer}.py").exists() else sorted((TGAN / layer).glob("*.py"))
    assert files
    upward = {f"{f.relative_to(TGAN.parent)}: {name}" for f in files for name in _imports(f)
              if name.startswith(BELOW[layer]) and not name.startswith("tgan.errors")
              and not name.startswith(f"tgan.{layer}")}
    assert not upward, sorted(upward)


def test_no_argparse_below_launch():
    parsers = [str(p) for root in (TGAN, TGAN.parent / "cluster") for p in root.rglob("*.py")
               if "argparse" in _imports(p)]
    assert not parsers, parsers
