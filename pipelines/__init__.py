"""Drivers, one sub-package each, named after the data flow.

- :mod:`pipelines.io`: shard and source I/O shared by every driver (sample discovery and loading,
  SMPL-labelled sources, shard writers and readers, the shard sink, quarantine, the run lock, the
  body-model folder).
- :mod:`pipelines.annotation`: the annotation job (config, job steps, Ray and plain-loop runners, Beam,
  report).
- :mod:`pipelines.review`: the curator tools (the review web app, statistics, filtering into a new shard set).
- :mod:`pipelines.commands`: the ``pearl`` subcommands (:mod:`pipelines.cli`).

``pipelines/annotate.py`` and ``pipelines/annotate_beam.py`` are the scripts that ``ray submit``,
``ray job submit`` and Beam launchers run.
"""
