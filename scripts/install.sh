#!/usr/bin/env bash
# Install tgan and its dependencies into the current Python (a venv is recommended), at the versions
# in constraints.txt (the ones the suite last passed with; scripts/lock.sh refreshes it).
# torch first (the CUDA build runs on CPU too), then DeepSpeed without compiling its CUDA ops
# (they are built just in time on a GPU machine), then tgan itself with its dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=(-c constraints.txt)
python -m pip install -q "${pin[@]}" "torch>=2.3,<=2.14.1" "torchvision>=0.18,<=0.29.1"
DS_BUILD_OPS=0 python -m pip install -q "${pin[@]}" --no-build-isolation "deepspeed>=0.15"
python -m pip install -q "${pin[@]}" -e ".[dev,bench]"  # bench: pytorch-metric-learning, the peer in benchmarks/miner_peer.py
