"""model versions: 1, 2, ... per tenant and name

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Existing rows are numbered by creation order within their tenant and name (the id breaks
# ties: ids sort by creation time too). A correlated count runs on SQLite and Postgres alike.
BACKFILL = """
UPDATE models SET version = (
    SELECT COUNT(*) FROM models AS earlier
    WHERE earlier.tenant_id = models.tenant_id
      AND earlier.name = models.name
      AND (earlier.created_at < models.created_at
           OR (earlier.created_at = models.created_at AND earlier.id <= models.id))
)
"""


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=True))
    op.execute(BACKFILL)
    with op.batch_alter_table("models") as batch:
        batch.alter_column("version", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint(
            "uq_models_tenant_name_version", ["tenant_id", "name", "version"]
        )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("uq_models_tenant_name_version", type_="unique")
        batch.drop_column("version")
