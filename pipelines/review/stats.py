"""``pearl stats``: distributions and rates of a run, as PNG plots, a Markdown table file and JSON.

- **Per-part distributions** of every float figure of :mod:`pipelines.review.fields` (quality fields,
  confidences, parameter norms): persons measured (NaN is "not measured"), mean, 5th / 50th / 95th
  percentiles, min and max, computed by DuckDB over every committed row; the histograms are drawn from a
  repeatable reservoir sample of at most :data:`PLOT_SAMPLE` rows, so memory stays bounded on any run.
- **Acceptance by source**: persons written to the shards, persons quarantined (the quarantine tables),
  the kept share, and the review decisions (accepted, rejected, flagged) of the written persons.
- **Quarantine by reason**: counts by stage and by ``"stage: kind"`` (the reason's text before its first
  ``:``, as the run report groups them).
- **Throughput by stage**: the last run's per-stage calls, rows and busy seconds (``report.json``), and
  the shard write time summed over the shard stats files.

:func:`compute_stats` gathers it all as JSON-ready data (tables with a title, header and rows);
:func:`stats_markdown` and :func:`render_plots` turn that into ``stats.md`` and PNGs, and the review
page's Stats tab shows the same tables and plots.
"""

from __future__ import annotations

import io
import json
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.review.fields import isnan_sql, review_fields

if TYPE_CHECKING:
    from pipelines.review.data import ReviewRun

log = logging.getLogger(__name__)

PLOT_SAMPLE = 200_000
"""Rows sampled (reservoir, fixed seed) for the histograms."""
HIST_BINS = 30
TOP_SOURCES = 20
"""Sources listed one by one in the acceptance table; the rest are summed as ``(other)``."""
PLOT_GROUPS = ("quality", "confidence", "parameters")
"""Figure groups with one histogram grid each (``flags`` are counted, not plotted)."""


def _num(value: Any, digits: int = 4) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if not math.isfinite(value) else round(value, digits)


def _distribution_table(run: ReviewRun) -> tuple[dict[str, Any], dict[str, Any]]:
    fields = [f for f in review_fields().values() if f.kind == "float"]
    aggregates = []
    for f in fields:
        x, ok = f"({f.sql})", f"NOT {isnan_sql(f.sql)}"
        aggregates += [f"count(*) FILTER (WHERE {ok})", f"avg({x}) FILTER (WHERE {ok})",
                       f"quantile_cont({x}, [0.05, 0.5, 0.95]) FILTER (WHERE {ok})",
                       f"min({x}) FILTER (WHERE {ok})", f"max({x}) FILTER (WHERE {ok})"]
    row = run.values(f"SELECT count(*), {', '.join(aggregates)} FROM persons")[0]
    total = int(row[0])
    rows, per_field = [], {}
    for i, f in enumerate(fields):
        n, mean, quant, lo, hi = row[1 + 5 * i: 6 + 5 * i]
        q = list(quant) if quant is not None else [None, None, None]
        entry = {"measured": int(n), "mean": _num(mean), "p05": _num(q[0]), "p50": _num(q[1]), "p95": _num(q[2]),
                 "min": _num(lo), "max": _num(hi)}
        per_field[f.name] = {"group": f.group, "part": f.part, **entry}
        rows.append([f.name, f.group, f.part, entry["measured"], entry["mean"], entry["p05"], entry["p50"],
                     entry["p95"], entry["min"], entry["max"]])
    table = {"title": f"Per-part distributions ({total} persons; NaN = not measured, left out)",
             "header": ["figure", "group", "part", "measured", "mean", "p5", "median", "p95", "min", "max"],
             "rows": rows}
    return table, per_field


def _flag_table(run: ReviewRun) -> dict[str, Any]:
    fields = [f for f in review_fields().values() if f.kind == "bool"]
    exprs = ", ".join(f"count(*) FILTER (WHERE {f.sql})" for f in fields)
    counts = run.values(f"SELECT count(*), {exprs} FROM persons")[0]
    total = int(counts[0])
    rows = [[f.name, f.part, int(c), _num(100.0 * int(c) / total, 2) if total else None]
            for f, c in zip(fields, counts[1:])]
    return {"title": "Validity and quality flags", "header": ["flag", "part", "persons", "%"], "rows": rows}


