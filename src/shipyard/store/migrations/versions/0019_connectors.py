"""Connector runs: one row per run of a connector (a queue consumer's session, a SQL scoring
pass, a file drop), its counts, heartbeat and checkpoint (the last key a SQL run scored).

Revision ID: 0019
Revises: 0021
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connector_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("connector", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retried", sa.Integer, nullable=False, server_default="0"),
        sa.Column("checkpoint", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("host", sa.String(128), nullable=False),
    )
    op.create_index("ix_connector_runs_connector_started_at", "connector_runs",
                    ["connector", "started_at"])
    op.create_index("ix_connector_runs_status", "connector_runs", ["status"])


def downgrade() -> None:
    op.drop_index("ix_connector_runs_status", table_name="connector_runs")
    op.drop_index("ix_connector_runs_connector_started_at", table_name="connector_runs")
    op.drop_table("connector_runs")
