"""The run report: ``OUT/report.json`` and ``OUT/report.html`` (self-contained, plots inlined as PNG).

Totals (samples, persons written, samples without persons, quarantined by ``"stage: kind"``, keypoint
confidence histograms) are summed over **every committed shard's stats file**, so a resumed run
reports the whole output, not just what it did itself. Throughput (end-to-end images/s and each
stage's busy time and rows/s) is this run's own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipelines.io.sinks import HIST_BINS, shard_stats_totals

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)


def stage_throughput(timings: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage: calls, rows in/out, busy seconds (summed over actors) and rows in per busy second."""
    out = {}
    for name, t in timings.items():
        seconds = float(t["seconds"])
        out[name] = {**{k: t[k] for k in ("calls", "rows_in", "rows_out")}, "seconds": round(seconds, 4),
                     "rows_per_s": round(t["rows_in"] / seconds, 3) if seconds > 0 else None}
    return out


SKIPPED_LISTED = 200
"""Most skipped files the report names (all are counted)."""


def build_report(run: Mapping[str, Any], timings: Mapping[str, Mapping[str, float]],
                 stats: list[dict[str, Any]], skipped: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """The report.json content: ``run`` (as given), ``throughput``, ``totals`` and ``skipped_files`` (the
    inputs' files that were not samples, ``(path, reason)``: every file is either annotated, quarantined or
    listed here)."""
    wall = float(run.get("wall_s") or 0.0)
    samples = int(run.get("samples_this_run") or 0)
    return {
        "run": dict(run),
        "throughput": {"images_per_s": round(samples / wall, 3) if wall > 0 else None,
                       "stages": stage_throughput(timings)},
        "totals": shard_stats_totals(stats),
        "skipped_files": {"count": len(skipped),
                          "files": [{"path": p, "reason": r} for p, r in list(skipped)[:SKIPPED_LISTED]]},
    }


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_plots(report: Mapping[str, Any]) -> dict[str, str]:
    """Base64 PNGs: ``stages`` (busy seconds per stage), ``confidence`` (keypoint confidences per part, and
    per-person confidences, as fractions per bin) and ``quality`` (the written persons' quality fields)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plots = {}
    stages = report["throughput"]["stages"]
    if stages:
        height = 0.9 + 0.35 * len(stages)
        fig, ax = plt.subplots(figsize=(7, height))
        fig.subplots_adjust(left=0.3, right=0.97, top=1 - 0.15 / height, bottom=0.55 / height)
        ax.barh(list(stages), [s["seconds"] for s in stages.values()], color="#4c72b0")
        ax.set_xlabel("busy seconds (summed over actors)")
        ax.invert_yaxis()
        plots["stages"] = _png(fig)
        plt.close(fig)
    hists = report["totals"]["confidence_histograms"]
    if hists:
        edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.15, wspace=0.25)
        for ax, prefix, title in ((axes[0], "kp_", "keypoint confidence per part"),
                                  (axes[1], "conf_", "per-person confidence")):
            for name, counts in hists.items():
                if name.startswith(prefix):
                    counts = np.asarray(counts, dtype=float)
                    ax.stairs(counts / max(counts.sum(), 1.0), edges, label=name.removeprefix(prefix))
            ax.set_title(title)
            ax.set_xlabel("confidence")
            ax.set_ylabel("fraction")
            ax.legend(fontsize=8)
        plots["confidence"] = _png(fig)
        plt.close(fig)
    quality = {k: v for k, v in report["totals"].get("quality_histograms", {}).items() if sum(v["counts"])}
    if quality:
        fig, axes = plt.subplots(1, len(quality), figsize=(3.2 * len(quality), 2.8), squeeze=False)
        fig.subplots_adjust(left=0.06, right=0.98, top=0.85, bottom=0.2, wspace=0.35)
        for ax, (name, h) in zip(axes[0], quality.items()):
            lo, hi = h["range"]
            ax.stairs(h["counts"], np.linspace(lo, hi, len(h["counts"]) + 1), fill=True, color="#4c72b0")
            ax.set_title(f"{name.removeprefix('quality_')}\n(not measured: {h['nan']})", fontsize=8)
            ax.set_xlabel("value (last bin: and above)", fontsize=7)
            ax.tick_params(labelsize=7)
        plots["quality"] = _png(fig)
        plt.close(fig)
    return plots


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page of the report (no external assets)."""
    plots = render_plots(report)
    run, tot, thr = report["run"], report["totals"], report["throughput"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pearl annotate report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>",
        "<h1>pearl annotate report</h1>",
        "<h2>Run</h2>", _table([(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in run.items()],
                               ("setting", "value")),
        "<h2>Output (all committed shards)</h2>",
        _table([(k, tot[k]) for k in ("shards", "samples", "persons", "samples_without_persons", "quarantined",
                                      "duplicates_dropped")], ("count", "value")),
        "<h3>Quarantined by stage and kind</h3>",
        _table(sorted(tot["quarantined_by_reason"].items()), ("stage: kind", "samples/persons"))
        if tot["quarantined_by_reason"] else "<p>none</p>",
        "<h3>Quarantined: the reasons</h3>",
        _table([(q["key"], q["stage"], q["reason"]) for q in report.get("quarantine_examples", [])],
               ("key", "stage", "reason"))
        + (f"<p>(the first {len(report['quarantine_examples'])}; all are in OUT/quarantine/)</p>"
           if len(report.get("quarantine_examples", [])) < tot["quarantined"] else "")
        if report.get("quarantine_examples") else "<p>none</p>",
        "<h3>Files skipped (not samples)</h3>",
        (_table([(f["path"], f["reason"]) for f in report["skipped_files"]["files"]], ("file", "reason"))
         + (f"<p>... and {report['skipped_files']['count'] - len(report['skipped_files']['files'])} more</p>"
            if report["skipped_files"]["count"] > len(report["skipped_files"]["files"]) else ""))
        if report.get("skipped_files", {}).get("count") else "<p>none</p>",
        "<h2>Throughput (this run)</h2>", f"<p>end to end: {thr['images_per_s']} images/s</p>",
        _table([(name, s["calls"], s["rows_in"], s["rows_out"], s["seconds"], s["rows_per_s"])
                for name, s in thr["stages"].items()],
               ("stage", "calls", "rows in", "rows out", "busy s", "rows/busy s")),
    ]
    if "stages" in plots:
        parts.append(f"<img alt='stage busy time' src='data:image/png;base64,{plots['stages']}'>")
    parts.append("<h2>Quality of the written persons</h2>")
    parts.append(f"<img alt='quality histograms' src='data:image/png;base64,{plots['quality']}'>"
                 if "quality" in plots else "<p>no quality scores</p>")
    flags = tot.get("quality_flags", {})
    parts.append(_table(sorted(flags.items()), ("quality flag", "persons")) if flags else "")
    parts.append("<h2>Keypoint confidence</h2>")
    parts.append(f"<img alt='confidence histograms' src='data:image/png;base64,{plots['confidence']}'>"
                 if "confidence" in plots else "<p>no persons written</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(fs: AbstractFileSystem, root: str, report: Mapping[str, Any]) -> tuple[str, str]:
    """Write ``report.json`` and ``report.html`` under ``root``; returns their paths."""
    json_path, html_path = f"{root}/report.json", f"{root}/report.html"
    fs.pipe_file(json_path, (json.dumps(report, indent=2, sort_keys=True, default=str) + "\n").encode())
    fs.pipe_file(html_path, render_html(report).encode())
    return json_path, html_path
