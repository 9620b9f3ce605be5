"""The verdict of a run: the server's gate checks, the baseline checks, and the exit code.

Exit codes: 0 the gate passed (or there was no gate and the audit succeeded), 1 the gate
failed, 2 anything else: a usage error, an invalid model, a job that failed or was
cancelled, an HTTP error, an unreachable server, a timeout. An error is never 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from client.spec import same_eps

EXIT_PASSED = 0
EXIT_GATE_FAILED = 1
EXIT_ERROR = 2

# A drop within this of the bound passes: accuracies are ratios of counts, and a bound
# written as 0.02 must not fail on 0.020000000000000018.
_DROP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Check:
    """One condition of the verdict.

    ``kind`` is ``min`` (value >= threshold: the server's gate) or ``max_drop`` (value,
    the baseline's number minus the candidate's, <= threshold).
    """

    name: str
    metric: str
    threshold: float
    value: float | None
    passed: bool
    kind: str = "min"
    candidate: float | None = None
    baseline: float | None = None

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
        return document


def gate_checks(job: dict[str, Any] | None) -> list[Check]:
    """The server's gate checks of a succeeded audit (none without a gate)."""
    result = (job or {}).get("result") or {}
    gate = result.get("gate") or {}
    return [
        Check(
            name=str(check.get("name")),
            metric=str(check.get("metric", "")),
            threshold=float(check.get("threshold", 0.0)),
            value=None if check.get("value") is None else float(check["value"]),
            passed=bool(check.get("passed")),
        )
        for check in gate.get("checks", [])
    ]


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

    @property
    def succeeded(self) -> bool:
        """The audit (and its baseline, if any) finished and nothing went wrong."""
        jobs = [self.job] + ([self.baseline_job] if self.baseline_model_id else [])
        return self.error is None and all(
            j is not None and j["status"] == "succeeded" for j in jobs
        )

    @property
    def exit_code(self) -> int:
        """0 passed, 1 the gate failed, 2 an error."""
        if not self.succeeded:
            return EXIT_ERROR
        return EXIT_PASSED if all(check.passed for check in self.checks) else EXIT_GATE_FAILED

    @property
    def verdict(self) -> str:
        """``passed``, ``failed`` or ``error``."""
        return {EXIT_PASSED: "passed", EXIT_GATE_FAILED: "failed"}.get(self.exit_code, "error")

    def problem(self) -> str | None:
        """Why the run did not succeed: the error, or the job that failed; ``None`` if it did."""
        if self.error is not None:
            return self.error
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
