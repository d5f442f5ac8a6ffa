"""SQLite writes held for the commit (`InlineCursorConnection.defer_writes`): one trip to
aiosqlite's thread per transaction, with the same outcomes as statement by statement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from advanced_alchemy.types import GUID, DateTimeUTC, JsonB
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bookchat.db.config import (
    InlineCursorConnection,
    create_engine,
    defer_sqlite_writes,
    hold_sqlite_writes,
)
from tests.conftest import make_settings

METADATA = MetaData()
ITEMS = Table(
    "items",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
)
NOTES = Table(
    "notes",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("body", JsonB, nullable=True),
    Column("at", DateTimeUTC(timezone=True), nullable=False),
    Column("kind", String, nullable=False, default="plain"),
    Column("ref", GUID, nullable=True),
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


def _held_and_executed(connection: Connection) -> list[bool]:
    """Notes 1-3 held directly, notes 4-6 through `Connection.execute`, then the commit."""
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    held = hold_sqlite_writes(connection)
    assert held is not None
    added = []
    for offset, hold in ((0, True), (3, False)):
        ref = UUID("0190f3c4-5e6f-7a8b-9cad-bedf01234567")
        one = {"id": 1 + offset, "body": {"a": [1, "x"]}, "at": at, "kind": "k", "ref": ref}
        # UTC datetimes and stdlib UUIDs take a shorter path: others (an offset, a UUID's
        # text) must still be stored as SQLAlchemy and advanced-alchemy store them.
        elsewhere = at.astimezone(timezone(timedelta(hours=2)))
        rows = [
            {**one, "id": 2 + offset, "body": None, "at": elsewhere, "ref": None},
            {**one, "id": 3 + offset, "ref": str(ref)},
        ]
        touch = {"note_id": 3 + offset, "body": [7]}
        statements: list[tuple[Any, Any]] = [
            (insert(NOTES), one),
            (insert(NOTES), rows),
            (update(NOTES).where(NOTES.c.id == bindparam("note_id")), touch),
        ]
        for statement, parameters in statements:
            if hold:
                added.append(held.add(statement, parameters))
            else:
                connection.execute(statement, parameters)
    connection.commit()
    return added


async def test_held_core_writes_store_what_execute_stores(
    engine: AsyncEngine, trips: list[Any]
) -> None:
    async with engine.connect() as connection:
        await connection.run_sync(lambda c: METADATA.create_all(c, tables=[NOTES]))
        await connection.commit()
    trips.clear()
    async with engine.connect() as connection:
        assert await connection.run_sync(_held_and_executed) == [True, True, True]
    assert len(trips) == 1  # the writes and the commit, one trip
    async with engine.connect() as connection:
        stored = (await connection.execute(select(NOTES).order_by(NOTES.c.id))).all()
        raw = (await connection.exec_driver_sql("SELECT * FROM notes ORDER BY id")).all()
    assert [tuple(row[1:]) for row in stored[:3]] == [tuple(row[1:]) for row in stored[3:]]
    assert [tuple(row[1:]) for row in raw[:3]] == [tuple(row[1:]) for row in raw[3:]]
    assert stored[2].body == [7] and stored[1].body is None
    assert stored[0].ref == stored[2].ref == UUID("0190f3c4-5e6f-7a8b-9cad-bedf01234567")
    assert stored[1].at == stored[0].at


async def test_a_write_with_a_default_computed_at_execution_is_not_held(
    engine: AsyncEngine,
) -> None:
    def add_without_kind(connection: Connection) -> bool:
        held = hold_sqlite_writes(connection)
        assert held is not None
        row = {"id": 1, "body": None, "at": datetime.now(UTC)}  # `kind` has a default
        return held.add(insert(NOTES), row)

    async with engine.connect() as connection:
        await connection.run_sync(lambda c: METADATA.create_all(c, tables=[NOTES]))
        assert not await connection.run_sync(add_without_kind)


async def test_a_question_joins_the_request_sessions_open_transaction(
    engine: AsyncEngine,
) -> None:
    # A session that already wrote holds SQLite's write lock: the question must be written
    # and committed in that transaction, not on a connection of its own that would wait.
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bookchat.chat.service import _write_session_and_commit

    async with async_sessionmaker(engine)() as session:
        await session.execute(insert(ITEMS).values(id=1, name="earlier write"))
        statements = [(insert(ITEMS), {"id": 2, "name": "question"})]
        await session.run_sync(_write_session_and_commit, statements)
        assert not session.in_transaction()
    async with engine.connect() as connection:
        stored = (await connection.execute(select(ITEMS.c.name).order_by(ITEMS.c.id))).all()
    assert [name for (name,) in stored] == ["earlier write", "question"]


async def test_the_request_session_commits_nothing_when_it_began_nothing(
    tmp_path: Path,
) -> None:
    # advanced-alchemy commits every request's session as its response starts; an untouched
    # one must not begin a transaction just to end it, and one that wrote still commits.
    from sqlalchemy import event, text

    from bookchat.db.config import make_alchemy_config

    config = make_alchemy_config(make_settings(tmp_path))
    session = config.create_session_maker()()
    begun: list[object] = []
    event.listen(session.sync_session, "after_transaction_create", lambda *_: begun.append(1))
    try:
        await session.commit()
        assert begun == []
        await session.execute(text("CREATE TABLE notes (text TEXT)"))
        await session.execute(text("INSERT INTO notes VALUES ('kept')"))
        await session.commit()
        assert begun and not session.in_transaction()
        assert (await session.execute(text("SELECT text FROM notes"))).scalar_one() == "kept"
    finally:
        await session.close()
        await config.get_engine().dispose()


async def test_the_request_session_closes_at_once_when_it_holds_nothing(
    tmp_path: Path,
) -> None:
    # An untouched session has nothing to close (no greenlet for SQLAlchemy's close); one
    # that holds a transaction still closes it.
    from sqlalchemy import text

    from bookchat.db.config import make_alchemy_config

    config = make_alchemy_config(make_settings(tmp_path))
    maker = config.create_session_maker()
    try:
        untouched = maker()
        closes: list[object] = []
        untouched.sync_session.close = lambda: closes.append(1)  # type: ignore[method-assign]
        await untouched.close()
        assert closes == [] and not untouched.in_transaction()

        session = maker()
        await session.execute(text("SELECT 1"))
        assert session.in_transaction()
        await session.close()
        assert not session.in_transaction()
    finally:
        await config.get_engine().dispose()


def _chat_service(engine: AsyncEngine) -> Any:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bookchat.chat.service import ChatService

    return ChatService(
        None,  # type: ignore[arg-type]  # the pipeline: not used by its writes
        async_sessionmaker(engine),
        connect=engine.sync_engine.connect,
        history_messages=4,
    )


async def test_chats_writes_that_queue_together_are_committed_together(
    engine: AsyncEngine, trips: list[Any]
) -> None:
    chat = _chat_service(engine)
    await chat._write_grouped([(insert(ITEMS), {"id": 0, "name": "alone"})])
    alone = len(trips)
    trips.clear()
    writes = [[(insert(ITEMS), {"id": n, "name": f"item {n}"})] for n in range(1, 6)]
    assert await asyncio.gather(*(chat._write_grouped(w) for w in writes)) == [None] * 5
    # The first finds nothing in flight and goes at once; the four that queued behind it
    # go together: the trips of two writes, not five.
    assert len(trips) == 2 * alone
    assert await _names(engine) == ["alone", *(f"item {n}" for n in range(1, 6))]


async def test_a_grouped_write_that_fails_fails_its_own_chat_only(engine: AsyncEngine) -> None:
    chat = _chat_service(engine)
    await chat._write_grouped([(insert(ITEMS), {"id": 1, "name": "first"})])
    writes = [
        [(insert(ITEMS), {"id": 2, "name": "two"})],
        [(insert(ITEMS), {"id": 1, "name": "a duplicate id"})],
        [
            (insert(ITEMS), {"id": 3, "name": "three"}),
            (update(ITEMS).where(ITEMS.c.id == 3), {"name": "three, renamed"}),
        ],
    ]
    results = await asyncio.gather(
        *(chat._write_grouped(w) for w in writes), return_exceptions=True
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IntegrityError)
    assert await _names(engine) == ["first", "two", "three, renamed"]
