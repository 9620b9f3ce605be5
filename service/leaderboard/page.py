"""The leaderboard page: one self-contained HTML document (inline SVG, no script)."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from itertools import groupby

from service.jobs.charts import Series, line_chart
from service.leaderboard.service import Radius, Row, radii

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f4f4f4}td.name,th.name{text-align:left}
.warn-text{color:#8a6d00;font-weight:bold}.muted{color:#888}
"""


def _pct(value: float | None) -> str:
    return "<span class='muted'>n/a</span>" if value is None else f"{100 * value:.1f}%"


def _radius(radius: Radius) -> str:
    norm, eps = radius
    return f"{norm} ε={eps:.4g}"


def _table(table: list[Row], columns: list[Radius], report_url: Callable[[str], str]) -> str:
    head = (
        ["<th class='name'>model</th>", "<th>version</th>", "<th>clean</th>"]
        + [f"<th>worst case {escape(_radius(r))}</th>" for r in columns]
        + ["<th>preset</th>", "<th>warnings</th>", "<th>date</th>", "<th>report</th>"]
    )
    body = []
    for row in table:
        model = row.model
        cells = [
            f"<td class='name'>{escape(model.name)}</td>",
            f"<td>{model.version}</td>",
        ]
        if row.job is None:
            cells.append(
                f"<td class='muted' colspan='{len(columns) + 3}'>no succeeded audit</td>"
                f"<td>{model.created_at:%Y-%m-%d}</td><td></td>"
            )
        else:
            finished = row.job.finished_at or row.job.created_at
            warnings = ", ".join(row.warnings)
            cells += (
                [f"<td>{_pct(row.clean_accuracy)}</td>"]
                + [f"<td>{_pct(row.worst_case.get(r))}</td>" for r in columns]
                + [
                    f"<td>{escape(row.preset)}</td>",
                    f"<td class='warn-text'>{escape(warnings)}</td>"
                    if warnings
                    else "<td>none</td>",
                    f"<td>{finished:%Y-%m-%d %H:%M}</td>",
                    f"<td><a href='{escape(report_url(row.job.id))}'>{escape(row.job.id)}</a></td>",
                ]
            )
        body.append(f"<tr data-model='{escape(model.id)}'>{''.join(cells)}</tr>")
    return f"<table class='leaderboard'><tr>{''.join(head)}</tr>{''.join(body)}</table>"


def _trend(name: str, versions: list[Row]) -> str:
    """Worst-case robust accuracy against version, one series per (norm, eps)."""
    audited = [row for row in versions if row.job is not None]
    series = []
    for radius in radii(audited):
        points = [
            (row.model.version, row.worst_case[radius])
            for row in audited
            if radius in row.worst_case
        ]
        series.append(
            Series(
                label=f"worst {_radius(radius)}",
                x=[float(v) for v, _ in points],
                y=[a for _, a in points],
            )
        )
    if not series:
        return ""
    chart = line_chart(f"{name}: worst-case robust accuracy by version", series, "version")
    return (
        f"<section class='trend' data-name='{escape(name)}'><h3>{escape(name)}</h3>"
        f"{chart}</section>"
    )


def render_leaderboard(table: list[Row], report_url: Callable[[str], str]) -> str:
    """The page: a table of every model version's latest audit and a trend chart per name."""
    columns = radii(table)
    parts = [
        "<h1>Gauntlet leaderboard</h1>",
        "<p>Every model version with its latest succeeded audit. Worst case: the per-example "
        "worst over every attack the audit ran at that radius.</p>",
    ]
    if not table:
        parts.append("<p>No models yet.</p>")
    else:
        parts.append(_table(table, columns, report_url))
        parts.append("<h2>Trends</h2>")
        for name, group in groupby(table, key=lambda row: row.model.name):
            parts.append(_trend(name, list(group)))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Gauntlet leaderboard</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
