"""Feedback on traces; per-minute and per-hour trace rollups for the dashboard.

Revision ID: 0010
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BUCKETS = 30  # len(shipyard.store.tables.LATENCY_BOUNDS_MS) + 1, frozen for this revision


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service", sa.String(128), nullable=False, server_default=""),
        sa.Column("version", sa.String(256), nullable=False, server_default=""),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("author", sa.String(128), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_feedback_tenant_id_created_at", "feedback", ["tenant_id", "created_at"])
    op.create_index("ix_feedback_tenant_id_service_created_at", "feedback",
                    ["tenant_id", "service", "created_at"])
    op.create_index("ix_feedback_trace_id", "feedback", ["trace_id"])
    op.create_table(
        "trace_rollups",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("span", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("minute", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("status", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("error_type", sa.String(64), nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency_sum_ms", sa.Float, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        *(sa.Column(f"b{i}", sa.Integer, nullable=False, server_default="0")
          for i in range(BUCKETS)),
        sa.PrimaryKeyConstraint("tenant_id", "span", "minute", "service", "model", "status",
                                "error_type", name="pk_trace_rollups"),
    )
    op.create_index("ix_trace_rollups_tenant_id_span_service_minute", "trace_rollups",
                    ["tenant_id", "span", "service", "minute"])
    op.create_index("ix_traces_tenant_id_started_at_id", "traces",
                    ["tenant_id", "started_at", "id"])
    op.create_index("ix_traces_tenant_id_service_started_at_id", "traces",
                    ["tenant_id", "service", "started_at", "id"])
    # Traces written before this revision: `shipyard traces rollup` builds their rollups.


def downgrade() -> None:
    op.drop_index("ix_traces_tenant_id_service_started_at_id", "traces")
    op.drop_index("ix_traces_tenant_id_started_at_id", "traces")
    op.drop_table("trace_rollups")
    op.drop_table("feedback")
