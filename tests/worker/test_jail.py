"""The jail: what a jailed model can see and do, and how its failures end.

Every hostile model here is also run once without the jail (in this test process, or
checked against its plain twin), to show that its attempt works when nothing stops it: a
jail test that passes because the attack was broken would prove nothing.

Each run takes the pool's warm spare and leaves a new one warming, so these tests cost
about one jail start each. Tests that need namespaces fail without them when
GAUNTLET_TEST_REQUIRE_SANDBOX is set (CI), and are skipped otherwise.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch

from adversarial.models.loading import ModelSpec, load_model
from service.settings import Settings
from service.storage import get_store
from tests.jail_models import (
    ESCAPE_MARK,
    pt2_escaping,
    pt2_exiting,
    pt2_leaving_outputs,
    pt2_sleeping,
    pt2_writing_garbage,
    torchscript_allocating,
    torchscript_reading,
    torchscript_spinning,
    torchscript_writing,
)
from tests.trained import digits_arrays, trained_digits_cnn
from worker.jail import (
    JailConfig,
    JailError,
    JailLimits,
    JailStopped,
    JailUnavailable,
    resolve_mode,
    run_in_jail,
)
from worker.jail.config import jail_config, jail_pool
from worker.jail.protocol import LineReader, ProtocolViolation, parse_message
from worker.jail.sandbox import Mode, namespace_support, running_as_root

LIMITS = JailLimits(address_space_bytes=4 * 2**30, cpu_seconds=120, wall_seconds=120)


@pytest.fixture
def namespaces(settings: Settings) -> Mode:
    """The namespaces mode, which these tests need."""
    support = namespace_support(jail_config(settings))
    if not support.available:
        message = f"namespace jails do not work here: {support.reason}"
        if os.environ.get("GAUNTLET_TEST_REQUIRE_SANDBOX"):
            pytest.fail(message)
        pytest.skip(message)
    return "namespaces"


@pytest.fixture
def stored_blob(settings: Settings) -> Iterator[Callable[[bytes], str]]:
    """A factory: ``stored_blob(data)`` stores ``data`` and returns the path of its file on
    this machine for the test (the blob itself in a local store, the copy a worker downloads
    for a job from S3): another job's file, which a jail must not see."""
    with ExitStack() as stack:

        def _store(data: bytes) -> str:
            store = get_store()
            sha256, _ = store.put_bytes(data)
            return str(stack.enter_context(store.local_file(sha256)))

        yield _store


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP server on 127.0.0.1 that never accepts: a connection that arrives waits in
    its backlog, where :func:`connection_arrived` finds it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def connection_arrived(server: socket.socket) -> bool:
    server.setblocking(False)
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


def write_model(folder: Path, data: bytes) -> Path:
    path = folder / "model.bin"
    path.write_bytes(data)
    return path


def digits_examples(folder: Path, count: int = 16) -> tuple[Path, torch.Tensor]:
    _, _, x_test, _ = digits_arrays()
    path = folder / "examples.npy"
    np.save(path, x_test[:count].numpy())
    return path, x_test[:count]


def spec_json(model_format: str) -> dict[str, object]:
    return ModelSpec(model_format, (1, 8, 8), 10).to_json()


def jailed(
    settings: Settings,
    mode: Mode,
    task: str,
    payload: dict[str, object],
    inputs: dict[str, Path],
    *,
    limits: JailLimits = LIMITS,
) -> dict[str, object]:
    return run_in_jail(
        task,
        payload,
        inputs,
        limits=limits,
        mode=mode,
        on_progress=lambda *_: None,
        pool=jail_pool(settings),
    )


def predict_payload(model_format: str) -> dict[str, object]:
    return {"spec": spec_json(model_format), "max_bytes": 2**26, "device": "cpu"}


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --- what the jail sees ------------------------------------------------------------------


