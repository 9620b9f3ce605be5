"""The jail's own process: drop privileges, warm up, take one job, report, exit.

Started by ``worker.jail.jail`` as ``python -I -B -c <boot> --message-fd N --mode M``.
Sequence:

1. Drop privileges before anything else: a root worker's ``namespaces`` jail becomes the
   unprivileged ``--user``; a root ``process`` jail clears every capability; both set
   ``no_new_privs``.
2. Warm up (import torch and the loaders, one tiny forward and backward pass) and send
   ``ready``. Only trusted code has run so far: this is the warm spare.
3. Read the one assignment from stdin; apply the resource limits; run the task with a
   progress callback while a thread sends heartbeats.
4. Send ``result`` or ``error`` and exit. A jail runs one job, never two.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from worker.jail import errors
from worker.jail.limits import JailLimits, apply_limits
from worker.jail.privileges import (
    die_with_parent,
    drop_capabilities,
    drop_to_user,
    set_no_new_privs,
)
from worker.jail.protocol import MAX_ASSIGNMENT_BYTES, MAX_ERROR_MESSAGE_CHARS, encode

HEARTBEAT_SECONDS = 1.0
PROGRESS_SECONDS = 0.1
# How the allocators of torch, CUDA and C++ say that memory ran out.
_OUT_OF_MEMORY = re.compile(
    r"can't allocate memory|not enough memory|out of memory|cannot allocate memory|"
    r"std::bad_alloc|bad allocation",
    re.IGNORECASE,
)


class Channel:
    """The message pipe to the parent; writes from several threads never interleave."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._last_stage = ""

    def send(self, document: dict[str, Any]) -> None:
        line = encode(document)
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def progress(self, fraction: float, stage: str, message: str) -> None:
        """The task's progress callback: at most every 0.1 s, except on a new stage."""
        now = time.monotonic()
        if stage == self._last_stage and now - self._last_progress < PROGRESS_SECONDS:
            return
        self._last_progress, self._last_stage = now, stage
        self.send(
            {"type": "progress", "fraction": float(fraction), "stage": stage, "message": message}
        )

    def publish(self, name: str) -> None:
        """Hand a finished file of the output folder to the parent now (a checkpoint), while
        the task goes on; the parent moves it away."""
        self.send({"type": "file", "name": name})

    def heartbeats(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            self.send({"type": "heartbeat"})


def _causes(error: BaseException) -> list[BaseException]:
    """An exception and the ones that caused it, nearest first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def classify(error: BaseException) -> tuple[str, str]:
    """The stable code and message an exception from a task becomes."""
    for cause in _causes(error):
        if isinstance(cause, MemoryError) or (
            isinstance(cause, RuntimeError) and _OUT_OF_MEMORY.search(str(cause))
        ):
            return (
                errors.RESOURCE_LIMIT,
                "The job ran out of memory (the jail's address-space limit): "
                f"{type(cause).__name__}: {str(cause)[:500]}",
            )
        if isinstance(cause, OSError) and cause.errno == errno.EFBIG:
            return errors.RESOURCE_LIMIT, f"The job wrote a file past the file-size limit: {cause}"
    from adversarial.errors import EngineInputError

    if isinstance(error, EngineInputError):
        return error.code, error.message[:MAX_ERROR_MESSAGE_CHARS]
    return (
        errors.MODEL_CRASHED,
        f"The job raised {type(error).__name__}: {str(error)}"[:MAX_ERROR_MESSAGE_CHARS],
    )


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="worker.jail.child")
    parser.add_argument("--message-fd", type=int, required=True)
    parser.add_argument("--mode", choices=("namespaces", "process"), required=True)
    parser.add_argument("--user", default=None, help="uid:gid to become (root workers)")
    parser.add_argument("--drop-capabilities", action="store_true")
    parser.add_argument("--probe", action="store_true", help="answer ready and exit")
    return parser.parse_args(argv)


def _drop_privileges(arguments: argparse.Namespace) -> None:
    if arguments.user:
        uid, gid = (int(part) for part in arguments.user.split(":"))
        drop_to_user(uid, gid)
    if arguments.drop_capabilities:
        drop_capabilities()
    set_no_new_privs()
    if arguments.mode == "process":
        # In namespaces mode bubblewrap's --die-with-parent does this.
        die_with_parent()
    os.umask(0o077)


def _read_assignment() -> dict[str, Any] | None:
    line = sys.stdin.buffer.readline(MAX_ASSIGNMENT_BYTES + 1)
    if not line:
        return None  # the parent discarded this spare without a job
    document = json.loads(line)
    if not isinstance(document, dict):
        raise ValueError("the assignment is not a JSON object")
    return document


def run_assignment(channel: Channel, assignment: dict[str, Any]) -> dict[str, Any]:
    """Apply the limits and run the assigned task; returns the message to send."""
    from worker.jail.tasks import TASKS

    apply_limits(JailLimits.from_json(assignment.get("limits", {})))
    threading.Thread(target=channel.heartbeats, name="heartbeat", daemon=True).start()
    task = TASKS.get(str(assignment.get("task")))
    if task is None:
        return {
            "type": "error",
            "code": "unknown_task",
            "message": f"no jail task {str(assignment.get('task'))[:100]!r}",
        }
    inputs = {str(name): Path(path) for name, path in assignment.get("inputs", {}).items()}
    try:
        result = task(
            assignment.get("payload", {}),
            inputs,
            progress=channel.progress,
            output_dir=Path(assignment["output_dir"]),
            publish=channel.publish,
        )
        message: dict[str, Any] = {"type": "result", "result": result}
        encode(message)  # a result that is not JSON is the task's error, not a crash
        return message
    except BaseException as error:  # anything the job's code does ends here, reported
        code, text = classify(error)
        return {"type": "error", "code": code, "message": text}


def main(argv: list[str] | None = None) -> None:
    """The jail child's entry point (see the module docstring)."""
    arguments = _arguments(argv)
    stream = os.fdopen(arguments.message_fd, "wb", buffering=0)
    channel = Channel(stream)
    _drop_privileges(arguments)
    if arguments.probe:
        channel.send({"type": "ready", "pid": os.getpid()})
        os._exit(0)

    from worker.jail.tasks import warm_up

    warm_up()
    channel.send({"type": "ready", "pid": os.getpid()})
    assignment = _read_assignment()
    if assignment is None:
        os._exit(0)
    message = run_assignment(channel, assignment)
    try:
        channel.send(message)
    except (TypeError, ValueError) as error:
        channel.send(
            {
                "type": "error",
                "code": errors.MODEL_CRASHED,
                "message": f"The task's result is not JSON: {error}"[:MAX_ERROR_MESSAGE_CHARS],
            }
        )
    # os._exit: no atexit handlers or finalizers of the job's code run after its verdict.
    os._exit(0)
