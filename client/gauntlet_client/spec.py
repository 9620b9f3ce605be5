"""The audit spec from the command line: eps expressions, ``--attack`` and ``--gate``.

Numbers are parsed with :class:`fractions.Fraction` (``0.03``, ``8/255``, ``3e-2``), never
``eval``. Everything the server defines stays on the server: the presets (sent by name;
``GET /v1/presets`` lists them), the default eps, and which attack and eps a gate check
refers to (a mistake there is the server's 422, which the command shows).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

NORMS = ("linf", "l2")
_NORM_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2"}
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
# A gate on the per-example worst case over every attack at an eps: ``robust@8/255>=0.4``.
WORST_CASE = "worst_case"
_WORST_CASE_ALIASES = ("robust", WORST_CASE)


class SpecError(ValueError):
    """A malformed ``--attack``, ``--gate``, ``--eps`` or preset choice (a usage error)."""


# Typed here so that a mistake is a usage error before anything is uploaded; any other
# parameter (and any attack name) is passed through for the server to check, so attacks the
# server learns later need no new client.
_INT_PARAMS = frozenset({"steps", "restarts", "queries", "target_classes"})
_POSITIVE_PARAMS = frozenset({"step_size", "alpha"})
_BOOL_PARAMS = frozenset({"random_start", "early_stop"})
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def same_eps(a: float, b: float) -> bool:
    """Equal up to decimal round trips (the server's tolerance)."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def eps_label(eps: float) -> str:
    """``0.1`` stays ``0.1``; ``0.0313725...`` reads ``8/255``."""
    text = f"{eps:.6g}"
    scaled = eps * 255
    if len(text) > 6 and abs(scaled - round(scaled)) < 1e-6 and round(scaled) > 0:
        return f"{round(scaled)}/255"
    return text


def parse_number(text: str, what: str = "number") -> float:
    """``0.03``, ``8/255``, ``3e-2`` or ``40%`` as a float; no ``eval``."""
    cleaned = text.strip().replace(" ", "")
    scale = 1
    if cleaned.endswith("%"):
        cleaned, scale = cleaned[:-1], 100
    try:
        value = Fraction(cleaned) / scale
    except (ValueError, ZeroDivisionError):
        raise SpecError(f"{what}: {text!r} is not a number (write 0.03, 8/255 or 3e-2)") from None
    return float(value)


def parse_eps(text: str) -> float:
    """One perturbation radius (>= 0)."""
    value = parse_number(text, "eps")
    if value < 0:
        raise SpecError(f"eps: {text!r} is negative")
    return value


def parse_eps_list(text: str) -> list[float]:
    """``8/255`` or ``2/255,4/255,8/255``."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise SpecError("eps: give at least one value")
    return _unique([parse_eps(part) for part in parts])


def parse_norm(text: str) -> str:
    """``linf`` or ``l2`` (``inf`` and ``2`` are accepted too)."""
    norm = _NORM_ALIASES.get(text.strip().lower())
    if norm is None:
        raise SpecError(f"norm: {text!r} is not one of {', '.join(NORMS)}")
    return norm


def _unique(values: Iterable[float]) -> list[float]:
    kept: list[float] = []
    for value in values:
        if not any(same_eps(value, other) for other in kept):
            kept.append(value)
    return kept


def _parse_bool(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SpecError(f"{what}: {text!r} is not true or false")


def _parse_int(text: str, what: str) -> int:
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        raise SpecError(f"{what}: {text!r} is not a whole number")
    return int(text)


def _parse_generic(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false", "yes", "no", "on", "off"):
        return lowered in _TRUE
    if re.fullmatch(r"\s*[+-]?\d+\s*", text):
        return int(text)
    try:
        return parse_number(text)
    except SpecError:
        return text.strip()


@dataclass(frozen=True)
class AttackArg:
    """One ``--attack NAME[:key=value,...]``; eps and norm default to ``--eps``/``--norm``."""

    name: str
    norm: str | None = None
    eps: tuple[float, ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)


def parse_attack(text: str) -> AttackArg:
    """``pgd:eps=8/255,steps=10``; several eps: ``fgsm:eps=2/255,4/255,8/255``.

    A comma-separated value without ``=`` continues the eps list before it.
    """
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if not _NAME.match(name):
        raise SpecError(f"--attack {text!r}: write NAME or NAME:key=value,... (e.g. pgd:eps=8/255)")
    norm: str | None = None
    eps: list[float] | None = None
    params: dict[str, Any] = {}
    last_key = ""
    for token in (t.strip() for t in rest.split(",") if rest.strip()):
        if not token:
            continue
        if "=" not in token:
            if last_key != "eps" or eps is None:
                raise SpecError(f"--attack {text!r}: {token!r} needs a key (key=value)")
            eps.append(parse_eps(token))
            continue
        key, _, value = token.partition("=")
        key = key.strip().lower().replace("-", "_")
        last_key = key
        if key in params or (key == "eps" and eps is not None) or (key == "norm" and norm):
            raise SpecError(f"--attack {text!r}: {key} is given twice")
        if key == "eps":
            eps = [parse_eps(value)]
        elif key == "norm":
            norm = parse_norm(value)
        elif key == "name":
            raise SpecError(f"--attack {text!r}: the name goes before the colon")
        elif key in _INT_PARAMS:
            params[key] = _parse_int(value, f"{name} {key}")
            if params[key] < 1:
                raise SpecError(f"--attack {text!r}: {key} must be at least 1")
        elif key in _BOOL_PARAMS:
            params[key] = _parse_bool(value, f"{name} {key}")
        elif key in _POSITIVE_PARAMS:
            params[key] = parse_number(value, f"{name} {key}")
            if params[key] <= 0:
                raise SpecError(f"--attack {text!r}: {key} must be positive")
        else:
            params[key] = _parse_generic(value)
    return AttackArg(
        name=name,
        norm=norm,
        eps=tuple(_unique(eps)) if eps is not None else None,
        params=params,
    )


@dataclass(frozen=True)
class GateArg:
    """One ``--gate``: ``clean>=0.9`` (``attack`` is None), ``robust@8/255>=0.40`` (the
    worst case over every attack, ``attack`` is ``worst_case``) or ``pgd@8/255>=0.40``."""

    value: float
    attack: str | None = None
    eps: float | None = None
    norm: str | None = None
    text: str = ""


_GATE = re.compile(r"^(?P<left>[^<>=]+?)\s*>=\s*(?P<right>[^<>=]+)$")


def parse_gate(text: str) -> GateArg:
    """``robust@8/255>=0.40``, ``clean>=0.9``, ``pgd@8/255>=0.40``, ``pgd@l2:0.5>=40%``."""
    match = _GATE.match(text.strip())
    if match is None:
        raise SpecError(
            f"--gate {text!r}: write robust@EPS>=VALUE (robust@8/255>=0.40: the worst case "
            "over every attack), ATTACK@EPS>=VALUE or clean>=VALUE; a gate is a lower bound "
            "on accuracy"
        )
    value = parse_number(match["right"], f"--gate {text!r}")
    if not 0 <= value <= 1:
        raise SpecError(f"--gate {text!r}: the bound must be between 0 and 1 (or 0% and 100%)")
    left = match["left"].strip().lower()
    if left in ("clean", "clean_accuracy"):
        return GateArg(value=value, text=text)
    attack, at, where = left.partition("@")
    attack = attack.strip()
    if not at or not _NAME.match(attack) or not where.strip():
        raise SpecError(
            f"--gate {text!r}: the left side is clean, robust@EPS or ATTACK@EPS (pgd@8/255)"
        )
    if attack in _WORST_CASE_ALIASES:
        attack = WORST_CASE
    norm: str | None = None
    if ":" in where:
        norm_text, _, where = where.partition(":")
        norm = parse_norm(norm_text)
    return GateArg(value=value, attack=attack, eps=parse_eps(where), norm=norm, text=text)


def build_attacks(attacks: Sequence[AttackArg]) -> list[dict[str, Any]]:
    """The spec's ``attacks``, one per ``--attack``; an attack without eps (or norm) gets the
    audit's ``eps`` (and ``norm``) on the server."""
    result: list[dict[str, Any]] = []
    for attack in attacks:
        entry: dict[str, Any] = {"name": attack.name, **attack.params}
        if attack.norm is not None:
            entry["norm"] = attack.norm
        if attack.eps:
            entry["eps"] = list(attack.eps)
        result.append(entry)
    return result


def build_gate(
    gates: Sequence[GateArg],
    *,
    allow_warnings: Sequence[str] = (),
    allow_unchecked: bool = False,
) -> dict[str, Any]:
    """The spec's ``gate``. There is always one, even without ``--gate``: the server then
    gates on its validity checks alone, so a model whose audit shows gradient masking never
    exits 0."""
    gate: dict[str, Any] = {"min_robust_accuracy": []}
    for check in gates:
        if check.attack is None:
            if "min_clean_accuracy" in gate:
                raise SpecError(f"--gate {check.text!r}: the clean accuracy bound is given twice")
            gate["min_clean_accuracy"] = check.value
            continue
        entry: dict[str, Any] = {"attack": check.attack, "eps": check.eps, "value": check.value}
        if check.norm is not None:
            entry["norm"] = check.norm
        gate["min_robust_accuracy"].append(entry)
    if allow_warnings:
        gate["allow_warnings"] = sorted(set(allow_warnings))
    if allow_unchecked:
        gate["allow_unchecked"] = True
    return gate


def build_audit_spec(
    model_id: str,
    dataset_id: str,
    attacks: list[dict[str, Any]],
    gate: dict[str, Any] | None,
    *,
    preset: str | None = None,
    norm: str | None = None,
    eps: Sequence[float] | None = None,
    checks: bool = True,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    shards: int | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/jobs`` (optional fields left out when unset, so the
    server's defaults apply: the autoattack preset at 8/255)."""
    spec: dict[str, Any] = {
        "kind": "audit",
        "model_id": model_id,
        "dataset_id": dataset_id,
        "split": split,
        "seed": seed,
    }
    if attacks:
        spec["attacks"] = attacks
    if preset is not None:
        spec["preset"] = preset
    if norm is not None:
        spec["norm"] = norm
    if eps:
        spec["eps"] = list(eps)
    if not checks:
        spec["checks"] = False
    if limit is not None:
        spec["limit"] = limit
    if batch_size is not None:
        spec["batch_size"] = batch_size
    if shards is not None:
        spec["shards"] = shards
    if gate is not None:
        spec["gate"] = gate
    return spec
