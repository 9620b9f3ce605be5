"""The verdict and what a run writes: exit codes, baseline checks, JUnit, Markdown, JSON."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gauntlet_client.outputs import (
    json_document,
    markdown,
    summary_text,
    write_json,
    write_junit,
    write_markdown,
)
from gauntlet_client.spec import eps_label
from gauntlet_client.verdict import Outcome, baseline_checks, gate_checks
from tests.client.samples import attack_result, audit_result, check, job, validity_check

SERVER = "http://gauntlet.test"


def judged(job_document: dict, **kwargs) -> Outcome:  # type: ignore[no-untyped-def]
    outcome = Outcome(server=SERVER, job=job_document, **kwargs)
    outcome.checks = gate_checks(job_document) if outcome.succeeded else []
    return outcome


def failing_gate_outcome() -> Outcome:
    checks = [
        check("clean_accuracy", 0.9, 0.95, "clean_accuracy"),
        check("pgd@linf:0.1", 0.99, 0.5),
    ]
    warnings = [{"code": "robust_accuracy_rises_with_eps", "message": "look | closer"}]
    return judged(job(result=audit_result(checks=checks, warnings=warnings)))


def test_exit_codes() -> None:
    passing = judged(job(result=audit_result(checks=[check("pgd@linf:0.1", 0.4, 0.5)])))
    assert (passing.exit_code, passing.verdict) == (0, "passed")
    assert failing_gate_outcome().exit_code == 1
    # A succeeded audit without a gate verdict is no pass: nothing the run asked held.
    no_gate = judged(job(result=audit_result()))
    assert (no_gate.checks, no_gate.exit_code) == ([], 2)
    assert "without a gate verdict" in (no_gate.problem() or "")
    for status in ("failed", "cancelled", "running"):
        assert judged(job(status=status)).exit_code == 2
    # An error is never a pass, even with every check passing.
    errored = judged(job(result=audit_result(checks=[check("pgd@linf:0.1", 0.4, 0.5)])))
    errored.error = "the server went away"
    assert errored.exit_code == 2
    assert Outcome(server=SERVER, error="unreachable").exit_code == 2
    # A baseline that was asked for must have succeeded too.
    with_baseline = judged(job(result=audit_result()), baseline_model_id="m_2")
    with_baseline.baseline_job = job(
        status="failed", job_id="j_2", error={"code": "x", "message": "y"}
    )
    assert with_baseline.exit_code == 2
    assert "baseline audit job j_2 failed: [x] y" in (with_baseline.problem() or "")


def test_the_client_trusts_nothing_it_did_not_see() -> None:
    asked = {
        "min_clean_accuracy": 0.9,
        "min_robust_accuracy": [{"attack": "pgd", "eps": 0.1, "value": 0.4}],
    }
    checks = [
        check("clean_accuracy", 0.9, 0.95, "clean_accuracy"),
        check("pgd@linf:0.1", 0.4, 0.5),
        validity_check("zero_gradients"),
    ]
    trusted = judged(job(result=audit_result(checks=checks)), expected_gate=asked)
    assert (trusted.exit_code, trusted.problem()) == (0, None)
    # A check that was asked for but is not in the verdict: 2, whatever the verdict says.
    lacking = judged(job(result=audit_result(checks=checks[1:])), expected_gate=asked)
    assert lacking.exit_code == 2
    assert "lacks the check(s) clean>=90.0%" in (lacking.problem() or "")
    other_bound = {**asked, "min_clean_accuracy": 0.5}
    assert judged(job(result=audit_result(checks=checks)), expected_gate=other_bound).exit_code == 2
    # "passed" beside a failed check is a verdict to distrust, not a pass.
    contradictory = audit_result(checks=[check("pgd@linf:0.1", 0.9, 0.5)])
    contradictory["gate"]["passed"] = True
    assert judged(job(result=contradictory)).exit_code == 2
    missing_field = audit_result(checks=checks)
    del missing_field["gate"]["passed"]
    assert judged(job(result=missing_field)).exit_code == 2
    # A validity warning that fired fails the gate; a waiver the run asked for passes it.
    masked = [*checks[:2], validity_check("zero_gradients", 1)]
    assert judged(job(result=audit_result(checks=masked)), expected_gate=asked).exit_code == 1
    waived = audit_result(
        checks=[*checks[:2], validity_check("zero_gradients", 1, waived=True)],
        waived=["zero_gradients"],
    )
    allowed = {**asked, "allow_warnings": ["zero_gradients"]}
    assert judged(job(result=waived), expected_gate=allowed).exit_code == 0
    # ... but a waiver the run did not ask for is not trusted.
    assert judged(job(result=waived), expected_gate=asked).exit_code == 2
    # Validity checks that did not run are only accepted when the run said so.
    unchecked = audit_result(checks=checks[:2], validity_checks=False)
    assert judged(job(result=unchecked), expected_gate=asked).exit_code == 2
    off = {**asked, "allow_unchecked": True}
    assert judged(job(result=unchecked), expected_gate=off).exit_code == 0
    # Only an audit has a verdict.
    training = job(result=audit_result(checks=checks))
    training["kind"] = "train"
    assert judged(training).exit_code == 2
    assert "not an audit" in (judged(training).problem() or "")


def test_validity_checks_and_notes_are_shown() -> None:
    checks = [
        check("pgd@linf:0.1", 0.4, 0.5),
        validity_check("zero_gradients", 1),
        validity_check("randomized_model"),
    ]
    result = audit_result(checks=checks)
    result["notes"] = [
        {"code": "weak_attacks", "message": "The numbers come from weak attacks: an upper bound."}
    ]
    outcome = judged(job(result=result))
    text = summary_text(outcome)
    assert re.search(r"FAIL +validity:zero_gradients +does not fire +fired", text)
    assert "validity:randomized_model" not in text.split("validity checks:")[0]  # held: one line
    assert "validity checks: 1 of 2 held; fired: zero_gradients" in text
    assert "The numbers come from weak attacks: an upper bound." in text
    assert "50.0% (worst case 45.0%)" in text
    assert "weak attacks" in markdown(outcome)


def test_baseline_checks_bound_every_drop() -> None:
    candidate = audit_result(
        clean=0.95, attacks=[attack_result("fgsm", 0.1, 0.60), attack_result("pgd", 0.1, 0.40)]
    )
    baseline = audit_result(
        clean=0.96, attacks=[attack_result("fgsm", 0.1, 0.62), attack_result("pgd", 0.1, 0.45)]
    )
    checks = baseline_checks(candidate, baseline, max_drop=0.02)
    assert [(c.name, c.passed) for c in checks] == [
        ("clean_accuracy drop vs baseline", True),
        ("fgsm@linf:0.1 drop vs baseline", True),  # exactly 0.02: within the bound
        ("pgd@linf:0.1 drop vs baseline", False),
    ]
    assert checks[2].value == pytest.approx(0.05)
    assert (checks[2].candidate, checks[2].baseline) == (0.40, 0.45)
    # A gain is a negative drop.
    assert baseline_checks(baseline, candidate, 0.0)[2].value == pytest.approx(-0.05)


def test_baseline_check_without_a_matching_number_fails() -> None:
    candidate = audit_result(attacks=[attack_result("pgd", 0.1, 0.5)])
    baseline = audit_result(attacks=[attack_result("pgd", 0.2, 0.5)])
    missing = baseline_checks(candidate, baseline, 1.0)[1]
    assert (missing.value, missing.passed) == (None, False)


def test_junit_has_one_case_per_check(tmp_path: Path) -> None:
    outcome = failing_gate_outcome()
    outcome.checks += baseline_checks(
        outcome.job["result"],
        audit_result(clean=0.99),
        max_drop=0.02,  # type: ignore[index]
    )
    path = tmp_path / "gauntlet.xml"
    write_junit(outcome, path)
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("name") == "gauntlet"
    cases = suite.findall("testcase")
    assert [(c.get("name"), c.get("classname")) for c in cases] == [
        ("clean_accuracy", "gauntlet.gate"),
        ("pgd@linf:0.1", "gauntlet.gate"),
        ("clean_accuracy drop vs baseline", "gauntlet.gate"),
        ("fgsm@linf:0.1 drop vs baseline", "gauntlet.gate"),
        ("pgd@linf:0.1 drop vs baseline", "gauntlet.gate"),
    ]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "2", "0")
    failure = cases[1].find("failure")
    assert failure is not None
    assert "50.0%" in failure.get("message", "")
    assert "99.0%" in failure.get("message", "")
    drop = cases[2].find("failure")
    assert drop is not None
    assert "4.0 pp" in drop.get("message", "")
    assert "2.0 pp" in drop.get("message", "")
    assert cases[0].find("failure") is None
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["job_id"] == "j_1"
    assert properties["report_url"] == f"{SERVER}/v1/jobs/j_1/report"


def test_junit_reports_a_failed_job_as_an_error(tmp_path: Path) -> None:
    outcome = judged(job(status="failed", error={"code": "time_limit", "message": "too slow"}))
    path = tmp_path / "gauntlet.xml"
    write_junit(outcome, path)
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    (case,) = suite.findall("testcase")
    assert (case.get("name"), case.get("classname")) == ("audit job", "gauntlet.job")
    error = case.find("error")
    assert error is not None
    assert "[time_limit] too slow" in error.get("message", "")
    assert suite.get("errors") == "1"


def test_junit_without_a_gate_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "gauntlet.xml"
    write_junit(judged(job(result=audit_result())), path)
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert [c.get("name") for c in suite.findall("testcase")] == ["audit job"]
    assert (suite.get("failures"), suite.get("errors")) == ("0", "1")


def test_markdown_for_a_pull_request() -> None:
    text = markdown(failing_gate_outcome())
    assert text.startswith("### ❌ Gauntlet robustness audit: gate failed")
    assert "| pgd | linf | 0.1 | 50.0% | 50.0% |" in text
    assert "| `pgd@linf:0.1` | >= 99.0% | 50.0% (worst case 45.0%) | ❌ fail |" in text
    assert "| `clean_accuracy` | >= 90.0% | 95.0% | ✅ pass |" in text
    assert "look \\| closer" in text  # a pipe inside a cell is escaped
    assert f"[Full report]({SERVER}/v1/jobs/j_1/report)" in text


def test_markdown_with_a_baseline_and_a_signed_link() -> None:
    outcome = judged(job(result=audit_result(clean=0.90)), baseline_model_id="m_2", max_drop=0.02)
    outcome.baseline_job = job(result=audit_result(clean=0.95), job_id="j_2", model_id="m_2")
    outcome.checks += baseline_checks(
        outcome.job["result"],  # type: ignore[index]
        outcome.baseline_job["result"],
        0.02,
    )
    outcome.report_link = {"url": f"{SERVER}/r?token=t", "expires_at": "2030-01-01T00:00:00Z"}
    text = markdown(outcome)
    assert "| clean |  |  | 90.0% |  | 95.0% | -5.0 pp |" in text
    assert "| `clean_accuracy drop vs baseline` | drop <= 2.0 pp | 5.0 pp | ❌ fail |" in text
    assert f"[Full report]({SERVER}/r?token=t)" in text
    assert "baseline" in summary_text(outcome)


def test_markdown_and_summary_of_an_error() -> None:
    outcome = Outcome(server=SERVER, error="cannot reach the Gauntlet server")
    assert "⚠️" in markdown(outcome)
    assert "cannot reach" in markdown(outcome)
    assert summary_text(outcome).endswith("Result: error (exit 2)")


def test_json_document(tmp_path: Path) -> None:
    outcome = failing_gate_outcome()
    path = tmp_path / "out.json"
    write_json(outcome, path)
    document = json.loads(path.read_text())
    assert document == json.loads(json.dumps(json_document(outcome)))
    assert (document["verdict"], document["exit_code"], document["job"]["id"]) == (
        "failed",
        1,
        "j_1",
    )
    assert [c["name"] for c in document["checks"]] == ["clean_accuracy", "pgd@linf:0.1"]
    write_markdown(outcome, tmp_path / "out.md")
    assert (tmp_path / "out.md").read_text() == markdown(outcome)


def test_summary_table() -> None:
    text = summary_text(failing_gate_outcome())
    assert "Gate: FAILED (1 of 2)" in text
    assert "FAIL    pgd@linf:0.1    >= 99.0%   50.0%" in text
    assert "worst case  linf  0.1" in text
    assert text.endswith("Result: failed (exit 1)")


@pytest.mark.parametrize(
    ("eps", "label"),
    [
        (8 / 255, "8/255"),
        (0.1, "0.1"),
        (0.2, "0.2"),
        (0.5, "0.5"),
        (1 / 7, "0.142857"),
        (1 / 3, "85/255"),
    ],
)
def test_eps_labels(eps: float, label: str) -> None:
    assert eps_label(eps) == label
