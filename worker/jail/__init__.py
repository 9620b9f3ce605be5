"""The model jail: untrusted model code runs in a child process that holds no credentials.

Every uploaded model is a program. :func:`run_in_jail` runs one task of
``worker.jail.tasks`` (model validation, predictions, diagnostics; audits next) in a fresh
child process with a scrubbed environment, resource limits, only this job's files, and, where
the kernel allows, a namespace sandbox without network or any view of the artifact store.
The worker keeps the lease and does every database write; progress and the result come
back over a pipe. See README, "The jail".

This package imports nothing from ``service`` (its child imports it too);
``worker.jail.config`` maps the settings onto it.
"""

from worker.jail.errors import JailError, JailStartError, JailStopped, JailUnavailable
from worker.jail.jail import JailPool, get_pool, run_in_jail
from worker.jail.limits import JailLimits
from worker.jail.sandbox import JailConfig, Mode, ModeSetting, namespace_support, resolve_mode

__all__ = [
    "JailConfig",
    "JailError",
    "JailLimits",
    "JailPool",
    "JailStartError",
    "JailStopped",
    "JailUnavailable",
    "Mode",
    "ModeSetting",
    "get_pool",
    "namespace_support",
    "resolve_mode",
    "run_in_jail",
]