@pytest.mark.artifacts
def test_a_namespace_jail_sees_no_credentials_data_or_network(
    settings: Settings,
    namespaces: Mode,
    listener: socket.socket,
    tmp_path: Path,
    stored_blob: Callable[[bytes], str],
) -> None:
    assert os.environ["GAUNTLET_DATABASE_URL"] == settings.database_url
    blob = stored_blob(b"another tenant's model")
    # The checkout's files (the virtualenv inside it is bound read-only, so its folder may
    # exist as the mount's parent, holding nothing else).
    secret_places = [
        str(settings.data_dir),
        str(settings.artifact_dir),
        blob,
        str(Path.cwd() / "README.md"),
        str(Path.cwd() / "service"),
    ]
    (tmp_path / "input.txt").write_text("this job's input")

    seen = jailed(
        settings,
        namespaces,
        "inspect",
        {
            "paths": secret_places,
            "write": [str(tmp_path / "canary"), "/usr/canary", "/canary"],
            "connect": [["127.0.0.1", listener.getsockname()[1]]],
        },
        {"input": tmp_path / "input.txt"},
    )

    environment = seen["environ"]
    assert isinstance(environment, dict)
    assert not [name for name in environment if name.startswith("GAUNTLET_")]
    assert set(environment) <= {"PATH", "HOME", "TMPDIR", "LANG", "PWD"} | {
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
    }
    assert environment["HOME"] == "/job/scratch"
    assert seen["paths"] == {
        path: {"exists": False, "read": seen["paths"][path]["read"]}  # type: ignore[index]
        for path in secret_places
    }
    mounts = seen["mounts"]
    assert isinstance(mounts, list)
    assert not [mount for mount in mounts if mount.startswith(("/work/wt", str(tmp_path)))]
    assert {"/job/inputs", "/job/scratch", "/opt/gauntlet/worker"} <= set(mounts)
    assert seen["inputs"] == {"input": "ok"}
    assert all(result.startswith("refused") for result in seen["write"].values())  # type: ignore[union-attr]
    assert not (tmp_path / "canary").exists()
    assert not connection_arrived(listener)
    assert seen["processes"] == [1, 2]  # its own PID namespace: bubblewrap's init and itself
    assert seen["pid"] == 2
    assert seen["capabilities"] == 0
    assert seen["uid"] == (65534 if running_as_root() else os.getuid())


def test_a_process_jail_has_a_scrubbed_environment_limits_and_no_capabilities(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "input.txt").write_text("x")
    limits = JailLimits(address_space_bytes=2**30, cpu_seconds=60, open_files=64, processes=500)

    seen = jailed(
        settings,
        "process",
        "inspect",
        {"paths": [f"/proc/{os.getpid()}/environ"]},
        {"input": tmp_path / "input.txt"},
        limits=limits,
    )

    environment = seen["environ"]
    assert isinstance(environment, dict)
    assert not [name for name in environment if name.startswith("GAUNTLET_")]
    assert environment["HOME"] == seen["cwd"]
    assert str(seen["cwd"]).startswith(str(jail_config(settings).jail_dir))
    assert seen["capabilities"] == 0
    # This worker is undumpable once it runs process jails: its environment is not theirs.
    read = seen["paths"][f"/proc/{os.getpid()}/environ"]["read"]  # type: ignore[index]
    assert read.startswith("refused")
    limits_seen = seen["limits"]
    assert isinstance(limits_seen, dict)
    assert limits_seen["RLIMIT_NOFILE"] == [64, 64]
    assert limits_seen["RLIMIT_NPROC"] == [500, 500]
    assert limits_seen["RLIMIT_AS"][0] == limits_seen["RLIMIT_AS"][1] > 2**30


# --- TorchScript that tries to get out -----------------------------------------------------


