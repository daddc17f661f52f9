"""Ray Train / DeepSpeed / Prometheus plumbing around tgan (model-agnostic).

ray_env: connect to a cluster (or start a local Ray) and check it can hold the run.
trainer: the TorchTrainer, the per-rank worker and its reporter, evaluation of the result.
deepspeed_backend: the Backend with one DeepSpeed engine per optimizer group.
metrics: Prometheus metrics of every worker through Ray's metrics agent.
cli: launch/train.py. See docs/CLUSTER.md.
"""
