"""The fixed registry of what a jail can run (inside the jail child only).

A task is ``task(payload, inputs, *, progress, output_dir) -> dict``: ``payload`` is the
JSON the parent sent, ``inputs`` maps names to read-only files, ``progress(fraction,
stage, message)`` reports back, files written to ``output_dir`` are handed to the parent
after success, and the returned dict (JSON) is the result. Raising
``adversarial.errors.EngineInputError`` fails the job with its code; any other exception
is ``model_crashed``.

Only the jail child imports this module: it is the one place that loads models with
``allow_code=True``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from adversarial.errors import ModelFormatError
from adversarial.models.loading import ModelSpec, check_model, load_model
from adversarial.models.wrapper import InputSpaceModel

Progress = Callable[[float, str, str], None]
# publish(name): hand a finished file of the output folder to the parent while running.
Publish = Callable[[str], None]


class Task(Protocol):
    """What a jail task is called with."""

    def __call__(
        self,
        payload: dict[str, Any],
        inputs: dict[str, Path],
        *,
        progress: Progress,
        output_dir: Path,
        publish: Publish,
    ) -> dict[str, Any]: ...


def warm_up() -> None:
    """Import what tasks use and run one tiny forward and backward pass, so a job that
    arrives at a warm spare pays none of it."""
    import safetensors.torch  # noqa: F401

    import adversarial.audit  # noqa: F401
    import adversarial.evaluation  # noqa: F401
    import adversarial.models.onnx  # noqa: F401

    layer = torch.nn.Linear(4, 2)
    inputs = torch.rand(2, 4, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(layer(inputs), torch.tensor([0, 1]))
    torch.autograd.grad(loss, inputs)


def select_device(setting: str) -> torch.device:
    """``auto`` is the GPU when the jail sees one; anything else names a torch device."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def read_input(path: Path, max_bytes: int) -> bytes:
    """An input file's bytes, refused before reading when it is larger than ``max_bytes``."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFormatError("too_large", f"The file is {size} bytes; the limit is {max_bytes}.")
    return path.read_bytes()


def load_jailed_model(
    payload: dict[str, Any], inputs: dict[str, Path], name: str = "model"
) -> InputSpaceModel:
    """The payload's model (``spec``, ``max_bytes``, ``black_box``) from the input ``name``,
    every format allowed: this runs inside the jail.

    An ONNX graph in the ``ai.onnx.ml`` domain, or one the payload marks ``black_box``, runs
    in onnxruntime (:func:`adversarial.models.blackbox.load_black_box`): it is queried, never
    differentiated.
    """
    spec = ModelSpec.from_json(payload["spec"])
    max_bytes = int(payload["max_bytes"])
    data = read_input(inputs[name], max_bytes)
    if is_black_box(payload, data):
        return load_jailed_black_box(data, spec, max_bytes)
    return load_model(data, spec, max_bytes=max_bytes, allow_code=True)


def is_black_box(payload: dict[str, Any], data: bytes) -> bool:
    """Whether the payload's model is a black box: marked so, or an ``ai.onnx.ml`` graph."""
    from adversarial.models.blackbox import is_ml_domain_graph

    if payload["spec"].get("format") != "onnx":
        return False
    return bool(payload.get("black_box")) or is_ml_domain_graph(data)


def load_jailed_black_box(data: bytes, spec: ModelSpec, max_bytes: int) -> InputSpaceModel:
    """An ONNX black box in its declared input space (inputs as they are: no normalization)."""
    from adversarial.models.blackbox import load_black_box

    if spec.normalization is not None:
        raise ModelFormatError(
            "black_box_normalization",
            "A black-box model (run in onnxruntime) takes its inputs as they are; put the "
            "normalization in the graph and leave out 'normalization'.",
        )
    network = load_black_box(
        data,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        input_range=spec.input_range,
        max_bytes=max_bytes,
    )
    model = InputSpaceModel(
        network,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        input_range=spec.input_range,
    )
    return model.eval()


