"""Dropping privileges with prctl and capset (Linux; standard library and ctypes only).

Used by the jail child on itself, before any untrusted byte is read, and by the parent on
itself in ``process`` mode (see :func:`make_undumpable`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# SECBIT_NOROOT and SECBIT_NO_SETUID_FIXUP with their lock bits, and SECBIT_KEEP_CAPS locked
# off: root gains no capabilities on exec and cannot get them back.
_SECUREBITS_LOCKED_NOROOT = 0b0010_1111
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, argument: int) -> None:
    if _libc().prctl(option, ctypes.c_ulong(argument), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def set_no_new_privs() -> None:
    """Nothing this process executes can gain privileges (setuid binaries, file caps)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent() -> None:
    """SIGKILL this process when the thread that started it exits (the worker died)."""
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def make_undumpable() -> None:
    """Forbid same-user processes to read this process's memory and ``/proc/<pid>/environ``.

    The parent worker calls it before starting a ``process``-mode jail, which runs as the
    worker's own user: without it the jail could read the worker's environment (the
    database URL) from ``/proc``.
    """
    _prctl(PR_SET_DUMPABLE, 0)


def drop_to_user(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with no supplementary groups; from root this also clears
    every capability. Raises if root could still be regained."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise OSError("the user id did not change")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError("root could be regained after dropping privileges")


def drop_capabilities() -> None:
    """Clear every capability of this (root) process for good: the bounding set, the
    effective, permitted and inheritable sets, and root's implicit ones on exec."""
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        last_capability = int(handle.read())
    for capability in range(last_capability + 1):
        _prctl(PR_CAPBSET_DROP, capability)
    _prctl(PR_SET_SECUREBITS, _SECUREBITS_LOCKED_NOROOT)
    number = _SYS_CAPSET.get(os.uname().machine)
    if number is None:
        raise OSError(f"capset: unknown architecture {os.uname().machine}")
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all zero
    if _libc().syscall(number, header, data) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"capset: {os.strerror(errno)}")


def effective_capabilities() -> int:
    """This process's effective capability mask (``CapEff``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0
