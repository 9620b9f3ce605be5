"""models that are black boxes (ONNX graphs run in onnxruntime, never differentiated)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        # Set at upload (meta "black_box") or by validation (an ai.onnx.ml graph).
        batch.add_column(
            sa.Column("black_box", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("black_box")
