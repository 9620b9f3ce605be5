"""The parent's side of a jail: start one, hand it a job, relay its messages, end it.

:func:`run_in_jail` is the whole interface. The parent (the worker) keeps the lease and
does every database write; the jail only computes. A jail runs exactly one job and is then
killed, whatever happened: nothing the job's code did can reach the next job. To keep
Python's and torch's imports (seconds) off each job, a :class:`JailPool` keeps one warm
spare per mode, started before the job arrives; the job's files are placed in the spare's
(bind-mounted, until then empty) input folder only when the job is assigned.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import select
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from worker.jail import errors
from worker.jail.errors import JailError, JailStartError, JailStopped
from worker.jail.limits import JailLimits
from worker.jail.protocol import (
    MAX_ASSIGNMENT_BYTES,
    LineReader,
    Message,
    ProtocolViolation,
    encode,
    parse_message,
)
from worker.jail.sandbox import (
    JailConfig,
    JailLayout,
    Mode,
    jail_command,
    make_layout,
    running_as_root,
)

logger = logging.getLogger(__name__)

Progress = Callable[[float, str, str], None]

INPUT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
OUTPUT_NAME = INPUT_NAME
MAX_OUTPUT_FILES = 64
OUTPUT_TAIL_BYTES = 16 * 1024
POLL_SECONDS = 0.2
EXIT_WAIT_SECONDS = 5.0
# Signals that mean a resource limit killed the jail: RLIMIT_CPU's soft (SIGXCPU) and hard
# (SIGKILL) limits, RLIMIT_FSIZE (SIGXFSZ), and the kernel's out-of-memory killer (SIGKILL).
LIMIT_SIGNALS = {signal.SIGXCPU: "CPU time", signal.SIGKILL: "CPU time or memory"}
LIMIT_SIGNALS[signal.SIGXFSZ] = "file size"


class _Launcher:
    """Starts jail processes from one long-lived thread.

    A jail dies with the thread that started it (``PR_SET_PDEATHSIG``, which bubblewrap's
    ``--die-with-parent`` uses, follows the parent *thread*): a spare started from a job's
    thread would be killed when that thread ends. This thread lives as long as the process.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._requests: queue.SimpleQueue[tuple[dict[str, Any], Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def popen(self, **arguments: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child (Celery's pool)
                self._pid = os.getpid()
                self._requests = queue.SimpleQueue()
                threading.Thread(target=self._serve, name="jail-launcher", daemon=True).start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((arguments, future))
        return future.result()

    def _serve(self) -> None:
        requests = self._requests
        while True:
            arguments, future = requests.get()
            try:
                future.set_result(subprocess.Popen(**arguments))
            except BaseException as error:
                future.set_exception(error)


_LAUNCHER = _Launcher()
_UNDUMPABLE = False


def _protect_parent() -> None:
    """Before the first ``process``-mode jail: make this worker process unreadable to other
    processes of its user (its environment holds the database URL)."""
    global _UNDUMPABLE
    if not _UNDUMPABLE:
        from worker.jail.privileges import make_undumpable

        make_undumpable()
        _UNDUMPABLE = True


def _remove_tree(path: Path) -> None:
    """Remove a jail's folder, even parts its job made unreadable."""

    def fix(function: Callable[..., Any], name: str, _: object) -> None:
        try:
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o700)
            function(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def remove_stale_folders(jail_dir: Path) -> None:
    """Folders of jails whose worker process is gone (it was killed): ``<pid>-<random>``."""
    if not jail_dir.is_dir():
        return
    for entry in jail_dir.iterdir():
        owner, _, _ = entry.name.partition("-")
        if not owner.isdigit() or int(owner) == os.getpid():
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            _remove_tree(entry)
        except PermissionError:
            pass  # another user's live process


class Jail:
    """One jail process, from start to kill. Single use: :meth:`run` at most once."""

    def __init__(self, mode: Mode, config: JailConfig) -> None:
        self.mode = mode
        self.config = config
        self.layout: JailLayout = make_layout(config, mode)
        self.started = time.monotonic()
        self.ready = False
        self._closed = False
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0
        self._tail_lock = threading.Lock()
        # The sandbox's init, once bubblewrap reports it: killing it ends the whole PID
        # namespace, and bubblewrap reaps it (killing bubblewrap first would leave it a
        # zombie of the machine's init).
        self.sandbox_pid: int | None = None
        read_fd, write_fd = os.pipe()
        info_read, info_write = os.pipe() if mode == "namespaces" else (-1, -1)
        passed = (write_fd,) if info_write < 0 else (write_fd, info_write)
        try:
            command, environment, cwd = jail_command(
                mode, config, self.layout, write_fd, info_fd=None if info_write < 0 else info_write
            )
            if mode == "process":
                _protect_parent()
            self.process = _LAUNCHER.popen(
                args=command,
                env=environment,
                cwd=cwd,
                pass_fds=passed,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            for descriptor in (read_fd, info_read):
                if descriptor >= 0:
                    os.close(descriptor)
            _remove_tree(self.layout.root)
            raise
        finally:
            for descriptor in passed:
                os.close(descriptor)
        self._messages = read_fd
        self._info = info_read
        os.set_blocking(read_fd, False)
        if info_read >= 0:
            os.set_blocking(info_read, False)
        threading.Thread(target=self._drain_output, name="jail-output", daemon=True).start()

    # --- the child's stdout and stderr: kept as a bounded tail for error messages --------

    def _drain_output(self) -> None:
        # This thread owns the pipe and closes it at end of file (when every process of the
        # jail is gone), so its descriptor is never closed under a pending read.
        stream = self.process.stdout
        assert stream is not None
        with stream:
            while chunk := os.read(stream.fileno(), 65536):
                with self._tail_lock:
                    self._tail.append(chunk)
                    self._tail_bytes += len(chunk)
                    while self._tail_bytes > OUTPUT_TAIL_BYTES and len(self._tail) > 1:
                        self._tail_bytes -= len(self._tail.popleft())

    def output_tail(self, limit: int = 1500) -> str:
        """The last characters the jail printed (its traceback, if it died of one)."""
        with self._tail_lock:
            text = b"".join(self._tail).decode(errors="replace")
        return text[-limit:].strip()

    # --- messages --------------------------------------------------------------------------

    def _read(self, reader: LineReader, timeout: float) -> list[Message] | None:
        """Messages that arrived within ``timeout``; ``None`` once the pipe is closed."""
        readable, _, _ = select.select([self._messages], [], [], timeout)
        if not readable:
            return []
        try:
            data = os.read(self._messages, 1 << 20)
        except BlockingIOError:
            return []
        if not data:
            return None
        return [parse_message(line) for line in reader.feed(data)]

    def alive(self) -> bool:
        """Whether the jail process is still running."""
        return not self._closed and self.process.poll() is None

    def wait_ready(self, limits: JailLimits, should_stop: Callable[[], bool] | None) -> None:
        """Wait for the child's ``ready`` (a warm spare has usually sent it already)."""
        if self.ready:
            return
        reader = LineReader(4096)
        deadline = self.started + limits.startup_seconds
        while time.monotonic() < deadline:
            if should_stop is not None and should_stop():
                raise JailStopped("stopped while the jail started")
            try:
                messages = self._read(reader, POLL_SECONDS)
            except ProtocolViolation as error:
                raise JailStartError(f"the jail's first message was malformed: {error}") from None
            if messages is None:
                self.process.wait(timeout=EXIT_WAIT_SECONDS)
                raise JailStartError(
                    f"the jail exited with status {self.process.returncode} before it was "
                    f"ready: {self.output_tail()}"
                )
            for message in messages:
                if message.type != "ready":
                    raise JailStartError(f"the jail sent {message.type!r} before 'ready'")
                self.ready = True
                self._read_sandbox_pid()
                return
        raise JailStartError(
            f"the jail was not ready after {limits.startup_seconds:g} s: {self.output_tail()}"
        )

    def _read_sandbox_pid(self) -> None:
        """bubblewrap's ``{"child-pid": N}``, written before the child started."""
        if self._info < 0 or self.sandbox_pid is not None:
            return
        try:
            document = json.loads(os.read(self._info, 4096) or b"{}")
        except (BlockingIOError, ValueError):
            return
        pid = document.get("child-pid") if isinstance(document, dict) else None
        if isinstance(pid, int) and pid > 1:
            self.sandbox_pid = pid

    # --- running the job -------------------------------------------------------------------

    def _place_inputs(self, inputs: Mapping[str, Path]) -> dict[str, str]:
        """Put the job's files in the jail's input folder; returns where the jail sees them.

        A hard link when the jail may share the inode safely (``namespaces``: the folder is
        a read-only mount, and the jail's user can read the file); a read-only copy
        otherwise (a ``process`` jail could write to a linked artifact).
        """
        inside: dict[str, str] = {}
        for name, source in inputs.items():
            if not INPUT_NAME.fullmatch(name):
                raise ValueError(f"input name {name!r} is not a plain file name")
            target = self.layout.inputs / name
            details = os.stat(source)
            readable = not running_as_root() or details.st_mode & stat.S_IROTH
            linked = False
            if self.mode == "namespaces" and readable:
                try:
                    os.link(source, target)
                    linked = True
                except OSError:
                    pass  # another filesystem, or links are restricted
            if not linked:
                shutil.copyfile(source, target)
                os.chmod(target, 0o444)
            inside[name] = f"{self.layout.inside_inputs}/{name}"
        return inside

    def _death(self, limits: JailLimits) -> JailError:
        """The verdict on a jail that ended without sending a result or an error."""
        try:
            status = self.process.wait(timeout=EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            status = None
        tail = self.output_tail()
        detail = f" Its last output: {tail}" if tail else ""
        if status is None:
            return JailError(
                errors.SANDBOX_VIOLATION, "The jail closed its message pipe but kept running."
            )
        # bubblewrap reports a child killed by a signal as 128 + signal.
        number = -status if status < 0 else status - 128 if self.mode == "namespaces" else 0
        try:
            killed_by: signal.Signals | None = signal.Signals(number) if number > 0 else None
        except ValueError:
            killed_by = None
        if killed_by in LIMIT_SIGNALS:
            return JailError(
                errors.RESOURCE_LIMIT,
                f"The jail was killed by {killed_by.name} ({LIMIT_SIGNALS[killed_by]} limit: "
                f"{limits.cpu_seconds} CPU seconds, {limits.address_space_bytes} bytes of "
                f"address space).{detail}",
            )
        how = f"was killed by {killed_by.name}" if killed_by else f"exited with status {status}"
        return JailError(errors.MODEL_CRASHED, f"The jail {how} before it sent a result.{detail}")

    def _collect_outputs(self, output_dir: Path | None, limits: JailLimits) -> None:
        """Move the files the job wrote into ``output_dir`` (the jail is dead by now)."""
        entries = list(os.scandir(self.layout.outputs))
        if not entries:
            return
        if len(entries) > MAX_OUTPUT_FILES:
            raise JailError(
                errors.SANDBOX_VIOLATION, f"The job left more than {MAX_OUTPUT_FILES} outputs."
            )
        total = 0
        for entry in entries:
            details = entry.stat(follow_symlinks=False)
            if not OUTPUT_NAME.fullmatch(entry.name) or not stat.S_ISREG(details.st_mode):
                raise JailError(
                    errors.SANDBOX_VIOLATION,
                    f"The job left an output that is not a plain file: {entry.name[:80]!r}.",
                )
            if details.st_nlink != 1:  # a hard link to a file that is not the job's own
                raise JailError(
                    errors.SANDBOX_VIOLATION, f"The output {entry.name!r} is a hard link."
                )
            total += details.st_size
        if limits.file_size_bytes is not None and total > limits.file_size_bytes:
            raise JailError(errors.SANDBOX_VIOLATION, f"The job's outputs add up to {total} bytes.")
        if output_dir is None:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            shutil.move(entry.path, output_dir / entry.name)

    def _hand_over(
        self, name: str, limits: JailLimits, on_file: Callable[[str, Path], None] | None
    ) -> None:
        """A file the running job published: checked as outputs are, given to ``on_file``,
        then removed from the jail's output folder."""
        if on_file is None:
            raise JailError(errors.SANDBOX_VIOLATION, "The job published a file nobody takes.")
        path = self.layout.outputs / name
        try:
            details = path.lstat()
        except FileNotFoundError:
            raise JailError(
                errors.SANDBOX_VIOLATION, f"The job published {name!r}, which does not exist."
            ) from None
        if not stat.S_ISREG(details.st_mode) or details.st_nlink != 1:
            raise JailError(
                errors.SANDBOX_VIOLATION, f"The published {name!r} is not a plain file."
            )
        if limits.file_size_bytes is not None and details.st_size > limits.file_size_bytes:
            raise JailError(errors.SANDBOX_VIOLATION, f"The published {name!r} is too large.")
        try:
            on_file(name, path)
        finally:
            path.unlink(missing_ok=True)

    def run(
        self,
        task: str,
        payload: dict[str, Any],
        inputs: Mapping[str, Path],
        *,
        limits: JailLimits,
        on_progress: Progress,
        should_stop: Callable[[], bool] | None,
        output_dir: Path | None,
        on_long_run: Callable[[], None] | None = None,
        on_file: Callable[[str, Path], None] | None = None,
    ) -> dict[str, Any]:
        """Assign the job and relay its messages until its result; see :func:`run_in_jail`."""
        self.wait_ready(limits, should_stop)
        assignment = encode(
            {
                "task": task,
                "payload": payload,
                "inputs": self._place_inputs(inputs),
                "output_dir": self.layout.inside_outputs,
                "limits": limits.to_json(),
            }
        )
        if len(assignment) > MAX_ASSIGNMENT_BYTES:
            raise ValueError(f"the job's payload is larger than {MAX_ASSIGNMENT_BYTES} bytes")
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(assignment)
            stdin.close()
        except BrokenPipeError:
            raise JailStartError(f"the jail died before its job: {self.output_tail()}") from None
        started = last_message = time.monotonic()
        reader = LineReader(limits.max_message_bytes)
        while True:
            now = time.monotonic()
            if should_stop is not None and should_stop():
                raise JailStopped("stopped by the caller")
            if limits.wall_seconds is not None and now - started > limits.wall_seconds:
                raise JailError(
                    errors.RESOURCE_LIMIT, f"The job ran past its {limits.wall_seconds:g} s."
                )
            if now - last_message > limits.silence_seconds:
                raise JailError(
                    errors.MODEL_CRASHED,
                    f"The jail sent nothing, not even a heartbeat, for "
                    f"{limits.silence_seconds:g} s.",
                )
            if on_long_run is not None and now - started > self.config.prestart_after_seconds:
                on_long_run()
                on_long_run = None
            try:
                messages = self._read(reader, POLL_SECONDS)
            except ProtocolViolation as error:
                raise JailError(
                    errors.SANDBOX_VIOLATION, f"The jail broke the message protocol: {error}."
                ) from None
            if messages is None:
                raise self._death(limits)
            if messages:
                last_message = time.monotonic()
            for message in messages:
                if message.type == "progress":
                    on_progress(message.fraction, message.stage, message.text)
                elif message.type == "file":
                    self._hand_over(message.text, limits, on_file)
                elif message.type == "result":
                    assert message.result is not None
                    self.kill()
                    self._collect_outputs(output_dir, limits)
                    return message.result
                elif message.type == "error":
                    raise JailError(message.code, message.text)
                elif message.type == "ready":
                    raise JailError(errors.SANDBOX_VIOLATION, "The jail sent 'ready' twice.")

    def kill(self) -> None:
        """Kill the jail's whole process tree (its session; bubblewrap's PID namespace takes
        every process inside with it). The folders stay until :meth:`close`."""
        if self.process.poll() is None:
            self._read_sandbox_pid()
            if self.sandbox_pid is not None:
                try:
                    os.kill(self.sandbox_pid, signal.SIGKILL)
                    self.process.wait(timeout=EXIT_WAIT_SECONDS)
                except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                    pass
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.process.kill()
        try:
            self.process.wait(timeout=EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("jail %s did not exit after SIGKILL", self.process.pid)

    def close(self) -> None:
        """Kill the jail and remove its folders."""
        if self._closed:
            return
        self.kill()
        self._closed = True
        os.close(self._messages)
        if self._info >= 0:
            os.close(self._info)
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass  # the jail is gone; a pending write had nowhere to go
        _remove_tree(self.layout.root)


class JailPool:
    """Warm spare jails, at most one per mode, for one :class:`JailConfig`."""

    def __init__(self, config: JailConfig) -> None:
        self.config = config
        self._pid = os.getpid()
        self._spares: dict[Mode, Jail] = {}
        self._lock = threading.Lock()
        remove_stale_folders(config.jail_dir)

    def _forget_if_forked(self) -> None:
        # A forked child (Celery's pool) does not own its parent's spares.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._spares = {}

    def take(self, mode: Mode) -> Jail:
        """A started jail for one job: the warm spare when it is alive, else a new one."""
        with self._lock:
            self._forget_if_forked()
            spare = self._spares.pop(mode, None)
        if spare is not None:
            if spare.alive():
                return spare
            spare.close()
        return Jail(mode, self.config)

    def prestart(self, mode: Mode) -> None:
        """Start the spare for ``mode`` unless one is there (never raises: the next
        :meth:`take` starts a jail itself and reports what goes wrong)."""
        with self._lock:
            self._forget_if_forked()
            spare = self._spares.get(mode)
            if spare is not None and spare.alive():
                return
            try:
                self._spares[mode] = Jail(mode, self.config)
            except Exception:
                logger.warning("could not start a spare %s jail", mode, exc_info=True)
        if spare is not None:
            spare.close()

    def warm(self, mode: Mode, limits: JailLimits | None = None) -> None:
        """Start the spare for ``mode`` if needed and wait until it is ready (a worker at
        start-up, benchmarks). Raises :class:`JailStartError` when it cannot start."""
        self.prestart(mode)
        with self._lock:
            spare = self._spares.get(mode)
        if spare is None:
            raise JailStartError(f"no spare {mode} jail could be started")
        spare.wait_ready(limits or JailLimits(), None)

    def close(self) -> None:
        """Kill the spares (at exit)."""
        with self._lock:
            spares = [] if self._pid != os.getpid() else list(self._spares.values())
            self._spares = {}
        for spare in spares:
            spare.close()


_POOLS: dict[JailConfig, JailPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(config: JailConfig | None = None) -> JailPool:
    """This process's pool for ``config`` (the default configuration when omitted)."""
    config = config or JailConfig()
    with _POOLS_LOCK:
        pool = _POOLS.get(config)
        if pool is None or pool._pid != os.getpid():
            pool = _POOLS[config] = JailPool(config)
        return pool


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.close()


def run_in_jail(
    task: str,
    payload: dict[str, Any],
    inputs: Mapping[str, Path],
    *,
    limits: JailLimits,
    mode: Mode,
    on_progress: Progress,
    should_stop: Callable[[], bool] | None = None,
    output_dir: Path | None = None,
    pool: JailPool | None = None,
    on_file: Callable[[str, Path], None] | None = None,
) -> dict[str, Any]:
    """Run ``task`` (a name in ``worker.jail.tasks.TASKS``) in a fresh jail; return its result.

    Args:
        task: the task's name, e.g. ``"validate_model"``.
        payload: its JSON arguments.
        inputs: files the task reads, by name (``[A-Za-z0-9_.-]``); the jail sees them
            read-only and the task receives their paths inside the jail.
        limits: the jail's resource limits.
        mode: ``"namespaces"`` or ``"process"`` (see ``worker.jail.sandbox.resolve_mode``).
        on_progress: called in this thread with ``(fraction, stage, message)`` for each of
            the task's progress reports (a runner passes its ``Lease.report``).
        should_stop: polled about five times a second; true kills the jail and raises
            :class:`JailStopped`.
        output_dir: where the files the task wrote to its output folder are moved after
            success (discarded when None).
        pool: where the jail comes from (the default configuration's pool when None).
        on_file: called in this thread with ``(name, path)`` for each file the task publishes
            while it runs (a checkpoint); the file is removed after the call, so the callback
            copies what it keeps.

    Exceptions raised by ``on_progress`` or ``should_stop`` (a lease lost, a job cancelled)
    propagate after the jail is killed.

    Raises:
        JailError: ``resource_limit``, ``sandbox_violation``, ``model_crashed`` or the
            task's own error code; deterministic, never worth retrying.
        JailStopped: ``should_stop`` returned true.
        JailStartError: the jail could not start (this worker's problem, not the job's).
    """
    pool = pool or get_pool()
    jail = pool.take(mode)
    try:
        try:
            jail.wait_ready(limits, should_stop)
        except JailStartError:
            # A spare that died while it waited (or a broken start): one fresh try.
            logger.warning("a %s jail did not start; trying a new one", mode, exc_info=True)
            jail.close()
            jail = Jail(mode, pool.config)
        prestart: Callable[[], None] | None = None
        if pool.config.prestart:
            prestart = lambda: pool.prestart(mode)  # noqa: E731
        return jail.run(
            task,
            payload,
            inputs,
            limits=limits,
            on_progress=on_progress,
            should_stop=should_stop,
            output_dir=output_dir,
            on_long_run=prestart,
            on_file=on_file,
        )
    finally:
        jail.close()
        if pool.config.prestart:
            pool.prestart(mode)
