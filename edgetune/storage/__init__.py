"""Storage: the service's SQL tables beside Optuna's, in SQLite (WAL) or PostgreSQL."""

from __future__ import annotations

from edgetune.storage.db import Database, make_engine
from edgetune.storage.devices import DeviceRepository, is_online
from edgetune.storage.jobs import DEFAULT_TENANT, JobRepository, utcnow
from edgetune.storage.locks import migration_lock
from edgetune.storage.models import (
    Device,
    Job,
    JobStatus,
    Probe,
    ProbeStatus,
    Runner,
    Scope,
    Token,
)
from edgetune.storage.optuna_storage import (
    JOB_ID_ATTR,
    create_job_study,
    optuna_storage,
    upgrade_optuna_tables,
)
from edgetune.storage.probes import MAX_ATTEMPTS, ProbeRepository, checked_result, probe_cache_key
from edgetune.storage.study_store import index_trials_by_number
from edgetune.storage.tokens import Principal, TokenRepository

__all__ = [
    "DEFAULT_TENANT",
    "JOB_ID_ATTR",
    "MAX_ATTEMPTS",
    "Database",
    "Device",
    "DeviceRepository",
    "Job",
    "JobRepository",
    "JobStatus",
    "Principal",
    "Probe",
    "ProbeRepository",
    "ProbeStatus",
    "Runner",
    "Scope",
    "Token",
    "TokenRepository",
    "checked_result",
    "create_job_study",
    "is_online",
    "make_engine",
    "open_database",
    "optuna_storage",
    "probe_cache_key",
    "utcnow",
]


def open_database(url: str, *, migrate: bool = True) -> Database:
    """Open `url`, bring the service tables to the newest schema, and create Optuna's."""
    from edgetune.storage import migrations

    db = Database(url)
    if migrate:
        # One process at a time: on a fresh database, two would create the same tables.
        with migration_lock(db.engine):
            migrations.upgrade(db.engine)
            upgrade_optuna_tables(db.url)
            optuna_storage(db.url)
            index_trials_by_number(db.engine)
    return db
