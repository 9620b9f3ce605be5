"""Numbers that hold: per-example random streams (the same numbers whatever the batching or
the shard), the re-check of every adversarial example, and logits that are not finite."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from adversarial.attacks.base import ATTACKS, Attack, register
from adversarial.audit import AuditConfig, audit
from adversarial.errors import EngineCheckError
from adversarial.evaluation import AttackConfig, evaluate
from adversarial.randomness import ExampleStreams, RandomSource
from tests.trained import digits_arrays, trained_digits_cnn


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_arrays()
    return x[:120], y[:120]


# -- per-example streams ------------------------------------------------------------------


def test_an_examples_draws_do_not_depend_on_its_neighbours() -> None:
    ids = torch.arange(10, 20)
    whole = ExampleStreams.for_examples(7, ids, "pgd")
    alone = ExampleStreams.for_examples(7, ids[[3, 8]], "pgd")
    first = whole.uniform((3, 4), dtype=torch.float32, device="cpu")
    second = alone.uniform((3, 4), dtype=torch.float32, device="cpu")
    assert torch.equal(first[[3, 8]], second)
    # A subset continues each example's own sequence of draws.
    later = whole.subset(torch.tensor([8])).normal((5,), dtype=torch.float64, device="cpu")
    assert torch.equal(
        later, alone.subset(torch.tensor([1])).normal((5,), dtype=torch.float64, device="cpu")
    )
    # Other seeds, ids, labels and draws give other numbers.
    assert not torch.equal(first, whole.uniform((3, 4), dtype=torch.float32, device="cpu"))
    assert not torch.equal(
        first,
        ExampleStreams.for_examples(8, ids, "pgd").uniform(
            (3, 4), dtype=torch.float32, device="cpu"
        ),
    )
    assert not torch.equal(
        first,
        ExampleStreams.for_examples(7, ids, "apgd-ce").uniform(
            (3, 4), dtype=torch.float32, device="cpu"
        ),
    )


def test_stream_values_have_their_distributions() -> None:
    streams = ExampleStreams.for_examples(0, torch.arange(2000))
    uniform = streams.uniform((50,), dtype=torch.float32, device="cpu")
    assert float(uniform.min()) >= 0.0
    assert float(uniform.max()) < 1.0
    assert abs(float(uniform.mean()) - 0.5) < 0.01
    normal = streams.normal((50,), dtype=torch.float64, device="cpu")
    assert abs(float(normal.mean())) < 0.02
    assert abs(float(normal.std()) - 1.0) < 0.02
    integers = streams.integers(3, 9, (50,), device="cpu")
    assert set(integers.unique().tolist()) == set(range(3, 9))
    signs = streams.signs((50,), dtype=torch.float32, device="cpu")
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


# -- the same numbers whatever the batching -----------------------------------------------

CONFIGS = [
    AttackConfig("pgd", "linf", 0.1, {"steps": 10, "restarts": 2}),
    AttackConfig("rfgsm", "linf", 0.1),
    AttackConfig("square", "linf", 0.1, {"queries": 60}),
    AttackConfig("apgd-ce", "l2", 0.5, {"steps": 10}),
]


def run(x: torch.Tensor, y: torch.Tensor, batch_size: int, ids: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
    return evaluate(
        trained_digits_cnn(), x, y, CONFIGS, num_classes=10, batch_size=batch_size, seed=5,
        example_ids=ids,
    )  # fmt: skip


def test_the_same_numbers_at_batch_sizes_7_64_and_256(data) -> None:
    x, y = data
    results = [run(x, y, size) for size in (7, 64, 256)]
    reference = results[0]
    assert reference.batch_size == 7
    for other in results[1:]:
        assert other.clean_accuracy == reference.clean_accuracy
        for ours, theirs in zip(reference.outcomes, other.outcomes, strict=True):
            assert ours.robust_accuracy == theirs.robust_accuracy, ours.config.label
            assert torch.equal(ours.robust, theirs.robust), ours.config.label
            assert torch.allclose(ours.fooled_inputs, theirs.fooled_inputs, atol=1e-6)
        assert [n.accuracy for n in other.noise] == [n.accuracy for n in reference.noise]
    # Some example must have been attacked for the comparison to mean anything.
    assert any(o.robust_accuracy < reference.clean_accuracy for o in reference.outcomes)


def test_a_shard_gives_each_example_the_numbers_it_gets_in_the_whole(data) -> None:
    x, y = data
    ids = torch.arange(x.shape[0]) + 1000  # dataset indices, not positions
    whole = run(x, y, 64, ids)
    part = torch.arange(40, 100)
    shard = run(x[part], y[part], 16, ids[part])
    for ours, theirs in zip(whole.outcomes, shard.outcomes, strict=True):
        assert torch.equal(ours.robust[part], theirs.robust), ours.config.label


# -- the re-check --------------------------------------------------------------------------


class _Broken(Attack):
    """A deliberately broken attack: it steps twice as far as its ball allows."""

    name: ClassVar[str] = "broken-test-attack"
    how: ClassVar[str] = "outside"

    def perturb(self, x: torch.Tensor, y: torch.Tensor, random: RandomSource) -> torch.Tensor:
        if self.how == "outside":
            return (x + 2 * self.threat.eps).clamp(0, 1)
        if self.how == "nan":
            return x.clone().index_fill_(0, torch.tensor([0]), float("nan"))
        return x + self.threat.eps  # inside the ball, but bright pixels go beyond 1


@pytest.mark.parametrize(
    ("how", "message"),
    [("outside", "outside the linf ball"), ("nan", "NaN"), ("range", "outside the input range")],
)
def test_an_adversarial_example_that_breaks_the_rules_is_refused(data, how, message) -> None:
    x, y = data
    cls = type(f"Broken{how}", (_Broken,), {"name": f"broken-{how}", "how": how})
    register(cls)
    try:
        with pytest.raises(EngineCheckError, match=message):
            evaluate(
                trained_digits_cnn(),
                x,
                y,
                [AttackConfig(f"broken-{how}", "linf", 0.1)],
                num_classes=10,
            )
    finally:
        del ATTACKS[f"broken-{how}"]


def test_the_recheck_costs_little(data) -> None:
    x, y = data
    outcome = audit(
        trained_digits_cnn(),
        x,
        y,
        AuditConfig(
            attacks=[AttackConfig("pgd", "linf", 0.1, {"steps": 20})], num_classes=10, seed=0
        ),
    )
    assert 0 < outcome.evaluation.verification_seconds < outcome.seconds


# -- logits that are not finite ------------------------------------------------------------


class _NanAbove(nn.Module):
    """The digits CNN, with NaN logits for inputs brighter than ``threshold`` on average."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.network = trained_digits_cnn()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        bright = x.flatten(1).mean(dim=1, keepdim=True) > self.threshold
        return torch.where(bright, torch.full_like(logits, float("nan")), logits)


def test_non_finite_logits_are_no_prediction(data) -> None:
    x, y = data
    brightness = x.flatten(1).mean(dim=1)
    threshold = float(brightness.quantile(0.9))
    model = _NanAbove(threshold).eval()
    outcome = audit(
        model,
        x,
        y,
        AuditConfig(attacks=[AttackConfig("fgsm", "linf", 0.05)], num_classes=10, seed=0),
    )
    evaluation = outcome.evaluation
    bright = brightness > threshold
    assert bright.any()
    # NaN logits count as misclassified, even where argmax would have picked the label.
    assert not evaluation.clean_correct[bright].any()
    assert (evaluation.clean_predictions[bright] == -1).all()
    honest = evaluate(trained_digits_cnn(), x, y, [], num_classes=10)
    assert evaluation.clean_accuracy == pytest.approx(
        float((honest.clean_correct & ~bright).float().mean())
    )
    assert "non_finite_outputs" in {f.code for f in outcome.findings}
    assert evaluation.non_finite_predictions >= int(bright.sum())
    confusion = evaluation.outcomes[0].confusion
    assert confusion is not None
    assert sum(map(sum, confusion)) == int(
        (evaluation.outcomes[0].adversarial_predictions >= 0).sum()
    )