def _acceptance_table(run: ReviewRun) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    written = dict(run.values("SELECT source, count(*) FROM persons GROUP BY 1"))
    quarantined = dict(run.values("SELECT source, count(*) FROM quarantine GROUP BY 1"))
    decided = run.values("SELECT p.source, d.decision, count(*) FROM persons p JOIN decisions d ON p.key = d.key "
                         "GROUP BY 1, 2")
    by_source: dict[str, dict[str, int]] = {}
    for source in set(written) | set(quarantined):
        by_source[source] = {"written": int(written.get(source, 0)), "quarantined": int(quarantined.get(source, 0)),
                             "accept": 0, "reject": 0, "flag": 0}
    for source, decision, n in decided:
        by_source[source][decision] = int(n)
    ordered = sorted(by_source.items(), key=lambda kv: (-(kv[1]["written"] + kv[1]["quarantined"]), kv[0]))
    if len(ordered) > TOP_SOURCES:
        rest = {k: sum(v[k] for _, v in ordered[TOP_SOURCES:]) for k in ordered[0][1]}
        ordered = ordered[:TOP_SOURCES] + [(f"(other {len(ordered) - TOP_SOURCES} sources)", rest)]
    total = {k: sum(v[k] for v in by_source.values()) for k in ("written", "quarantined", "accept", "reject", "flag")}
    rows, entries = [], []
    for source, c in ordered + [("(all)", total)]:
        seen = c["written"] + c["quarantined"]
        kept = _num(100.0 * c["written"] / seen, 2) if seen else None
        rows.append([source, c["written"], c["quarantined"], kept, c["accept"], c["reject"], c["flag"]])
        entries.append({"source": source, **c, "kept_pct": kept})
    table = {"title": "Acceptance by source (kept = written / (written + quarantined); decisions from the review)",
             "header": ["source", "written", "quarantined", "kept %", "accepted", "rejected", "flagged"], "rows": rows}
    return table, entries


def _reason_table(run: ReviewRun) -> tuple[dict[str, Any], dict[str, int]]:
    kind = "stage || ': ' || coalesce(nullif(trim(split_part(reason, ':', 1)), ''), 'unknown')"
    rows = run.values(f"SELECT stage, {kind}, count(*) FROM quarantine GROUP BY 1, 2 ORDER BY 3 DESC, 2")
    table = {"title": "Quarantine by stage and reason",
             "header": ["stage", "stage: kind", "persons/samples"], "rows": [[s, k, int(n)] for s, k, n in rows]}
    return table, {k: int(n) for _, k, n in rows}


def _throughput_table(run: ReviewRun) -> tuple[dict[str, Any], dict[str, Any]]:
    from pipelines.io.shards import read_all_stats

    report: dict[str, Any] = {}
    path = f"{run.root}/report.json"
    if run.fs.exists(path):
        try:
            report = json.loads(run.fs.cat_file(path))
        except ValueError:
            log.warning("%s: not valid JSON; throughput left out", run.url(path))
    stages = dict((report.get("throughput") or {}).get("stages") or {})
    shard_stats = read_all_stats(run.fs, run.root)
    write_s = sum(float((s.get("timings") or {}).get("write_s", 0.0)) for s in shard_stats)
    rows = [[name, s.get("calls"), s.get("rows_in"), s.get("rows_out"), _num(s.get("seconds")),
             _num(s.get("rows_per_s"))] for name, s in stages.items()]
    rows.append(["shard write (all committed shards)", len(shard_stats),
                 sum(int(s.get("rows", 0)) for s in shard_stats), None, _num(write_s), None])
    table = {"title": "Throughput by stage (the last annotate run's report.json; busy seconds summed over actors)",
             "header": ["stage", "calls", "rows in", "rows out", "busy s", "rows / busy s"], "rows": rows}
    return table, {"stages": stages, "images_per_s": (report.get("throughput") or {}).get("images_per_s"),
                   "shard_write_s": _num(write_s), "shards": len(shard_stats)}


def _samples(run: ReviewRun, names: list[str]) -> dict[str, np.ndarray]:
    """Float values of the figures over a repeatable reservoir sample of :data:`PLOT_SAMPLE` rows."""
    fields = review_fields()
    if not names:
        return {}
    exprs = ", ".join(f"({fields[n].sql})::DOUBLE" for n in names)
    rows = run.values(f"SELECT {exprs} FROM (SELECT * FROM persons USING SAMPLE reservoir({PLOT_SAMPLE} ROWS) "
                      "REPEATABLE (0))")
    if not rows:
        return {n: np.zeros(0) for n in names}
    data = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    return {n: data[:, i][np.isfinite(data[:, i])] for i, n in enumerate(names)}


