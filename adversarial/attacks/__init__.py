"""Attacks, selectable by name from :data:`ATTACKS`."""

from adversarial.attacks.apgd import APGD, APGDDLR, APGDT
from adversarial.attacks.base import (
    ATTACKS,
    LEAST_LIKELY,
    Attack,
    TargetableAttack,
    make_attack,
    register,
)
from adversarial.attacks.fgsm import FGSM, RFGSM
from adversarial.attacks.mifgsm import MIFGSM
from adversarial.attacks.pgd import BIM, PGD
from adversarial.attacks.square import Square

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "ATTACKS",
    "BIM",
    "FGSM",
    "LEAST_LIKELY",
    "MIFGSM",
    "PGD",
    "RFGSM",
    "Attack",
    "Square",
    "TargetableAttack",
    "make_attack",
    "register",
]
