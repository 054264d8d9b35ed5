"""The annotation job: inputs -> stages -> WebDataset + Parquet shards (see ``docs/annotate.md``).

- :mod:`pipelines.annotation.config`: the typed job config;
- :mod:`pipelines.annotation.job`: planning, holding OUT, running, the report, the command line;
- :mod:`pipelines.annotation.runner`: the stage adapter, the Ray Data and plain-loop runners, stage clocks;
- :mod:`pipelines.annotation.beam`: the same job on Apache Beam;
- :mod:`pipelines.annotation.report`: ``OUT/report.json`` and ``OUT/report.html``.
"""
