"""Storage: the service's SQL tables beside Optuna's, in SQLite (WAL) or PostgreSQL."""

from __future__ import annotations

from edgetune.storage.db import Database, make_engine
from edgetune.storage.jobs import DEFAULT_TENANT, JobRepository, utcnow
from edgetune.storage.models import Job, JobStatus, Runner
from edgetune.storage.optuna_storage import (
    JOB_ID_ATTR,
    create_job_study,
    optuna_storage,
    upgrade_optuna_tables,
)

__all__ = [
    "DEFAULT_TENANT",
    "JOB_ID_ATTR",
    "Database",
    "Job",
    "JobRepository",
    "JobStatus",
    "Runner",
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
        upgrade_optuna_tables(db.url)
        optuna_storage(db.url)
    return db