def validate_model(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """Load the model and run one real forward pass against its declared shapes.

    Payload: ``spec`` (``ModelSpec.to_json``), ``max_bytes``, ``device``, ``black_box``.
    Result: ``{"valid": true, "parameters": int, "device": str, "black_box": bool}``
    (``black_box``: it runs in onnxruntime, an ``ai.onnx.ml`` graph or marked so).
    """
    from adversarial.models.blackbox import is_differentiable

    spec = ModelSpec.from_json(payload["spec"])
    progress(0.1, "loading", f"loading {spec.format} model")
    model = load_jailed_model(payload, inputs)
    black_box = not is_differentiable(model)
    device = torch.device("cpu") if black_box else select_device(str(payload.get("device", "cpu")))
    model.to(device)
    progress(0.6, "checking", "running a forward pass")
    check_model(model, spec, device=device)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return {
        "valid": True,
        "parameters": int(parameters),
        "device": str(device),
        "black_box": black_box,
    }


def predict(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """The model's predictions for the examples in ``inputs["examples"]`` (an ``.npy``
    float32 array ``[N, C, H, W]``), in batches of ``batch_size`` (default 256).

    Payload: ``spec``, ``max_bytes``, ``device``, optional ``labels`` (N integers),
    ``return_logits`` (default true) and ``return_gradients`` (default false: the input
    gradients of the cross-entropy loss, which white-box attacks follow; needs labels).
    Result: ``count``; ``logits`` and ``input_gradients`` (nested lists) when asked; with
    labels, ``accuracy`` and the mean ``loss``.
    """
    model = load_jailed_model(payload, inputs)
    device = select_device(str(payload.get("device", "cpu")))
    model.to(device).eval()
    examples = torch.from_numpy(np.load(inputs["examples"], allow_pickle=False))
    labels = payload.get("labels")
    targets = None if labels is None else torch.tensor(labels, dtype=torch.long)
    if targets is not None and targets.shape != (examples.shape[0],):
        raise ModelFormatError("bad_labels", "labels must hold one class per example")
    return_logits = bool(payload.get("return_logits", True))
    return_gradients = bool(payload.get("return_gradients", False))
    if return_gradients and targets is None:
        raise ModelFormatError("bad_labels", "input gradients need labels")
    batch_size = int(payload.get("batch_size", 256))
    logits_parts: list[torch.Tensor] = []
    gradient_parts: list[torch.Tensor] = []
    correct, loss_sum = 0, 0.0
    for start in range(0, examples.shape[0], batch_size):
        batch = examples[start : start + batch_size].to(device)
        with torch.set_grad_enabled(return_gradients):
            if return_gradients:
                batch = batch.clone().requires_grad_(True)
            logits = model(batch)
            if targets is not None:
                target = targets[start : start + batch_size].to(device)
                loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
                if return_gradients:
                    (gradients,) = torch.autograd.grad(loss, batch)
                    gradient_parts.append(gradients.cpu())
                loss_sum += float(loss.detach())
                correct += int((logits.detach().argmax(dim=1) == target).sum())
        if return_logits:
            logits_parts.append(logits.detach().cpu())
        progress(min(1.0, (start + batch_size) / examples.shape[0]), "predicting", "")
    result: dict[str, Any] = {"count": int(examples.shape[0])}
    if return_logits:
        result["logits"] = torch.cat(logits_parts).tolist()
    if return_gradients:
        result["input_gradients"] = torch.cat(gradient_parts).tolist()
    if targets is not None and examples.shape[0]:
        result["accuracy"] = correct / examples.shape[0]
        result["loss"] = loss_sum / examples.shape[0]
    return result


def read_examples(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` float32 ``[N, C, H, W]``, ``y`` and example ids (int64 ``[N]``) from the
    ``.npz`` the parent wrote (``worker.loading.write_examples``)."""
    with np.load(path, allow_pickle=False) as arrays:
        return (
            torch.from_numpy(np.ascontiguousarray(arrays["x"], dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(arrays["y"], dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(arrays["ids"], dtype=np.int64)),
        )


def audit(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """The whole audit pipeline (:func:`adversarial.audit.audit`) on the model.

    Payload: ``spec``, ``max_bytes``, ``device``, ``config`` (``AuditConfig.to_json``).
    Inputs: ``model`` and ``examples`` (``worker.loading.write_examples``). Writes the per-sample
    export to ``per_sample.npz``; the result is :func:`adversarial.audit.outcome_document`
    and the ``device``.
    """
    from adversarial.audit import AuditConfig, outcome_document
    from adversarial.audit import audit as run_audit

    progress(0.0, "loading", "loading the model and the data")
    model = load_jailed_model(payload, inputs)
    device = select_device(str(payload.get("device", "cpu")))
    model.to(device)
    x, y, ids = read_examples(inputs["examples"])
    config = AuditConfig.from_json(payload["config"])
    outcome = run_audit(model, x, y, config, device=device, example_ids=ids, progress=progress)
    with (output_dir / "per_sample.npz").open("wb") as handle:
        np.savez_compressed(handle, **outcome.per_sample)  # type: ignore[arg-type]
    return {**outcome_document(outcome), "device": str(device)}


def audit_part(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """One part of a sharded audit (:func:`adversarial.shards.audit_part`): the same payload
    and inputs as :func:`audit`, for the part's examples; writes ``part.npz``."""
    from adversarial.audit import AuditConfig
    from adversarial.shards import audit_part as run_part
    from adversarial.shards import part_to_bytes

    progress(0.0, "loading", "loading the model and the data")
    model = load_jailed_model(payload, inputs)
    device = select_device(str(payload.get("device", "cpu")))
    model.to(device)
    x, y, ids = read_examples(inputs["examples"])
    config = AuditConfig.from_json(payload["config"])
    part = run_part(model, x, y, config, example_ids=ids, device=device, progress=progress)
    (output_dir / "part.npz").write_bytes(part_to_bytes(part, ids))
    return {"examples": int(x.shape[0]), "device": str(device)}


def audit_merge(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """The merge of a sharded audit (:func:`adversarial.shards.merged_audit`): inputs
    ``model``, ``examples`` (all of them) and ``part0``, ``part1``, ... in example order.
    Writes ``per_sample.npz``; returns what :func:`audit` returns."""
    from adversarial.audit import AuditConfig, outcome_document
    from adversarial.shards import merged_audit

    progress(0.0, "loading", "loading the model, the data and the parts")
    model = load_jailed_model(payload, inputs)
    device = select_device(str(payload.get("device", "cpu")))
    model.to(device)
    x, y, ids = read_examples(inputs["examples"])
    config = AuditConfig.from_json(payload["config"])
    count = int(payload["parts"])
    parts = [read_input(inputs[f"part{index}"], 2**34) for index in range(count)]
    outcome = merged_audit(model, x, y, config, parts, example_ids=ids, device=device,
                           progress=progress)  # fmt: skip
    with (output_dir / "per_sample.npz").open("wb") as handle:
        np.savez_compressed(handle, **outcome.per_sample)  # type: ignore[arg-type]
    return {**outcome_document(outcome), "device": str(device)}


def transfer_craft(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """Craft on one transfer source (:func:`adversarial.transfer.craft`) for every example.

    Payload: ``models`` (one ``{spec, max_bytes, black_box}`` per member: several make an
    ensemble), ``attack`` ``{name, norm, eps, params}``, ``seed``, ``input_range``,
    ``batch_size``, ``device``. Inputs: ``model0``, ``model1``, ... and ``examples``. Writes
    ``crafted.npz`` (:func:`adversarial.transfer.crafted_to_bytes`).
    """
    from adversarial.evaluation import AttackConfig
    from adversarial.transfer import craft, crafted_to_bytes

    progress(0.0, "loading", "loading the source and the data")
    device = select_device(str(payload.get("device", "cpu")))
    members = [
        load_jailed_model(member, inputs, f"model{index}").to(device)
        for index, member in enumerate(payload["models"])
    ]
    x, y, ids = read_examples(inputs["examples"])
    attack = payload["attack"]
    config = AttackConfig(
        str(attack["name"]), str(attack["norm"]), float(attack["eps"]), dict(attack["params"])
    )
    low, high = payload["input_range"]
    batch_size = payload.get("batch_size")
    crafted = craft(
        members[0] if len(members) == 1 else members,
        x,
        y,
        config,
        seed=int(payload["seed"]),
        example_ids=ids,
        input_range=(float(low), float(high)),
        batch_size=None if batch_size is None else int(batch_size),
        device=device,
        progress=progress,
    )
    (output_dir / "crafted.npz").write_bytes(crafted_to_bytes(crafted))
    return {
        "examples": crafted.num_examples,
        "source_clean_accuracy": crafted.source_clean_accuracy,
        "source_success_rate": crafted.source_success_rate,
        "device": str(device),
    }


def transfer_score(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """Score one transfer target against crafted sets
    (:func:`adversarial.transfer.score_crafted`).

    Payload: ``spec``, ``max_bytes``, ``black_box``, ``device``, ``crafted`` (how many sets),
    ``batch_size``. Inputs: ``model``, ``examples``, ``crafted0``, ``crafted1``, ... Result:
    the target's ``clean_accuracy`` and one cell (counts and rates) per set, in order.
    """
    from adversarial.models.blackbox import is_differentiable
    from adversarial.transfer import crafted_from_bytes, score_crafted

    progress(0.0, "loading", "loading the target, the data and the crafted sets")
    target = load_jailed_model(payload, inputs)
    # A black box runs in onnxruntime on the CPU: moving its inputs to a GPU gains nothing.
    setting = str(payload.get("device", "cpu")) if is_differentiable(target) else "cpu"
    device = select_device(setting)
    target.to(device)
    x, y, ids = read_examples(inputs["examples"])
    crafted_sets = [
        crafted_from_bytes(read_input(inputs[f"crafted{index}"], 2**34))
        for index in range(int(payload["crafted"]))
    ]
    batch_size = payload.get("batch_size")
    clean_accuracy, cells = score_crafted(
        target,
        x,
        y,
        crafted_sets,
        example_ids=ids,
        batch_size=None if batch_size is None else int(batch_size),
        device=device,
        progress=progress,
    )
    return {
        "clean_accuracy": clean_accuracy,
        "cells": [
            {
                "examples": cell.examples,
                "target_clean_correct": cell.target_clean_correct,
                "target_adversarial_correct": cell.target_adversarial_correct,
                "fooled": cell.fooled,
                "agreeing": cell.agreeing,
                "clean_accuracy": cell.clean_accuracy,
                "accuracy": cell.accuracy,
                "error_rate": cell.error_rate,
                "wrong_class_agreement": cell.wrong_class_agreement,
            }
            for cell in cells
        ],
        "device": str(device),
    }


def train(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """A training job (:func:`adversarial.training.job.run_training`).

    Payload: ``plan`` (``TrainingPlan.to_json``), ``device``, and the model to start from:
    ``architecture`` ``{name, kwargs}`` with ``input_shape`` and ``num_classes``, or ``spec``
    and ``max_bytes`` of the ``model`` input (a fine-tune; ``onnx``, ``safetensors`` or
    ``pt``). Inputs: ``examples``, ``model`` (fine-tune), ``checkpoint`` (a resume).

    Every epoch's checkpoint is published as ``checkpoint.bin``. The trained model is left
    in ``model.safetensors`` (a zoo architecture's state_dict) or ``model.onnx`` (a
    fine-tuned ONNX graph: the user's graph with new weights), and a zoo model also as
    ``export.onnx``; each is loaded back and checked before the result is returned.
    """
    from safetensors.torch import save as save_safetensors

    from adversarial.models.export import export_onnx
    from adversarial.models.onnx import OnnxGraphModule, export_onnx_with_weights
    from adversarial.models.zoo import build_architecture
    from adversarial.training.job import TrainingPlan, outcome_document, run_training
    from adversarial.training.rng import seeded_initialization

    plan = TrainingPlan.from_json(payload["plan"])
    device = select_device(str(payload.get("device", "cpu")))
    progress(0.0, "loading", "loading the model and the data")
    original: bytes | None = None
    if payload.get("architecture") is not None:
        architecture = payload["architecture"]
        shape = tuple(int(d) for d in payload["input_shape"])
        with seeded_initialization(plan.seed):
            network = build_architecture(
                str(architecture["name"]),
                dict(architecture.get("kwargs") or {}),
                shape,
                int(payload["num_classes"]),
            )
        model = InputSpaceModel(
            network,
            input_shape=shape,
            num_classes=int(payload["num_classes"]),
            input_range=plan.input_range,
        )
        spec = ModelSpec(
            "safetensors",
            (shape[0], shape[1], shape[2]),
            int(payload["num_classes"]),
            input_range=plan.input_range,
            architecture=str(architecture["name"]),
            architecture_kwargs=dict(architecture.get("kwargs") or {}),
        )
    else:
        spec = ModelSpec.from_json(payload["spec"])
        if spec.format not in ("onnx", "safetensors", "pt"):
            raise ModelFormatError(
                "fine_tune_format",
                f"{spec.format} models cannot be fine-tuned (their weights "
                "cannot be written back); upload ONNX or a state_dict",
            )
        original = read_input(inputs["model"], int(payload["max_bytes"]))
        model = load_model(original, spec, max_bytes=int(payload["max_bytes"]))
    x, y, _ids = read_examples(inputs["examples"])
    resume = inputs["checkpoint"].read_bytes() if "checkpoint" in inputs else None

    def on_checkpoint(data: bytes, epoch: int) -> None:
        if publish is None:
            return
        partial = output_dir / "checkpoint.partial"
        partial.write_bytes(data)
        partial.rename(output_dir / "checkpoint.bin")
        publish("checkpoint.bin")

    outcome = run_training(
        model,
        x,
        y,
        plan,
        device=device,
        progress=progress,
        on_checkpoint=on_checkpoint,
        resume=resume,
        score_parent=original is not None,
    )
    model.cpu().eval()
    graphs = [m for m in model.modules() if isinstance(m, OnnxGraphModule)]
    if graphs:
        assert original is not None
        trained = export_onnx_with_weights(original, graphs[0])
        registered = ("model.onnx", trained, spec)
    else:
        trained = save_safetensors(
            {k: v.contiguous() for k, v in model.network.state_dict().items()}
        )
        registered = ("model.safetensors", trained, _as_safetensors(spec))
        (output_dir / "export.onnx").write_bytes(export_onnx(model, spec.input_shape))
    name, data, registered_spec = registered
    # The file as it will be registered must load and give the trained model's logits.
    reloaded = load_model(data, registered_spec, max_bytes=max(len(data) + 1, 2**20))
    check_model(reloaded, registered_spec)
    probe = x[: min(16, x.shape[0])]
    with torch.no_grad():
        if not torch.allclose(reloaded(probe), model(probe), rtol=1e-4, atol=1e-5):
            raise ModelFormatError("export_mismatch", "the saved model's logits differ")
    (output_dir / name).write_bytes(data)
    return {
        **outcome_document(outcome),
        "model_file": name,
        "model_format": registered_spec.format,
        "architecture": None
        if registered_spec.architecture is None
        else {
            "name": registered_spec.architecture,
            "kwargs": dict(registered_spec.architecture_kwargs),
        },
        "device": str(device),
    }


def _as_safetensors(spec: ModelSpec) -> ModelSpec:
    """A state_dict spec (``pt`` or ``safetensors``) as the safetensors it is saved as."""
    return ModelSpec.from_json({**spec.to_json(), "format": "safetensors"})


def _attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except Exception as error:
        return f"refused: {type(error).__name__}: {error}"[:300]
    return "ok"


def _readable(path: str) -> str:
    def read() -> None:
        with open(path, "rb") as handle:
            handle.read(1)

    return _attempt(read)


def _connect(host: str, port: int) -> str:
    def connect() -> None:
        with socket.create_connection((host, port), timeout=2):
            pass

    return _attempt(connect)


def _write(path: str) -> str:
    def write() -> None:
        with open(path, "w") as handle:
            handle.write("written from inside the jail")

    return _attempt(write)


def inspect_environment(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """Diagnostics: what this jail sees and may do (tests, and operators checking a
    deployment). Payload: optional ``paths`` to test for existence and reading, ``write``
    paths to try to create, ``connect`` ``[host, port]`` pairs to try to reach.
    """
    import resource

    from worker.jail.privileges import effective_capabilities

    with open("/proc/self/mounts") as mounts:
        mount_points = sorted({line.split()[1] for line in mounts if line.strip()})
    limits = {
        name: resource.getrlimit(getattr(resource, name))
        for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_FSIZE")
    }
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "root_entries": sorted(os.listdir("/")),
        "mounts": mount_points,
        "processes": sorted(int(name) for name in os.listdir("/proc") if name.isdigit()),
        "capabilities": effective_capabilities(),
        "limits": {name: list(values) for name, values in limits.items()},
        "inputs": {name: _readable(str(path)) for name, path in inputs.items()},
        "paths": {
            path: {"exists": os.path.lexists(path), "read": _readable(path)}
            for path in payload.get("paths", [])
        },
        "write": {path: _write(path) for path in payload.get("write", [])},
        "connect": {
            f"{host}:{port}": _connect(host, int(port)) for host, port in payload.get("connect", [])
        },
    }


TASKS: dict[str, Task] = {
    "validate_model": validate_model,
    "audit": audit,
    "audit_part": audit_part,
    "audit_merge": audit_merge,
    "train": train,
    "transfer_craft": transfer_craft,
    "transfer_score": transfer_score,
    "predict": predict,
    "inspect": inspect_environment,
}
