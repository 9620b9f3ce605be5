"""The verdict of a run: the server's gate checks, the baseline checks, and the exit code.

Exit codes: 0 the gate passed, 1 the gate failed, 2 anything else: a usage error, an invalid
model, a job that failed or was cancelled, an HTTP error, an unreachable server, a timeout,
or a verdict the client cannot trust. An error is never 0.

The client trusts nothing it did not see: 0 needs a succeeded audit whose result carries a
gate with ``passed: true``, every check of it passed, and every check the run asked for
(``--gate``, or the job's own gate for ``gauntlet wait``) present among them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gauntlet_client.spec import WORST_CASE, same_eps

EXIT_PASSED = 0
EXIT_GATE_FAILED = 1
EXIT_ERROR = 2

# A drop within this of the bound passes: accuracies are ratios of counts, and a bound
# written as 0.02 must not fail on 0.020000000000000018.
_DROP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Check:
    """One condition of the verdict.

    ``kind`` is ``min`` (value >= threshold: the server's gate), ``max_drop`` (value, the
    baseline's number minus the candidate's, <= threshold) or ``validity`` (a validity
    warning that must not fire; value is how often it did). ``category`` is the server's
    check kind (``clean``, ``robust``, ``worst_case``, ``validity``) or ``baseline``.
    """

    name: str
    metric: str
    threshold: float
    value: float | None
    passed: bool
    kind: str = "min"
    candidate: float | None = None
    baseline: float | None = None
    category: str = ""
    waived: bool = False
    worst_case: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The check as a JSON object."""
        document: dict[str, Any] = {
            "name": self.name,
            "metric": self.metric,
            "kind": self.kind,
            "threshold": self.threshold,
            "value": self.value,
            "passed": self.passed,
        }
        if self.kind == "max_drop":
            document["candidate"] = self.candidate
            document["baseline"] = self.baseline
        if self.category:
            document["category"] = self.category
        if self.waived:
            document["waived"] = True
        if self.worst_case is not None:
            document["worst_case"] = self.worst_case
        return document


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gate_checks(job: dict[str, Any] | None) -> list[Check]:
    """The server's gate checks of a succeeded audit (none without a gate)."""
    result = (job or {}).get("result") or {}
    gate = result.get("gate") or {}
    checks = []
    for check in gate.get("checks") or []:
        if not isinstance(check, dict):
            continue
        category = str(check.get("kind") or "")
        checks.append(
            Check(
                name=str(check.get("name")),
                metric=str(check.get("metric", "")),
                threshold=_number(check.get("threshold")) or 0.0,
                value=_number(check.get("value")),
                # Only a literal true passes: a missing or odd field never reads as a pass.
                passed=check.get("passed") is True,
                kind="validity" if category == "validity" else "min",
                category=category,
                waived=check.get("waived") is True,
                worst_case=_number(check.get("worst_case")),
            )
        )
    return checks


@dataclass(frozen=True)
class Expectation:
    """A gate check the run asked for, which the server's verdict must contain."""

    category: str  # clean, robust or worst_case
    threshold: float
    attack: str | None = None
    eps: float | None = None
    norm: str | None = None

    def describe(self) -> str:
        """``clean>=90.0%`` or ``pgd@linf:0.1>=50.0%``."""
        if self.category == "clean":
            return f"clean>={100 * self.threshold:.1f}%"
        where = f"{self.norm}:" if self.norm else ""
        return f"{self.attack}@{where}{self.eps:g}>={100 * self.threshold:.1f}%"

    def found_in(self, server_checks: list[dict[str, Any]]) -> bool:
        """Whether one of the server's checks measures exactly this."""
        for check in server_checks:
            if check.get("kind") != self.category:
                continue
            threshold = _number(check.get("threshold"))
            if threshold is None or not math.isclose(threshold, self.threshold, abs_tol=1e-9):
                continue
            if self.category == "clean":
                return True
            eps = _number(check.get("eps"))
            if (
                check.get("attack") == self.attack
                and eps is not None
                and self.eps is not None
                and same_eps(eps, self.eps)
                and (self.norm is None or check.get("norm") == self.norm)
            ):
                return True
        return False


def expectations(gate: dict[str, Any] | None) -> list[Expectation]:
    """The checks a spec's ``gate`` asks for (the one sent, or a job's stored one)."""
    if not isinstance(gate, dict):
        return []
    expected = []
    if gate.get("min_clean_accuracy") is not None:
        expected.append(Expectation("clean", float(gate["min_clean_accuracy"])))
    for check in gate.get("min_robust_accuracy") or []:
        attack = str(check.get("attack"))
        expected.append(
            Expectation(
                "worst_case" if attack == WORST_CASE else "robust",
                float(check.get("value", 0.0)),
                attack=attack,
                eps=float(check.get("eps", 0.0)),
                norm=check.get("norm"),
            )
        )
    return expected


def attack_label(attack: dict[str, Any]) -> str:
    """``pgd@linf:0.1``, as the server names gate checks."""
    return f"{attack.get('name')}@{attack.get('norm')}:{float(attack.get('eps', 0.0)):g}"


def find_attack(attacks: list[dict[str, Any]], like: dict[str, Any]) -> dict[str, Any] | None:
    """The result in ``attacks`` for the same attack, norm and eps as ``like``."""
    for attack in attacks:
        if (
            attack.get("name") == like.get("name")
            and attack.get("norm") == like.get("norm")
            and same_eps(float(attack.get("eps", -1)), float(like.get("eps", -2)))
        ):
            return attack
    return None


