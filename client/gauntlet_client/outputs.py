"""What a run leaves behind: the summary table, JUnit XML, Markdown and JSON."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gauntlet_client import __version__
from gauntlet_client.spec import eps_label
from gauntlet_client.verdict import Check, Outcome, find_attack

JUNIT_SUITE = "gauntlet"
JUNIT_GATE_CLASS = "gauntlet.gate"
JUNIT_JOB_CLASS = "gauntlet.job"


def pct(value: float | None) -> str:
    """``0.4567`` -> ``45.7%``; ``None`` -> ``n/a``."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def points(value: float | None) -> str:
    """An accuracy difference in percentage points: ``+1.5 pp``."""
    return "n/a" if value is None else f"{100 * value:+.1f} pp"


def check_condition(check: Check) -> str:
    """``>= 40.0%``, ``drop <= 2.0 pp`` or ``does not fire``."""
    if check.kind == "max_drop":
        return f"drop <= {100 * check.threshold:.1f} pp"
    if check.kind == "validity":
        return "does not fire"
    return f">= {pct(check.threshold)}"


def check_value(check: Check) -> str:
    """The measured value in the units of its condition (and, for one attack, the worst
    case over every attack at the same eps)."""
    if check.kind == "max_drop":
        return "n/a" if check.value is None else f"{100 * check.value:.1f} pp"
    if check.kind == "validity":
        return "fired (waived)" if check.waived else ("fired" if check.value else "no")
    text = pct(check.value)
    if check.worst_case is not None:
        text += f" (worst case {pct(check.worst_case)})"
    return text


def check_result(check: Check) -> str:
    """``pass``, ``FAIL`` or ``waived``."""
    if check.waived:
        return "waived"
    return "pass" if check.passed else "FAIL"


def check_failure(check: Check) -> str:
    """Why a check failed, in one sentence."""
    if check.kind == "validity":
        return (
            f"{check.name}: the validity warning {check.name.removeprefix('validity:')} fired, "
            "so the robust accuracies are suspect (see the warnings; --allow-warning waives it)"
        )
    if check.value is None:
        return f"{check.name}: not measured (it cannot pass on a number that is missing)"
    if check.kind == "max_drop":
        return (
            f"{check.name}: dropped {100 * check.value:.1f} pp (baseline "
            f"{pct(check.baseline)}, candidate {pct(check.candidate)}), more than the "
            f"allowed {100 * check.threshold:.1f} pp"
        )
    return (
        f"{check.name}: {check.metric} {pct(check.value)} is below the threshold "
        f"{pct(check.threshold)}"
    )


def format_table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> str:
    """A plain-text table with left-aligned columns."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        indent + "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _result(job: dict[str, Any] | None) -> dict[str, Any]:
    return ((job or {}).get("result") or {}) if (job or {}).get("status") == "succeeded" else {}


def accuracy_rows(outcome: Outcome) -> list[dict[str, Any]]:
    """Clean accuracy, then each attack and eps: candidate, baseline and change."""
    result = _result(outcome.job)
    baseline = _result(outcome.baseline_job)
    if "clean_accuracy" not in result:  # not an audit's result
        return []
    rows: list[dict[str, Any]] = [
        {
            "attack": "clean",
            "norm": "",
            "eps": "",
            "accuracy": result.get("clean_accuracy"),
            "success_rate": None,
            "baseline": baseline.get("clean_accuracy") if baseline else None,
        }
    ]
    for attack in result.get("attacks") or []:
        match = find_attack(list(baseline.get("attacks") or []), attack) if baseline else None
        rows.append(
            {
                "attack": str(attack.get("name")),
                "norm": str(attack.get("norm")),
                "eps": eps_label(float(attack.get("eps", 0.0))),
                "accuracy": attack.get("robust_accuracy"),
                "success_rate": attack.get("success_rate"),
                "baseline": None if match is None else match.get("robust_accuracy"),
            }
        )
    for worst in result.get("worst_case") or []:
        if len(worst.get("attacks") or []) > 1:
            rows.append(
                {
                    "attack": "worst case",
                    "norm": str(worst.get("norm")),
                    "eps": eps_label(float(worst.get("eps", 0.0))),
                    "accuracy": worst.get("robust_accuracy"),
                    "success_rate": None,
                    "baseline": None,
                }
            )
    for row in rows:
        row["change"] = (
            None
            if row["accuracy"] is None or row["baseline"] is None
            else row["accuracy"] - row["baseline"]
        )
    return rows


def _describe_run(outcome: Outcome) -> str:
    job = outcome.job or {}
    result = _result(outcome.job)
    spec = job.get("spec") or {}
    model = outcome.model or {}
    name = f"{model['name']} ({job.get('model_id')})" if model.get("name") else job.get("model_id")
    text = f"model {name} on {spec.get('dataset_id', '?')}, split {spec.get('split', 'test')}"
    if result:
        text += f", {result.get('num_examples')} examples, device {result.get('device')}"
    return text


def accuracy_table(outcome: Outcome) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the accuracy table (with baseline columns if any)."""
    with_baseline = outcome.baseline_job is not None
    headers = ["attack", "norm", "eps", "accuracy", "success rate"]
    if with_baseline:
        headers += ["baseline", "change"]
    table = []
    for row in accuracy_rows(outcome):
        cells = [
            row["attack"],
            row["norm"],
            row["eps"],
            pct(row["accuracy"]),
            "" if row["success_rate"] is None else pct(row["success_rate"]),
        ]
        if with_baseline:
            cells += [
                "" if row["baseline"] is None else pct(row["baseline"]),
                "" if row["change"] is None else points(row["change"]),
            ]
        table.append(cells)
    return headers, table


