"""Shard and source I/O, shared by every driver.

- :mod:`pipelines.io.samples`: :class:`~pipelines.io.samples.Sample`, :class:`~pipelines.io.samples.SourceError`
  and the input file types;
- :mod:`pipelines.io.sources`: finding the samples of the inputs and loading their pixels;
- :mod:`pipelines.io.smpl_sources`: SMPL-labelled datasets (4D-Humans tars, SPIN npz);
- :mod:`pipelines.io.shards`: WebDataset + Parquet shard writers (atomic commit) and readers;
- :mod:`pipelines.io.sinks`: the partition rule and the shard sink;
- :mod:`pipelines.io.quarantine`: the per-shard quarantine tables;
- :mod:`pipelines.io.runlock`: the run lock on an output folder;
- :mod:`pipelines.io.body_models`: which body-model folder a command uses.
"""
