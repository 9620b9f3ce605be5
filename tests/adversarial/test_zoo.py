"""Built-in architectures, and state_dict uploads loaded into them."""

from __future__ import annotations

import io
import json
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from adversarial.datasets import load_builtin
from adversarial.errors import ModelFormatError, ModelTooLargeError
from adversarial.models.loading import ModelSpec, check_model, load_model
from adversarial.models.wrapper import InputSpaceModel
from adversarial.models.zoo import ARCHITECTURES, ZooLimits, build_architecture

SHAPES_BUILT = [
    ("mlp", {}, (1, 8, 8)),
    ("mlp", {"hidden": []}, (3, 5, 7)),
    ("small_cnn", {}, (1, 8, 8)),
    ("small_cnn", {"channels": [8, 16, 16]}, (1, 28, 28)),
    ("small_cnn", {}, (3, 32, 32)),
    ("lenet5", {}, (1, 28, 28)),
    ("lenet5", {}, (1, 32, 32)),
    ("lenet5", {}, (3, 32, 32)),
    ("preact_resnet18", {}, (3, 32, 32)),
]


def _pt_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "kwargs", "input_shape"), SHAPES_BUILT)
def test_architecture_gives_logits_per_example(
    name: str, kwargs: dict[str, Any], input_shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    network = build_architecture(name, kwargs, input_shape, 7).eval()
    with torch.no_grad():
        logits = network(torch.rand(3, *input_shape))
    assert logits.shape == (3, 7)


def test_registry_lists_the_documented_architectures() -> None:
    assert set(ARCHITECTURES) == {"mlp", "small_cnn", "lenet5", "preact_resnet18"}
    for name, architecture in ARCHITECTURES.items():
        assert architecture.name == name
        assert architecture.description
        assert json.loads(json.dumps(architecture.describe())) == architecture.describe()
    assert ARCHITECTURES["mlp"].describe()["kwargs"] == {"hidden": [256, 128]}
    assert ARCHITECTURES["small_cnn"].describe()["kwargs"] == {"channels": [32, 64]}
    assert ARCHITECTURES["lenet5"].describe()["input_shapes"] == [
        [1, 28, 28],
        [1, 32, 32],
        [3, 32, 32],
    ]


def test_state_dict_keys_are_stable() -> None:
    lenet = build_architecture("lenet5", {}, (1, 28, 28), 10)
    assert [key for key in lenet.state_dict() if key.endswith("weight")] == [
        "conv1.weight",
        "conv2.weight",
        "fc1.weight",
        "fc2.weight",
        "fc3.weight",
    ]
    resnet_keys = set(build_architecture("preact_resnet18", {}, (3, 32, 32), 10).state_dict())
    # locuslab/fast_adversarial's PreActResNet18 layout.
    assert {
        "conv1.weight",
        "layer1.0.bn1.running_mean",
        "layer2.0.shortcut.0.weight",
        "layer4.1.conv2.weight",
        "bn.weight",
        "linear.weight",
    } <= resnet_keys
    assert "layer1.0.shortcut.0.weight" not in resnet_keys
    assert list(build_architecture("mlp", {"hidden": [4]}, (1, 2, 2), 3).state_dict()) == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.2.weight",
        "layers.2.bias",
    ]


def test_unknown_architecture_lists_known_ones() -> None:
    with pytest.raises(ModelFormatError) as caught:
        build_architecture("resnet50", {}, (3, 32, 32), 10)
    assert caught.value.code == "unknown_architecture"
    assert "preact_resnet18" in caught.value.message


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mlp", {"depth": 3}),
        ("mlp", {"hidden": "256"}),
        ("mlp", {"hidden": [256, 0]}),
        ("mlp", {"hidden": [True]}),
        ("small_cnn", {"channels": []}),
        ("small_cnn", {"channels": [32.5]}),
        ("lenet5", {"hidden": [10]}),
    ],
)
def test_bad_kwargs_are_refused(name: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ModelFormatError) as caught:
        build_architecture(name, kwargs, (1, 28, 28), 10)
    assert caught.value.code == "bad_architecture_kwargs"


