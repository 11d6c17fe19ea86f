"""What became of each request (ok, blocked, escalated, fixed, shed, ...), per trace and per
rollup row, so the dashboard tells a polite refusal from a healthy answer.

Revision ID: 0011
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0005"
branch_labels = None
depends_on = None

COUNTS = ("blocked", "escalated", "fixed", "shed")


def upgrade() -> None:
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("outcome", sa.String(16), nullable=True))
    with op.batch_alter_table("trace_rollups") as batch:
        for name in COUNTS:
            batch.add_column(sa.Column(name, sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("trace_rollups") as batch:
        for name in COUNTS:
            batch.drop_column(name)
    with op.batch_alter_table("traces") as batch:
        batch.drop_column("outcome")
