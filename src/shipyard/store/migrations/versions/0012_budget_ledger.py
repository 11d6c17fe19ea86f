"""The budget ledger: spend and reservations per budget and period (used when Redis does not
hold budgets).

Revision ID: 0012
Revises: 0017
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_accounts",
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("spent_nusd", sa.BigInteger, nullable=False),
        sa.Column("reserved_nusd", sa.BigInteger, nullable=False),
        sa.Column("warned", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", name="pk_budget_accounts"),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("amount_nusd", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", "account", name="pk_budget_reservations"),
    )
    op.create_index("ix_budget_reservations_expires_at", "budget_reservations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_budget_reservations_expires_at", "budget_reservations")
    op.drop_table("budget_reservations")
    op.drop_table("budget_accounts")
