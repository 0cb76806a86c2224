"""Contrastive sticker <-> query training (``persrv-bench train-clip``) and its checkpoints.

- :mod:`bench.clip.config`: the ``train-clip`` YAML (pydantic only);
- :mod:`bench.clip.towers`: image towers (torchvision ResNet-18, a small CNN) and open_clip;
- :mod:`bench.clip.module`: the dual-encoder LightningModule (symmetric InfoNCE, learnable
  temperature, in-batch negatives), modes ``locked-text`` (LiT) and ``finetune``;
- :mod:`bench.clip.data`: (clicked sticker image, query) pairs from the split's train clicks;
- :mod:`bench.clip.train`: the Trainer driver, MLflow logging, export;
- :mod:`bench.clip.checkpoint`: the exported checkpoint: load, digest, leak check.
"""
