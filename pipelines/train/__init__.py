"""The trainer: the PEAR regressor fitted on pearl's shards with PyTorch Lightning (``docs/training.md``).

- :mod:`pipelines.train.config`: the typed run config (``pearl train --config FILE``);
- :mod:`pipelines.train.data`: WebDataset URLs, node splitting, resampling, mixing, shuffling, exact resume;
- :mod:`pipelines.train.augment`: supervision masks (quality gating), crops, augmentation, flips;
- :mod:`pipelines.train.gating`: the gating expressions;
- :mod:`pipelines.train.stats`: the corpus's mean parameters;
- :mod:`pipelines.train.module`: the Lightning module (losses, optimiser, checkpoints);
- :mod:`pipelines.train.run`: the driver (one process, torchrun, Ray Train);
- :mod:`pipelines.train.evaluate`: metrics on shards and against COCO-WholeBody labels;
- :mod:`pipelines.train.predict`: ``pearl predict`` (records, overlays);
- :mod:`pipelines.train.corpus`: ``pearl corpus synthesize`` (known answers).
"""
