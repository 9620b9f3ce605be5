"""The jail as the settings configure it (``GAUNTLET_JAIL_*``), for the job runners."""

from __future__ import annotations

import tempfile
from pathlib import Path

from service.settings import Settings
from worker.jail.errors import JailUnavailable
from worker.jail.jail import JailPool, get_pool
from worker.jail.limits import JailLimits
from worker.jail.sandbox import JailConfig, Mode, exposed, resolve_mode

# Formats whose files carry code (adversarial.models.loading.CODE_FORMATS; not imported
# from there because that module imports torch).
CODE_FORMATS = ("torchscript", "pt2")


def jail_config(settings: Settings) -> JailConfig:
    """How this worker starts jails."""
    jail_dir = settings.jail_dir or Path(tempfile.gettempdir()) / "gauntlet-jails"
    return JailConfig(
        jail_dir=jail_dir,
        user_id=settings.jail_user_id,
        group_id=settings.jail_group_id,
        prestart=settings.jail_prestart,
    )


def jail_pool(settings: Settings) -> JailPool:
    """This process's pool of jails for these settings."""
    return get_pool(jail_config(settings))


def jail_limits(settings: Settings) -> JailLimits:
    """The limits of a jailed job (the job's own time limit is enforced by Celery)."""
    return JailLimits(
        address_space_bytes=settings.jail_address_space_bytes,
        cpu_seconds=settings.jail_cpu_seconds,
        open_files=settings.jail_open_files,
        processes=settings.jail_processes,
        file_size_bytes=settings.jail_file_size_bytes,
    )


def validation_limits(settings: Settings) -> JailLimits:
    """The limits of a model validation: the job's limits, capped in time."""
    seconds = settings.jail_validation_seconds
    limits = jail_limits(settings)
    return JailLimits(
        address_space_bytes=limits.address_space_bytes,
        cpu_seconds=min(seconds, limits.cpu_seconds or seconds),
        wall_seconds=seconds,
        open_files=limits.open_files,
        processes=limits.processes,
        file_size_bytes=limits.file_size_bytes,
    )


def jail_mode(settings: Settings) -> Mode:
    """The mode this worker's jails run in; refuses a ``namespaces`` jail that would see
    the data folder or the artifact store (they must not lie inside the Python
    installation, the virtual environment or the source tree)."""
    config = jail_config(settings)
    mode = resolve_mode(settings.jail_mode, config)
    if mode == "namespaces":
        secrets = [settings.data_dir, *([settings.artifact_dir] if settings.artifact_dir else [])]
        visible = exposed(secrets, config.python)
        if visible:
            raise JailUnavailable(
                f"{', '.join(map(str, visible))} would be visible inside the jail: move the "
                "data folder and the artifact store out of the Python installation, the "
                "virtual environment and the source folders"
            )
    return mode


def refuses_format(settings: Settings, model_format: str, mode: Mode) -> bool:
    """Whether a model of this format is refused on this worker: code formats need a
    namespace jail unless the operator accepted ``process`` jails for them."""
    return (
        model_format in CODE_FORMATS
        and mode == "process"
        and settings.jail_code_formats_need_namespaces
    )
