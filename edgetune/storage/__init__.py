"""Storage: the service's SQL tables beside Optuna's, in SQLite (WAL) or PostgreSQL."""

from __future__ import annotations

from edgetune.storage.db import Database, make_engine
from edgetune.storage.jobs import DEFAULT_TENANT, JobRepository, utcnow
from edgetune.storage.models import Job, JobStatus
from edgetune.storage.optuna_storage import JOB_ID_ATTR, create_job_study, optuna_storage

__all__ = [
    "DEFAULT_TENANT",
    "JOB_ID_ATTR",
    "Database",
    "Job",
    "JobRepository",
    "JobStatus",
    "create_job_study",
    "make_engine",
    "open_database",
    "optuna_storage",
    "utcnow",
]


def open_database(url: str, *, migrate: bool = True) -> Database:
    """Open `url`, bring the service tables to the newest schema, and create Optuna's."""
    from edgetune.storage import migrations

    db = Database(url)
    if migrate:
        migrations.upgrade(db.engine)
        optuna_storage(db.url)
    return db
