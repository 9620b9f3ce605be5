"""verdicts that record their engine; jobs with parts; model lineage

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # The engine a job was admitted for: a replay after an upgrade audits afresh.
        batch.add_column(sa.Column("engine_version", sa.String(length=80), nullable=True))
        # A job's parts (a transfer's crafting and scoring, an audit's shards) are jobs.
        batch.add_column(sa.Column("parent_id", sa.String(length=40), nullable=True))
        batch.create_index("ix_jobs_parent_id", ["parent_id"])
        batch.create_index("ix_jobs_tenant_status", ["tenant_id", "status"])
    with op.batch_alter_table("models") as batch:
        # Lineage: the job that produced a model (training) and the model it started from.
        batch.add_column(sa.Column("source_job_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("parent_model_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("parent_model_id")
        batch.drop_column("source_job_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_status")
        batch.drop_index("ix_jobs_parent_id")
        batch.drop_column("parent_id")
        batch.drop_column("engine_version")
