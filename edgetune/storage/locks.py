"""Locks shared by every process on a database: one per job, held while a trial is asked for
(workers and ask/tell requests sharing a job then never start more trials than its budget or
its parallelism allows, whichever machine they run on), and one for migrating the schema."""

from __future__ import annotations

import fcntl
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

_memory_lock = threading.Lock()
_memory_migration_lock = threading.Lock()
#: The advisory lock key of schema migrations on PostgreSQL (job locks hash their id instead;
#: a collision with one would only make a migration wait for an ask).
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"edgetune:migrate", digest_size=8).digest(), "big", signed=True
)


@contextmanager
def job_lock(engine: Engine, job_id: str) -> Iterator[None]:
    """Hold the job's lock for the block.

    PostgreSQL: a transaction-scoped advisory lock, released when the block ends or the
    connection dies with its process. SQLite (one machine by nature): an exclusive `flock` on
    a file beside the database, released the same way; not a write transaction, which would
    block the Optuna storage's own writes made inside the block.
    """
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big",
                             signed=True)
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield
        return
    with _file_lock(engine, ".lock", _memory_lock):
        yield


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's migration lock for the block: processes upgrading one fresh database
    at once (`edgetune db upgrade` run twice, workers starting together) then migrate one after
    the other, and the later ones find the schema at head, instead of racing to create the same
    tables and failing with unique violations.

    PostgreSQL: a session-level advisory lock on a connection of its own, in autocommit so that
    it holds no transaction open beside the migration's DDL; released at the end, or by the
    server when the process dies. SQLite: an exclusive `flock` on `<database>.migrate.lock`.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"),
                             {"key": MIGRATION_LOCK_KEY})
        return
    with _file_lock(engine, ".migrate.lock", _memory_migration_lock):
        yield


@contextmanager
def _file_lock(engine: Engine, suffix: str, in_memory: threading.Lock) -> Iterator[None]:
    """An exclusive `flock` on the file `<database><suffix>` beside a SQLite database, released
    when the block ends or the process dies; `in_memory` for a database with no file."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        with in_memory:
            yield
        return
    with open(Path(f"{database}{suffix}"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
