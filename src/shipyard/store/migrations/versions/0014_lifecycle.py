"""Life after launch: the version on every trace; target versions and aliases, rollouts,
lifecycle events, eval runs and retraining jobs.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("version", sa.String(64), nullable=True))
    op.create_index("ix_traces_service_version_started_at", "traces",
                    ["service", "version", "started_at"])
    op.create_table(
        "target_versions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("function", sa.Text, nullable=True),
        sa.Column("artifact_sha256", sa.String(64), nullable=True),
        sa.Column("artifact_path", sa.Text, nullable=True),
        sa.Column("artifact_format", sa.String(16), nullable=True),
        sa.Column("call", sa.String(16), nullable=True),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("config", sa.Text, nullable=True),
        sa.Column("meta", sa.Text, nullable=True),
        _when("created_at"),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("target", "number", name="uq_target_versions_target_number"),
    )
    op.create_index("ix_target_versions_target_spec_hash", "target_versions",
                    ["target", "spec_hash"])
    op.create_table(
        "target_aliases",
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        _when("updated_at"),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("target", "alias", name="pk_target_aliases"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("candidate", sa.Integer, nullable=False),
        sa.Column("stable", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        _when("started_at"), _when("step_started_at"), _when("updated_at"),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("last_check", sa.Text, nullable=True),
    )
    op.create_index("ix_rollouts_target_state", "rollouts", ["target", "state"])
    op.create_table(
        "lifecycle_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(128), nullable=False),
        _when("at"),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("details", sa.Text, nullable=True),
    )
    op.create_index("ix_lifecycle_events_target_seq", "lifecycle_events", ["target", "seq"])
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("baseline", sa.Integer, nullable=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("baseline_metrics", sa.Text, nullable=True),
        sa.Column("passed", sa.Boolean, nullable=True),
        _when("created_at"),
    )
    op.create_index("ix_eval_runs_target_created_at", "eval_runs", ["target", "created_at"])
    op.create_table(
        "retrain_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("steps", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("holder", sa.String(128), nullable=True),
        _when("heartbeat_at", True), _when("created_at"), _when("updated_at"),
    )
    op.create_index("ix_retrain_jobs_target_created_at", "retrain_jobs",
                    ["target", "created_at"])
    op.create_index("ix_retrain_jobs_state", "retrain_jobs", ["state"])


def downgrade() -> None:
    for table in ("retrain_jobs", "eval_runs", "lifecycle_events", "rollouts",
                  "target_aliases", "target_versions"):
        op.drop_table(table)
    op.drop_index("ix_traces_service_version_started_at", "traces")
    with op.batch_alter_table("traces") as batch:
        batch.drop_column("version")
