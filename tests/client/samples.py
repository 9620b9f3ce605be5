"""Job documents shaped as the server returns them, for the client's unit tests."""

from __future__ import annotations

from typing import Any


def attack_result(name: str, eps: float, robust_accuracy: float, norm: str = "linf") -> dict:
    return {
        "name": name,
        "norm": norm,
        "eps": eps,
        "robust_accuracy": robust_accuracy,
        "success_rate": 1 - robust_accuracy,
        "seconds": 0.1,
    }


def audit_result(
    clean: float = 0.95,
    attacks: list[dict] | None = None,
    checks: list[dict] | None = None,
    warnings: list[dict] | None = None,
    waived: list[str] | None = None,
    validity_checks: bool = True,
) -> dict[str, Any]:
    attacks = (
        attacks
        if attacks is not None
        else [attack_result("fgsm", 0.1, 0.6), attack_result("pgd", 0.1, 0.5)]
    )
    result: dict[str, Any] = {
        "model_id": "m_1",
        "dataset_id": "builtin:digits",
        "split": "test",
        "num_examples": 360,
        "seed": 0,
        "device": "cpu",
        "clean_accuracy": clean,
        "attacks": attacks,
        "worst_case": [
            {"norm": "linf", "eps": 0.1, "attacks": ["fgsm", "pgd"], "robust_accuracy": 0.45}
        ],
        "warnings": warnings or [],
        "seconds": 1.5,
    }
    if checks is not None:
        result["gate"] = {
            "passed": all(c["passed"] for c in checks),
            "checks": checks,
            "waived": waived or [],
            "validity_checks": validity_checks,
        }
    return result


def check(
    name: str,
    threshold: float,
    value: float | None,
    metric: str = "robust_accuracy",
    *,
    attack: str | None = None,
    eps: float | None = None,
    norm: str = "linf",
) -> dict:
    """A gate check as the server writes it; ``clean_accuracy`` or ``ATTACK@NORM:EPS``."""
    if name == "clean_accuracy":
        return {
            "name": name,
            "kind": "clean",
            "metric": "clean_accuracy",
            "threshold": threshold,
            "value": value,
            "passed": value is not None and value >= threshold,
        }
    if attack is None:
        attack, _, where = name.partition("@")
        norm, _, eps_text = where.partition(":")
        eps = float(eps_text)
    return {
        "name": name,
        "kind": "worst_case" if attack == "worst_case" else "robust",
        "metric": metric,
        "threshold": threshold,
        "value": value,
        "passed": value is not None and value >= threshold,
        "attack": attack,
        "norm": norm,
        "eps": eps,
        "worst_case": None if attack == "worst_case" else 0.45,
    }


def validity_check(code: str, fired: int = 0, *, waived: bool = False) -> dict:
    """A validity check: passed unless the warning fired (and was not waived)."""
    return {
        "name": f"validity:{code}",
        "kind": "validity",
        "metric": f"no warning: {code}",
        "threshold": 0.0,
        "value": float(fired),
        "passed": fired == 0 or waived,
        "code": code,
        "waived": fired > 0 and waived,
    }


def job(
    status: str = "succeeded",
    result: dict | None = None,
    job_id: str = "j_1",
    model_id: str = "m_1",
    error: dict | None = None,
) -> dict[str, Any]:
    return {
        "id": job_id,
        "kind": "audit",
        "status": status,
        "spec": {"kind": "audit", "model_id": model_id, "dataset_id": "builtin:digits"},
        "progress": {"fraction": 1.0 if status == "succeeded" else 0.0, "stage": "", "message": ""},
        "result": result if status == "succeeded" else None,
        "error": error,
        "model_id": model_id,
        "dataset_id": "builtin:digits",
    }
