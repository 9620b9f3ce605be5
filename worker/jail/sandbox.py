"""How a jail process is started: its command line, environment and view of the filesystem.

Two modes (README, "The jail"):

- ``namespaces``: bubblewrap (``bwrap``) puts the child in new mount, PID, network, IPC and
  UTS namespaces. Its root is an empty read-only tmpfs holding only read-only binds of
  ``/usr``, the Python installation, the virtual environment, the ``adversarial`` and
  ``worker`` packages and a few ``/etc`` files, plus this job's folders: ``/job/inputs``
  (read-only), ``/job/scratch`` and ``/job/outputs``. The network namespace has only a
  loopback device. A root worker's jail drops to an unprivileged user (``user_id``) before
  Python reads anything; otherwise bubblewrap runs it in a user namespace of its own.
- ``process``: a plain child process with a scrubbed environment, its own scratch folder as
  working directory and home, resource limits, and no capabilities. It sees the machine's
  filesystem and network as the worker's user does.

Standard library only (the child imports this package too).
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from worker.jail.errors import JailUnavailable

logger = logging.getLogger(__name__)

Mode = Literal["namespaces", "process"]
ModeSetting = Literal["auto", "namespaces", "process"]
MODES: tuple[Mode, ...] = ("namespaces", "process")

# Where the jail sees its folders and the project's packages, in ``namespaces`` mode.
JOB_ROOT = "/job"
CODE_ROOT = "/opt/gauntlet"
PACKAGES = ("adversarial", "worker")
JAIL_PATH = "/usr/local/bin:/usr/bin:/bin"
# The environment a jail gets: this allow-list, plus HOME and TMPDIR inside its scratch
# folder. Nothing else of the worker's environment (its GAUNTLET_* settings hold the
# database and broker credentials) reaches it.
PASSED_ENVIRONMENT = ("LANG", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
# /etc files the dynamic loader and Python need; nothing else of /etc is visible.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
)
TOP_LEVEL_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
TMP_BYTES = 64 * 2**20
PROBE_SECONDS = 60.0


@dataclass(frozen=True)
class JailConfig:
    """How this worker starts jails (the same for every job; see ``worker.jail.config``).

    Attributes:
        python: the interpreter the jail runs (the worker's own).
        jail_dir: where each jail's folders are made (``<jail_dir>/<pid>-<random>/``).
        user_id: the unprivileged user a root worker's jail runs as.
        group_id: its group.
        prestart: keep a warm spare jail (torch imported) for the next job.
        prestart_after_seconds: a running job's replacement spare starts this long after
            the job did (at once when the job ends sooner), so a short job never shares the
            CPU with a spare's imports.
    """

    python: str = sys.executable
    jail_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "gauntlet-jails")
    user_id: int = 65534
    group_id: int = 65534
    prestart: bool = True
    prestart_after_seconds: float = 5.0


@dataclass(frozen=True)
class JailLayout:
    """One jail's folders on the host, and where the jail itself sees them."""

    root: Path
    inputs: Path
    scratch: Path
    outputs: Path
    inside_inputs: str
    inside_scratch: str
    inside_outputs: str


def running_as_root() -> bool:
    """Whether this worker runs as root (its jails then drop to ``JailConfig.user_id``)."""
    return os.geteuid() == 0


def package_folders() -> dict[str, Path]:
    """The folders of the packages the jail child imports, by package name."""
    import adversarial
    import worker

    return {
        "adversarial": Path(adversarial.__file__).resolve().parent,
        "worker": Path(worker.__file__).resolve().parent,
    }


def python_folders(python: str) -> list[Path]:
    """What the interpreter needs: the installation and the virtual environment."""
    folders = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    folders.add(Path(os.path.realpath(python)).parent.parent)
    return sorted({Path(os.path.realpath(folder)) for folder in folders} | folders)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths that are not inside another one of them."""
    ordered = sorted(set(paths), key=lambda path: len(path.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return sorted(kept)


def readonly_sources(python: str) -> list[Path]:
    """Host folders a ``namespaces`` jail sees read-only at the same path (besides the
    packages, which it sees under ``CODE_ROOT``)."""
    candidates = [Path("/usr")]
    for folder in python_folders(python):
        if folder.is_dir():
            candidates.append(folder)
    return _outermost(candidates)


def exposed(secrets: Iterable[Path], python: str) -> list[Path]:
    """Which of ``secrets`` (the data folder, the artifact store) a ``namespaces`` jail would
    see, because they lie inside a folder it binds. Empty in any sane deployment."""
    visible = readonly_sources(python) + list(package_folders().values())
    found = []
    for secret in secrets:
        resolved = Path(os.path.realpath(secret))
        if any(resolved.is_relative_to(folder) for folder in visible):
            found.append(secret)
    return found


def jail_environment(home: str, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The jail's whole environment: an allow-list of the worker's, nothing else."""
    parent = os.environ if parent is None else parent
    environment = {"PATH": JAIL_PATH, "HOME": home, "TMPDIR": f"{home}/tmp", "LANG": "C.UTF-8"}
    for name in PASSED_ENVIRONMENT:
        if name in parent:
            environment[name] = parent[name]
    return environment


def boot_code(code_roots: list[str]) -> str:
    """The ``python -c`` program that starts the child (``worker.jail.child.main``)."""
    return f"import sys; sys.path[:0] = {code_roots!r}; from worker.jail.child import main; main()"


def child_arguments(
    python: str, mode: Mode, message_fd: int, config: JailConfig, *, probe: bool = False
) -> list[str]:
    """``python -I -B -c <boot> ...``: isolated mode ignores PYTHON* variables, the user's
    site-packages and the working directory."""
    if mode == "namespaces":
        roots = [CODE_ROOT]
    else:
        roots = sorted({str(folder.parent) for folder in package_folders().values()})
    arguments = [python, "-I", "-B", "-c", boot_code(roots), "--message-fd", str(message_fd)]
    arguments += ["--mode", mode]
    if running_as_root():
        if mode == "namespaces":
            arguments += ["--user", f"{config.user_id}:{config.group_id}"]
        else:
            arguments += ["--drop-capabilities"]
    if probe:
        arguments.append("--probe")
    return arguments


def make_layout(config: JailConfig, mode: Mode) -> JailLayout:
    """Fresh folders for one jail: ``inputs`` (filled when a job is assigned), ``scratch``
    and ``outputs``, writable by the jail's user only."""
    config.jail_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    root = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=config.jail_dir))
    inputs, scratch, outputs = root / "inputs", root / "scratch", root / "outputs"
    inputs.mkdir(mode=0o755)
    for folder in (scratch, outputs, scratch / "tmp"):
        folder.mkdir(mode=0o700)
        if running_as_root() and mode == "namespaces":
            os.chown(folder, config.user_id, config.group_id)
    if mode == "namespaces":
        return JailLayout(
            root,
            inputs,
            scratch,
            outputs,
            f"{JOB_ROOT}/inputs",
            f"{JOB_ROOT}/scratch",
            f"{JOB_ROOT}/outputs",
        )
    return JailLayout(root, inputs, scratch, outputs, str(inputs), str(scratch), str(outputs))


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:index]) for index in range(1, len(parts))]


