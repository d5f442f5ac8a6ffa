"""answers owned while streaming

An answer's row is now inserted with its question (`status = 'streaming'`, `owner_id` =
the serving process) and completed at the end; `server_processes` records which
processes are alive, so rows left by a dead one can be marked `interrupted`.

Revision ID: a7d3c2e91f04
Revises: 19c6ed4a3eee
Create Date: 2026-12-01 17:49:38.504079+00:00

"""

from __future__ import annotations

import sqlalchemy as sa
from advanced_alchemy.types import GUID, DateTimeUTC
from alembic import op

# Autogenerate renders advanced-alchemy's portable types as `sa.<Type>`.
sa.GUID = GUID  # type: ignore[attr-defined]
sa.DateTimeUTC = DateTimeUTC  # type: ignore[attr-defined]

# revision identifiers, used by Alembic.
revision = "a7d3c2e91f04"
down_revision = "19c6ed4a3eee"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_processes",
        sa.Column("id", sa.GUID(length=16), nullable=False),
        sa.Column("host_key", sa.String(length=128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_started", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTimeUTC(timezone=True), nullable=False),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_processes")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_id", sa.GUID(length=16), nullable=True))
        batch_op.create_index("ix_messages_status_owner", ["status", "owner_id"], unique=False)


def downgrade() -> None:
    # The previous schema knows no `streaming` answers: keep them, as `interrupted`.
    op.execute("UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_status_owner")
        batch_op.drop_column("owner_id")

    op.drop_table("server_processes")
