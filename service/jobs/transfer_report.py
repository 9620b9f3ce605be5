"""The report sections of a transfer job: one heat-map per eps, and the cells' counts.

Rows are sources, columns targets; a cell's colour is the target's error rate on the
source's adversarial examples (over the examples the target gets right when clean), and it
also shows the raw accuracy and how often fooled targets agree with the source on the wrong
class. The diagonal (a model as its own source) is the white-box case.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from service.jobs.charts import heat_map


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _heat_maps(result: Mapping[str, Any]) -> str:
    sources = [s["name"] for s in result["sources"]]
    targets = [t["name"] for t in result["targets"]]
    cells = {(c["source"], c["target"], c["eps"]): c for c in result["cells"]}
    parts = []
    for eps in result["attack"]["eps"]:
        values: list[list[float | None]] = []
        captions: list[list[list[str]]] = []
        for source in sources:
            values.append([])
            captions.append([])
            for target in targets:
                cell = cells.get((source, target, eps))
                if cell is None:
                    values[-1].append(None)
                    captions[-1].append(["missing"])
                    continue
                values[-1].append(cell["error_rate"])
                captions[-1].append(
                    [
                        _rate(cell["error_rate"]),
                        f"acc {_rate(cell['accuracy'])}",
                        f"agree {_rate(cell['wrong_class_agreement'])}",
                    ]
                )
        parts.append(f"<h3>eps {eps:g} ({escape(result['attack']['norm'])})</h3>")
        parts.append(
            heat_map(
                f"transfer error rate at eps {eps:g}",
                sources,
                targets,
                values,
                captions,
                row_label="source (crafted on)",
                column_label="target (scored on)",
            )
        )
    return "".join(parts)


def _cell_table(result: Mapping[str, Any]) -> str:
    rows = "".join(
        "<tr>"
        f"<td>{escape(cell['source'])}</td><td>{escape(cell['target'])}</td>"
        f"<td>{cell['eps']:g}</td><td>{_rate(cell['error_rate'])}</td>"
        f"<td>{_rate(cell['accuracy'])}</td><td>{_rate(cell['wrong_class_agreement'])}</td>"
        f"<td>{cell['target_clean_correct']}</td><td>{cell['fooled']}</td>"
        f"<td>{cell['agreeing']}</td><td>{'yes' if cell['reused'] else 'no'}</td>"
        "</tr>"
        for cell in result["cells"]
    )
    return (
        "<h2>Cells</h2><table><tr><th>source</th><th>target</th><th>eps</th>"
        "<th>error rate</th><th>accuracy</th><th>wrong-class agreement</th>"
        "<th>clean correct</th><th>fooled</th><th>agreeing</th><th>reused</th></tr>"
        f"{rows}</table>"
    )


def _models(result: Mapping[str, Any]) -> str:
    targets = "".join(
        f"<tr><td>{escape(t['name'])}</td><td>{escape(t['model_id'])}</td>"
        f"<td>{'black box' if t['black_box'] else 'white box'}</td>"
        f"<td>{_rate(t['clean_accuracy'])}</td></tr>"
        for t in result["targets"]
    )
    crafted = "".join(
        f"<tr><td>{escape(c['source'])}</td><td>{c['eps']:g}</td>"
        f"<td>{_rate(c['source_clean_accuracy'])}</td>"
        f"<td>{_rate(c['source_success_rate'])}</td>"
        f"<td>{'reused' if c['reused'] else 'crafted'}</td></tr>"
        for c in result["crafted"]
    )
    return (
        "<h2>Targets</h2><table><tr><th>target</th><th>model</th><th>kind</th>"
        f"<th>clean accuracy</th></tr>{targets}</table>"
        "<h2>Crafted sets</h2><table><tr><th>source</th><th>eps</th><th>clean accuracy</th>"
        f"<th>white-box success</th><th></th></tr>{crafted}</table>"
    )


def transfer_sections(result: Mapping[str, Any]) -> str:
    """HTML for a transfer result (``TransferResult`` as JSON)."""
    attack = result["attack"]
    steps = f", {attack['steps']} steps" if attack.get("steps") else ""
    reused = sum(1 for c in result["cells"] if c["reused"])
    summary = (
        f"<p>{int(result['examples'])} examples, {escape(attack['name'])} "
        f"{escape(attack['norm'])}{steps}, seed {result['seed']}; "
        f"{len(result['cells'])} cells, {reused} from reused crafted sets. A cell's colour "
        "and first figure are the target's error rate on the examples it classifies "
        "correctly when clean; <i>acc</i> is its raw accuracy on the adversarial inputs, "
        "<i>agree</i> the fraction of fooled examples on which it predicts the source's "
        "wrong class. The diagonal is the white-box case.</p>"
    )
    return (
        "<h2>Transfer matrix</h2>"
        + summary
        + _heat_maps(result)
        + _models(result)
        + _cell_table(result)
    )
