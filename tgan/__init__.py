"""tgan: metric-learning GANs (BiGAN, triplet-BiGAN, MBGAN) as a pure PyTorch library.

Layers (imports point down only): launch/ -> cluster/ -> tgan/. This package never imports ray,
deepspeed or prometheus_client; see README.md.
"""
