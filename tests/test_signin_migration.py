"""Migration c41e5b0d2a96 (signed-in readers, tokenless sessions) up and down with data, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from bookchat.db.migrate import migration_commands

BEFORE, AFTER = "a7d3c2e91f04", "c41e5b0d2a96"


def _config(database_url: str) -> Config:
    return migration_commands(database_url).config


def _id(database_url: str, value: uuid.UUID) -> Any:
    # advanced-alchemy's GUID: BINARY(16) on SQLite, native uuid on PostgreSQL.
    return value.bytes if database_url.startswith("sqlite") else value


async def _run(database_url: str, *statements: tuple[str, dict[str, Any]]) -> list[Any]:
    engine = create_async_engine(database_url)
    results = []
    try:
        async with engine.begin() as connection:
            for sql, params in statements:
                result = await connection.execute(text(sql), params)
                results.append(result.all() if result.returns_rows else None)
    finally:
        await engine.dispose()
    return results


async def _columns(database_url: str, table: str) -> set[str]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns(table)}
            )
    finally:
        await engine.dispose()


NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
USER = (
    "INSERT INTO users (id, token_hash, tier, created_at, last_seen_at) "
    "VALUES (:id, :h, 'token', :now, :now)"
)
SIGNED_IN_USER = (
    "INSERT INTO users (id, token_hash, idp_subject, tier, created_at, last_seen_at) "
    "VALUES (:id, NULL, 'reader-1', 'token', :now, :now)"
)
SESSION = (
    "INSERT INTO chat_sessions (id, user_id, title, status, created_at, last_activity) "
    "VALUES (:id, :user, 'lidar', 'active', :now, :now)"
)


def test_signin_migration_up_and_down_keeps_every_row(database_url: str) -> None:
    config = _config(database_url)
    command.upgrade(config, BEFORE)
    guest, guest_chat = uuid.uuid4(), uuid.uuid4()
    asyncio.run(
        _run(
            database_url,
            (USER, {"id": _id(database_url, guest), "h": "a" * 64, "now": NOW}),
            (
                SESSION,
                {"id": _id(database_url, guest_chat), "user": _id(database_url, guest), "now": NOW},
            ),
        )
    )

    command.upgrade(config, AFTER)
    assert {"idp_subject"} <= asyncio.run(_columns(database_url, "users"))
    assert {"client_binding"} <= asyncio.run(_columns(database_url, "chat_sessions"))
    reader, reader_chat = uuid.uuid4(), uuid.uuid4()
    asyncio.run(
        _run(
            database_url,
            (SIGNED_IN_USER, {"id": _id(database_url, reader), "now": NOW}),
            (
                SESSION,
                {
                    "id": _id(database_url, reader_chat),
                    "user": _id(database_url, reader),
                    "now": NOW,
                },
            ),
            (
                "UPDATE chat_sessions SET client_binding = :b WHERE id = :id",
                {"b": "f" * 64, "id": _id(database_url, guest_chat)},
            ),
            (
                "INSERT INTO server_secrets (name, value, created_at) VALUES ('k', 'v', :now)",
                {"now": NOW},
            ),
        )
    )
    with pytest.raises(IntegrityError):  # one user per `sub`
        asyncio.run(
            _run(
                database_url,
                (SIGNED_IN_USER, {"id": _id(database_url, uuid.uuid4()), "now": NOW}),
            )
        )

    command.downgrade(config, BEFORE)
    assert "idp_subject" not in asyncio.run(_columns(database_url, "users"))
    assert "client_binding" not in asyncio.run(_columns(database_url, "chat_sessions"))
    [users, sessions] = asyncio.run(
        _run(
            database_url,
            ("SELECT token_hash FROM users ORDER BY token_hash", {}),
            ("SELECT count(*) FROM chat_sessions", {}),
        )
    )
    hashes = [row[0] for row in users]
    assert hashes[0] == "a" * 64  # the guest keeps its token
    assert hashes[1].startswith("signed-in-") and len(hashes[1]) <= 64  # unusable, not NULL
    assert sessions[0][0] == 2  # both conversations kept

    command.upgrade(config, "head")
    command.check(config)
