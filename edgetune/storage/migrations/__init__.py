"""Alembic migrations of edgetune's tables; `upgrade(db)` brings a database to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine

from edgetune.errors import StorageError
from edgetune.storage.models import PREFIX

HERE = Path(__file__).parent
#: Our own Alembic version table: Optuna's migrations use `alembic_version`.
VERSION_TABLE = f"{PREFIX}alembic_version"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None  # the package always ships at least one revision
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the service tables to the newest schema; refuse a database newer than the code."""
    current = current_revision(engine)
    script = ScriptDirectory.from_config(alembic_config(""))
    if current is not None and not _known(script, current):
        raise StorageError(
            f"the database schema is at revision {current!r}, which this edgetune does not "
            f"know (newest known: {head_revision()!r}); upgrade edgetune"
        )
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False
