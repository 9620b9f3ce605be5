"""The transfer engine: crafting on sources, scoring on targets, artifacts and keys."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from adversarial.errors import EngineCheckError, EngineInputError
from adversarial.evaluation import AttackConfig, evaluate
from adversarial.models.blackbox import load_black_box
from adversarial.threat import make_threat_model
from adversarial.transfer import (
    CRAFTED_FORMAT,
    EnsembleSource,
    attack_curve,
    craft,
    crafted_from_bytes,
    crafted_key,
    crafted_to_bytes,
    score,
    transfer_matrix,
    verify_crafted,
)
from tests.sklearn_models import sklearn_onnx
from tests.trained import digits_arrays, trained_digits_cnn

PGD = AttackConfig("pgd", "linf", 0.1, {"steps": 10})


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits_arrays()
    return x_test[:200], y_test[:200]


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return trained_digits_cnn(0)


@pytest.fixture(scope="module")
def other_cnn() -> nn.Module:
    return trained_digits_cnn(1)


@pytest.fixture(scope="module")
def logistic_regression() -> nn.Module:
    return load_black_box(
        sklearn_onnx("logistic_regression"), input_shape=(1, 8, 8), num_classes=10
    )


# --- sources -------------------------------------------------------------------------------


def test_a_black_box_source_is_refused(cnn, logistic_regression, data) -> None:
    for sources in (logistic_regression, [cnn, logistic_regression]):
        with pytest.raises(EngineInputError) as caught:
            craft(sources, *data, PGD)
        assert caught.value.code == "black_box_source"
    with pytest.raises(EngineInputError) as caught:
        transfer_matrix({"lr": logistic_regression}, {"cnn": cnn}, *data, PGD)
    assert caught.value.code == "black_box_source"


def test_an_ensemble_averages_its_members_logits_and_keeps_their_modes(
    cnn, other_cnn, data
) -> None:
    x, _ = data
    ensemble = EnsembleSource([cnn, other_cnn])
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x), (cnn(x) + other_cnn(x)) / 2)
    other_cnn.train()
    try:
        craft([cnn, other_cnn], *data, AttackConfig("fgsm", "linf", 0.1))
        assert not cnn.training
        assert other_cnn.training
    finally:
        other_cnn.eval()


def test_bad_attacks_are_refused_with_codes(cnn, data) -> None:
    cases = {
        "unknown_attack": AttackConfig("autoattack", "linf", 0.1),
        "bad_attack": AttackConfig("pgd", "linf", 0.1, {"stepz": 3}),
    }
    for code, config in cases.items():
        with pytest.raises(EngineInputError) as caught:
            craft(cnn, *data, config)
        assert caught.value.code == code
    with pytest.raises(EngineInputError) as caught:
        craft(cnn, *data, AttackConfig("pgd", "l7", 0.1))
    assert caught.value.code == "bad_attack"


# --- crafting ------------------------------------------------------------------------------


def test_crafting_is_deterministic_and_independent_of_the_batch_size(cnn, data) -> None:
    small = craft(cnn, *data, PGD, seed=3, batch_size=7)
    large = craft(cnn, *data, PGD, seed=3, batch_size=64)
    assert torch.equal(small.adversarial_inputs, large.adversarial_inputs)
    assert torch.equal(small.source_adversarial_predictions, large.source_adversarial_predictions)
    other_seed = craft(cnn, *data, PGD, seed=4, batch_size=64)
    assert not torch.equal(other_seed.adversarial_inputs, large.adversarial_inputs)


def test_a_shard_gets_the_inputs_it_gets_in_the_whole(cnn, data) -> None:
    x, y = data
    ids = torch.arange(1000, 1000 + x.shape[0])
    whole = craft(cnn, x, y, PGD, seed=1, example_ids=ids)
    halves = [
        craft(cnn, x[part], y[part], PGD, seed=1, example_ids=ids[part])
        for part in (slice(0, 77), slice(77, None))
    ]
    joined = torch.cat([half.adversarial_inputs for half in halves])
    assert torch.equal(joined, whole.adversarial_inputs)


def test_every_example_is_attacked_and_stays_in_its_ball(cnn, data) -> None:
    x, y = data
    config = AttackConfig("pgd", "linf", 0.1, {"steps": 5, "early_stop": False})
    crafted = craft(cnn, x, y, config)
    distance = make_threat_model("linf", 0.1).distance(crafted.adversarial_inputs, x)
    assert (distance > 0).all()  # also the examples the source misclassifies
    assert float(distance.max()) <= 0.1 + 1e-6
    assert crafted.adversarial_inputs.min() >= 0
    assert crafted.adversarial_inputs.max() <= 1
    assert crafted.source_clean_accuracy > 0.9
    assert crafted.source_success_rate is not None
    assert crafted.source_success_rate > 0.3


@pytest.mark.parametrize(
    "config",
    [
        AttackConfig("fgsm", "linf", 0.1),
        PGD,
        AttackConfig("pgd", "l2", 1.0, {"steps": 10, "restarts": 2}),
        AttackConfig("mifgsm", "linf", 0.1, {"steps": 5}),
    ],
    ids=lambda config: config.label,
)
def test_the_diagonal_is_the_white_box_success_rate(cnn, data, config: AttackConfig) -> None:
    """Source = target: the cell's error rate (fooled among the examples the model gets right
    when clean) is ``evaluate``'s success rate for the same attack, seed and example ids,
    which attacks only those examples; and per example, the target's adversarial
    predictions on them are ``evaluate``'s."""
    x, y = data
    ids = torch.arange(x.shape[0]) * 3 + 5
    result = evaluate(cnn, x, y, [config], num_classes=10, seed=7, example_ids=ids)
    outcome = result.outcomes[0]
    crafted = craft(cnn, x, y, config, seed=7, example_ids=ids)
    cell = score(cnn, x, crafted.adversarial_inputs, y, crafted.source_adversarial_predictions)

    correct = result.clean_correct
    assert cell.target_clean_correct == int(correct.sum())
    assert cell.error_rate == outcome.success_rate
    assert torch.equal(
        cell.target_adversarial_predictions[correct], outcome.adversarial_predictions[correct]
    )
    assert torch.equal(crafted.adversarial_inputs[outcome.fooled_indices], outcome.fooled_inputs)
    # The target is the source: every fooled example agrees with the source's wrong class.
    assert cell.agreeing == cell.fooled
    assert crafted.source_success_rate == outcome.success_rate


