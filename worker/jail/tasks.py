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


def load_jailed_model(payload: dict[str, Any], inputs: dict[str, Path]) -> InputSpaceModel:
    """The payload's model (``spec``, ``max_bytes``) from the ``model`` input, every format
    allowed: this runs inside the jail."""
    spec = ModelSpec.from_json(payload["spec"])
    max_bytes = int(payload["max_bytes"])
    return load_model(
        read_input(inputs["model"], max_bytes), spec, max_bytes=max_bytes, allow_code=True
    )


def validate_model(
    payload: dict[str, Any],
    inputs: dict[str, Path],
    *,
    progress: Progress,
    output_dir: Path,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """Load the model and run one real forward pass against its declared shapes.

    Payload: ``spec`` (``ModelSpec.to_json``), ``max_bytes``, ``device``. Result:
    ``{"valid": true, "parameters": int, "device": str}``.
    """
    spec = ModelSpec.from_json(payload["spec"])
    progress(0.1, "loading", f"loading {spec.format} model")
    model = load_jailed_model(payload, inputs)
    device = select_device(str(payload.get("device", "cpu")))
    model.to(device)
    progress(0.6, "checking", "running a forward pass")
    check_model(model, spec, device=device)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return {"valid": True, "parameters": int(parameters), "device": str(device)}


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
    "predict": predict,
    "inspect": inspect_environment,
}
