"""Shared fixtures: a real `edgetune serve` process on a free loopback port, and the admin
token every test process, server and agent shares."""

from __future__ import annotations

import contextlib
import os
import shutil
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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep what a module sets up once on one worker under pytest-xdist (`--dist loadgroup`):
    a test that uses a module-scoped fixture (a server, agents, a Ray) joins its module's
    group, so two workers never each start that module's server. A module that starts Ray
    says so with `xdist_group("ray")`, so that no two Rays run at once on a 2-core machine."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        fixtures = getattr(item, "_fixtureinfo", None)
        definitions = fixtures.name2fixturedefs.values() if fixtures is not None else ()
        if any(defs and defs[-1].scope == "module" for defs in definitions):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"), workers=2)
    yield running
    stop_server(running)


# The storage contract and the concurrency tests run on SQLite and a real PostgreSQL.
POSTGRES_ADMIN_URL = os.environ.get(
    "EDGETUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextlib.contextmanager
def _postgres_database(template: str | None = None) -> Iterator[str]:
    """A new database on the test PostgreSQL (a copy of `template` if given), dropped after
    the block; the test is skipped where PostgreSQL does not answer."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"edgetune_test_{uuid.uuid4().hex[:12]}"
    suffix = f" TEMPLATE {template}" if template else ""
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}{suffix}")
    except sa.exc.OperationalError as e:  # pragma: no cover - CI always has PostgreSQL
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {e}")
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def _migrate_and_close(url: str) -> None:
    """Bring a database to head as the service does, and close every connection to it."""
    from edgetune.storage import open_database
    from edgetune.storage.optuna_storage import optuna_storage

    open_database(url).dispose()
    optuna_storage(url).engine.dispose()


@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database at head, made once: each test gets a copy (migrating takes ~0.7 s)."""
    import sqlite3

    path = tmp_path_factory.mktemp("template") / "edgetune.db"
    _migrate_and_close(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:  # everything into the main file, which is copied
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(scope="session")
def _migrated_postgres() -> Iterator[str]:
    """A PostgreSQL database at head, made once, that test databases are created from."""
    with _postgres_database() as url:
        _migrate_and_close(url)
        yield sa.engine.make_url(url).database or ""


@pytest.fixture
def fresh_data_dir(tmp_path: Path, _migrated_sqlite: Path) -> Path:
    """A data directory whose SQLite database is already at head, as after a first start."""
    shutil.copyfile(_migrated_sqlite, tmp_path / "edgetune.db")
    return tmp_path


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL, dropped afterwards (skipped without
    one)."""
    with _postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty SQLite file, then an empty PostgreSQL database: for migration tests."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'edgetune.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The storage contract's database, already at head: a SQLite file, then a PostgreSQL
    database (copies of a database migrated once per session)."""
    if request.param == "sqlite":
        yield f"sqlite:///{request.getfixturevalue('fresh_data_dir') / 'edgetune.db'}"
        return
    yield request.getfixturevalue("migrated_postgres_url")


@pytest.fixture
def migrated_postgres_url(_migrated_postgres: str) -> Iterator[str]:
    """A PostgreSQL database at head (a copy of the one migrated once per session), dropped
    afterwards."""
    with _postgres_database(template=_migrated_postgres) as url:
        yield url