def compute_stats(run: ReviewRun) -> dict[str, Any]:
    """Everything ``pearl stats`` reports (see the module docstring), JSON-ready."""
    distribution, per_field = _distribution_table(run)
    acceptance, by_source = _acceptance_table(run)
    reasons, by_reason = _reason_table(run)
    throughput, speed = _throughput_table(run)
    return {
        "out": run.out,
        "persons": run.count(),
        "quarantined": run.quarantine_count(),
        "decisions": dict(run.values("SELECT decision, count(*) FROM decisions GROUP BY 1 ORDER BY 1")),
        "fields": per_field,
        "acceptance": by_source,
        "quarantine_reasons": by_reason,
        "throughput": speed,
        "tables": [distribution, _flag_table(run), acceptance, reasons, throughput],
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def stats_markdown(stats: dict[str, Any]) -> str:
    """``stats.md``: a heading, then one Markdown table per section."""
    lines = [f"# pearl stats: {stats['out']}", "",
             f"{stats['persons']} persons in the shards, {stats['quarantined']} quarantined; review decisions: "
             + (", ".join(f"{k} {v}" for k, v in stats["decisions"].items()) or "none"), ""]
    for table in stats["tables"]:
        lines += [f"## {table['title']}", "", "| " + " | ".join(table["header"]) + " |",
                  "| " + " | ".join("---" for _ in table["header"]) + " |"]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
        lines.append("")
    return "\n".join(lines)


def render_plots(run: ReviewRun, stats: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name: ``quality.png``, ``confidence.png``, ``parameters.png`` (histograms per
    figure, coloured by part), ``acceptance.png`` (by source and by reason) and ``throughput.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"body": "#4c72b0", "hands": "#55a868", "face": "#dd8452", "person": "#8172b2"}
    fields = review_fields()
    names = [n for n, f in fields.items() if f.kind == "float" and f.group in PLOT_GROUPS]
    samples = _samples(run, names)
    plots: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72, metadata={"Software": None})
        plt.close(fig)
        plots[name] = buf.getvalue()

    for group in PLOT_GROUPS:
        group_names = [n for n in names if fields[n].group == group]
        cols = 4
        rows = max(1, -(-len(group_names) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(13, 2.3 * rows), squeeze=False)
        for ax, name in zip(axes.ravel(), group_names):
            values = samples[name]
            if len(values):
                lo, hi = np.percentile(values, [0.5, 99.5])
                ax.hist(np.clip(values, lo, hi), bins=HIST_BINS, color=colors.get(fields[name].part, "#777"))
            ax.set_title(f"{name}  (n={stats['fields'][name]['measured']})", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes.ravel()[len(group_names):]:
            ax.axis("off")
        fig.suptitle(f"{group} (colour = part: body blue, hands green, face orange, person purple)", fontsize=10)
        fig.tight_layout()
        save(fig, f"{group}.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 3.8))
    acc = [e for e in stats["acceptance"] if e["source"] != "(all)"][:TOP_SOURCES]
    labels = [e["source"][-40:] for e in acc]
    ax1.barh(labels, [e["written"] for e in acc], color="#4c72b0", label="written")
    ax1.barh(labels, [e["quarantined"] for e in acc], left=[e["written"] for e in acc], color="#c44e52",
             label="quarantined")
    ax1.invert_yaxis()
    ax1.set_title("persons by source", fontsize=9)
    ax1.legend(fontsize=7)
    ax1.tick_params(labelsize=7)
    reasons = list(stats["quarantine_reasons"].items())[:15]
    ax2.barh([r[0][-50:] for r in reasons] or ["(none)"], [r[1] for r in reasons] or [0], color="#c44e52")
    ax2.invert_yaxis()
    ax2.set_title("quarantined by stage: kind", fontsize=9)
    ax2.tick_params(labelsize=7)
    fig.tight_layout()
    save(fig, "acceptance.png")

    stages = stats["throughput"]["stages"]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.35 * max(1, len(stages))))
    ax.barh(list(stages) or ["(no report.json)"], [s.get("seconds") or 0 for s in stages.values()] or [0],
            color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("busy seconds (summed over actors)", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    save(fig, "throughput.png")
    return plots


def write_stats(run: ReviewRun, out: str) -> list[str]:
    """Compute the stats of ``run`` and write ``stats.md``, ``stats.json`` and the PNGs into ``out`` (a
    local folder or fsspec URL, created if needed); returns the written paths."""
    import fsspec

    stats = compute_stats(run)
    plots = render_plots(run, stats)
    fs, root = fsspec.core.url_to_fs(out)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    files = {"stats.md": stats_markdown(stats).encode(),
             "stats.json": (json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n").encode(), **plots}
    written = []
    for name, data in files.items():
        fs.pipe_file(f"{root}/{name}", data)
        written.append(f"{out.rstrip('/')}/{name}")
    return written
