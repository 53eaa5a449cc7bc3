"""Registered devices and their latency probe queue.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LIVE_PROBE = sa.text("status IN ('pending', 'leased')")


def upgrade() -> None:
    op.create_table(
        "edgetune_devices",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("runtimes", sa.Text(), nullable=False),
        sa.Column("hardware", sa.Text(), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("tenant", "name", name="uq_edgetune_devices_tenant_name"),
    )
    op.create_table(
        "edgetune_probes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(36),
                  sa.ForeignKey("edgetune_devices.id", ondelete="CASCADE",
                                name="fk_edgetune_probes_device_id"),
                  nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("input_shape", sa.Text(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("warmup", sa.Integer(), nullable=False),
        sa.Column("min_repeats", sa.Integer(), nullable=False),
        sa.Column("min_time_s", sa.Float(), nullable=False),
        sa.Column("cache_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_edgetune_probes_device_status_created", "edgetune_probes",
                    ["device_id", "status", "created_at"])
    op.create_index("ix_edgetune_probes_cache_key_status", "edgetune_probes",
                    ["cache_key", "status"])
    op.create_index("ux_edgetune_probes_live_cache_key", "edgetune_probes", ["cache_key"],
                    unique=True, sqlite_where=_LIVE_PROBE, postgresql_where=_LIVE_PROBE)


def downgrade() -> None:
    op.drop_index("ux_edgetune_probes_live_cache_key", table_name="edgetune_probes")
    op.drop_index("ix_edgetune_probes_cache_key_status", table_name="edgetune_probes")
    op.drop_index("ix_edgetune_probes_device_status_created", table_name="edgetune_probes")
    op.drop_table("edgetune_probes")
    op.drop_table("edgetune_devices")
