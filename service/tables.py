"""Database tables. The schema is built by the Alembic migrations, never by ``create_all``."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.database import Base, UTCDateTime, utcnow

JSONType = JSON().with_variant(JSONB(), "postgresql")


def new_id(prefix: str) -> str:
    """A new id such as ``j_0193a1b2c3d4e5f6a7b8c9``: the prefix names the kind of object.

    Twelve hex digits of milliseconds then ten random ones, so ids sort by creation time
    and serve as pagination cursors.
    """
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(5)}"


class JobStatus:
    """Job states. ``queued`` and ``running`` are live; the other three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = (SUCCEEDED, FAILED, CANCELLED)
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


class ModelStatus:
    """Model states: validation runs as a worker job."""

    VALIDATING = "validating"
    READY = "ready"
    INVALID = "invalid"


class Tenant(Base):
    """An organisation or team; every other object belongs to exactly one tenant."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key. Only its HMAC is stored; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Model(Base):
    """An uploaded classifier: its file lives in the artifact store under ``file_sha256``."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    # 1, 2, ... per tenant and name, in upload (or training) order; deleted versions keep
    # their number, so a version never names two models.
    version: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(20))
    input_shape: Mapped[list[int]] = mapped_column(JSONType)
    num_classes: Mapped[int] = mapped_column(Integer)
    input_range: Mapped[list[float]] = mapped_column(JSONType)
    normalization: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    architecture: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20), default=ModelStatus.VALIDATING)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    validation_job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    source_job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    parent_model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Queried, never differentiated: an ai.onnx.ml graph, or an ONNX model its meta marks so.
    black_box: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_models_tenant_id_id", "tenant_id", "id"),
        UniqueConstraint("tenant_id", "name", "version", name="uq_models_tenant_name_version"),
    )


class Dataset(Base):
    """An uploaded dataset of examples ``x`` and labels ``y``."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(20))
    num_examples: Mapped[int] = mapped_column(Integer)
    example_shape: Mapped[list[int]] = mapped_column(JSONType)
    num_classes: Mapped[int] = mapped_column(Integer)
    value_range: Mapped[list[float]] = mapped_column(JSONType)
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_datasets_tenant_id_id", "tenant_id", "id"),)


class Job(Base):
    """A unit of work. Postgres (not the broker) is the source of truth for its state.

    A worker owns a running job while ``lease_owner`` is its id and ``lease_expires_at`` is
    in the future; every write a worker makes is conditional on still owning the lease.
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(30))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    engine_version: Mapped[str | None] = mapped_column(String(80), nullable=True)
    parent_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    dataset_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_parent_id", "parent_id"),
        Index("ix_jobs_tenant_status", "tenant_id", "status"),
    )


class Artifact(Base):
    """A named file a job produced; bytes live in the content-addressed store."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)


class MetricCounter(Base):
    """A Prometheus counter that any process may increment (service/metrics.py): events that
    leave no row of their own, counted in the transaction that makes them."""

    __tablename__ = "metric_counters"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    labels: Mapped[str] = mapped_column(String(400), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
