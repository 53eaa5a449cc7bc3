"""API tokens (hashed, with a tenant and a scope) and idempotent job submission.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edgetune_tokens",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("lookup", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_edgetune_tokens_token_hash"),
    )
    op.create_index("ix_edgetune_tokens_lookup", "edgetune_tokens", ["lookup"])
    with op.batch_alter_table("edgetune_jobs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(128), nullable=True))
        batch.create_unique_constraint("uq_edgetune_jobs_tenant_idempotency_key",
                                       ["tenant", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("edgetune_jobs") as batch:
        batch.drop_constraint("uq_edgetune_jobs_tenant_idempotency_key", type_="unique")
        batch.drop_column("idempotency_key")
    op.drop_index("ix_edgetune_tokens_lookup", table_name="edgetune_tokens")
    op.drop_table("edgetune_tokens")
