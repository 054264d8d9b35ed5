"""Curator tools: ``pearl review`` (a local web page over a run), ``pearl stats`` and ``pearl filter``.

- :mod:`pipelines.review.fields`: the per-person figures (quality fields, confidences, flags, parameter
  norms) as DuckDB expressions derived from the record schema;
- :mod:`pipelines.review.query`: grid filters and sort orders -> parameterised SQL;
- :mod:`pipelines.review.data`: a run opened for review (DuckDB views over its Parquet, crops from its tars);
- :mod:`pipelines.review.decisions`: the decisions sidecar ``OUT/review/decisions.parquet``;
- :mod:`pipelines.review.overlay`: overlays drawn server-side (shaded EHM mesh, keypoints, per part);
- :mod:`pipelines.review.app`: the Flask app and its server; ``static/`` holds the page;
- :mod:`pipelines.review.stats`: ``pearl stats``; :mod:`pipelines.review.filter`: ``pearl filter``;
- :mod:`pipelines.review.sample_run`: a synthetic run with known answers (tests, benchmark, screenshots).

See ``docs/review.md``.
"""
