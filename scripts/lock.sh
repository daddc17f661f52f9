#!/usr/bin/env bash
# constraints.txt: the exact version of every package tgan needs (its dependencies, its extras
# deepspeed and dev, and theirs, down to the leaves), as installed in the current Python.
# scripts/install.sh (and so .ci/run) installs with `pip -c constraints.txt`, so every machine gets
# the versions the suite last passed with.
#
#   bash scripts/lock.sh           # after an upgrade that the suite passed: rewrite constraints.txt
#   bash scripts/lock.sh --check   # exit 1, listing the differences, unless this Python matches it
#
# To upgrade: `pip install -U <package>` (or edit the ranges in pyproject.toml and rerun
# scripts/install.sh without -c), run the suite, then `bash scripts/lock.sh` and commit both.
# torch and torchvision stay within the caps of scripts/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

locked=$(python - <<'EOF'
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
todo = [(Requirement(r), "") for group in [project["dependencies"], *project["optional-dependencies"].values()]
        for r in group]
pinned: dict[str, tuple[str, set[str]]] = {}  # name -> (version, extras already followed)
while todo:
    req, extra = todo.pop()
    if req.marker is not None and not req.marker.evaluate({"extra": extra}):
        continue  # e.g. another platform's package, or an extra nobody asked for
    name = canonicalize_name(req.name)
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(f"error: {req.name} (needed by tgan) is not installed: run scripts/install.sh first")
    version, followed = pinned.get(name, (dist.version, set()))
    if name in pinned and set(req.extras) <= followed:
        continue
    pinned[name] = (version, followed | set(req.extras))
    todo += [(Requirement(dep), e) for dep in dist.requires or [] for e in ["", *sorted(req.extras)]]
print(f"# python {sys.version_info.major}.{sys.version_info.minor}, {sys.platform}; "
      "written by scripts/lock.sh (do not edit by hand)")
print("\n".join(f"{name}=={pinned[name][0]}" for name in sorted(pinned)))
EOF
)

if [ "${1:-}" = "--check" ]; then
  if ! diff <(grep -v '^#' constraints.txt) <(grep -v '^#' <<<"$locked"); then
    echo "error: the installed packages differ from constraints.txt (< locked, > installed):" \
         "run scripts/install.sh, or bash scripts/lock.sh after an upgrade the suite passed" >&2
    exit 1
  fi
else
  echo "$locked" > constraints.txt
  echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages"
fi