# --- scoring -------------------------------------------------------------------------------


class ReadsItsAnswer(nn.Module):
    """A 'classifier' whose logits are its input: an input one-hot in class k predicts k."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.flatten(1)


def _one_hot(classes: list[int]) -> torch.Tensor:
    return torch.eye(4)[classes].view(-1, 1, 1, 4)


def test_score_counts_what_it_says() -> None:
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    clean = _one_hot([0, 1, 2, 0, 3, 1])  # right on examples 0, 1, 2, 5
    adversarial = _one_hot([1, 1, 3, 0, 0, 2])  # fooled: 0 (as 1), 2 (as 3), 5 (as 2)
    source = torch.tensor([1, 0, 3, 3, 2, 0])  # agrees with the target on 0 and 2
    cell = score(ReadsItsAnswer(), clean, adversarial, y, source)
    assert (cell.examples, cell.target_clean_correct, cell.fooled, cell.agreeing) == (6, 4, 3, 2)
    assert cell.target_adversarial_correct == 2  # examples 1 and 4
    assert cell.error_rate == 3 / 4
    assert cell.accuracy == 2 / 6
    assert cell.clean_accuracy == 4 / 6
    assert cell.wrong_class_agreement == 2 / 3


def test_score_has_no_rates_without_their_denominators() -> None:
    y = torch.tensor([0, 1])
    wrong = _one_hot([2, 3])
    cell = score(ReadsItsAnswer(), wrong, wrong, y, torch.tensor([2, 3]))
    assert cell.error_rate is None
    assert cell.wrong_class_agreement is None
    right = _one_hot([0, 1])
    cell = score(ReadsItsAnswer(), right, right, y, torch.tensor([2, 3]))
    assert cell.error_rate == 0.0
    assert cell.wrong_class_agreement is None


def test_non_finite_target_scores_count_as_wrong_and_agree_with_nothing() -> None:
    y = torch.tensor([0, 1])
    adversarial = _one_hot([0, 1])
    adversarial[0, 0, 0, 0] = float("nan")
    cell = score(ReadsItsAnswer(), _one_hot([0, 1]), adversarial, y, torch.tensor([-1, 1]))
    assert cell.fooled == 1
    assert cell.agreeing == 0
    assert cell.non_finite_predictions == 1


# --- the matrix ----------------------------------------------------------------------------


def test_a_matrix_with_an_ensemble_and_a_black_box_target(
    cnn, other_cnn, logistic_regression, data
) -> None:
    x, y = data
    sources = {"a": cnn, "b": other_cnn, "a+b": [cnn, other_cnn]}
    targets = {"a": cnn, "b": other_cnn, "lr": logistic_regression}
    reports: list[float] = []
    matrix = transfer_matrix(
        sources, targets, x, y, PGD, seed=0, progress=lambda f, s, m: reports.append(f)
    )
    assert len(matrix.entries) == 9
    assert reports == sorted(reports)
    assert reports[-1] == 1.0
    for entry in matrix.entries:
        cell = entry.cell
        assert cell.examples == x.shape[0]
        assert 0 <= cell.agreeing <= cell.fooled <= cell.target_clean_correct <= cell.examples
        assert cell.error_rate is not None
        assert 0.0 <= cell.error_rate <= 1.0
        assert cell.error_rate == cell.fooled / cell.target_clean_correct
        assert cell.accuracy == cell.target_adversarial_correct / cell.examples
        # Correct on the adversarial input: kept from clean (not fooled), or newly right.
        assert cell.target_adversarial_correct >= cell.target_clean_correct - cell.fooled
    # White-box cells fool more than transferred ones on the same target.
    assert matrix.cell("a", "a").error_rate > matrix.cell("b", "a").error_rate  # type: ignore[operator]
    # The same source crafts once: its cells against each target share the crafted set.
    assert len(matrix.crafted["a+b"]) == 1


def test_the_service_path_gives_the_matrix_numbers(cnn, other_cnn, logistic_regression, data):
    """Craft as one job, store the artifact, score as another: the same cells."""
    x, y = data
    ids = torch.arange(x.shape[0])
    matrix = transfer_matrix(
        {"a+b": [cnn, other_cnn]}, {"lr": logistic_regression}, x, y, PGD, seed=2
    )
    stored = crafted_to_bytes(craft([cnn, other_cnn], x, y, PGD, seed=2, batch_size=33))
    crafted = crafted_from_bytes(stored)
    verify_crafted(crafted, x, y, ids)
    cell = score(
        logistic_regression,
        x,
        crafted.adversarial_inputs,
        y,
        crafted.source_adversarial_predictions,
        batch_size=50,
    )
    expected = matrix.cell("a+b", "lr")
    assert (cell.fooled, cell.agreeing, cell.target_adversarial_correct) == (
        expected.fooled,
        expected.agreeing,
        expected.target_adversarial_correct,
    )
    assert torch.equal(cell.target_adversarial_predictions, expected.target_adversarial_predictions)


def test_a_curve_crafts_once_per_eps(cnn, logistic_regression, data) -> None:
    x, y = data
    curve = attack_curve("fgsm", "linf", [0.05, 0.2])
    matrix = transfer_matrix({"a": cnn}, {"lr": logistic_regression}, x, y, curve)
    assert [crafted.attack.eps for crafted in matrix.crafted["a"]] == [0.05, 0.2]
    small, large = (matrix.cell("a", "lr", index) for index in (0, 1))
    assert small.error_rate is not None
    assert large.error_rate is not None
    assert small.error_rate < large.error_rate


# --- artifacts and keys --------------------------------------------------------------------


def test_a_crafted_set_round_trips(cnn, data) -> None:
    x, y = data
    ids = torch.arange(x.shape[0]) + 40
    config = AttackConfig("mifgsm", "linf", 0.1, {"steps": 3, "decay": 0.5})
    crafted = craft(cnn, x, y, config, seed=9, example_ids=ids)
    loaded = crafted_from_bytes(crafted_to_bytes(crafted))
    assert loaded.attack == config
    assert loaded.seed == 9
    assert loaded.input_range == (0.0, 1.0)
    for name in (
        "example_ids",
        "labels",
        "adversarial_inputs",
        "source_clean_predictions",
        "source_adversarial_predictions",
    ):
        assert torch.equal(getattr(loaded, name), getattr(crafted, name)), name
    with np.load(io.BytesIO(crafted_to_bytes(crafted)), allow_pickle=False) as archive:
        assert CRAFTED_FORMAT in archive["meta"].tobytes().decode()


def test_a_reused_set_must_belong_to_its_examples(cnn, data) -> None:
    x, y = data
    crafted = craft(cnn, x, y, AttackConfig("fgsm", "linf", 0.1))
    with pytest.raises(EngineInputError) as caught:
        verify_crafted(crafted, x, y, torch.arange(x.shape[0]) + 1)
    assert caught.value.code == "crafted_mismatch"
    crafted.adversarial_inputs[3] = (x[3] + 0.5).clamp(0, 1)
    with pytest.raises(EngineCheckError):
        verify_crafted(crafted, x, y)


def test_foreign_artifacts_are_refused() -> None:
    ids = np.arange(3, dtype=np.int64)
    arrays = {
        "example_ids": ids,
        "labels": ids,
        "adversarial_inputs": np.zeros((3, 1, 2, 2), np.float32),
        "source_clean_predictions": ids,
        "source_adversarial_predictions": ids,
        "meta": np.frombuffer(b'{"format": "gauntlet.crafted.v1"}', np.uint8),
    }
    compressed = io.BytesIO()
    np.savez_compressed(compressed, **arrays)
    pickled = io.BytesIO()
    np.savez(pickled, **{**arrays, "labels": np.array([object()] * 3)})
    other_format = io.BytesIO()
    np.savez(other_format, **{**arrays, "meta": np.frombuffer(b'{"format": "x"}', np.uint8)})
    for data in (b"garbage", compressed.getvalue(), pickled.getvalue(), other_format.getvalue()):
        with pytest.raises(EngineInputError) as caught:
            crafted_from_bytes(data)
        assert caught.value.code == "crafted_invalid"


def test_the_crafted_key_is_stable_and_changes_with_each_input() -> None:
    base = {
        "source_digests": ["sha-a", "sha-b"],
        "data_digest": "digits:test",
        "attack": AttackConfig("pgd", "linf", 0.1, {"steps": 10}),
        "seed": 0,
    }
    key = crafted_key(**base)  # type: ignore[arg-type]
    assert key == crafted_key(**base)  # type: ignore[arg-type]
    assert len(key) == 64
    assert int(key, 16) >= 0
    variants = [
        {"source_digests": ["sha-b", "sha-a"]},
        {"source_digests": ["sha-a"]},
        {"data_digest": "digits:train"},
        {"attack": AttackConfig("mifgsm", "linf", 0.1, {"steps": 10})},
        {"attack": AttackConfig("pgd", "l2", 0.1, {"steps": 10})},
        {"attack": AttackConfig("pgd", "linf", 0.2, {"steps": 10})},
        {"attack": AttackConfig("pgd", "linf", 0.1, {"steps": 20})},
        {"seed": 1},
    ]
    keys = {key}
    for change in variants:
        keys.add(crafted_key(**{**base, **change}))  # type: ignore[arg-type]
    keys.add(crafted_key(**base, input_range=(-1.0, 1.0)))  # type: ignore[arg-type]
    keys.add(crafted_key(**base, engine_version="0.1.0+abc"))  # type: ignore[arg-type]
    assert len(keys) == len(variants) + 3
