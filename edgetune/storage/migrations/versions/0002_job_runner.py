"""Jobs say who runs their trials: workers sharing the study, one Ray driver, or API clients.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edgetune_jobs") as batch:
        batch.add_column(sa.Column("runner", sa.String(16), nullable=False,
                                   server_default="optuna"))
    # Jobs of the ray backend existed before this column: find them in their specs.
    jobs = sa.table("edgetune_jobs", sa.column("id", sa.String), sa.column("spec", sa.Text),
                    sa.column("runner", sa.String))
    connection = op.get_bind()
    for job_id, spec in connection.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        backend = json.loads(spec).get("algorithm", {}).get("backend", "optuna")
        if backend == "ray":
            connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(runner="ray"))


def downgrade() -> None:
    with op.batch_alter_table("edgetune_jobs") as batch:
        batch.drop_column("runner")
