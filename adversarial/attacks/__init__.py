"""Attacks, selectable by name from :data:`ATTACKS`."""

from adversarial.attacks.base import ATTACKS, Attack, make_attack, register
from adversarial.attacks.fgsm import FGSM
from adversarial.attacks.pgd import PGD

__all__ = ["ATTACKS", "FGSM", "PGD", "Attack", "make_attack", "register"]
