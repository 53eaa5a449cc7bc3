"""Alembic environment for edgetune's own tables (Optuna migrates its tables itself)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from edgetune.storage.db import make_engine
from edgetune.storage.locks import migration_lock
from edgetune.storage.migrations import VERSION_TABLE
from edgetune.storage.models import PREFIX, Base


def _ours(name: str | None, type_: str, _parent: object) -> bool:
    """Autogenerate looks at our tables only, never at Optuna's."""
    return type_ != "table" or (name or "").startswith(PREFIX)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    # Run by the `alembic` command itself: take the lock that `open_database` takes.
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with migration_lock(engine), engine.connect() as conn:
        _run(conn)
    engine.dispose()