def test_torchscript_writes_stay_inside_the_jail_and_its_numbers_are_right(
    settings: Settings, namespaces: Mode, tmp_path: Path
) -> None:
    canary = Path(f"/tmp/gauntlet-canary-{secrets.token_hex(6)}")
    model = write_model(tmp_path, torchscript_writing(str(canary)))
    examples, x = digits_examples(tmp_path)

    result = jailed(
        settings,
        namespaces,
        "predict",
        predict_payload("torchscript"),
        {"model": model, "examples": examples},
    )

    assert not canary.exists()
    expected = trained_digits_cnn()(x).detach()
    torch.testing.assert_close(torch.tensor(result["logits"]), expected)
    # Without the jail the same file does write it.
    plain = load_model(model.read_bytes(), ModelSpec("torchscript", (1, 8, 8), 10), allow_code=True)
    plain(x)
    assert canary.exists()
    canary.unlink()


@pytest.mark.artifacts
def test_torchscript_cannot_read_another_jobs_artifact(
    settings: Settings,
    namespaces: Mode,
    tmp_path: Path,
    stored_blob: Callable[[bytes], str],
) -> None:
    weights = b"another tenant's weights " * 10
    artifact = stored_blob(weights)
    model = write_model(tmp_path, torchscript_reading(artifact, len(weights)))

    with pytest.raises(JailError) as caught:
        jailed(
            settings,
            namespaces,
            "validate_model",
            predict_payload("torchscript"),
            {"model": model},
        )

    assert caught.value.code == "forward_failed"
    assert "No such file" in caught.value.message
    plain = load_model(model.read_bytes(), ModelSpec("torchscript", (1, 8, 8), 10), allow_code=True)
    assert plain(torch.rand(2, 1, 8, 8)).shape == (2, 10)  # outside the jail it reads it


# --- a .pt2 whose pickle runs code at load -----------------------------------------------


@pytest.mark.artifacts
def test_pt2_code_run_at_load_gets_nothing_and_its_numbers_are_right(
    settings: Settings,
    namespaces: Mode,
    listener: socket.socket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stored_blob: Callable[[bytes], str],
) -> None:
    secret = secrets.token_hex(8)
    monkeypatch.setenv("GAUNTLET_DATABASE_URL", f"postgresql://gauntlet:{secret}@db/gauntlet")
    artifact = stored_blob(b"another job's per-sample arrays")
    canary = tmp_path / "canary"
    model = write_model(
        tmp_path, pt2_escaping(str(canary), listener.getsockname()[1], secret, artifact)
    )
    examples, x = digits_examples(tmp_path)
    _, _, _, y_test = digits_arrays()
    labels = y_test[: x.shape[0]]

    result = jailed(
        settings,
        namespaces,
        "predict",
        {**predict_payload("pt2"), "labels": labels.tolist(), "return_gradients": True},
        {"model": model, "examples": examples},
    )

    assert not canary.exists()
    assert not connection_arrived(listener)
    reference = trained_digits_cnn()
    inputs = x.clone().requires_grad_(True)
    logits = reference(inputs)
    (gradients,) = torch.autograd.grad(
        torch.nn.functional.cross_entropy(logits, labels, reduction="sum"), inputs
    )
    torch.testing.assert_close(torch.tensor(result["logits"]), logits.detach())
    torch.testing.assert_close(torch.tensor(result["input_gradients"]), gradients)

    # The same package outside the jail: every attempt succeeds, and the logits show it.
    plain = load_model(model.read_bytes(), ModelSpec("pt2", (1, 8, 8), 10), allow_code=True)
    escaped = plain(x).detach() - logits.detach()
    torch.testing.assert_close(escaped[0, :4], torch.full((4,), ESCAPE_MARK))
    assert canary.exists()
    assert connection_arrived(listener)


# --- failures, and how they end ----------------------------------------------------------


def test_allocating_past_the_address_space_limit_is_a_resource_limit(
    settings: Settings, tmp_path: Path
) -> None:
    model = write_model(tmp_path, torchscript_allocating(2 * 2**30))  # 8 GiB of float32
    limits = JailLimits(address_space_bytes=2**30, cpu_seconds=60, wall_seconds=120)
    before = resident_bytes()

    with pytest.raises(JailError) as caught:
        jailed(
            settings,
            "process",
            "validate_model",
            predict_payload("torchscript"),
            {"model": model},
            limits=limits,
        )

    assert caught.value.code == "resource_limit"
    assert "memory" in caught.value.message
    # The allocation happened (and failed) in the jail; this process did not grow.
    assert resident_bytes() - before < 64 * 2**20


