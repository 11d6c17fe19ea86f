"""Spans of traced requests; the W3C trace id of each trace.

Revision ID: 0009
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(32), nullable=True))
    op.create_table(
        "spans",
        sa.Column("record_id", sa.String(32), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spans", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("record_id", name="pk_spans"),
    )
    op.create_index("ix_spans_trace_id", "spans", ["trace_id"])


def downgrade() -> None:
    op.drop_table("spans")
    with op.batch_alter_table("traces") as batch:
        batch.drop_column("trace_id")
