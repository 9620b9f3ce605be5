"""The HTML report of a job: one self-contained page (no external requests)."""

from __future__ import annotations

from html import escape
from typing import Any

from service.jobs.schemas import JobRead

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.pass{color:#116611;font-weight:bold}.fail{color:#aa1111;font-weight:bold}
.warn{background:#fff6dd;border-left:4px solid #e0a800;padding:6px 10px;margin:4px 0}
"""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _audit_sections(result: dict[str, Any]) -> str:
    parts = [
        f"<p>Model <code>{escape(result['model_id'])}</code> on "
        f"<code>{escape(result['dataset_id'])}</code> ({escape(result['split'])}, "
        f"{result['num_examples']} examples, device {escape(result['device'])}).</p>",
        f"<h2>Clean accuracy: {_pct(result['clean_accuracy'])}</h2>",
    ]
    gate = result.get("gate")
    if gate:
        verdict = "PASSED" if gate["passed"] else "FAILED"
        parts.append(
            f"<h2>Gate: <span class='{'pass' if gate['passed'] else 'fail'}'>{verdict}</span></h2>"
        )
        parts.append(
            _table(
                ["check", "threshold", "value", "result"],
                [
                    [
                        escape(c["name"]),
                        _pct(c["threshold"]),
                        _pct(c["value"]),
                        "<span class='pass'>pass</span>"
                        if c["passed"]
                        else "<span class='fail'>fail</span>",
                    ]
                    for c in gate["checks"]
                ],
            )
        )
    for warning in result.get("warnings", []):
        parts.append(
            f"<div class='warn'><b>{escape(warning['code'])}</b>: "
            f"{escape(warning['message'])}</div>"
        )
    parts.append("<h2>Attacks</h2>")
    parts.append(
        _table(
            [
                "attack",
                "norm",
                "eps",
                "robust accuracy",
                "success rate",
                "wrong confidence",
                "mean ||delta||",
                "seconds",
            ],
            [
                [
                    escape(a["name"]),
                    escape(a["norm"]),
                    _num(a["eps"]),
                    _pct(a["robust_accuracy"]),
                    _pct(a["success_rate"]),
                    _pct(a["mean_wrong_confidence"]),
                    _num(a["mean_perturbation_norm"]),
                    f"{a['seconds']:.2f}",
                ]
                for a in result["attacks"]
            ],
        )
    )
    parts.append("<h2>Worst case per eps</h2>")
    parts.append(
        _table(
            ["norm", "eps", "attacks", "robust accuracy"],
            [
                [
                    escape(w["norm"]),
                    _num(w["eps"]),
                    escape(", ".join(w["attacks"])),
                    _pct(w["robust_accuracy"]),
                ]
                for w in result["worst_case"]
            ],
        )
    )
    return "".join(parts)


def render_report(job: JobRead) -> str:
    """The report page of ``job`` (an audit's numbers; status and error for other jobs)."""
    title = f"Gauntlet {escape(job.kind)} {escape(job.id)}"
    parts = [f"<h1>{title}</h1>", f"<p>Status: <b>{escape(job.status)}</b></p>"]
    if job.error:
        parts.append(f"<p class='fail'>{escape(job.error.code)}: {escape(job.error.message)}</p>")
    if job.kind == "audit" and job.result:
        parts.append(_audit_sections(job.result))
    elif job.status in ("queued", "running"):
        parts.append(f"<p>{_pct(job.progress.fraction)} done: {escape(job.progress.message)}</p>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