def summary_text(outcome: Outcome) -> str:
    """The human summary printed at the end of a run."""
    lines: list[str] = []
    job = outcome.job
    if job is not None:
        lines.append(f"Gauntlet {job.get('kind', 'audit')} {job['id']}: {job['status']}")
        lines.append(f"  {_describe_run(outcome)}")
    if outcome.baseline_job is not None:
        lines.append(
            f"  baseline: model {outcome.baseline_model_id}, job {outcome.baseline_job['id']} "
            f"({outcome.baseline_job['status']})"
        )
    headers, table = accuracy_table(outcome)
    if table:
        lines += ["", format_table(headers, table)]
    if outcome.checks:
        failed = [c for c in outcome.checks if not c.passed]
        verdict = "PASSED" if not failed else f"FAILED ({len(failed)} of {len(outcome.checks)})"
        lines += ["", f"Gate: {verdict}"]
        shown = [c for c in outcome.checks if c.kind != "validity" or not c.passed or c.waived]
        lines.append(
            format_table(
                ["result", "check", "condition", "value"],
                [[check_result(c), c.name, check_condition(c), check_value(c)] for c in shown],
            )
        )
        lines.append(f"  {validity_line(outcome)}")
    lines += notes_lines(outcome, "  - ", "Notes:")
    warnings = _result(outcome.job).get("warnings") or []
    if warnings:
        lines += ["", "Warnings:"]
        lines += [f"  - [{w.get('code')}] {w.get('message')}" for w in warnings]
    problem = outcome.problem()
    if problem is not None:
        lines += ["", f"Error: {problem}"]
    if outcome.job is not None:
        lines += [
            "",
            f"Report: {outcome.report_url()}  (needs the API key: "
            f"gauntlet report {outcome.job['id']} --open)",
        ]
        if outcome.report_link:
            lines.append(
                f"Browser link (until {outcome.report_link['expires_at']}): "
                f"{outcome.report_link['url']}"
            )
    lines.append(f"Result: {outcome.verdict} (exit {outcome.exit_code})")
    return "\n".join(lines).lstrip("\n")


def validity_line(outcome: Outcome) -> str:
    """One line on the validity checks: how many gated and held, or that they were off."""
    validity = [c for c in outcome.checks if c.kind == "validity"]
    gate = _result(outcome.job).get("gate") or {}
    if not validity:
        if gate and not gate.get("validity_checks", True):
            return (
                "validity checks: OFF (--no-checks): nothing here tells a robust model from "
                "a masked one"
            )
        return "validity checks: none in the verdict"
    fired = [c for c in validity if c.value]
    waived = [c for c in fired if c.waived]
    text = f"validity checks: {len(validity) - len(fired)} of {len(validity)} held"
    if fired:
        text += f"; fired: {', '.join(c.name.removeprefix('validity:') for c in fired)}"
    if waived:
        text += f" (waived: {', '.join(c.name.removeprefix('validity:') for c in waived)})"
    return text


def notes_lines(outcome: Outcome, bullet: str, title: str) -> list[str]:
    """The result's notes (weak attacks, checks off, waivers), as bulleted lines."""
    notes = _result(outcome.job).get("notes") or []
    if not notes:
        return []
    return ["", title] + [f"{bullet}{note.get('message')}" for note in notes]


