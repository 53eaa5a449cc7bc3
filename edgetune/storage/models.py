"""SQLAlchemy 2 models of the service's own tables, beside Optuna's in one database."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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
    spec: Mapped[str] = mapped_column(Text)  # the JobSpec as JSON; never pickled
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

    __table_args__ = (
        Index(f"ix_{PREFIX}jobs_status_created", "status", "created_at"),
        Index(f"ix_{PREFIX}jobs_tenant_created", "tenant", "created_at"),
    )
