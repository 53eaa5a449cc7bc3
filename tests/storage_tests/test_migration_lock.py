"""Migrating one fresh database from several processes at once: they take turns on the
migration lock, every one succeeds, and one schema results."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from edgetune.storage import make_engine
from edgetune.storage.migrations import VERSION_TABLE, current_revision, head_revision
from edgetune.storage.models import PREFIX, Base

UPGRADERS = 4


def _ours(name: str | None, type_: str, _parent: object) -> bool:
    return type_ != "table" or (name or "").startswith(PREFIX)


def test_concurrent_db_upgrades_all_succeed_with_one_schema(empty_database_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "edgetune", "db", "upgrade", "--database-url",
               empty_database_url]
    # Started together, so that they race for the fresh database as workers starting at once do.
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=env) for _ in range(UPGRADERS)]
    outputs = [p.communicate(timeout=180)[0].decode(errors="replace") for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
        assert f"database at revision {head_revision()}" in output, output

    engine = make_engine(empty_database_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            # One version row each for our migrations and for Optuna's.
            assert conn.scalar(sa.text(f"SELECT COUNT(*) FROM {VERSION_TABLE}")) == 1
            assert conn.scalar(sa.text("SELECT COUNT(*) FROM version_info")) == 1
            assert conn.scalar(sa.text("SELECT COUNT(*) FROM alembic_version")) == 1
            context = MigrationContext.configure(conn, opts={
                "version_table": VERSION_TABLE, "include_name": _ours, "compare_type": True,
            })
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_db_upgrade_names_a_refusal_as_such_not_as_silence(tmp_path: pytest.TempPathFactory
                                                           ) -> None:
    """A database that answers but refuses the upgrade is reported as a refusal, not as a
    database that "did not answer within 0 s"."""
    path = tmp_path / "edgetune.db"  # type: ignore[operator]
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a table in the way of the first migration
        conn.execute(sa.text(f"CREATE TABLE {PREFIX}jobs (nonsense INTEGER)"))
    engine.dispose()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "edgetune", "db", "upgrade", "--database-url",
                           url], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    message = done.stdout + done.stderr
    assert "did not answer" not in message, message
    assert "refused the upgrade" in message, message
