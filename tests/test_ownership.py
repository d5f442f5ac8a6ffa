"""Answers left `streaming` by a dead process are repaired; a live worker's never are."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from uuid_utils.compat import uuid7

from bookchat.db import ownership
from bookchat.db.models import ChatSession, Message, ServerProcess, User, utcnow
from bookchat.db.ownership import ProcessIdentity, process_start

DEAD_AFTER = 30.0


@pytest.fixture
async def sessions(migrated_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(migrated_database_url)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


def exited_process() -> tuple[int, int]:
    """The pid and start time of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = process_start(child.pid)
    assert started is not None
    child.kill()
    child.wait()
    return child.pid, started


async def add_answer(
    session: AsyncSession, owner: UUID | None, *, age: float = 0.0, status: str = "streaming"
) -> UUID:
    user = User(id=uuid7(), token_hash=uuid7().hex)
    chat = ChatSession(id=uuid7(), user_id=user.id, title="t")
    answer = Message(
        id=uuid7(),
        session_id=chat.id,
        role="assistant",
        status=status,
        owner_id=owner,
        created_at=utcnow() - timedelta(seconds=age),
    )
    session.add_all([user, chat, answer])
    await session.commit()
    return answer.id


async def register(session: AsyncSession, who: ProcessIdentity, *, silent_for: float = 0.0) -> None:
    await ownership.heartbeat(session, who)
    row = await session.get(ServerProcess, who.id)
    assert row is not None
    row.heartbeat_at = utcnow() - timedelta(seconds=silent_for)
    await session.commit()


async def statuses(session: AsyncSession, ids: list[UUID]) -> list[str]:
    rows = {m.id: m.status for m in await session.scalars(select(Message))}
    return [rows[i] for i in ids]


async def test_a_live_workers_streaming_answers_are_never_touched(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    me, other_worker = ProcessIdentity.current(), ProcessIdentity.current()
    async with sessions() as session:
        await register(session, other_worker, silent_for=DEAD_AFTER / 2)  # late, not dead
        old = await add_answer(session, other_worker.id, age=3600)
        new = await add_answer(session, other_worker.id)
        repaired = await ownership.interrupt_orphans(session, me, dead_after=DEAD_AFTER)
        assert repaired == 0
        assert await statuses(session, [old, new]) == ["streaming", "streaming"]


async def test_answers_of_a_killed_process_on_this_host_are_interrupted_at_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    pid, started = exited_process()
    killed = ProcessIdentity(pid=pid, pid_started=started)
    # Same pid, other start time: the pid was reused, the owner is gone all the same.
    reused = ProcessIdentity(pid=ProcessIdentity.current().pid, pid_started=1)
    me = ProcessIdentity.current()
    async with sessions() as session:
        await register(session, killed)  # its heartbeat is fresh: it died a moment ago
        await register(session, reused)
        answers = [await add_answer(session, killed.id), await add_answer(session, reused.id)]
        finished = await add_answer(session, killed.id, status="complete")
        assert await ownership.interrupt_orphans(session, me, dead_after=DEAD_AFTER) == 2
        assert await statuses(session, [*answers, finished]) == [
            "interrupted",
            "interrupted",
            "complete",
        ]
        # The dead registrations are gone; this process never registered itself here.
        assert list(await session.scalars(select(ServerProcess))) == []


async def test_a_silent_process_elsewhere_is_dead_after_the_window(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    elsewhere = ProcessIdentity(host_key="another-host", pid=1, pid_started=1)
    me = ProcessIdentity.current()
    async with sessions() as session:
        await register(session, elsewhere, silent_for=DEAD_AFTER - 5)
        answer = await add_answer(session, elsewhere.id)
        assert await ownership.interrupt_orphans(session, me, dead_after=DEAD_AFTER) == 0
        assert await statuses(session, [answer]) == ["streaming"]
        await register(session, elsewhere, silent_for=DEAD_AFTER + 5)
        assert await ownership.interrupt_orphans(session, me, dead_after=DEAD_AFTER) == 1
        assert await statuses(session, [answer]) == ["interrupted"]


async def test_an_unregistered_owner_is_given_the_window_first(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A process whose registration failed (database down at its start) may be streaming.
    me = ProcessIdentity.current()
    async with sessions() as session:
        young = await add_answer(session, uuid7())
        old = await add_answer(session, uuid7(), age=DEAD_AFTER + 5)
        ownerless = await add_answer(session, None, age=DEAD_AFTER + 5)
        assert await ownership.interrupt_orphans(session, me, dead_after=DEAD_AFTER) == 2
        assert await statuses(session, [young, old, ownerless]) == [
            "streaming",
            "interrupted",
            "interrupted",
        ]


async def test_shutdown_interrupts_only_this_process_answers(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    me, other_worker = ProcessIdentity.current(), ProcessIdentity.current()
    async with sessions() as session:
        await register(session, me)
        await register(session, other_worker)
        mine = await add_answer(session, me.id)
        theirs = await add_answer(session, other_worker.id)
        assert await ownership.release(session, me) == 1
        assert await statuses(session, [mine, theirs]) == ["interrupted", "streaming"]
        remaining = [p.id for p in await session.scalars(select(ServerProcess))]
        assert remaining == [other_worker.id]


def test_downgrade_keeps_streaming_answers_as_interrupted(database_url: str) -> None:
    import asyncio

    from sqlalchemy import text

    from bookchat.db.migrate import migration_commands

    commands = migration_commands(database_url)
    commands.upgrade("head")

    async def seed_and_read(seed: bool) -> list[tuple[str, ...]]:
        engine = create_async_engine(database_url)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                if seed:
                    await add_answer(session, uuid7())
                rows = await session.execute(text("SELECT status FROM messages"))
                return [tuple(row) for row in rows]
        finally:
            await engine.dispose()

    assert asyncio.run(seed_and_read(True)) == [("streaming",)]
    commands.downgrade("19c6ed4a3eee")  # below a7d3c2e91f04, whatever came after
    assert asyncio.run(seed_and_read(False)) == [("interrupted",)]
    commands.upgrade("head")
