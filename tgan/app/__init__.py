"""tgan's one-process jobs as plain functions (train + evaluate, evaluate a checkpoint, prepare shards)
and `resolve_config`, which the Ray jobs (cluster/cli.py) share; launch/cli.py parses their flags.
Nothing below tgan/app imports it."""
