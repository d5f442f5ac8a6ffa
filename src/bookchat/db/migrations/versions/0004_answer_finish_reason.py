"""answers keep their finish reason and, when refused, the closest pages found

Revision ID: 5d2e8f0a9c14
Revises: c41e5b0d2a96
Create Date: 2026-12-01 18:00:00.000000+00:00

"""

from __future__ import annotations

import sqlalchemy as sa
from advanced_alchemy.types import JsonB
from alembic import op

sa.JsonB = JsonB  # type: ignore[attr-defined]

# revision identifiers, used by Alembic.
revision = "5d2e8f0a9c14"
down_revision = "c41e5b0d2a96"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finish_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("related", sa.JsonB, nullable=True))
        # Author insights read one role over a time window.
        batch_op.create_index("ix_messages_role_created", ["role", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_role_created")
        batch_op.drop_column("related")
        batch_op.drop_column("finish_reason")
