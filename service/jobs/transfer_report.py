"""The report sections of a transfer job.

A placeholder (the heat-map rendering is being written elsewhere): a plain table of the
cells, so the report of a transfer shows its numbers meanwhile.
"""

from __future__ import annotations

from html import escape
from typing import Any


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def transfer_sections(result: dict[str, Any]) -> str:
    """HTML for a transfer result (``TransferResult`` as JSON): one row per cell."""
    rows = "".join(
        "<tr>"
        f"<td>{escape(str(cell['source']))}</td><td>{escape(str(cell['target']))}</td>"
        f"<td>{cell['eps']:g}</td><td>{_rate(cell['error_rate'])}</td>"
        f"<td>{_rate(cell['accuracy'])}</td><td>{_rate(cell['wrong_class_agreement'])}</td>"
        f"<td>{'yes' if cell['reused'] else 'no'}</td>"
        "</tr>"
        for cell in result.get("cells", [])
    )
    return (
        f"<h2>Transfer matrix</h2><p>{int(result.get('examples', 0))} examples</p>"
        "<table><tr><th>source</th><th>target</th><th>eps</th><th>error rate</th>"
        "<th>accuracy</th><th>wrong-class agreement</th><th>reused</th></tr>"
        f"{rows}</table>"
    )
