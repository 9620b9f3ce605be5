"""All configuration, read once from ``GAUNTLET_*`` environment variables.

Nothing else in the code base reads ``os.environ``. The defaults are the embedded setup:
everything under ``GAUNTLET_DATA_DIR`` (``.gauntlet/``), a SQLite file, a local artifact
folder and Celery's filesystem transport, so one command runs the whole service with no
external servers. Production points ``GAUNTLET_DATABASE_URL`` at Postgres and
``GAUNTLET_BROKER_URL`` at Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Refused outside development: API keys are HMAC-hashed with this pepper.
_DEV_PEPPER = "development-only-pepper-change-me"

# An upload is one file plus at most UPLOAD_MAX_FIELDS small form fields (meta, name) of at
# most UPLOAD_FIELD_BYTES each, which Starlette keeps in memory; the request cap adds room for
# them, the boundaries and the part headers to the file's own cap.
UPLOAD_MAX_FIELDS = 2
UPLOAD_FIELD_BYTES = 2**20
MULTIPART_OVERHEAD_BYTES = UPLOAD_MAX_FIELDS * UPLOAD_FIELD_BYTES + 2**20


class Settings(BaseSettings):
    """Gauntlet's settings. Every field is ``GAUNTLET_<FIELD NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="GAUNTLET_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development", description="'production' refuses unsafe defaults such as the dev pepper."
    )
    data_dir: Path = Field(
        Path(".gauntlet"), description="Embedded data: database, broker, artifacts."
    )
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite in data_dir.")
    broker_url: str = Field("", description="Celery broker URL; default: filesystem in data_dir.")
    artifact_store: Literal["local", "s3"] = Field(
        "local",
        description="Where artifacts (models, datasets, job files) live: 'local' (a folder, "
        "artifact_dir) or 's3' (a bucket of an S3-compatible object store).",
    )
    artifact_dir: Path | None = Field(
        None, description="Artifact store folder; default data_dir/artifacts."
    )
    s3_bucket: str = Field("", description="The bucket of the 's3' artifact store.")
    s3_prefix: str = Field(
        "", description="Key prefix inside the bucket (e.g. 'gauntlet/'); keys are prefix+sha256."
    )
    s3_endpoint_url: str = Field(
        "", description="S3 endpoint (MinIO, Ceph, ...); default: AWS for the region."
    )
    s3_region: str = Field("", description="S3 region; default: boto3's (AWS_DEFAULT_REGION).")
    s3_access_key_id: str = Field(
        "", description="S3 access key; default: boto3's chain (AWS_ACCESS_KEY_ID, a role)."
    )
    s3_secret_access_key: SecretStr = Field(
        SecretStr(""), description="S3 secret key; default: boto3's chain."
    )
    api_key_pepper: SecretStr = Field(
        SecretStr(_DEV_PEPPER), description="Secret mixed into API key hashes (HMAC-SHA256)."
    )

    link_signing_secret: SecretStr | None = Field(
        None,
        description="Secret that signs report and leaderboard links, separate from the pepper "
        "so either rotates alone (rotating it ends every link). Required in production; in "
        "development it defaults to a key derived from the pepper.",
    )
    report_link_seconds: int = Field(
        7 * 24 * 3600,
        ge=60,
        le=366 * 24 * 3600,
        description="How long a signed report or leaderboard link stays valid (default 7 days, "
        "long enough for a pull request's review).",
    )

    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, description="API port.")
    public_url: str = Field("", description="URL printed for users; default http://host:port.")

    max_model_bytes: int = Field(256 * 2**20, description="Largest model upload.")
    max_dataset_bytes: int = Field(512 * 2**20, description="Largest dataset upload.")
    max_json_bytes: int = Field(2**20, description="Largest JSON request body.")
    max_json_depth: int = Field(
        32, ge=2, le=200, description="Deepest nesting of arrays and objects in a JSON document."
    )
    max_dataset_decoded_bytes: int = Field(
        2 * 2**30, ge=1, description="Largest size of a dataset's arrays once decoded (inflated)."
    )
    max_input_values: int = Field(
        3 * 512 * 512, ge=1, description="Largest C*H*W of a model input or a dataset example."
    )
    max_num_classes: int = Field(
        100_000, ge=2, le=2**31 - 1, description="Largest num_classes; labels must be below it."
    )
    max_examples_per_job: int = Field(
        100_000, description="Most examples one job may evaluate (its 'limit' or its split)."
    )
    max_gradients_per_job: int = Field(
        1_000_000_000,
        description="Most gradient evaluations (and model queries) one job may plan: examples "
        "x eps x steps x restarts, summed over its attacks.",
    )
    max_result_cells: int = Field(
        2_000_000, description="Most per-class numbers a result may hold (attacks x eps x classes)."
    )
    audit_shard_examples: int = Field(
        50_000,
        ge=0,
        description="Audits of more examples are split into parts of at most this many, run "
        "by separate workers (0: never automatically; a spec's 'shards' wins).",
    )
    max_active_jobs_per_tenant: int = Field(
        20, description="Queued and running jobs a tenant may have; more get 429."
    )
    job_watch_seconds: float = Field(
        0.5,
        gt=0,
        description="How often an API process reads the state of the jobs its event streams "
        "and long polls wait on (one query for all of them).",
    )
    max_job_waiters: int = Field(
        1000,
        ge=1,
        description="Event streams and long polls one API process serves at once; more get "
        "503 too_many_waiters.",
    )
    event_heartbeat_seconds: float = Field(
        15.0, gt=0, description="Seconds between keep-alive comments on an event stream."
    )
    idempotency_ttl_seconds: float = Field(
        24 * 3600.0, description="How long an Idempotency-Key returns the job it created."
    )

    lease_seconds: float = Field(60.0, description="A running job's lease; renewed by heartbeats.")
    heartbeat_seconds: float = Field(10.0, description="How often a worker renews its lease.")
    max_attempts: int = Field(3, description="Attempts per job before it fails (worker deaths).")
    reconcile_seconds: float = Field(15.0, description="How often workers look for lost jobs.")
    requeue_after_seconds: float = Field(
        300.0, description="Re-send a queued job not claimed for this long (lost message)."
    )
    progress_seconds: float = Field(1.0, description="Least time between progress writes.")
    job_time_limit_seconds: float = Field(6 * 3600.0, description="Hard limit for one job run.")
    broker_visibility_timeout: float = Field(
        0.0, description="Redis visibility timeout; default: twice the job time limit."
    )
    worker_device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda:0'.")
    worker_queue: str = Field("gauntlet", description="Celery queue name workers consume.")
    eval_batch_size: int = Field(256, description="Examples per attack batch.")

    # --- Operations: metrics and logs ---------------------------------------------------
    metrics_token: SecretStr | None = Field(
        None,
        description="When set, GET /metrics needs 'Authorization: Bearer <this token>' (it "
        "shows every tenant's job counts); unset, it is open (development default).",
    )
    log_format: Literal["plain", "json"] = Field(
        "plain",
        description="'json': one JSON object per log line, with job_id (workers) or "
        "request_id (API) when there is one; 'plain': text.",
    )

    # --- The model jail (worker/jail): where untrusted model code runs --------------------
    jail_mode: Literal["auto", "namespaces", "process"] = Field(
        "auto",
        description="'namespaces': a bubblewrap sandbox (no network, read-only root, only the "
        "job's files), refusing to start without it; 'process': a plain child process with "
        "limits and a scrubbed environment; 'auto': namespaces where the kernel allows them.",
    )
    jail_code_formats_need_namespaces: bool = Field(
        True,
        description="Refuse TorchScript and pt2 models (they carry code) on a worker whose "
        "jails run in 'process' mode.",
    )
    jail_address_space_bytes: int = Field(
        16 * 2**30, description="Address space a job may map beyond a warm jail's (RLIMIT_AS)."
    )
    jail_cpu_seconds: float = Field(
        24 * 3600.0, description="CPU time of one jailed job, all threads (RLIMIT_CPU)."
    )
    jail_open_files: int = Field(1024, description="Open files of a jail (RLIMIT_NOFILE).")
    jail_processes: int = Field(
        1024, description="Processes and threads of the jail's user (RLIMIT_NPROC)."
    )
    jail_file_size_bytes: int = Field(
        4 * 2**30, description="Largest file a jailed job may write (RLIMIT_FSIZE)."
    )
    jail_validation_seconds: float = Field(
        300.0, description="Wall-clock and CPU limit of one model validation in its jail."
    )
    jail_user_id: int = Field(
        65534, description="The unprivileged user a root worker's jails run as."
    )
    jail_group_id: int = Field(65534, description="The group a root worker's jails run as.")
    jail_dir: Path | None = Field(
        None, description="Where jails' scratch folders go; default <temp dir>/gauntlet-jails."
    )
    jail_prestart: bool = Field(
        True, description="Keep a warm spare jail (torch imported) ready for the next job."
    )

    @model_validator(mode="after")
    def _fill_defaults_and_refuse_unsafe(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'gauntlet.db').resolve()}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        if self.artifact_store == "s3" and not self.s3_bucket:
            raise ValueError("GAUNTLET_ARTIFACT_STORE=s3 needs GAUNTLET_S3_BUCKET")
        if not self.public_url:
            self.public_url = f"http://{self.host}:{self.port}"
        if self.broker_visibility_timeout <= 0:
            self.broker_visibility_timeout = 2 * self.job_time_limit_seconds
        if self.metrics_token is not None and not self.metrics_token.get_secret_value():
            self.metrics_token = None
        # Likewise an empty link secret is none (never an empty HMAC key).
        if self.link_signing_secret is not None and not self.link_signing_secret.get_secret_value():
            self.link_signing_secret = None
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        if self.environment == "production":
            if self.api_key_pepper.get_secret_value() == _DEV_PEPPER:
                raise ValueError("GAUNTLET_API_KEY_PEPPER must be set in production")
            if self.link_signing_secret is None:
                raise ValueError("GAUNTLET_LINK_SIGNING_SECRET must be set in production")
            if (
                self.link_signing_secret.get_secret_value()
                == self.api_key_pepper.get_secret_value()
            ):
                raise ValueError("GAUNTLET_LINK_SIGNING_SECRET must differ from the pepper")
            if self.database_url.startswith("sqlite"):
                raise ValueError("production needs GAUNTLET_DATABASE_URL (Postgres), not SQLite")
            if self.metrics_token is None:
                raise ValueError(
                    "GAUNTLET_METRICS_TOKEN must be set in production (/metrics shows every "
                    "tenant's job counts)"
                )
        return self

    @property
    def broker_folder(self) -> Path:
        """Where the embedded filesystem broker keeps its messages."""
        return self.data_dir / "broker"

    @property
    def max_model_request_bytes(self) -> int:
        """Largest ``POST /v1/models`` body: the file plus the multipart envelope and meta."""
        return self.max_model_bytes + MULTIPART_OVERHEAD_BYTES

    @property
    def max_dataset_request_bytes(self) -> int:
        """Largest ``POST /v1/datasets`` body: the file plus the multipart envelope."""
        return self.max_dataset_bytes + MULTIPART_OVERHEAD_BYTES


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