@pytest.mark.parametrize(
    ("name", "kwargs", "input_shape"),
    [
        ("lenet5", {}, (1, 8, 8)),
        ("lenet5", {}, (3, 28, 28)),
        ("preact_resnet18", {}, (1, 28, 28)),
        ("small_cnn", {}, (1, 4, 4)),
        ("small_cnn", {"channels": [4, 4, 4, 4]}, (1, 8, 8)),
        ("mlp", {}, (1, 8)),
    ],
)
def test_unsupported_input_shape_is_refused(
    name: str, kwargs: dict[str, Any], input_shape: tuple[int, ...]
) -> None:
    with pytest.raises(ModelFormatError) as caught:
        build_architecture(name, kwargs, input_shape, 10)
    assert caught.value.code == "input_shape_mismatch"


@pytest.mark.parametrize("file_format", ["safetensors", "pt"])
@pytest.mark.parametrize(
    ("name", "input_shape"), [("small_cnn", (1, 8, 8)), ("preact_resnet18", (3, 32, 32))]
)
def test_state_dict_round_trip_gives_identical_outputs(
    file_format: str, name: str, input_shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    network = build_architecture(name, {}, input_shape, 10)
    # A few training steps give BatchNorm non-default running statistics to carry over.
    network.train()
    with torch.no_grad():
        for _ in range(2):
            network(torch.rand(8, *input_shape))
    network.eval()
    state_dict = network.state_dict()
    data = save_safetensors(state_dict) if file_format == "safetensors" else _pt_bytes(state_dict)
    spec = ModelSpec(format=file_format, input_shape=input_shape, num_classes=10, architecture=name)

    loaded = load_model(data, spec)

    assert isinstance(loaded, InputSpaceModel)
    assert not loaded.training
    inputs = torch.rand(5, *input_shape)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), network(inputs))


def test_checkpoint_wrappers_and_data_parallel_prefix_are_accepted() -> None:
    torch.manual_seed(0)
    network = build_architecture("mlp", {"hidden": [16]}, (1, 8, 8), 10).eval()
    prefixed = {f"module.{key}": value for key, value in network.state_dict().items()}
    data = _pt_bytes({"epoch": 3, "model_state_dict": prefixed})
    spec = ModelSpec(
        format="pt",
        input_shape=(1, 8, 8),
        num_classes=10,
        architecture="mlp",
        architecture_kwargs={"hidden": [16]},
    )
    inputs = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_model(data, spec)(inputs), network(inputs))


@pytest.mark.parametrize("file_format", ["safetensors", "pt"])
def test_state_dict_of_another_architecture_is_a_mismatch(file_format: str) -> None:
    state_dict = build_architecture("small_cnn", {}, (1, 8, 8), 10).state_dict()
    data = save_safetensors(state_dict) if file_format == "safetensors" else _pt_bytes(state_dict)
    spec = ModelSpec(format=file_format, input_shape=(1, 8, 8), num_classes=10, architecture="mlp")
    with pytest.raises(ModelFormatError) as caught:
        load_model(data, spec)
    assert caught.value.code == "state_dict_mismatch"
    assert "missing keys" in caught.value.message
    assert "unexpected keys" in caught.value.message


def test_state_dict_with_other_widths_names_the_shape_mismatch() -> None:
    state_dict = build_architecture("mlp", {"hidden": [32]}, (1, 8, 8), 10).state_dict()
    spec = ModelSpec(
        format="safetensors",
        input_shape=(1, 8, 8),
        num_classes=10,
        architecture="mlp",
        architecture_kwargs={"hidden": [64]},
    )
    with pytest.raises(ModelFormatError) as caught:
        load_model(save_safetensors(state_dict), spec)
    assert caught.value.code == "state_dict_mismatch"
    assert "layers.0.weight: file [32, 64], model [64, 64]" in caught.value.message