def junit_tree(outcome: Outcome) -> ET.ElementTree:
    """One test suite ``gauntlet``, one test case per check (classname ``gauntlet.gate``),
    and an erroring ``gauntlet.job`` case when the run did not succeed."""
    root = ET.Element("testsuites", name="gauntlet")
    suite = ET.SubElement(root, "testsuite", name=JUNIT_SUITE)
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("server", outcome.server),
        ("job_id", (outcome.job or {}).get("id")),
        ("model_id", (outcome.job or {}).get("model_id")),
        ("report_url", outcome.report_url()),
        ("baseline_model_id", outcome.baseline_model_id),
        ("baseline_job_id", (outcome.baseline_job or {}).get("id")),
        ("verdict", outcome.verdict),
    ):
        if value is not None:
            ET.SubElement(properties, "property", name=name, value=str(value))
    failures = errors = 0
    seconds = float(_result(outcome.job).get("seconds") or 0.0)
    problem = outcome.problem()
    if problem is not None:
        case = ET.SubElement(
            suite, "testcase", name="audit job", classname=JUNIT_JOB_CLASS, time="0"
        )
        ET.SubElement(case, "error", message=problem, type="gauntlet.error").text = problem
        errors += 1
    elif not outcome.checks:
        ET.SubElement(
            suite, "testcase", name="audit job", classname=JUNIT_JOB_CLASS, time=f"{seconds:.3f}"
        )
    for check in outcome.checks:
        case = ET.SubElement(
            suite, "testcase", name=check.name, classname=JUNIT_GATE_CLASS, time="0"
        )
        if not check.passed:
            message = check_failure(check)
            failure = ET.SubElement(case, "failure", message=message, type=check.kind)
            failure.text = (
                f"{message}\ncondition: {check_condition(check)}\n"
                f"threshold: {check.threshold}\nvalue: {check.value}"
            )
            failures += 1
    cases = len(suite.findall("testcase"))
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    suite.set("time", f"{seconds:.3f}")
    ET.SubElement(suite, "system-out").text = summary_text(outcome)
    for key in ("tests", "failures", "errors"):
        root.set(key, suite.get(key, "0"))
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(outcome: Outcome, path: Path) -> None:
    """Write the JUnit XML file."""
    junit_tree(outcome).write(path, encoding="utf-8", xml_declaration=True)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(outcome: Outcome) -> str:
    """A pull-request comment: verdict, accuracy table, checks, warnings, report link."""
    icon = {"passed": "✅", "failed": "❌"}.get(outcome.verdict, "⚠️")
    title = {"passed": "gate passed", "failed": "gate failed"}.get(outcome.verdict, "error")
    lines = [f"### {icon} Gauntlet robustness audit: {title}", ""]
    job = outcome.job
    if job is not None:
        lines.append(f"Job `{job['id']}` ({job['status']}): {_md(_describe_run(outcome))}.")
    if outcome.baseline_job is not None:
        lines.append(
            f"Baseline: model `{outcome.baseline_model_id}`, job `{outcome.baseline_job['id']}` "
            f"({outcome.baseline_job['status']})."
        )
    problem = outcome.problem()
    if problem is not None:
        lines += ["", f"**Error:** {_md(problem)}"]
    headers, table = accuracy_table(outcome)
    if table:
        lines += [
            "",
            "| " + " | ".join(headers) + " |",
            "|" + "|".join(["---"] * 3 + ["---:"] * (len(headers) - 3)) + "|",
        ]
        lines += ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in table]
    if outcome.checks:
        lines += ["", "| check | condition | value | result |", "|---|---|---:|---|"]
        for check in outcome.checks:
            if check.kind == "validity" and check.passed and not check.waived:
                continue
            mark = "⚠️ waived" if check.waived else ("✅ pass" if check.passed else "❌ fail")
            lines.append(
                f"| `{_md(check.name)}` | {_md(check_condition(check))} | "
                f"{_md(check_value(check))} | {mark} |"
            )
        lines += ["", _md(validity_line(outcome))]
    lines += notes_lines(outcome, "- ", "**Notes**")
    warnings = _result(job).get("warnings") or []
    if warnings:
        lines += ["", "**Warnings**", ""]
        lines += [f"- `{_md(w.get('code'))}`: {_md(w.get('message'))}" for w in warnings]
    if job is not None and outcome.report_link:
        lines += [
            "",
            f"[Full report]({outcome.report_link['url']}) (link valid until "
            f"{outcome.report_link['expires_at']}; later: `gauntlet report {job['id']} --open`)",
        ]
    elif job is not None:
        lines += [
            "",
            f"[Full report]({outcome.report_url()}) (needs the API key; or run "
            f"`gauntlet report {job['id']} --open`)",
        ]
    return "\n".join(lines) + "\n"


def json_document(outcome: Outcome) -> dict[str, Any]:
    """Everything the run learned, for scripts."""
    return {
        "gauntlet_client": __version__,
        "verdict": outcome.verdict,
        "exit_code": outcome.exit_code,
        "error": outcome.problem(),
        "server": outcome.server,
        "model": outcome.model,
        "job": outcome.job,
        "report_url": outcome.report_url(),
        "report_link": outcome.report_link,
        "checks": [check.as_json() for check in outcome.checks],
        "baseline": None
        if outcome.baseline_model_id is None
        else {
            "model_id": outcome.baseline_model_id,
            "max_drop": outcome.max_drop,
            "job": outcome.baseline_job,
            "report_url": outcome.report_url(outcome.baseline_job)
            if outcome.baseline_job
            else None,
        },
        "notes": outcome.notes,
    }


def write_json(outcome: Outcome, path: Path) -> None:
    """Write the JSON document."""
    path.write_text(json.dumps(json_document(outcome), indent=2) + "\n", encoding="utf-8")


def write_markdown(outcome: Outcome, path: Path) -> None:
    """Write the Markdown summary."""
    path.write_text(markdown(outcome), encoding="utf-8")
