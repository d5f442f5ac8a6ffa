"""The resume journal on its own: replay after an id, live follow, the grace period,
bounded buffers, and (with Redis) a follower on another worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import NamedTuple

import pytest

from bookchat.chat.journal import ReplayExpiredError, StreamJournal, StreamLostError


class JournalEvent(NamedTuple):
    id: int
    name: str
    data: str


def parse(chunk: bytes) -> list[JournalEvent]:
    """The events in one or more SSE events' bytes (pings skipped)."""
    found = []
    for block in chunk.split(b"\r\n\r\n"):
        if not block or block.startswith(b":"):
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\r\n"))
        found.append(
            JournalEvent(int(fields[b"id"]), fields[b"event"].decode(), fields[b"data"].decode())
        )
    return found


class Source:
    """An answer whose events the test releases one by one; records how it ended."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, dict[str, str]] | None] = asyncio.Queue()
        self.cancelled = False
        self.closed = asyncio.Event()

    def push(self, *names: str) -> None:
        for name in names:
            self.queue.put_nowait((name, {"n": name}))

    def end(self) -> None:
        self.queue.put_nowait(None)

    async def events(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        try:
            while (item := await self.queue.get()) is not None:
                yield item
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed.set()


async def take(
    journal: StreamJournal, message_id: uuid.UUID, after: int, count: int | None = None
) -> list[JournalEvent]:
    """Follow from `after`; stop after `count` events (a dropped reader) or at the end."""
    seen: list[JournalEvent] = []
    async with aclosing(journal.follow(message_id, after, ping_interval=30)) as chunks:
        async for chunk in chunks:
            seen.extend(parse(chunk))
            if count is not None and len(seen) >= count:
                break  # leaving closes the follower, like a dropped connection
    return seen


class Follower:
    """A reader following in a task of its own, so the test can watch it attach."""

    def __init__(self, journal: StreamJournal, message_id: uuid.UUID, after: int) -> None:
        self.events: list[JournalEvent] = []
        self.arrived = asyncio.Condition()
        self.task = asyncio.create_task(self._run(journal, message_id, after))

    async def _run(self, journal: StreamJournal, message_id: uuid.UUID, after: int) -> None:
        async for chunk in journal.follow(message_id, after, ping_interval=30):
            self.events.extend(parse(chunk))
            async with self.arrived:
                self.arrived.notify_all()

    async def until(self, count: int) -> None:
        """Wait (with a deadline) until `count` events have arrived."""
        async with asyncio.timeout(5), self.arrived:
            await self.arrived.wait_for(lambda: len(self.events) >= count)


async def test_replay_after_an_id_then_live_to_done_exactly_once() -> None:
    journal = StreamJournal(grace_period=30, retention=30)
    source, message_id = Source(), uuid.uuid4()
    journal.start(message_id, source.events())
    source.push("session", "citations", "token", "token", "token")
    first = await take(journal, message_id, 0, count=5)
    assert [e.id for e in first] == [1, 2, 3, 4, 5]

    resumed = asyncio.create_task(take(journal, message_id, 3))
    source.push("token", "token", "done")
    later = await asyncio.wait_for(resumed, 5)
    assert [(e.id, e.name) for e in later] == [
        (4, "token"), (5, "token"), (6, "token"), (7, "token"), (8, "done"),
    ]  # fmt: skip
    assert not source.cancelled

    # Every reader got the end: the buffer is freed at done.
    assert not journal.is_local(message_id)
    await journal.close()


async def test_an_answer_that_ends_while_nobody_reads_is_kept_for_a_resume_then_freed() -> None:
    journal = StreamJournal(grace_period=30, retention=30)
    source, message_id = Source(), uuid.uuid4()
    journal.start(message_id, source.events())
    source.push("session", "citations", "token")
    await take(journal, message_id, 0, count=3)  # the reader drops ...
    source.push("token", "done")  # ... and the answer ends without it
    source.end()
    await asyncio.wait_for(journal.wait_finished(message_id), 5)
    assert journal.is_local(message_id) and not source.cancelled
    # Finished: a resume replays to done and closes; then nothing is kept.
    assert [(e.id, e.name) for e in await take(journal, message_id, 3)] == [
        (4, "token"), (5, "done"),
    ]  # fmt: skip
    assert not journal.is_local(message_id)
    await journal.close()


async def test_no_reconnect_stops_the_answer_after_the_grace_period() -> None:
    grace = 0.2
    journal = StreamJournal(grace_period=grace, retention=0)
    source, message_id = Source(), uuid.uuid4()
    journal.start(message_id, source.events())
    source.push("session", "citations", "token", "token", "token")
    await take(journal, message_id, 0, count=5)
    left = time.monotonic()
    await asyncio.wait_for(journal.wait_finished(message_id), 5)
    assert time.monotonic() - left >= grace * 0.9  # not stopped at once ...
    assert source.cancelled and source.closed.is_set()  # ... but stopped
    assert not journal.is_local(message_id)  # retention 0: freed at the end
    await journal.close()


async def test_a_reconnect_within_the_grace_period_keeps_the_answer_going() -> None:
    journal = StreamJournal(grace_period=0.2, retention=5)
    source, message_id = Source(), uuid.uuid4()
    journal.start(message_id, source.events())
    source.push("session", "citations", "token")
    await take(journal, message_id, 0, count=3)
    stream = journal._streams[message_id]
    assert stream.abandon_timer is not None  # the grace period runs ...
    resumed = Follower(journal, message_id, 3)
    source.push("token")
    await resumed.until(1)
    assert stream.abandon_timer is None  # ... and stops when a reader comes back
    await journal._check_abandoned(message_id, stream)  # as if the deadline had come
    assert not stream.task.done()  # type: ignore[union-attr]
    source.push("token", "done")
    await asyncio.wait_for(resumed.task, 5)
    assert [e.id for e in resumed.events] == [4, 5, 6] and not source.cancelled
    await journal.close()


async def test_buffers_are_bounded_and_an_expired_replay_says_so() -> None:
    journal = StreamJournal(grace_period=30, retention=30, max_events=8)
    source, message_id = Source(), uuid.uuid4()
    journal.start(message_id, source.events())
    source.push("session", *["token"] * 30, "done")
    source.end()
    await asyncio.wait_for(journal.wait_finished(message_id), 5)
    assert len(journal._streams[message_id].events) <= 8
    with pytest.raises(ReplayExpiredError):
        await take(journal, message_id, 1)
    tail = await take(journal, message_id, 31)
    assert [e.id for e in tail] == [32]
    await journal.close()


async def test_an_answer_stopped_without_done_ends_its_journal_with_an_error_event() -> None:
    journal = StreamJournal(grace_period=30, retention=30)
    source, message_id = Source(), uuid.uuid4()
    journal.start(message_id, source.events())
    source.push("session", "token")
    await take(journal, message_id, 0, count=2)
    await journal.close()  # shutdown: the running answer is cancelled
    assert source.cancelled
    [final] = [e async for c in journal.follow(message_id, 2, ping_interval=1) for e in parse(c)]
    assert final.name == "error" and '"interrupted"' in final.data


async def test_unknown_message_without_redis_is_lost() -> None:
    journal = StreamJournal()
    assert not journal.is_local(uuid.uuid4())
    with pytest.raises(StreamLostError):
        await take(journal, uuid.uuid4(), 0)


@pytest.mark.redis
async def test_another_worker_resumes_through_redis_and_keeps_the_answer_alive(
    redis_url: str,
) -> None:
    grace = 0.3
    worker_a = StreamJournal(grace_period=grace, retention=30, redis_url=redis_url)
    worker_b = StreamJournal(grace_period=grace, retention=30, redis_url=redis_url)
    source, message_id = Source(), uuid.uuid4()
    worker_a.start(message_id, source.events())
    source.push("session", "citations", "token", "token", "token")
    await take(worker_a, message_id, 0, count=5)  # the reader on worker A drops here

    assert not worker_b.is_local(message_id)
    assert worker_b._mirror is not None
    deadline = time.monotonic() + 5
    while await worker_b._mirror.first_id(message_id) is None:  # A's mirror writes ...
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # ... in the background: poll Redis until it has
    resumed = Follower(worker_b, message_id, 3)
    source.push("token")
    await resumed.until(2)
    # A has no local reader; when its grace deadline comes, B's watch keeps the answer going.
    stream = worker_a._streams[message_id]
    await worker_a._check_abandoned(message_id, stream)
    assert not stream.task.done() and stream.abandon_timer is not None  # type: ignore[union-attr]
    source.push("token", "done")
    await asyncio.wait_for(resumed.task, 5)
    assert [(e.id, e.name) for e in resumed.events] == [
        (4, "token"), (5, "token"), (6, "token"), (7, "token"), (8, "done"),
    ]  # fmt: skip
    assert not source.cancelled

    # Nobody comes back for a second answer: A stops it once B's watch has run out too.
    source2, second = Source(), uuid.uuid4()
    worker_a.start(second, source2.events())
    source2.push("session", "token")
    await take(worker_a, second, 0, count=2)
    await asyncio.wait_for(worker_a.wait_finished(second), 5)
    assert source2.cancelled
    await worker_a.close()
    await worker_b.close()


async def test_a_stuck_reader_holds_the_answer_back_then_counts_as_dropped_and_can_resume() -> None:
    journal = StreamJournal(grace_period=30, retention=30, buffer_events=4, write_timeout=0.3)
    source, message_id = Source(), uuid.uuid4()
    stuck = asyncio.get_running_loop().create_future()
    taken: list[JournalEvent] = []

    answer = journal.answer(message_id, source.events(), ping_interval=30)

    async def stuck_reader() -> None:
        async for chunk in answer:
            taken.extend(parse(chunk))
            await stuck  # the client's socket is full: this send never returns

    reader = asyncio.create_task(stuck_reader())
    source.push("session")
    deadline = time.monotonic() + 5
    while not taken:  # the reader got the first event and is now stuck in its send
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    source.push(*["token"] * 20)
    # Backpressure: the answer stops pulling within the buffer of the stuck reader ...
    while journal._streams[message_id].room is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # polls for the answer's wait on the reader
    assert journal._streams[message_id].last_id <= len(taken) + 4 + 1
    # ... and after the write timeout the reader is treated as gone: its send is cancelled.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(reader, 5)
    assert not source.cancelled  # the answer goes on: the grace period has started
    source.push("done")
    source.end()
    rest = await take(journal, message_id, taken[-1].id)
    assert [e.id for e in taken + rest] == list(range(1, 23))
    assert rest[-1].name == "done"
    await journal.close()


async def test_a_redis_outage_is_one_warning_not_one_per_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on port 1: every mirror write fails, the local readers are served.
    journal = StreamJournal(retention=30, redis_url="redis://127.0.0.1:1/0")
    source, message_id = Source(), uuid.uuid4()
    journal.start(message_id, source.events())
    mirror = journal._mirror
    assert mirror is not None
    reader = Follower(journal, message_id, 0)
    names = ["session", "citations", "token", "token", "done"]
    with caplog.at_level("WARNING", logger="bookchat.chat.journal"):
        for count, name in enumerate(names, 1):
            source.push(name)
            await reader.until(count)  # journaled, so queued for Redis
            await mirror._queue.join()  # one batch written (and failed) per event
    await reader.task
    await journal.close()
    assert [e.name for e in reader.events] == names
    failures = [r for r in caplog.records if "Redis write failed" in r.getMessage()]
    assert len(failures) == 1
    assert mirror._failed_batches == len(names)