def test_normalization_is_applied_inside_the_model() -> None:
    torch.manual_seed(0)
    network = build_architecture("small_cnn", {}, (3, 8, 8), 10).eval()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    spec = ModelSpec(
        format="safetensors",
        input_shape=(3, 8, 8),
        num_classes=10,
        normalization=(mean, std),
        architecture="small_cnn",
    )
    loaded = load_model(save_safetensors(network.state_dict()), spec)

    inputs = torch.rand(4, 3, 8, 8)
    normalized = (inputs - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), network(normalized), rtol=0, atol=1e-6)
    # The wrapper adds nothing to the state_dict users get back.
    assert set(loaded.state_dict()) == {f"network.{key}" for key in network.state_dict()}


@pytest.mark.parametrize(
    "normalization", [((0.5,), (0.0,)), ((0.5, 0.5), (0.2, 0.2)), ((0.5,), (float("nan"),))]
)
def test_bad_normalization_is_refused(
    normalization: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    network = build_architecture("mlp", {}, (3, 8, 8), 10)
    with pytest.raises(ModelFormatError) as caught:
        InputSpaceModel(network, input_shape=(3, 8, 8), num_classes=10, normalization=normalization)
    assert caught.value.code == "bad_normalization"


def test_state_dict_format_needs_an_architecture() -> None:
    data = save_safetensors(build_architecture("mlp", {}, (1, 8, 8), 10).state_dict())
    with pytest.raises(ModelFormatError) as caught:
        load_model(data, ModelSpec(format="safetensors", input_shape=(1, 8, 8), num_classes=10))
    assert caught.value.code == "architecture_required"


def test_small_cnn_learns_the_digits_and_survives_upload() -> None:
    torch.manual_seed(0)
    network = build_architecture("small_cnn", {}, (1, 8, 8), 10)
    inputs, labels = load_builtin("digits", "train")
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    network.train()
    for _ in range(5):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(network(inputs[batch]), labels[batch]).backward()
            optimizer.step()
    spec = ModelSpec(
        format="safetensors", input_shape=(1, 8, 8), num_classes=10, architecture="small_cnn"
    )
    model = load_model(save_safetensors(network.state_dict()), spec)
    check_model(model, spec)

    test_inputs, test_labels = load_builtin("digits", "test")
    with torch.no_grad():
        accuracy = (model(test_inputs).argmax(1) == test_labels).float().mean().item()
    assert accuracy > 0.9


# --- size budgets ------------------------------------------------------------------------------


@contextmanager
def _address_space_headroom(headroom: int) -> Iterator[None]:
    """Cap this process's address space at what it maps now plus ``headroom`` bytes.

    A size check that regressed then fails with an allocation error instead of taking the
    machine's memory.
    """
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _activations_per_example(network: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Outputs of every traced operation except flatten views, for one example."""
    traced = torch.fx.symbolic_trace(network)
    ShapeProp(traced).propagate(torch.zeros(2, *input_shape))
    total = 0
    for node in traced.graph.nodes:
        if node.op in ("call_module", "call_function", "call_method") and node.target != "flatten":
            total += node.meta["tensor_meta"].shape.numel()
    return total // 2


SIZED = [
    *SHAPES_BUILT,
    ("mlp", {"hidden": [300, 7, 11]}, (2, 6, 5)),
    ("small_cnn", {"channels": [3]}, (2, 9, 11)),
    ("lenet5", {}, (1, 32, 32)),
]


@pytest.mark.parametrize(("name", "kwargs", "input_shape"), SIZED)
def test_size_is_computed_without_building_and_matches_the_network(
    name: str, kwargs: dict[str, Any], input_shape: tuple[int, int, int]
) -> None:
    size = ARCHITECTURES[name].size(input_shape, 7, **kwargs)
    network = build_architecture(name, kwargs, input_shape, 7).eval()
    assert size.parameters == sum(p.numel() for p in network.parameters())
    assert size.activation_elements_per_example == _activations_per_example(network, input_shape)


def test_red_team_mlp_is_refused_before_it_is_built() -> None:
    kwargs = {"hidden": [35000, 35000]}
    assert ARCHITECTURES["mlp"].size((1, 8, 8), 10, **kwargs).parameters > 1_200_000_000
    started = time.perf_counter()
    with _address_space_headroom(2**30), pytest.raises(ModelTooLargeError) as caught:
        build_architecture("mlp", kwargs, (1, 8, 8), 10)
    assert time.perf_counter() - started < 1.0
    assert caught.value.code == "model_too_large"
    assert caught.value.limit == "max_parameters"
    assert "hidden=[35000, 35000]" in caught.value.message
    assert "ZooLimits.max_parameters" in caught.value.message


@pytest.mark.parametrize(
    ("name", "kwargs", "input_shape", "limit"),
    [
        ("mlp", {"hidden": [400, 400]}, (1, 8, 8), "max_parameters"),
        ("small_cnn", {"channels": [8]}, (3, 64, 64), "max_activation_elements_per_example"),
        ("preact_resnet18", {}, (3, 32, 32), "max_parameters"),
    ],
)
def test_architecture_beyond_the_limits_is_refused(
    name: str, kwargs: dict[str, Any], input_shape: tuple[int, int, int], limit: str
) -> None:
    size = ARCHITECTURES[name].size(input_shape, 10, **kwargs)
    value = getattr(size, "parameters" if limit == "max_parameters" else limit.removeprefix("max_"))
    tight = ZooLimits(**{limit: value - 1})
    with pytest.raises(ModelTooLargeError) as caught:
        build_architecture(name, kwargs, input_shape, 10, limits=tight)
    assert (caught.value.limit, caught.value.value, caught.value.maximum) == (
        limit,
        value,
        value - 1,
    )
    for key in kwargs:
        assert f"{key}=" in caught.value.message
    assert isinstance(
        build_architecture(name, kwargs, input_shape, 10, limits=ZooLimits(**{limit: value})),
        nn.Module,
    )


def test_default_limits_fit_every_listed_architecture_and_refuse_nonsense() -> None:
    for name, architecture in ARCHITECTURES.items():
        shape = (3, 32, 32) if architecture.input_shapes is None else architecture.input_shapes[0]
        size = architecture.size(shape, 1000)
        assert size.parameters <= ZooLimits().max_parameters, name
    with pytest.raises(ValueError, match="max_parameters"):
        ZooLimits(max_parameters=0)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"input_shape": (3, 1183, 1183)}, "bad_input_shape"),
        ({"input_shape": (1, 4096, 4096)}, "bad_input_shape"),
        ({"num_classes": 100_001}, "bad_num_classes"),
    ],
)
def test_model_spec_caps_input_size_and_classes(changes: dict[str, Any], code: str) -> None:
    fields: dict[str, Any] = {"format": "onnx", "input_shape": (3, 32, 32), "num_classes": 10}
    with pytest.raises(ModelFormatError) as caught:
        ModelSpec(**{**fields, **changes})
    assert caught.value.code == code
    assert ModelSpec("onnx", (3, 1182, 1182), 100_000).num_classes == 100_000


def test_load_model_passes_the_zoo_limits_on() -> None:
    data = save_safetensors(build_architecture("mlp", {"hidden": [16]}, (1, 8, 8), 10).state_dict())
    spec = ModelSpec(
        format="safetensors",
        input_shape=(1, 8, 8),
        num_classes=10,
        architecture="mlp",
        architecture_kwargs={"hidden": [16]},
    )
    with pytest.raises(ModelTooLargeError) as caught:
        load_model(data, spec, zoo_limits=ZooLimits(max_parameters=1000))
    assert caught.value.limit == "max_parameters"
    assert isinstance(load_model(data, spec), InputSpaceModel)
