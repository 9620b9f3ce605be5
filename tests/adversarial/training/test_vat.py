"""VAT: unlabeled examples (label -1) count only in the smoothness term."""

from __future__ import annotations

import torch
from torch import nn

from adversarial.threat import L2Ball
from adversarial.training import UNLABELED, TrainingData, VATConfig
from adversarial.training.methods import MethodContext, Updater, VATTraining
from adversarial.training.schedules import ConstantSchedule
from tests.adversarial.training.common import run, tiny_data, tiny_model, weights


def _method(model: nn.Module, config: VATConfig) -> VATTraining:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    updater = Updater(
        optimizer, ConstantSchedule(), base_lr=0.1, updates_per_epoch=1, total_updates=1
    )
    context = MethodContext(model, L2Ball(config.eps), torch.Generator().manual_seed(0), updater, 8)
    return VATTraining(config, context)


def test_cross_entropy_uses_only_the_labeled_examples() -> None:
    data = tiny_data(validation=False)
    x, labels = data.inputs[:8], data.labels[:8].clone()
    labels[:5] = UNLABELED
    model = tiny_model()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x[5:]), labels[5:])
    # weight 0: the returned objective is the cross-entropy term alone.
    loss = _method(model, VATConfig(eps=1.0, norm="l2", weight=0.0)).train_batch(x, labels)
    assert torch.allclose(loss, expected)


def test_an_unlabeled_batch_trains_on_smoothness_alone() -> None:
    data = tiny_data(validation=False)
    x = data.inputs[:8]
    labels = torch.full((8,), UNLABELED)
    model = tiny_model()
    before = weights(model)
    loss = _method(model, VATConfig(eps=1.0, norm="l2")).train_batch(x, labels)
    assert float(loss) > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    zero = _method(tiny_model(), VATConfig(eps=1.0, norm="l2", weight=0.0)).train_batch(x, labels)
    assert float(zero) == 0.0


def test_semi_supervised_training_runs_with_mostly_unlabeled_data() -> None:
    data = tiny_data()
    labels = data.labels.clone()
    labels[50:] = UNLABELED
    semi = TrainingData(
        data.inputs, labels, data.validation_inputs, data.validation_labels, data.input_range
    )
    _, result = run(VATConfig(eps=1.0, norm="l2"), data=semi, epochs=2)
    assert result.records[-1].loss < result.records[0].loss
    assert result.records[-1].clean_accuracy is not None
