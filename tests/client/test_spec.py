"""Parsing the command line into an audit spec: eps, --attack, --gate."""

from __future__ import annotations

import pytest

from gauntlet_client.spec import (
    AttackArg,
    GateArg,
    SpecError,
    build_attacks,
    build_audit_spec,
    build_gate,
    parse_attack,
    parse_eps,
    parse_eps_list,
    parse_gate,
    parse_norm,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8/255", 8 / 255), ("0.1", 0.1), ("3e-2", 0.03), (".5", 0.5), (" 8 / 255 ", 8 / 255)],
)
def test_eps_expressions(text: str, expected: float) -> None:
    assert parse_eps(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(
    "text", ["1/0", "nan", "inf", "-0.1", "", "__import__('os').system('true')", "2**3", "8/255/2"]
)
def test_eps_refuses_what_is_not_a_plain_number(text: str) -> None:
    with pytest.raises(SpecError, match="eps"):
        parse_eps(text)


def test_eps_list_drops_repeats() -> None:
    assert parse_eps_list("2/255,4/255,0.0156862745098039") == [2 / 255, 4 / 255]


def test_norm_aliases() -> None:
    assert [parse_norm(t) for t in ("linf", "Linf", "inf", "l2", "2")] == [
        "linf",
        "linf",
        "linf",
        "l2",
        "l2",
    ]
    with pytest.raises(SpecError):
        parse_norm("l1")


def test_attack_pgd() -> None:
    attack = parse_attack("pgd:eps=8/255,steps=10")
    assert attack == AttackArg(name="pgd", eps=(8 / 255,), params={"steps": 10})


def test_attack_several_eps_and_every_pgd_parameter() -> None:
    attack = parse_attack(
        "pgd:eps=2/255,4/255,8/255,norm=linf,steps=20,step-size=1/255,random_start=false,"
        "restarts=3,early_stop=no"
    )
    assert attack.eps == (2 / 255, 4 / 255, 8 / 255)
    assert attack.norm == "linf"
    assert attack.params == {
        "steps": 20,
        "step_size": 1 / 255,
        "random_start": False,
        "restarts": 3,
        "early_stop": False,
    }


def test_attack_name_alone_leaves_eps_and_norm_to_the_server() -> None:
    # The audit's eps and norm (or the server's defaults) apply to attacks without them.
    assert parse_attack("fgsm") == AttackArg(name="fgsm")
    assert build_attacks([parse_attack("fgsm")]) == [{"name": "fgsm"}]
    assert build_attacks([parse_attack("pgd:eps=0.1,norm=l2,steps=5")]) == [
        {"name": "pgd", "norm": "l2", "eps": [0.1], "steps": 5}
    ]


def test_attacks_the_client_does_not_know_pass_through_typed() -> None:
    # The server checks them: new attacks need no new client.
    attack = parse_attack("square:eps=0.05,queries=500,p_init=0.8")
    assert attack.params == {"queries": 500, "p_init": 0.8}
    assert parse_attack("apgd-t:eps=8/255,target_classes=3").name == "apgd-t"
    assert parse_attack("fgsm:eps=0.1,target=least_likely").params == {"target": "least_likely"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pgd:steps=ten", "whole number"),
        ("pgd:steps=0", "at least 1"),
        ("pgd:eps=0.1,step_size=0", "positive"),
        ("pgd:0.1", "needs a key"),
        ("pgd:eps=0.1,eps=0.2", "twice"),
        ("pgd:random_start=maybe", "true or false"),
        ("PGD!", "NAME"),
        ("pgd:eps=abc", "not a number"),
        ("pgd:norm=l7", "norm"),
    ],
)
def test_attack_mistakes_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_attack(text)


def test_gate_robust() -> None:
    assert parse_gate("pgd@8/255>=0.40") == GateArg(
        value=0.40, attack="pgd", eps=8 / 255, text="pgd@8/255>=0.40"
    )


def test_gate_on_the_worst_case() -> None:
    # robust@EPS: the per-example worst case over every attack the audit runs at EPS.
    assert parse_gate("robust@8/255>=0.4").attack == "worst_case"
    assert parse_gate("worst_case@l2:0.5>=0.4").attack == "worst_case"


def test_gate_clean_and_percent_and_norm() -> None:
    assert parse_gate("clean>=0.9").attack is None
    assert parse_gate("clean_accuracy >= 90%").value == pytest.approx(0.9)
    gate = parse_gate("pgd@l2:0.5>=40%")
    assert (gate.attack, gate.norm, gate.eps, gate.value) == ("pgd", "l2", 0.5, 0.4)


@pytest.mark.parametrize(
    "text", ["pgd@8/255>0.4", "pgd@8/255<=0.4", "pgd>=0.4", "pgd@>=0.4", "clean>=1.5", "x"]
)
def test_gate_mistakes_are_usage_errors(text: str) -> None:
    with pytest.raises(SpecError):
        parse_gate(text)


def test_gate_is_sent_as_given_and_always_there() -> None:
    # Which attack and eps a check refers to is the server's rule (its 422 says what runs);
    # without --gate the gate is empty: the server's validity checks still gate the exit code.
    gate = build_gate([parse_gate("clean>=0.9"), parse_gate("pgd@l2:0.5>=0.4")])
    assert gate == {
        "min_clean_accuracy": 0.9,
        "min_robust_accuracy": [{"attack": "pgd", "eps": 0.5, "value": 0.4, "norm": "l2"}],
    }
    assert build_gate([]) == {"min_robust_accuracy": []}
    assert build_gate([], allow_warnings=["randomized_model"], allow_unchecked=True) == {
        "min_robust_accuracy": [],
        "allow_warnings": ["randomized_model"],
        "allow_unchecked": True,
    }
    with pytest.raises(SpecError, match="twice"):
        build_gate([parse_gate("clean>=0.9"), parse_gate("clean>=0.8")])


def test_audit_spec() -> None:
    # Nothing asked: no attacks, no preset, no eps: the server's default (autoattack, 8/255).
    assert build_audit_spec("m_1", "builtin:digits", [], None) == {
        "kind": "audit",
        "model_id": "m_1",
        "dataset_id": "builtin:digits",
        "split": "test",
        "seed": 0,
    }
    attacks = [{"name": "fgsm"}]
    spec = build_audit_spec(
        "m_1",
        "d_2",
        attacks,
        {"min_clean_accuracy": 0.5},
        preset="quick",
        norm="l2",
        eps=[0.5],
        checks=False,
        limit=50,
        batch_size=8,
        seed=3,
    )
    assert spec == {
        "kind": "audit",
        "model_id": "m_1",
        "dataset_id": "d_2",
        "split": "test",
        "seed": 3,
        "attacks": attacks,
        "preset": "quick",
        "norm": "l2",
        "eps": [0.5],
        "checks": False,
        "limit": 50,
        "batch_size": 8,
        "gate": {"min_clean_accuracy": 0.5},
    }
