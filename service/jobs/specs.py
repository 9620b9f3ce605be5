"""Job specifications: what a client may ask for, validated before anything is stored.

The worker parses the stored spec with the same classes, so what was accepted is exactly
what runs. Checks that need the database (the model exists, the data fits it) are in
``service.jobs.service``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    field_validator,
    model_validator,
)

Norm = Literal["linf", "l2"]
EpsList = Annotated[
    list[Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(min_length=1, max_length=32)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Target = Annotated[
    Literal["least_likely"] | Annotated[int, Field(ge=0)] | None,
    Field(
        description="Targeted variant: 'least_likely' (the class with the lowest clean "
        "logit) or a class index; null for untargeted."
    ),
]
StepSize = Annotated[float | None, Field(gt=0, allow_inf_nan=False)]
EarlyStop = Annotated[
    bool,
    Field(
        description="Stop attacking an example once an iterate fools the model and keep "
        "that iterate (per-example worst case). false: every example runs all steps and the "
        "final iterate counts, as torchattacks does."
    ),
]


class _Attack(_Strict):
    """Fields every attack entry has; the rest are the engine attack's keyword arguments."""

    norm: Norm = "linf"
    eps: EpsList | None = Field(
        None,
        description="Radii to attack at; default: the audit's 'eps' (8/255 for linf, 0.5 for l2).",
    )

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the engine's attack (or ensemble)."""
        return self.model_dump(exclude={"name", "norm", "eps"})

    def radii(self) -> list[float]:
        """The radii this entry attacks at (set once the audit resolved its defaults)."""
        if self.eps is None:
            raise ValueError("eps is not resolved yet")
        return list(self.eps)

    def gradient_cost(self, num_classes: int) -> int:
        """Gradient evaluations (or model queries) per attacked example at one eps: the
        admission budget's unit."""
        return 1

    def refusal(self, eps: float, num_classes: int | None) -> str | None:
        """Why the engine would refuse this attack at ``eps`` for a model with
        ``num_classes`` classes (``None``: not known yet), or ``None``."""
        target = getattr(self, "target", None)
        if num_classes is not None and isinstance(target, int) and target >= num_classes:
            return f"target class {target} does not exist ({num_classes} classes)"
        return None


