"""SQLAlchemy 2 models of the service's own tables, beside Optuna's in one database."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from edgetune.spec import JobSpec

#: Every service table is prefixed so that it never meets one of Optuna's (`studies`, `trials`).
PREFIX = "edgetune_"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobSpecText(TypeDecorator[JobSpec]):
    """A `JobSpec` kept as its JSON text (never pickled): dumped on the way in, validated on
    the way out, so that a job's spec is read in one place and typed everywhere else."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: JobSpec | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if not isinstance(value, JobSpec):
            raise TypeError(f"a job's spec is stored from a JobSpec, not {type(value).__name__}")
        return value.model_dump_json()

    def process_result_value(self, value: Any, dialect: Dialect) -> JobSpec | None:
        return None if value is None else JobSpec.model_validate_json(value)


class JSONText(TypeDecorator[Any]):
    """A JSON value kept as text on every backend: `json.dumps` in, `json.loads` out; never
    pickled. Assign a new value to change one: changes inside a stored list or dict go unseen."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


class Base(DeclarativeBase):
    pass


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Runner(enum.StrEnum):
    """Who runs a job's trials, which decides how workers take it."""

    OPTUNA = "optuna"  # workers share it: any number of them ask trials from its study
    RAY = "ray"  # one worker drives a Ray Tune run; a lease keeps the others off
    ASK_TELL = "ask-tell"  # clients ask and tell through the API; no worker takes it


class Job(Base):
    """A submitted search. Its trials live in the Optuna study named `study_name`."""

    __tablename__ = f"{PREFIX}jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[JobSpec] = mapped_column(JobSpecText())
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    runner: Mapped[str] = mapped_column(String(16), default=Runner.OPTUNA.value,
                                        server_default=Runner.OPTUNA.value)
    study_name: Mapped[str] = mapped_column(String(512), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The client's `Idempotency-Key` of the submission: a repeated submission finds this job.
    idempotency_key: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index(f"ix_{PREFIX}jobs_status_created", "status", "created_at"),
        Index(f"ix_{PREFIX}jobs_tenant_created", "tenant", "created_at"),
        UniqueConstraint("tenant", "idempotency_key",
                         name=f"uq_{PREFIX}jobs_tenant_idempotency_key"),
    )


class Device(Base):
    """A registered machine whose agent measures latency. Whether it is online is derived from
    `last_heartbeat` (see `edgetune.storage.devices.is_online`), never stored. The built-in
    device `local` (the worker's own CPU) has no row."""

    __tablename__ = f"{PREFIX}devices"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(128))
    runtimes: Mapped[list[str]] = mapped_column(JSONText())  # e.g. ["onnxruntime", "torch"]
    hardware: Mapped[dict[str, Any]] = mapped_column(JSONText())  # whatever the agent reports
    threads: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        # An agent restarting under its name gets its device back; names key latency metrics.
        UniqueConstraint("tenant", "name", name=f"uq_{PREFIX}devices_tenant_name"),
    )


class ProbeStatus(enum.StrEnum):
    PENDING = "pending"  # queued for the device's agents
    LEASED = "leased"  # an agent is measuring it (until `lease_expires_at`)
    DONE = "done"  # `result` holds the measurement
    FAILED = "failed"  # `error` says why

    @property
    def finished(self) -> bool:
        return self in (ProbeStatus.DONE, ProbeStatus.FAILED)


#: The statuses of a probe still to be measured: at most one such probe per cache key.
LIVE_PROBE_STATUSES = (ProbeStatus.PENDING.value, ProbeStatus.LEASED.value)
_LIVE_PROBE = text("status IN ('pending', 'leased')")


class Probe(Base):
    """A latency measurement of one artifact on one device, with one measurement config.

    `cache_key` hashes the artifact, the device and the config: a done probe answers every
    identical request, and identical requests made while one is queued share it.
    """

    __tablename__ = f"{PREFIX}probes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    device_id: Mapped[str] = mapped_column(
        String(36), ForeignKey(f"{PREFIX}devices.id", ondelete="CASCADE",
                               name=f"fk_{PREFIX}probes_device_id")
    )
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(32))
    input_shape: Mapped[list[int]] = mapped_column(JSONText())
    batch_size: Mapped[int] = mapped_column(Integer)
    threads: Mapped[int] = mapped_column(Integer)
    warmup: Mapped[int] = mapped_column(Integer)
    min_repeats: Mapped[int] = mapped_column(Integer)
    min_time_s: Mapped[float] = mapped_column(Float)
    cache_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ProbeStatus.PENDING.value)
    lease_owner: Mapped[str | None] = mapped_column(String(128))  # of a done probe: who measured
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # leases handed out
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONText())  # p50_ms, p90_ms, ..., n
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index(f"ix_{PREFIX}probes_device_status_created", "device_id", "status", "created_at"),
        Index(f"ix_{PREFIX}probes_cache_key_status", "cache_key", "status"),
        # Two trials racing to request the same measurement make one probe, not two.
        Index(f"ux_{PREFIX}probes_live_cache_key", "cache_key", unique=True,
              sqlite_where=_LIVE_PROBE, postgresql_where=_LIVE_PROBE),
    )


class Scope(enum.StrEnum):
    """What a token may do: `user` runs searches, `agent` measures for devices, `admin` does
    both and manages tokens."""

    USER = "user"
    AGENT = "agent"
    ADMIN = "admin"


class Token(Base):
    """An API token, stored as its sha256 only. `lookup` (the hash's first 16 hex digits) finds
    the candidate rows; the full hash is then compared in constant time."""

    __tablename__ = f"{PREFIX}tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    lookup: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("token_hash", name=f"uq_{PREFIX}tokens_token_hash"),
        Index(f"ix_{PREFIX}tokens_lookup", "lookup"),
    )


class Upload(Base):
    """A model a tenant uploaded for an ad-hoc probe: what the tenant's upload quota counts,
    and what the artifact collector may delete once no probe names it (a trial's own exported
    artifacts have no row here, and are never collected)."""

    __tablename__ = f"{PREFIX}uploads"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index(f"ix_{PREFIX}uploads_artifact_sha256", "artifact_sha256"),)