def test_spinning_past_the_cpu_limit_is_a_resource_limit(
    settings: Settings, namespaces: Mode, tmp_path: Path
) -> None:
    model = write_model(tmp_path, torchscript_spinning())
    limits = JailLimits(cpu_seconds=2, wall_seconds=120)
    started = time.monotonic()

    with pytest.raises(JailError) as caught:
        jailed(
            settings,
            namespaces,
            "validate_model",
            predict_payload("torchscript"),
            {"model": model},
            limits=limits,
        )

    assert caught.value.code == "resource_limit"
    assert "SIGXCPU" in caught.value.message
    assert time.monotonic() - started < limits.wall_seconds  # the CPU limit, not the wall


def test_garbage_in_the_message_pipe_is_a_sandbox_violation(
    settings: Settings, namespaces: Mode, tmp_path: Path
) -> None:
    model = write_model(tmp_path, pt2_writing_garbage())
    with pytest.raises(JailError) as caught:
        jailed(settings, namespaces, "validate_model", predict_payload("pt2"), {"model": model})
    assert caught.value.code == "sandbox_violation"
    assert "not JSON" in caught.value.message


def test_an_exception_no_loader_catches_is_a_crash(
    settings: Settings, namespaces: Mode, tmp_path: Path
) -> None:
    model = write_model(tmp_path, pt2_exiting())
    with pytest.raises(JailError) as caught:
        jailed(settings, namespaces, "validate_model", predict_payload("pt2"), {"model": model})
    assert caught.value.code == "model_crashed"
    assert "SystemExit" in caught.value.message


def test_output_files_reach_the_caller_and_links_are_violations(
    settings: Settings, namespaces: Mode, tmp_path: Path
) -> None:
    model = write_model(tmp_path, pt2_leaving_outputs({"per_sample.txt": "arrays"}, {}))
    received = tmp_path / "received"
    run_in_jail(
        "validate_model",
        predict_payload("pt2"),
        {"model": model},
        limits=LIMITS,
        mode=namespaces,
        on_progress=lambda *_: None,
        output_dir=received,
        pool=jail_pool(settings),
    )
    assert [path.name for path in received.iterdir()] == ["per_sample.txt"]
    assert (received / "per_sample.txt").read_text() == "arrays"

    model = write_model(tmp_path, pt2_leaving_outputs({}, {"per_sample.npz": "/etc/passwd"}))
    with pytest.raises(JailError) as caught:
        jailed(settings, namespaces, "validate_model", predict_payload("pt2"), {"model": model})
    assert caught.value.code == "sandbox_violation"
    assert "not a plain file" in caught.value.message


def test_stopping_kills_the_jail_promptly(settings: Settings, tmp_path: Path) -> None:
    model = write_model(tmp_path, pt2_sleeping(600))
    pool = jail_pool(settings)
    pool.warm("process")
    spare = pool._spares["process"]
    deadline = time.monotonic() + 2.0

    with pytest.raises(JailStopped):
        run_in_jail(
            "validate_model",
            predict_payload("pt2"),
            {"model": model},
            limits=LIMITS,
            mode="process",
            on_progress=lambda *_: None,
            should_stop=lambda: time.monotonic() > deadline,
            pool=pool,
        )

    assert time.monotonic() - deadline < 5
    assert spare.process.poll() is not None  # the jail that had the job is gone
    assert not spare.layout.root.exists()


def test_mode_detection_falls_back_or_refuses_when_namespaces_fail(tmp_path: Path) -> None:
    broken = JailConfig(python=str(tmp_path / "no-python-here"), jail_dir=tmp_path / "jails")
    assert not namespace_support(broken).available
    assert resolve_mode("auto", broken) == "process"
    with pytest.raises(JailUnavailable, match="GAUNTLET_JAIL_MODE=namespaces"):
        resolve_mode("namespaces", broken)


