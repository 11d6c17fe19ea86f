"""Readiness verdicts of `shipyard check`, for the dashboard's readiness over time.

Revision ID: 0021
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "readiness_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False, server_default="default"),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("gate_passed", sa.Boolean, nullable=True),
        sa.Column("scores", sa.Text, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
    )
    op.create_index("ix_readiness_runs_tenant_id_target_created_at", "readiness_runs",
                    ["tenant_id", "target", "created_at"])


def downgrade() -> None:
    op.drop_table("readiness_runs")
