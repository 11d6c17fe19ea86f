"""Alerts: incidents of rules and SLOs, their history, and the evaluator's lease.

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False, server_default="default"),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("runbook", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("clear_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_alerts_state_key", "alerts", ["state", "key"])
    op.create_index("ix_alerts_started_at", "alerts", ["started_at"])
    # At most one open incident per key, even if two evaluators ever raced to open one.
    open_only = sa.text("state IN ('pending', 'firing')")
    op.create_index("ux_alerts_open_key", "alerts", ["key"], unique=True,
                    sqlite_where=open_only, postgresql_where=open_only)
    op.create_table(
        "alert_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("details", sa.Text, nullable=True),
    )
    op.create_index("ix_alert_events_alert_id_seq", "alert_events", ["alert_id", "seq"])
    op.create_index("ix_alert_events_at", "alert_events", ["at"])
    op.create_table(
        "alert_lease",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_lease")
    op.drop_table("alert_events")
    op.drop_table("alerts")