class FgsmAttack(_Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one gradient step of size eps."""

    name: Literal["fgsm"]
    target: Target = None


class RfgsmAttack(_Attack):
    """R+FGSM (Tramer et al. 2018): a random step of size alpha, then FGSM with eps - alpha."""

    name: Literal["rfgsm"]
    alpha: StepSize = Field(None, description="Default: eps / 2; at most eps.")
    target: Target = None

    def refusal(self, eps: float, num_classes: int | None) -> str | None:
        if self.alpha is not None and self.alpha > eps:
            return f"alpha {self.alpha:g} exceeds eps {eps:g} (the random step must fit the ball)"
        return super().refusal(eps, num_classes)


class BimAttack(_Attack):
    """Basic Iterative Method (Kurakin et al. 2016): iterated FGSM steps from the clean input."""

    name: Literal["bim"]
    steps: int = Field(10, ge=1, le=10_000)
    step_size: StepSize = Field(None, description="Default: 1.25 * eps / steps.")
    early_stop: EarlyStop = True
    target: Target = None

    def gradient_cost(self, num_classes: int) -> int:
        return self.steps


class MifgsmAttack(_Attack):
    """Momentum Iterative FGSM (Dong et al. 2018)."""

    name: Literal["mifgsm"]
    steps: int = Field(10, ge=1, le=10_000)
    step_size: StepSize = Field(None, description="Default: eps / steps.")
    decay: float = Field(1.0, ge=0, le=10, allow_inf_nan=False)
    early_stop: EarlyStop = True
    target: Target = None

    def gradient_cost(self, num_classes: int) -> int:
        return self.steps


class PgdAttack(_Attack):
    """Projected Gradient Descent (Madry et al. 2018); BIM without random start."""

    name: Literal["pgd"]
    steps: int = Field(10, ge=1, le=10_000)
    step_size: StepSize = Field(None, description="Default: 2.5 * eps / steps.")
    random_start: bool = True
    restarts: int = Field(1, ge=1, le=100)
    early_stop: EarlyStop = True
    target: Target = None

    def gradient_cost(self, num_classes: int) -> int:
        return self.steps * self.restarts


class ApgdCeAttack(_Attack):
    """APGD with cross-entropy (Croce & Hein 2020): step sizes that adapt, no tuning."""

    name: Literal["apgd-ce"]
    steps: int = Field(100, ge=1, le=10_000)
    restarts: int = Field(1, ge=1, le=100)
    rho: float = Field(0.75, gt=0, lt=1)

    def gradient_cost(self, num_classes: int) -> int:
        return self.steps * self.restarts


class ApgdTAttack(_Attack):
    """Targeted APGD with the DLR loss (Croce & Hein 2020) over the top target classes."""

    name: Literal["apgd-t"]
    steps: int = Field(100, ge=1, le=10_000)
    target_classes: int = Field(9, ge=1, le=1000, description="At most num_classes - 1.")
    restarts: int = Field(1, ge=1, le=100)
    rho: float = Field(0.75, gt=0, lt=1)

    def gradient_cost(self, num_classes: int) -> int:
        return self.steps * self.restarts * min(self.target_classes, max(num_classes - 1, 1))

    def refusal(self, eps: float, num_classes: int | None) -> str | None:
        if num_classes is not None and num_classes < 3:
            return (
                "apgd-t needs at least 3 classes (its targeted DLR loss is normalized by the "
                f"first and third largest logits); the model has {num_classes}"
            )
        if num_classes is not None and self.target_classes >= num_classes:
            return (
                f"target_classes {self.target_classes} is more than the {num_classes - 1} "
                "classes other than the true one"
            )
        return super().refusal(eps, num_classes)


class SquareAttack(_Attack):
    """Square Attack (Andriushchenko et al. 2020): score-based, no gradients."""

    name: Literal["square"]
    queries: int = Field(5000, ge=1, le=100_000)
    p_init: float = Field(0.8, gt=0, le=1)

    def gradient_cost(self, num_classes: int) -> int:
        return self.queries


class AutoAttackEnsemble(_Attack):
    """The AutoAttack ensemble: APGD-CE, APGD-T and Square, cheapest first, on the examples
    every earlier one failed on; an example counts as robust only if all three fail."""

    name: Literal["autoattack"]
    steps: int = Field(100, ge=1, le=10_000, description="APGD iterations.")
    target_classes: int = Field(9, ge=1, le=1000, description="APGD-T target classes.")
    queries: int = Field(5000, ge=1, le=100_000, description="Square queries.")

    def gradient_cost(self, num_classes: int) -> int:
        targeted = self.steps * min(self.target_classes, num_classes - 1) if num_classes >= 3 else 0
        return self.steps + targeted + self.queries


AttackEntry = (
    FgsmAttack
    | RfgsmAttack
    | BimAttack
    | MifgsmAttack
    | PgdAttack
    | ApgdCeAttack
    | ApgdTAttack
    | SquareAttack
    | AutoAttackEnsemble
)
AttackSpec = Annotated[AttackEntry, Field(discriminator="name")]
ATTACK_NAMES = (
    "fgsm",
    "rfgsm",
    "bim",
    "mifgsm",
    "pgd",
    "apgd-ce",
    "apgd-t",
    "square",
    "autoattack",
)

_ATTACK_ADAPTER: TypeAdapter[AttackEntry] = TypeAdapter(AttackSpec)

Strength = Literal["weak", "standard", "strong", "none"]


class PresetInfo(BaseModel):
    """A named set of attacks, run at the audit's ``norm`` and ``eps``."""

    name: str
    description: str
    strength: Strength = Field(
        description="weak: an upper bound on robust accuracy, for a first look; standard: a "
        "tuned PGD; strong: AutoAttack, today's standard for a trustworthy number."
    )
    attacks: list[dict[str, Any]] = Field(description="Attack entries without norm and eps.")


PRESETS: dict[str, PresetInfo] = {
    preset.name: preset
    for preset in (
        PresetInfo(
            name="quick",
            description="FGSM and PGD-10: a fast first look. Weak attacks: the numbers are an "
            "upper bound on robust accuracy.",
            strength="weak",
            attacks=[{"name": "fgsm"}, {"name": "pgd", "steps": 10}],
        ),
        PresetInfo(
            name="standard",
            description="PGD-50 with 3 random restarts.",
            strength="standard",
            attacks=[{"name": "pgd", "steps": 50, "restarts": 3}],
        ),
        PresetInfo(
            name="corruptions",
            description="No attack: accuracy under Gaussian noise, blur, small rotations and "
            "lost contrast at three severities (natural shifts, not adversarial ones).",
            strength="none",
            attacks=[],
        ),
        PresetInfo(
            name="autoattack",
            description="AutoAttack: APGD-CE, APGD-T and Square, worst case per example (the "
            "default).",
            strength="strong",
            attacks=[{"name": "autoattack"}],
        ),
    )
}
Preset = Literal["quick", "standard", "autoattack", "corruptions"]
DEFAULT_PRESET: Preset = "autoattack"
DEFAULT_EPS: dict[str, list[float]] = {"linf": [8 / 255], "l2": [0.5]}

# Attacks whose numbers alone are an upper bound at best: single steps and few iterations.
_WEAK_ATTACKS = frozenset({"fgsm", "rfgsm"})
_STRONG_ATTACKS = frozenset({"autoattack", "apgd-ce", "apgd-t", "square"})
_STRONG_PGD_STEPS = 50
# Attacks that only query the model's scores: the ones a black-box model can be audited with.
SCORE_BASED_ATTACKS = frozenset({"square"})


def preset_attacks(preset: str, norm: str, eps: list[float]) -> list[AttackEntry]:
    """The attacks a preset stands for, at ``norm`` and ``eps``."""
    return [
        _ATTACK_ADAPTER.validate_python({**template, "norm": norm, "eps": eps})
        for template in PRESETS[preset].attacks
    ]


def attack_strength(attacks: list[AttackEntry]) -> Strength:
    """How far the audit's attacks can be trusted to find adversarial examples: ``strong``
    with an AutoAttack component or a well-budgeted PGD, ``weak`` with single steps or a
    handful of iterations only, ``standard`` otherwise."""
    names = {attack.name for attack in attacks}
    if not names:
        return "none"
    if names & _STRONG_ATTACKS:
        return "strong"
    iterations = [
        attack.gradient_cost(10) for attack in attacks if attack.name not in _WEAK_ATTACKS
    ]
    if not iterations or max(iterations) < 20:
        return "weak"
    return "standard"


# Validity warnings (adversarial/checks.py) that make the numbers suspect: each fails a gate
# as a check of its own unless the gate waives it by name.
GATING_WARNINGS: dict[str, str] = {
    "nan_gradients": "input gradients are NaN or infinite",
    "zero_gradients": "input gradients are exactly zero (gradient masking)",
    "tiny_gradients": "input gradients vanish (a saturated loss)",
    "probability_outputs": "the model outputs probabilities, so cross-entropy attacks stall",
    "randomized_model": "the model is random in eval mode",
    "accuracy_rises_with_eps": "robust accuracy rises with eps",
    "iterative_weaker_than_fgsm": "an iterative attack is weaker than FGSM",
    "black_box_beats_white_box": "a black-box attack beats the white-box ones",
    "attack_no_better_than_noise": "an attack is no better than random noise",
    "not_broken_at_large_eps": "PGD at half the input range leaves accuracy",
}
# Warnings that say something without overstating robustness: never fail a gate.
INFORMATIONAL_WARNINGS: dict[str, str] = {
    "non_finite_outputs": "non-finite logits counted as misclassified",
    "non_finite_values": "NaN or infinite numbers in the result, written as null",
}
WarningCode = Literal[
    "nan_gradients",
    "zero_gradients",
    "tiny_gradients",
    "probability_outputs",
    "randomized_model",
    "accuracy_rises_with_eps",
    "iterative_weaker_than_fgsm",
    "black_box_beats_white_box",
    "attack_no_better_than_noise",
    "not_broken_at_large_eps",
]

WORST_CASE = "worst_case"


class RobustGate(_Strict):
    """Require a minimum robust accuracy at one eps: of one attack, or the per-example worst
    case over every attack run at that eps and norm (``attack: "worst_case"``)."""

    attack: str = Field(
        min_length=1,
        max_length=40,
        description="'worst_case' (robust only if no attack at this eps or a smaller one "
        "fooled the example), or an attack name; an attack the audit does not run is added "
        "with its defaults at this eps.",
    )
    eps: float = Field(ge=0, allow_inf_nan=False)
    norm: Norm | None = Field(None, description="Needed only when the eps runs in two norms.")
    value: float = Field(ge=0, le=1)

    def label(self, norm: str) -> str:
        """The check's name, such as ``worst_case@linf:0.1``."""
        return f"{self.attack}@{norm}:{self.eps:g}"

    @field_validator("attack")
    @classmethod
    def _known_attack(cls, attack: str) -> str:
        if attack != WORST_CASE and attack not in ATTACK_NAMES:
            known = ", ".join((WORST_CASE, *ATTACK_NAMES))
            raise ValueError(f"unknown attack {attack!r}; use one of {known}")
        return attack


def at_point(check: RobustGate, norm: str, eps_values: list[float]) -> bool:
    """Whether ``check``'s norm and eps are ``norm`` and one of ``eps_values``."""
    return (check.norm is None or check.norm == norm) and any(
        same_eps(check.eps, eps) for eps in eps_values
    )


def check_matches(check: RobustGate, name: str, norm: str, eps_values: list[float]) -> bool:
    """Whether attack ``name`` run in ``norm`` at ``eps_values`` is what ``check`` measures:
    the one rule shared by the spec's validation and the gate's verdict (a worst-case check
    takes every attack at its point)."""
    return check.attack in (WORST_CASE, name) and at_point(check, norm, eps_values)


class Gate(_Strict):
    """A robustness gate: passed when every check holds and no validity warning that makes
    the numbers suspect fired (unless waived by name)."""

    min_clean_accuracy: float | None = Field(None, ge=0, le=1)
    min_robust_accuracy: list[RobustGate] = Field(default_factory=list, max_length=100)
    min_corruption_accuracy: float | None = Field(
        None, ge=0, le=1, description="Mean accuracy under the corruptions (needs them run)."
    )
    allow_warnings: list[WarningCode] = Field(
        default_factory=list,
        max_length=len(GATING_WARNINGS),
        description="Validity warnings that do not fail this gate (each output shows the waiver).",
    )
    allow_unchecked: bool = Field(
        False, description="Accept an audit with 'checks': false (no validity checks)."
    )


def same_eps(a: float, b: float) -> bool:
    """Whether two eps values are the same (tolerant of decimal round trips like 8/255)."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


class AuditSpec(_Strict):
    """Attack a model on a dataset and report clean and robust accuracy."""

    kind: Literal["audit"]
    model_id: str = Field(min_length=1, max_length=80)
    dataset_id: str = Field("builtin:digits", min_length=1, max_length=80)
    split: Literal["train", "test"] = "test"
    limit: int | None = Field(
        None,
        ge=1,
        description="Evaluate at most this many examples "
        "(a seeded random subset; all when omitted).",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    attacks: list[AttackSpec] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="Attacks to run (after the preset's, when both are given).",
    )
    preset: Preset | None = Field(
        None,
        description="quick (FGSM + PGD-10), standard (PGD-50, 3 restarts) or autoattack "
        "(APGD-CE + APGD-T + Square); the default (autoattack) when 'attacks' is omitted. "
        "GET /v1/presets lists them.",
    )
    norm: Norm = Field("linf", description="The preset's norm.")
    eps: EpsList | None = Field(
        None,
        description="The preset's eps, and the default of attacks without one (8/255 for "
        "linf, 0.5 for l2).",
    )
    gate: Gate | None = None
    checks: bool = Field(
        True, description="Run the evaluation validity checks (a gate needs allow_unchecked)."
    )
    shards: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Split the examples across this many jobs (workers), merged into one "
        "result with the same numbers; default: one per GAUNTLET_AUDIT_SHARD_EXAMPLES examples.",
    )
    corruptions: bool = Field(
        False,
        description="Also measure accuracy under natural corruptions (the 'corruptions' preset "
        "does, alone).",
    )

    _black_box: bool = PrivateAttr(False)

    @property
    def black_box(self) -> bool:
        """Whether this audit is of a black-box model (:meth:`for_black_box`)."""
        return self._black_box

    def for_black_box(self) -> AuditSpec:
        """This audit for a black-box model (queried, never differentiated): the preset keeps
        its score-based attacks only (AutoAttack's Square), and :meth:`refusals` refuses
        every gradient attack the request names."""
        copy = self.model_copy()
        copy._black_box = True
        return copy

    def runs_corruptions(self) -> bool:
        """Whether the audit measures corruption accuracy."""
        return self.corruptions or self.preset == "corruptions"

    def default_eps(self, norm: str) -> list[float]:
        """``eps`` when given, else the norm's default radius."""
        return list(self.eps) if self.eps else list(DEFAULT_EPS[norm])

    def resolved_attacks(self) -> list[AttackEntry]:
        """The attacks to run, each with its radii: the preset's (or the default preset when
        no attacks are given), then ``attacks``, then attacks that gate checks name but
        nothing else runs (with their defaults, at the check's eps)."""
        return [attack for _, attack in self.sourced_attacks()]

    def sourced_attacks(self) -> list[tuple[str, AttackEntry]]:
        """:meth:`resolved_attacks`, each with the field it comes from."""
        resolved: list[tuple[str, AttackEntry]] = []
        if self.preset or not self.attacks:
            preset = self.preset or DEFAULT_PRESET
            eps = self.default_eps(self.norm)
            for attack in preset_attacks(preset, self.norm, eps):
                if self._black_box and attack.name == "autoattack":
                    # AutoAttack's score-based component, with its budget.
                    queries = getattr(attack, "queries", 5000)
                    attack = _ATTACK_ADAPTER.validate_python(
                        {"name": "square", "norm": attack.norm, "eps": eps, "queries": queries}
                    )
                if not self._black_box or attack.name in SCORE_BASED_ATTACKS:
                    resolved.append(("preset", attack))
        for index, attack in enumerate(self.attacks or []):
            if attack.eps is None:
                attack = attack.model_copy(update={"eps": self.default_eps(attack.norm)})
            resolved.append((f"attacks[{index}]", attack))
        checks = self.gate.min_robust_accuracy if self.gate else []
        for index, check in enumerate(checks):
            if check.attack == WORST_CASE or any(
                a.name == check.attack and check.norm in (None, a.norm) for _, a in resolved
            ):
                continue
            implied = {"name": check.attack, "norm": check.norm or self.norm, "eps": [check.eps]}
            resolved.append(
                (f"gate.min_robust_accuracy[{index}]", _ATTACK_ADAPTER.validate_python(implied))
            )
        return resolved

    def refusals(self, num_classes: int | None) -> list[tuple[str, str]]:
        """``(field, reason)`` for every attack the engine would refuse."""
        problems = []
        if self._black_box:
            problems += self._black_box_refusals()
        for where, attack in self.sourced_attacks():
            for eps in attack.radii():
                reason = attack.refusal(eps, num_classes)
                if reason is not None:
                    problems.append((where, f"{attack.name}: {reason}"))
        return problems

    def _black_box_refusals(self) -> list[tuple[str, str]]:
        sourced = self.sourced_attacks()
        problems = []
        for where, attack in sourced:
            if attack.name not in SCORE_BASED_ATTACKS:
                problems.append(
                    (
                        f"{where}.name" if where.startswith("attacks") else where,
                        f"{attack.name} needs input gradients and the model is a black box "
                        "(run in onnxruntime, never differentiated); use a score-based attack: "
                        + ", ".join(sorted(SCORE_BASED_ATTACKS)),
                    )
                )
        runs = {attack.name for _, attack in sourced}
        for index, check in enumerate(self.gate.min_robust_accuracy if self.gate else []):
            if check.attack != WORST_CASE and check.attack not in runs:
                problems.append(
                    (
                        f"gate.min_robust_accuracy[{index}].attack",
                        f"{check.attack} does not run on a black-box model (only score-based "
                        "attacks do); check 'square' or 'worst_case'",
                    )
                )
        if not sourced and not self.runs_corruptions():
            preset = self.preset or DEFAULT_PRESET
            problems.append(
                (
                    "preset",
                    f"the {preset} preset has no score-based attack to run on a black-box model; "
                    "use the autoattack preset (its Square attack) or attacks: [{'name': "
                    "'square'}]",
                )
            )
        return problems

    def gradient_evaluations(self, num_examples: int, num_classes: int) -> int:
        """Planned gradient evaluations (model queries for score-based attacks) at most:
        every example attacked at every eps, plus the validity checks."""
        per_example = sum(
            attack.gradient_cost(num_classes) * len(attack.radii())
            for attack in self.resolved_attacks()
        )
        checks = (min(num_examples, 256) + 20 * min(num_examples, 100)) if self.checks else 0
        # Corruptions cost one forward pass per corruption and severity.
        per_example += 12 if self.runs_corruptions() else 0
        return num_examples * per_example + checks

    def result_cells(self, num_classes: int) -> int:
        """How many numbers the result's per-attack tables hold (per-class accuracy, and
        the confusion matrix up to 100 classes), to bound the result's size."""
        entries = sum(len(attack.radii()) for attack in self.resolved_attacks())
        per_entry = num_classes + (num_classes**2 if num_classes <= 100 else 0)
        return entries * per_entry

    @field_validator("attacks")
    @classmethod
    def _eps_unique(cls, attacks: list[AttackEntry] | None) -> list[AttackEntry] | None:
        for attack in attacks or []:
            for i, eps in enumerate(attack.eps or []):
                if any(same_eps(eps, other) for other in (attack.eps or [])[:i]):
                    raise ValueError(f"{attack.name}: eps {eps:g} is listed twice")
        return attacks

    @model_validator(mode="after")
    def _consistent(self) -> AuditSpec:
        if self.gate is not None and not self.checks and not self.gate.allow_unchecked:
            raise ValueError(
                "a gate needs the validity checks: with 'checks': false, nothing would tell a "
                "masked model from a robust one; set gate.allow_unchecked to accept that"
            )
        if (
            self.gate is not None
            and self.gate.min_corruption_accuracy is not None
            and not self.runs_corruptions()
        ):
            raise ValueError(
                "gate.min_corruption_accuracy needs the corruptions: set 'corruptions': true "
                "or the 'corruptions' preset"
            )
        # What needs the model (its classes) is refused at admission, naming the field
        # (service.jobs.service.check_audit_fits, through refusals()).
        attacks = self.resolved_attacks()
        for check in self.gate.min_robust_accuracy if self.gate else []:
            matches = [a for a in attacks if check_matches(check, a.name, a.norm, a.radii())]
            if not matches:
                runs = [a for a in attacks if check.attack in (WORST_CASE, a.name)]
                what = "attack" if check.attack == WORST_CASE else f"{check.attack} entry"
                running = ", ".join(
                    f"{a.name}@{a.norm}:" + ",".join(f"{e:g}" for e in a.radii()) for a in runs
                )
                raise ValueError(
                    f"gate check {check.attack}@{check.eps:g}: no {what} runs at that eps"
                    + (f" (the audit runs {running}; add the eps there)" if running else "")
                )
            if len({attack.norm for attack in matches}) > 1:
                raise ValueError(
                    f"gate check {check.attack}@{check.eps:g} is ambiguous: give its 'norm'"
                )
        return self


class AuditShardSpec(_Strict):
    """Internal: one part of a sharded audit, the examples ``[start, stop)`` of its subset."""

    kind: Literal["audit_shard"]
    audit: AuditSpec
    start: int = Field(ge=0)
    stop: int = Field(ge=1)


class ValidateModelSpec(_Strict):
    """Internal: load an uploaded model and check it against its metadata."""

    kind: Literal["validate_model"]
    model_id: str


def request_hash(spec: BaseModel, engine_version: str) -> str:
    """A digest of a validated spec and the engine that will run it, to tell an idempotent
    replay from a different request (or from the same request to an older engine)."""
    canonical = json.dumps(
        {"spec": spec.model_dump(mode="json"), "engine_version": engine_version},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
