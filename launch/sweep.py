"""Sweep with Ray Tune (`tgan sweep`): python launch/sweep.py --config RECIPE --sweep launch/sweeps/SPEC.yaml [--grid k=v1,v2] [--resume]"""
from launch.cli import command

main = command("sweep")
if __name__ == "__main__":
    raise SystemExit(main())
