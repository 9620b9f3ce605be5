"""The gate's verdict: one attack, the worst case, and the validity warnings."""

from __future__ import annotations

from service.jobs.results import AttackResult, Warning_, WorstCaseResult, evaluate_gate
from service.jobs.specs import GATING_WARNINGS, Gate


def attack(name: str, eps: float, robust: float, norm: str = "linf") -> AttackResult:
    return AttackResult(
        name=name, norm=norm, eps=eps, robust_accuracy=robust, success_rate=None,
        mean_wrong_confidence=None, mean_perturbation_norm=None, max_perturbation_norm=None,
        per_class_accuracy=[], seconds=0.0,
    )  # fmt: skip


ATTACKS = [attack("pgd", 0.1, 0.92), attack("autoattack", 0.1, 0.30)]
WORST = [WorstCaseResult(norm="linf", eps=0.1, attacks=["pgd", "autoattack"], robust_accuracy=0.29)]


def verdict(gate: dict, warnings: tuple[str, ...] = (), checks_ran: bool = True):  # type: ignore[no-untyped-def]
    found = [Warning_(code=code, message=code) for code in warnings]
    return evaluate_gate(
        Gate.model_validate(gate), 0.95, ATTACKS, WORST, found, checks_ran=checks_ran
    )


def test_one_attack_keeps_its_meaning_and_shows_the_worst_case() -> None:
    result = verdict({"min_robust_accuracy": [{"attack": "pgd", "eps": 0.1, "value": 0.9}]})
    (pgd,) = [c for c in result.checks if c.kind == "robust"]
    assert (pgd.value, pgd.passed, pgd.worst_case) == (0.92, True, 0.29)
    assert result.passed


def test_the_worst_case_gates_every_attack_at_its_eps() -> None:
    result = verdict({"min_robust_accuracy": [{"attack": "worst_case", "eps": 0.1, "value": 0.9}]})
    (worst,) = [c for c in result.checks if c.kind == "worst_case"]
    assert (worst.name, worst.value, worst.passed) == ("worst_case@linf:0.1", 0.29, False)
    assert not result.passed


def test_each_validity_warning_is_a_check_and_fails_the_gate() -> None:
    clean = verdict({})
    validity = [c for c in clean.checks if c.kind == "validity"]
    assert {c.code for c in validity} == set(GATING_WARNINGS)
    assert clean.passed
    masked = verdict({}, warnings=("zero_gradients", "not_broken_at_large_eps"))
    assert not masked.passed
    failed = {c.code for c in masked.checks if not c.passed}
    assert failed == {"zero_gradients", "not_broken_at_large_eps"}
    # Informational warnings do not gate.
    assert verdict({}, warnings=("non_finite_outputs",)).passed


def test_a_waiver_is_explicit_and_shown() -> None:
    result = verdict({"allow_warnings": ["randomized_model"]}, warnings=("randomized_model",))
    assert result.passed
    assert result.waived == ["randomized_model"]
    (waived,) = [c for c in result.checks if c.waived]
    assert (waived.code, waived.passed, waived.value) == ("randomized_model", True, 1.0)
    # A waiver of one code does not cover another.
    assert not verdict(
        {"allow_warnings": ["randomized_model"]}, warnings=("zero_gradients",)
    ).passed


def test_without_validity_checks_the_gate_needs_allow_unchecked() -> None:
    assert not verdict({}, checks_ran=False).passed
    unchecked = verdict({"allow_unchecked": True}, checks_ran=False)
    assert unchecked.passed
    assert not unchecked.validity_checks
    assert not [c for c in unchecked.checks if c.kind == "validity"]


def test_a_check_without_a_number_never_passes() -> None:
    result = verdict({"min_robust_accuracy": [{"attack": "fgsm", "eps": 0.1, "value": 0.0}]})
    (fgsm,) = [c for c in result.checks if c.kind == "robust"]
    assert (fgsm.value, fgsm.passed) == (None, False)
    assert not result.passed