# --- the protocol, without a jail ------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "result", "result": [1]}',
        b'{"type": "progress", "fraction": NaN, "stage": "", "message": ""}',
        b'{"type": "error", "code": "DROP TABLE", "message": ""}',
        b'{"type": "heartbeat", "extra": 1}',
        b'{"type": "shell", "command": "rm -rf /"}',
    ],
)
def test_malformed_messages_are_violations(line: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_message(line)


def test_progress_is_clamped_and_texts_are_cut() -> None:
    message = parse_message(
        b'{"type": "progress", "fraction": 7, "stage": "pgd", "message": "' + b"x" * 5000 + b'"}'
    )
    assert (message.fraction, message.stage, len(message.text)) == (1.0, "pgd", 1000)


def test_an_oversized_message_is_refused_before_it_is_buffered() -> None:
    reader = LineReader(max_bytes=1024)
    assert reader.feed(b'{"type": "heartbeat"}\n{"type"') == [b'{"type": "heartbeat"}']
    with pytest.raises(ProtocolViolation, match="longer than 1024"):
        reader.feed(b"x" * 2000)


def test_file_size_limit_is_reported_as_a_resource_limit() -> None:
    from worker.jail.child import classify

    code, _ = classify(OSError(errno.EFBIG, "File too large"))
    assert code == "resource_limit"
    code, _ = classify(RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 GB"))
    assert code == "resource_limit"


# --- audits run in the jail ---------------------------------------------------------------


@pytest.mark.artifacts
def test_code_carrying_models_are_audited_in_the_jail_with_the_onnx_exports_numbers(
    settings: Settings,
    namespaces: Mode,
    listener: socket.socket,
    tmp_path: Path,
    make_tenant,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    stored_blob: Callable[[bytes], str],
) -> None:
    from tests.factories import audit_spec, job_row, model_row, queued_job
    from tests.model_files import digits_onnx
    from worker.execution import execute_job

    secret = secrets.token_hex(8)
    monkeypatch.setenv("GAUNTLET_DATABASE_URL", f"postgresql://gauntlet:{secret}@db/gauntlet")
    artifact = stored_blob(b"another job's per-sample arrays")
    # A folder of the worker's that the jail cannot see (its own /tmp is private).
    canary = tmp_path / "canary"
    tenant = make_tenant()
    models = {
        "onnx": model_row(tenant.id, data=digits_onnx()),
        "pt2": model_row(
            tenant.id,
            format="pt2",
            data=pt2_escaping(str(canary), listener.getsockname()[1], secret, artifact),
        ),
        "torchscript": model_row(
            tenant.id, format="torchscript", data=torchscript_writing(str(canary))
        ),
    }
    spec = {
        "limit": 120,
        "attacks": [
            {"name": "fgsm", "eps": [0.05, 0.1]},
            {"name": "pgd", "eps": [0.1], "steps": 10, "restarts": 2},
        ],
    }
    results = {}
    for name, model_id in models.items():
        job_id = queued_job(settings, tenant.id, audit_spec(model_id, **spec))
        assert execute_job(job_id) == "succeeded", job_row(job_id).error
        results[name] = job_row(job_id).result

    # Every escape failed: no canary, no connection (a success would also shift the logits
    # by 1000 and show in every number below).
    assert not canary.exists()
    assert not connection_arrived(listener)
    for name in ("pt2", "torchscript"):
        assert results[name]["clean_accuracy"] == results["onnx"]["clean_accuracy"], name
        assert [a["robust_accuracy"] for a in results[name]["attacks"]] == [
            a["robust_accuracy"] for a in results["onnx"]["attacks"]
        ], name
        assert results[name]["worst_case"] == results["onnx"]["worst_case"], name
        assert results[name]["warnings"] == results["onnx"]["warnings"] == []
