"""A lock per job shared by every process on its database, held while a trial is asked for:
workers and ask/tell requests sharing a job then never start more trials than its budget or
its parallelism allows, whichever machine they run on."""

from __future__ import annotations

import fcntl
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

_memory_lock = threading.Lock()


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
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        with _memory_lock:
            yield
        return
    with open(Path(f"{database}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
