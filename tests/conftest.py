"""Shared fixtures: a real `edgetune serve` process on a free loopback port, and the admin
token every test process, server and agent shares."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from servers import TEST_TOKEN, RunningServer, start_server, stop_server

# Servers started by the tests install this admin token (EDGETUNE_ADMIN_TOKEN); the SDK, the
# CLI and agents send it (EDGETUNE_TOKEN). Both reach subprocesses through the environment.
os.environ["EDGETUNE_ADMIN_TOKEN"] = TEST_TOKEN
os.environ["EDGETUNE_TOKEN"] = TEST_TOKEN


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"), workers=2)
    yield running
    stop_server(running)


# The storage contract and the concurrency tests run on SQLite and a real PostgreSQL.
POSTGRES_ADMIN_URL = os.environ.get(
    "EDGETUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL, dropped afterwards (skipped without one)."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"edgetune_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as e:  # pragma: no cover - CI always has PostgreSQL
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {e}")
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage contract's database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'edgetune.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
