"""Uploaded probe models, per tenant: the upload quota and the artifact collector read them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edgetune_uploads",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("artifact_sha256", sa.String(64), primary_key=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_edgetune_uploads_artifact_sha256", "edgetune_uploads",
                    ["artifact_sha256"])


def downgrade() -> None:
    op.drop_index("ix_edgetune_uploads_artifact_sha256", table_name="edgetune_uploads")
    op.drop_table("edgetune_uploads")
