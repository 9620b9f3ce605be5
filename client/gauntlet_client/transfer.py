"""The transfer matrix: rows are sources (a model or an ensemble), columns targets, one
table per eps; each cell is the error rate the source's adversarial examples cause on the
target and how often a fooled target agrees with the wrong class the source was led to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gauntlet_client.outputs import format_table, pct
from gauntlet_client.spec import eps_label

JSON = dict[str, Any]


def _name(entries: list[JSON], key: Any) -> str:
    """A cell's source or target: a name, or an index into the result's list."""
    if isinstance(key, int) and 0 <= key < len(entries):
        return str(entries[key].get("name"))
    return str(key)


def matrix(result: JSON) -> dict[float, dict[tuple[str, str], JSON]]:
    """``{eps: {(source, target): cell}}``."""
    sources = [s for s in result.get("sources") or [] if isinstance(s, dict)]
    targets = [t for t in result.get("targets") or [] if isinstance(t, dict)]
    cells: dict[float, dict[tuple[str, str], JSON]] = {}
    for cell in result.get("cells") or []:
        if not isinstance(cell, dict):
            continue
        key = (_name(sources, cell.get("source")), _name(targets, cell.get("target")))
        cells.setdefault(float(cell.get("eps", 0.0)), {})[key] = cell
    return dict(sorted(cells.items()))


def _cell_text(cell: JSON | None) -> str:
    if cell is None:
        return "-"
    return f"{pct(cell.get('error_rate'))} err, {pct(cell.get('wrong_class_agreement'))} agree"


def _tables(result: JSON) -> list[tuple[float, list[str], list[list[str]]]]:
    sources = [str(s.get("name")) for s in result.get("sources") or [] if isinstance(s, dict)]
    targets = [t for t in result.get("targets") or [] if isinstance(t, dict)]
    headers = ["source \\ target"] + [
        str(t.get("name")) + (" (black box)" if t.get("black_box") else "") for t in targets
    ]
    tables = []
    for eps, cells in matrix(result).items():
        rows = [
            [source] + [_cell_text(cells.get((source, str(t.get("name"))))) for t in targets]
            for source in sources
        ]
        tables.append((eps, headers, rows))
    return tables


def summary_text(result: JSON) -> str:
    """The matrix as plain text tables, one per eps."""
    lines = []
    targets = [t for t in result.get("targets") or [] if isinstance(t, dict)]
    if targets:
        lines.append(
            "Targets' clean accuracy: "
            + ", ".join(f"{t.get('name')} {pct(t.get('clean_accuracy'))}" for t in targets)
        )
    for eps, headers, rows in _tables(result):
        lines.append(f"\neps {eps_label(eps)}: error rate, wrong-class agreement")
        lines.append(format_table(headers, rows))
    return "\n".join(lines)


def markdown(result: JSON) -> str:
    """The matrix as Markdown tables, one per eps."""
    out = ["### Gauntlet transfer matrix", ""]
    out.append("Rows: sources (where the examples were crafted); columns: targets. ")
    out.append("Each cell: error rate on the target / wrong-class agreement.")
    for eps, headers, rows in _tables(result):
        out += ["", f"**eps {eps_label(eps)}**", ""]
        out.append("| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |")
        out.append("|" + "---|" * len(headers))
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def write_json(result: JSON, job: JSON, path: Path) -> None:
    """The job (its id, spec, status) and the result document."""
    path.write_text(json.dumps({"job": job, "result": result}, indent=2) + "\n", encoding="utf-8")


def write_markdown(result: JSON, path: Path) -> None:
    path.write_text(markdown(result), encoding="utf-8")
