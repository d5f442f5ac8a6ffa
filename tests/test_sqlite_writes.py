"""SQLite writes held for the commit (`InlineCursorConnection.defer_writes`): one trip to
aiosqlite's thread per transaction, with the same outcomes as statement by statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bookchat.db.config import InlineCursorConnection, create_engine, defer_sqlite_writes
from tests.conftest import make_settings

METADATA = MetaData()
ITEMS = Table(
    "items",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(tmp_path))
    async with engine.begin() as connection:
        await connection.run_sync(METADATA.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The calls sent to aiosqlite's thread, as they are made."""
    sent: list[Any] = []
    original = InlineCursorConnection._execute

    async def counted(self: InlineCursorConnection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(fn)
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(InlineCursorConnection, "_execute", counted)
    return sent


async def _names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(ITEMS.c.name).order_by(ITEMS.c.id))).scalars())


async def test_held_writes_go_to_the_thread_with_the_commit(
    engine: AsyncEngine, trips: list[Any]
) -> None:
    async with engine.connect() as connection:
        defer_sqlite_writes(connection)
        await connection.execute(insert(ITEMS), {"id": 1, "name": "one"})
        await connection.execute(insert(ITEMS), [{"id": 2, "name": "two"}, {"id": 3, "name": "3"}])
        assert trips == []  # nothing sent yet
        await connection.commit()
    assert len(trips) == 1  # the writes and the commit, one trip
    assert await _names(engine) == ["one", "two", "3"]


async def test_without_deferring_the_first_write_and_the_commit_are_two_trips(
    engine: AsyncEngine, trips: list[Any]
) -> None:
    async with engine.connect() as connection:
        await connection.execute(insert(ITEMS), {"id": 1, "name": "one"})
        await connection.execute(insert(ITEMS), {"id": 2, "name": "two"})
        await connection.commit()
    assert len(trips) == 2
    assert await _names(engine) == ["one", "two"]


async def test_a_failing_held_write_raises_from_the_commit_and_rolls_back(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(ITEMS), {"id": 1, "name": "kept"})
    async with engine.connect() as connection:
        defer_sqlite_writes(connection)
        await connection.execute(insert(ITEMS), {"id": 2, "name": "lost"})
        await connection.execute(insert(ITEMS), {"id": 1, "name": "duplicate"})
        with pytest.raises(IntegrityError):
            await connection.commit()
        await connection.rollback()
        # The connection goes on: the next transaction is an ordinary one.
        await connection.execute(insert(ITEMS), {"id": 3, "name": "after"})
        await connection.commit()
    assert await _names(engine) == ["kept", "after"]


async def test_a_read_sees_the_held_writes(engine: AsyncEngine, trips: list[Any]) -> None:
    async with engine.connect() as connection:
        defer_sqlite_writes(connection)
        await connection.execute(insert(ITEMS), {"id": 1, "name": "one"})
        count = (await connection.execute(select(func.count()).select_from(ITEMS))).scalar()
        assert count == 1
        await connection.execute(insert(ITEMS), {"id": 2, "name": "two"})  # held no more
        await connection.commit()
    assert await _names(engine) == ["one", "two"]


async def test_a_rollback_drops_the_held_writes(engine: AsyncEngine, trips: list[Any]) -> None:
    async with engine.connect() as connection:
        defer_sqlite_writes(connection)
        await connection.execute(insert(ITEMS), {"id": 1, "name": "dropped"})
        await connection.rollback()
        assert trips == []  # nothing was sent, so nothing to undo
        await connection.execute(insert(ITEMS), {"id": 2, "name": "kept"})
        await connection.commit()
    assert await _names(engine) == ["kept"]
