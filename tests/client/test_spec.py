"""Parsing the command line into an audit spec: eps, --attack, --gate, presets."""

from __future__ import annotations

import pytest

from client.spec import (
    PRESETS,
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


def test_attack_name_alone_takes_eps_and_norm_from_the_command() -> None:
    assert parse_attack("fgsm") == AttackArg(name="fgsm")
    attacks = build_attacks([], [parse_attack("fgsm")], norm="l2", eps=[0.5, 1.0])
    assert attacks == [{"name": "fgsm", "norm": "l2", "eps": [0.5, 1.0]}]


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


def test_presets() -> None:
    eps = [8 / 255]
    assert build_attacks(["quick"], [], eps=eps) == [
        {"name": "fgsm", "norm": "linf", "eps": eps},
        {"name": "pgd", "norm": "linf", "eps": eps, "steps": 10},
    ]
    assert build_attacks(["standard"], [], eps=eps) == [
        {"name": "pgd", "norm": "linf", "eps": eps, "steps": 50, "restarts": 3}
    ]
    assert build_attacks(["autoattack"], [], eps=eps) == [
        {"name": "autoattack", "norm": "linf", "eps": eps}
    ]
    assert set(PRESETS) == {"quick", "standard", "autoattack"}


def test_default_preset_and_eps() -> None:
    # Nothing asked: the quick preset at 8/255 (linf) or 0.5 (l2), as the server's presets.
    assert build_attacks([], []) == build_attacks(["quick"], [], eps=[8 / 255])
    assert build_attacks([], [], norm="l2")[0]["eps"] == [0.5]
    # --attack alone: no preset added.
    assert [a["name"] for a in build_attacks([], [parse_attack("fgsm:eps=0.1")])] == ["fgsm"]
    # Both: the preset first, then the attacks.
    names = [a["name"] for a in build_attacks(["standard"], [parse_attack("fgsm")])]
    assert names == ["pgd", "fgsm"]


def test_gate_must_name_an_attack_and_eps_the_audit_runs() -> None:
    attacks = build_attacks([], [parse_attack("pgd:eps=8/255,steps=10")])
    gate = build_gate([parse_gate("clean>=0.9"), parse_gate("pgd@8/255>=0.4")], attacks)
    assert gate == {
        "min_clean_accuracy": 0.9,
        "min_robust_accuracy": [{"attack": "pgd", "eps": 8 / 255, "value": 0.4}],
    }
    with pytest.raises(SpecError, match="does not run pgd at eps 0.1"):
        build_gate([parse_gate("pgd@0.1>=0.4")], attacks)
    with pytest.raises(SpecError, match="does not run fgsm"):
        build_gate([parse_gate("fgsm@8/255>=0.4")], attacks)
    with pytest.raises(SpecError, match=r"\(l2\)"):
        build_gate([parse_gate("pgd@l2:8/255>=0.4")], attacks)
    with pytest.raises(SpecError, match="twice"):
        build_gate([parse_gate("clean>=0.9"), parse_gate("clean>=0.8")], attacks)
    assert build_gate([], attacks) is None


def test_audit_spec() -> None:
    attacks = [{"name": "fgsm", "norm": "linf", "eps": [0.1]}]
    assert build_audit_spec("m_1", "builtin:digits", attacks, None) == {
        "kind": "audit",
        "model_id": "m_1",
        "dataset_id": "builtin:digits",
        "split": "test",
        "seed": 0,
        "attacks": attacks,
    }
    spec = build_audit_spec(
        "m_1", "d_2", attacks, {"min_clean_accuracy": 0.5}, limit=50, batch_size=8, seed=3
    )
    assert (spec["limit"], spec["batch_size"], spec["seed"], spec["gate"]) == (
        50,
        8,
        3,
        {"min_clean_accuracy": 0.5},
    )
