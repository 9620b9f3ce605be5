"""Resource limits of a jail: what the parent asks for and how the child applies them.

Standard library only: the child applies these to itself, before it reads a byte of the
job's input, with ``setrlimit``. Soft and hard limits are both set, so code in the jail
cannot raise them again (it holds no ``CAP_SYS_RESOURCE``).

The address-space and CPU limits are relative to what the jail had used when the job was
assigned: a warm jail has already imported torch (about 1-3 GiB of address space and a few
CPU seconds), and the limits bound what the job's own code may add to that.
"""

from __future__ import annotations

import math
import resource
from dataclasses import asdict, dataclass, fields
from typing import Any

GIB = 2**30
MIB = 2**20

# Seconds between RLIMIT_CPU's soft limit (SIGXCPU) and its hard limit (SIGKILL).
CPU_KILL_GRACE_SECONDS = 5


@dataclass(frozen=True)
class JailLimits:
    """Limits of one jailed run. ``None`` leaves a limit as the jail inherited it.

    Attributes:
        address_space_bytes: virtual memory the job may map beyond what the warm jail holds
            (``RLIMIT_AS``); past it allocations fail (``resource_limit``).
        cpu_seconds: CPU time, all threads together (``RLIMIT_CPU``): SIGXCPU, then SIGKILL
            five seconds later.
        wall_seconds: wall-clock time from assignment to result, enforced by the parent.
        open_files: open file descriptors (``RLIMIT_NOFILE``).
        processes: processes and threads of the jail's user (``RLIMIT_NPROC``; counted per
            user id on the host, and not enforced for a root user).
        file_size_bytes: the largest file the job may write (``RLIMIT_FSIZE``).
        max_message_bytes: the largest protocol message (a result) the parent accepts.
        silence_seconds: the parent kills a jail that sends nothing, not even a heartbeat,
            for this long.
        startup_seconds: how long a fresh jail may take to become ready (importing torch).
    """

    address_space_bytes: int | None = 16 * GIB
    cpu_seconds: float | None = 24 * 3600.0
    wall_seconds: float | None = None
    open_files: int | None = 1024
    processes: int | None = 1024
    file_size_bytes: int | None = 4 * GIB
    max_message_bytes: int = 16 * MIB
    silence_seconds: float = 120.0
    startup_seconds: float = 180.0

    def to_json(self) -> dict[str, Any]:
        """The limits as a JSON object (what the parent sends the child)."""
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> JailLimits:
        """Limits from :meth:`to_json`'s output; unknown keys are ignored."""
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in document.items() if key in names})


def _set(kind: int, value: int) -> None:
    """Lower both the soft and the hard limit to ``value`` (never raise them)."""
    soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def virtual_memory_bytes() -> int:
    """This process's mapped address space (``VmSize``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds_used() -> float:
    """CPU time this process has used so far (user and system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def apply_limits(limits: JailLimits) -> dict[str, int]:
    """Set the limits on this process (the jail child, before the job starts); returns the
    values set, by ``RLIMIT_*`` name, for diagnostics."""
    applied: dict[str, int] = {}
    # A job never needs a core dump, and one of a large process would fill the scratch disk.
    _set(resource.RLIMIT_CORE, 0)
    if limits.address_space_bytes is not None:
        value = virtual_memory_bytes() + limits.address_space_bytes
        _set(resource.RLIMIT_AS, value)
        applied["RLIMIT_AS"] = value
    if limits.cpu_seconds is not None:
        soft = math.ceil(cpu_seconds_used() + limits.cpu_seconds)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        wanted_hard = soft + CPU_KILL_GRACE_SECONDS
        if hard != resource.RLIM_INFINITY:
            wanted_hard = min(wanted_hard, hard)
            soft = min(soft, wanted_hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, wanted_hard))
        applied["RLIMIT_CPU"] = soft
    counts: tuple[tuple[int, str, int | None], ...] = (
        (resource.RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.open_files),
        (resource.RLIMIT_NPROC, "RLIMIT_NPROC", limits.processes),
        (resource.RLIMIT_FSIZE, "RLIMIT_FSIZE", limits.file_size_bytes),
    )
    for kind, name, count in counts:
        if count is not None:
            _set(kind, int(count))
            applied[name] = int(count)
    return applied