class _MountPlan:
    """bwrap arguments that build the jail's root, with every folder above a mount point
    made world-traversable (bwrap would make them 0700, which an unprivileged user cannot
    enter)."""

    def __init__(self) -> None:
        self.arguments: list[str] = []
        self._folders: set[str] = {"/"}

    def folder(self, path: str) -> None:
        for parent in [*_parents(path), path]:
            if parent not in self._folders:
                self._folders.add(parent)
                self.arguments += ["--perms", "0755", "--dir", parent]

    def tmpfs(self, path: str, size: int) -> None:
        """A private, world-writable tmpfs at ``path`` (a folder binds may go inside)."""
        for parent in _parents(path):
            self.folder(parent)
        self._folders.add(path)
        self.arguments += ["--size", str(size), "--perms", "1777", "--tmpfs", path]

    def bind(self, option: str, source: str, destination: str) -> None:
        for parent in _parents(destination):
            self.folder(parent)
        self.arguments += [option, source, destination]


def namespace_command(
    config: JailConfig,
    layout: JailLayout,
    message_fd: int,
    *,
    info_fd: int | None = None,
    probe: bool = False,
) -> list[str]:
    """The ``bwrap`` command line of a ``namespaces`` jail; bubblewrap writes the host PID
    of the sandbox's init (``{"child-pid": N}``) to ``info_fd``."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise JailUnavailable("bubblewrap (bwrap) is not installed")
    arguments = [
        bwrap,
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "jail",
        "--die-with-parent",
        "--new-session",
    ]
    if info_fd is not None:
        arguments += ["--info-fd", str(info_fd)]
    if running_as_root():
        # The child drops to an unprivileged user at once (worker.jail.child); these two
        # capabilities are all it holds until then.
        arguments += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        arguments += ["--unshare-user", "--disable-userns"]
    plan = _MountPlan()
    # The private /tmp first: an interpreter, virtualenv or checkout under the host's /tmp
    # is bound on top of it below (mounted after it, it would hide them).
    plan.tmpfs("/tmp", TMP_BYTES)
    for link in TOP_LEVEL_LINKS:
        if os.path.islink(link):
            plan.arguments += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            plan.bind("--ro-bind", link, link)
    for source in readonly_sources(config.python):
        plan.bind("--ro-bind", str(source), str(source))
    for name, folder in package_folders().items():
        plan.bind("--ro-bind", str(folder), f"{CODE_ROOT}/{name}")
    for path in ETC_FILES:
        if os.path.exists(path):
            plan.bind("--ro-bind", path, path)
    nvidia = sorted(glob.glob("/dev/nvidia*"))
    plan.arguments += ["--dev", "/dev", "--proc", "/proc"]
    for device in nvidia:
        # GPU jobs: the driver's device nodes and its view of the PCI bus (untested here).
        plan.arguments += ["--dev-bind", device, device]
    if nvidia:
        plan.arguments += ["--ro-bind-try", "/sys", "/sys"]
    plan.bind("--ro-bind", str(layout.inputs), layout.inside_inputs)
    plan.bind("--bind", str(layout.scratch), layout.inside_scratch)
    plan.bind("--bind", str(layout.outputs), layout.inside_outputs)
    arguments += plan.arguments
    arguments += ["--remount-ro", "/", "--chdir", layout.inside_scratch, "--"]
    return arguments + child_arguments(config.python, "namespaces", message_fd, config, probe=probe)


def jail_command(
    mode: Mode,
    config: JailConfig,
    layout: JailLayout,
    message_fd: int,
    *,
    info_fd: int | None = None,
    probe: bool = False,
) -> tuple[list[str], dict[str, str], str]:
    """``(argv, environment, working directory)`` of a jail process."""
    environment = jail_environment(layout.inside_scratch)
    if mode == "namespaces":
        command = namespace_command(config, layout, message_fd, info_fd=info_fd, probe=probe)
        return command, environment, "/"
    arguments = child_arguments(config.python, "process", message_fd, config, probe=probe)
    return arguments, environment, str(layout.scratch)


@dataclass(frozen=True)
class NamespaceSupport:
    """Whether ``namespaces`` jails work on this machine, and why not when they do not."""

    available: bool
    reason: str


@functools.lru_cache(maxsize=8)
def namespace_support(config: JailConfig) -> NamespaceSupport:
    """Start a real ``namespaces`` jail that only drops its privileges and answers (no torch
    import, well under a second): the kernel, bubblewrap and the mounts all have to work.
    Cached per configuration."""
    if sys.platform != "linux":
        return NamespaceSupport(False, f"namespaces need Linux, not {sys.platform}")
    if shutil.which("bwrap") is None:
        return NamespaceSupport(False, "bubblewrap (bwrap) is not installed")
    layout = make_layout(config, "namespaces")
    read_fd, write_fd = os.pipe()
    try:
        command, environment, cwd = jail_command("namespaces", config, layout, write_fd, probe=True)
        completed = subprocess.run(
            command,
            env=environment,
            cwd=cwd,
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_SECONDS,
            check=False,
        )
        os.close(write_fd)
        write_fd = -1
        answer = os.read(read_fd, 4096)
    except (OSError, subprocess.SubprocessError, JailUnavailable) as error:
        return NamespaceSupport(False, f"bubblewrap could not start: {error}")
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        shutil.rmtree(layout.root, ignore_errors=True)
    if completed.returncode != 0 or b'"ready"' not in answer:
        output = (completed.stdout + completed.stderr).decode(errors="replace").strip()
        return NamespaceSupport(
            False, f"bubblewrap failed (exit {completed.returncode}): {output[-500:]}"
        )
    return NamespaceSupport(True, "bubblewrap works")


def resolve_mode(setting: ModeSetting, config: JailConfig) -> Mode:
    """The mode jails run in: ``auto`` is ``namespaces`` where the kernel allows it and
    ``process`` elsewhere; an explicit ``namespaces`` that cannot work raises."""
    if setting == "process":
        return "process"
    support = namespace_support(config)
    if support.available:
        return "namespaces"
    if setting == "namespaces":
        raise JailUnavailable(
            f"GAUNTLET_JAIL_MODE=namespaces, but namespace jails do not work here: {support.reason}"
        )
    _warn_once(support.reason)
    return "process"


@functools.lru_cache(maxsize=1)
def _warn_once(reason: str) -> None:
    logger.warning(
        "model jails run in 'process' mode (no namespace sandbox: %s); formats that carry "
        "code are refused unless GAUNTLET_JAIL_CODE_FORMATS_NEED_NAMESPACES=false",
        reason,
    )