def _drop_check(name: str, metric: str, candidate: Any, baseline: Any, max_drop: float) -> Check:
    if candidate is None or baseline is None:
        return Check(name, metric, max_drop, None, False, "max_drop", candidate, baseline)
    drop = float(baseline) - float(candidate)
    return Check(
        name,
        metric,
        max_drop,
        drop,
        drop <= max_drop + _DROP_TOLERANCE,
        "max_drop",
        float(candidate),
        float(baseline),
    )


def baseline_checks(
    candidate: dict[str, Any], baseline: dict[str, Any], max_drop: float
) -> list[Check]:
    """One check per accuracy the two audits share: clean, then every attack and eps.

    Each bounds the drop (baseline minus candidate) by ``max_drop``; a number that the
    baseline lacks fails its check (the two ran the same spec, so it never should).
    """
    checks = [
        _drop_check(
            "clean_accuracy drop vs baseline",
            "clean_accuracy_drop",
            candidate.get("clean_accuracy"),
            baseline.get("clean_accuracy"),
            max_drop,
        )
    ]
    baseline_attacks = list(baseline.get("attacks") or [])
    for attack in candidate.get("attacks") or []:
        match = find_attack(baseline_attacks, attack)
        checks.append(
            _drop_check(
                f"{attack_label(attack)} drop vs baseline",
                "robust_accuracy_drop",
                attack.get("robust_accuracy"),
                None if match is None else match.get("robust_accuracy"),
                max_drop,
            )
        )
    return checks


@dataclass
class Outcome:
    """Everything a run learned; the outputs (table, JUnit, Markdown, JSON) read it."""

    server: str
    job: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    baseline_job: dict[str, Any] | None = None
    baseline_model_id: str | None = None
    max_drop: float | None = None
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    # A signed browser link to the report ({url, expires_at}), when asked for and offered.
    report_link: dict[str, str] | None = None
    # The gate the run asked for (the one it sent, or the job's own for `gauntlet wait`);
    # the server's verdict must contain every check of it.
    expected_gate: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        """The audit (and its baseline, if any) finished and nothing went wrong."""
        jobs = [self.job] + ([self.baseline_job] if self.baseline_model_id else [])
        return self.error is None and all(
            j is not None and j["status"] == "succeeded" for j in jobs
        )

    def distrust(self) -> str | None:
        """Why the server's verdict of a succeeded run cannot be taken as it is, or ``None``."""
        if not self.succeeded or self.job is None:
            return None
        if self.job.get("kind") != "audit":
            return (
                f"job {self.job['id']} is a {self.job.get('kind')} job, not an audit: it has no "
                "gate verdict to pass"
            )
        gate = (self.job.get("result") or {}).get("gate")
        if not isinstance(gate, dict):
            return (
                f"audit {self.job['id']} succeeded without a gate verdict; exit 0 needs one "
                "(submit the audit with a gate)"
            )
        if not isinstance(gate.get("passed"), bool):
            return f"audit {self.job['id']}: the gate verdict has no passed field"
        server_checks = [c for c in gate.get("checks") or [] if isinstance(c, dict)]
        missing = [
            e.describe() for e in expectations(self.expected_gate) if not e.found_in(server_checks)
        ]
        if missing:
            return (
                f"the server's verdict lacks the check(s) {', '.join(missing)} that this run "
                "asked for"
            )
        if gate["passed"] and not all(check.get("passed") is True for check in server_checks):
            return "the server's verdict says passed while one of its checks failed"
        expected = self.expected_gate or {}
        if not gate.get("validity_checks", True) and not expected.get("allow_unchecked"):
            return "the audit ran without validity checks, which this run did not allow"
        unasked = set(gate.get("waived") or []) - set(expected.get("allow_warnings") or [])
        if unasked:
            return (
                f"the server waived warnings this run did not allow: {', '.join(sorted(unasked))}"
            )
        return None

    @property
    def exit_code(self) -> int:
        """0 passed, 1 the gate failed, 2 an error (or a verdict that cannot be trusted)."""
        if not self.succeeded or self.distrust() is not None:
            return EXIT_ERROR
        gate = (self.job or {}).get("result", {}).get("gate") or {}
        passed = gate.get("passed") is True and all(check.passed for check in self.checks)
        return EXIT_PASSED if passed else EXIT_GATE_FAILED

    @property
    def verdict(self) -> str:
        """``passed``, ``failed`` or ``error``."""
        return {EXIT_PASSED: "passed", EXIT_GATE_FAILED: "failed"}.get(self.exit_code, "error")

    def problem(self) -> str | None:
        """Why the run did not succeed (the error, the job that failed, a verdict that cannot
        be trusted); ``None`` if it did."""
        if self.error is not None:
            return self.error
        if self.succeeded:
            return self.distrust()
        for label, job in (("audit", self.job), ("baseline audit", self.baseline_job)):
            if label == "baseline audit" and not self.baseline_model_id:
                continue
            if job is None:
                return f"the {label} was never submitted"
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                reason = (
                    f"[{error.get('code')}] {error.get('message')}" if error else "no error given"
                )
                return f"{label} job {job['id']} {job['status']}: {reason}"
        return None

    def report_url(self, job: dict[str, Any] | None = None) -> str | None:
        """The HTML report of a job (the audit's by default)."""
        job = job if job is not None else self.job
        return None if job is None else f"{self.server}/v1/jobs/{job['id']}/report"
