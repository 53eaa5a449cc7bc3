"""Engines and sessions: SQLite in WAL mode by default, PostgreSQL when configured."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from edgetune.errors import MissingDependencyError
from edgetune.settings import PoolSettings

SQLITE_BUSY_TIMEOUT_S = 30.0


def engine_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for `create_engine` on `url`, shared with Optuna's RDBStorage."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if parsed.get_backend_name() == "postgresql":
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec(
            "psycopg2"
        ) is None:
            raise MissingDependencyError("psycopg", "postgres")
        pool = PoolSettings()
        return {"pool_pre_ping": True, "pool_size": pool.db_pool_size,
                "max_overflow": pool.db_max_overflow}
    return {}


def normalize_url(url: str) -> str:
    """Use psycopg 3 for a bare `postgresql://` URL, and create a SQLite file's directory."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is not None:
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        create_private_file(Path(parsed.database))
    return url


def create_private_file(path: Path) -> None:
    """Create `path` readable by its owner only (0600, in a 0700 directory when the directory is
    new), unless it exists: the database holds token hashes and every job. SQLite gives its
    -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    engine = create_engine(url, **engine_kwargs(url))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (the API, the dashboard) run while a worker writes; the busy timeout
    # makes a writer wait for the lock instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """One engine and its session factory for a database URL."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on an error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
