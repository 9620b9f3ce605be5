"""What a jailed run can end in, besides its result.

:class:`JailError` is the verdict on the job's own code or input (a model that used too much
memory, crashed or broke the protocol): it subclasses ``EngineInputError``, so
``worker.execution`` fails the job with its code on the first attempt and never retries it.
:class:`JailUnavailable` and :class:`JailStartError` are this worker's problems, not the
job's; :class:`JailStopped` means the caller asked the jail to stop.
"""

from __future__ import annotations

from adversarial.errors import EngineInputError

# Stable codes of the jail's own verdicts (a task can also report its own codes, such as a
# loader's ``state_dict_mismatch``).
RESOURCE_LIMIT = "resource_limit"
SANDBOX_VIOLATION = "sandbox_violation"
MODEL_CRASHED = "model_crashed"
SANDBOX_UNAVAILABLE = "sandbox_unavailable"


class JailError(EngineInputError):
    """A jailed task failed deterministically: ``resource_limit`` (address space, CPU time,
    file size or wall time ran out), ``sandbox_violation`` (malformed, oversized or unexpected
    messages or output files), ``model_crashed`` (the jail died or the task raised), or a
    code the task reported (a loader's ``ModelFormatError`` code, for instance)."""


class JailUnavailable(RuntimeError):
    """The requested sandbox cannot be created on this machine (configuration error)."""


class JailStartError(RuntimeError):
    """A jail process could not be started or never became ready (not the job's fault)."""


class JailStopped(Exception):
    """``should_stop`` returned true: the jail was killed before it finished."""
