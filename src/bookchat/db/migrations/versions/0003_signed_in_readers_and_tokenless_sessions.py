"""signed-in readers and tokenless sessions

Users signed in at the site's identity provider are keyed by the JWT's `sub`
(`users.idp_subject`) and have no bookchat token (`token_hash` becomes nullable). A session
created without a token keeps an HMAC of its client IP (`chat_sessions.client_binding`).
`server_secrets` keeps the generated HMAC key when SESSION_BINDING_SECRET is not set.

Revision ID: c41e5b0d2a96
Revises: a7d3c2e91f04
Create Date: 2026-12-01 17:39:14.858954+00:00

"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from advanced_alchemy.types import DateTimeUTC
from alembic import op

# Autogenerate renders advanced-alchemy's portable types as `sa.<Type>`.
sa.DateTimeUTC = DateTimeUTC  # type: ignore[attr-defined]

# revision identifiers, used by Alembic.
revision = "c41e5b0d2a96"
down_revision = "a7d3c2e91f04"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTimeUTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_secrets")),
    )
    with op.batch_alter_table("chat_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_binding", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_chat_sessions_client_binding", ["client_binding"], unique=False)

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idp_subject", sa.String(length=255), nullable=True))
        batch_op.alter_column("token_hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.create_unique_constraint(batch_op.f("uq_users_idp_subject"), ["idp_subject"])


def downgrade() -> None:
    # Signed-in users have no token: give each an unusable one (never a SHA-256 hex, so no
    # bearer matches it) so `token_hash` can be NOT NULL again; their sessions are kept.
    users = sa.table("users", sa.column("id"), sa.column("token_hash"))
    connection = op.get_bind()
    ids = connection.execute(sa.select(users.c.id).where(users.c.token_hash.is_(None))).scalars()
    for user_id in list(ids):
        connection.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(token_hash="signed-in-" + secrets.token_hex(24))
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_users_idp_subject"), type_="unique")
        batch_op.alter_column("token_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column("idp_subject")

    with op.batch_alter_table("chat_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_sessions_client_binding")
        batch_op.drop_column("client_binding")

    op.drop_table("server_secrets")
