"""Resumable answer streams: every answer's SSE events journaled so a reader can reconnect.

An answer runs in a task of its own (`StreamJournal.start`) that appends each event, with
its SSE id (1, 2, 3, …), to an in-process buffer; `follow()` replays the events after a
`Last-Event-ID` and goes on live until `done` or `error`. The POST that asked is just the
first follower. When the last follower leaves, the answer keeps going for
`grace_period` seconds; if nobody follows again by then, its task is cancelled (the
service saves the partial answer as `interrupted` and closes the provider stream).

With Redis, events are also mirrored to one Redis stream per message (`XADD` with the SSE
id as the entry id, `MAXLEN` bounded, expiring), written by one background task in
pipelined batches so the token path never waits on Redis. A follower on another worker or
replica reads that stream and keeps a watch key alive, which the producing worker checks
before it gives up on its readers. Without Redis, only the worker that runs the answer
can resume it (docs: several workers without Redis).

Buffers are bounded (`max_events` per answer) and freed `retention` seconds after the
final event (0: at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger("bookchat.chat.journal")

TERMINAL = frozenset({"done", "error"})
# Closes a journal whose answer stopped without a final event (shutdown, abandoned).
INTERRUPTED = (
    '{"code":"interrupted","message":"the answer was stopped before it finished","retryable":true}'
)
KEY_PREFIX = "bookchat:resume:"
_MIN_LIVE_TTL = 300.0  # a live answer's Redis keys outlive any generation deadline


class JournalEvent(NamedTuple):
    id: int
    name: str
    data: str


class Owner(NamedTuple):
    user_id: UUID
    session_id: UUID


class ReplayExpiredError(Exception):
    """The events after the requested id are no longer buffered."""


class StreamLostError(Exception):
    """The worker producing the answer stopped writing it (crashed or lost Redis)."""


@dataclass(eq=False)
class _Stream:
    owner: Owner
    events: list[JournalEvent] = field(default_factory=list)
    first_id: int = 1  # id of events[0] (older ones were dropped to stay bounded)
    finished: bool = False
    watchers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    abandon_timer: asyncio.TimerHandle | None = None

    @property
    def last_id(self) -> int:
        return self.first_id + len(self.events) - 1

    def append(self, event: JournalEvent, max_events: int) -> None:
        self.events.append(event)
        if len(self.events) > max_events:
            # Drop a quarter at a time: amortised O(1) per event, bounded memory.
            drop = len(self.events) - max_events + max_events // 4
            del self.events[:drop]
            self.first_id += drop
        self.changed.set()
        self.changed = asyncio.Event()


def _keys(message_id: UUID) -> tuple[str, str, str]:
    base = f"{KEY_PREFIX}{message_id}"
    return f"{base}:events", f"{base}:owner", f"{base}:watch"


class _RedisMirror:
    """Writes journal events to Redis in order, batched; reads them for other workers."""

    def __init__(self, url: str, *, max_events: int, retention: float, live_ttl: float) -> None:
        import redis.asyncio as aioredis

        # No socket timeout: XREAD blocks on purpose (its own BLOCK bounds the wait).
        self.redis: aioredis.Redis = aioredis.Redis.from_url(url, socket_connect_timeout=1.0)
        self.max_events = max_events
        self.retention = retention
        self.live_ttl_ms = int(live_ttl * 1000)
        self._queue: asyncio.Queue[tuple[str, UUID, Any]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def publish(self, kind: str, message_id: UUID, value: Any) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        self._queue.put_nowait((kind, message_id, value))

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for kind, message_id, value in batch:
                        self._add(pipe, kind, message_id, value)
                    await pipe.execute()
            except Exception as exc:  # the local buffer still serves this worker's readers
                logger.warning(
                    "resume journal: Redis write failed", extra={"error": type(exc).__name__}
                )
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _add(self, pipe: Any, kind: str, message_id: UUID, value: Any) -> None:
        events, owner, _watch = _keys(message_id)
        if kind == "owner":
            pipe.set(owner, f"{value.user_id} {value.session_id}", px=self.live_ttl_ms)
        elif kind == "event":
            event: JournalEvent = value
            pipe.xadd(
                events,
                {"e": event.name, "d": event.data},
                id=f"{event.id}-0",
                maxlen=self.max_events,
                approximate=False,
            )
            pipe.pexpire(events, self.live_ttl_ms)
            pipe.pexpire(owner, self.live_ttl_ms)
        elif kind == "finished":
            if self.retention > 0:
                pipe.pexpire(events, int(self.retention * 1000))
                pipe.pexpire(owner, int(self.retention * 1000))
            else:
                pipe.delete(events, owner)

    async def owner(self, message_id: UUID) -> Owner | None:
        raw: Any = await self.redis.get(_keys(message_id)[1])
        if not raw:
            return None
        user_id, _, session_id = raw.decode().partition(" ")
        return Owner(UUID(user_id), UUID(session_id))

    async def watch(self, message_id: UUID, grace_ms: int) -> None:
        await self.redis.set(_keys(message_id)[2], b"1", px=max(1, grace_ms))

    async def watch_left_ms(self, message_id: UUID) -> int:
        return int(await self.redis.pttl(_keys(message_id)[2]))

    async def read(
        self, message_id: UUID, after: int, block_ms: int
    ) -> tuple[list[JournalEvent], bool]:
        """Events after `after` (waits up to `block_ms`); also whether the stream exists."""
        key = _keys(message_id)[0]
        reply: Any = await self.redis.xread({key: f"{after}-0"}, count=500, block=max(1, block_ms))
        events = [
            JournalEvent(int(entry_id.decode().split("-")[0]), f[b"e"].decode(), f[b"d"].decode())
            for _key, entries in reply or []
            for entry_id, f in entries
        ]
        if events:
            return events, True
        return [], bool(await self.redis.exists(key, _keys(message_id)[1]))

    async def first_id(self, message_id: UUID) -> int | None:
        entries: Any = await self.redis.xrange(_keys(message_id)[0], count=1)
        return int(entries[0][0].decode().split("-")[0]) if entries else None

    async def close(self) -> None:
        if self._writer is not None:
            # Flush what is queued (bounded), then stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.redis.aclose()


class StreamJournal:
    """The answers this process is generating (and those of others, through Redis)."""

    def __init__(
        self,
        *,
        grace_period: float = 10.0,
        retention: float = 60.0,
        max_events: int = 10_000,
        redis_url: str | None = None,
        live_ttl: float | None = None,
    ) -> None:
        self.grace_period = grace_period
        self.retention = retention
        self.max_events = max_events
        self._streams: dict[UUID, _Stream] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._mirror = (
            _RedisMirror(
                redis_url,
                max_events=max_events,
                retention=retention,
                live_ttl=max(live_ttl or 0.0, _MIN_LIVE_TTL),
            )
            if redis_url
            else None
        )

    # ---- producing

    def start(self, message_id: UUID, owner: Owner, events: AsyncIterator[tuple[str, str]]) -> None:
        """Run `events` (name, JSON data) to the end in a task of its own, journaling each."""
        stream = _Stream(owner=owner)
        self._streams[message_id] = stream
        if self._mirror is not None:
            self._mirror.publish("owner", message_id, owner)
        stream.task = asyncio.get_running_loop().create_task(
            self._produce(message_id, stream, events)
        )
        # Nobody follows yet: the first follower (the POST) must attach within the grace.
        self._arm_abandon_timer(message_id, stream)

    async def _produce(
        self, message_id: UUID, stream: _Stream, events: AsyncIterator[tuple[str, str]]
    ) -> None:
        next_id = 1
        try:
            async for name, data in events:
                event = JournalEvent(next_id, name, data)
                next_id += 1
                stream.append(event, self.max_events)
                if self._mirror is not None:
                    self._mirror.publish("event", message_id, event)
        finally:
            if not stream.events or stream.events[-1].name not in TERMINAL:
                event = JournalEvent(next_id, "error", INTERRUPTED)
                stream.append(event, self.max_events)
                if self._mirror is not None:
                    self._mirror.publish("event", message_id, event)
            stream.finished = True
            stream.changed.set()
            if stream.abandon_timer is not None:
                stream.abandon_timer.cancel()
            if self._mirror is not None:
                self._mirror.publish("finished", message_id, None)
            self._free_later(message_id, stream)

    def _free_later(self, message_id: UUID, stream: _Stream) -> None:
        def free() -> None:
            if self._streams.get(message_id) is stream:
                del self._streams[message_id]

        if self.retention > 0:
            asyncio.get_running_loop().call_later(self.retention, free)
        else:
            free()

    # ---- abandonment: the grace period after the last reader left

    def _arm_abandon_timer(
        self, message_id: UUID, stream: _Stream, delay: float | None = None
    ) -> None:
        if stream.abandon_timer is not None:
            stream.abandon_timer.cancel()
        stream.abandon_timer = asyncio.get_running_loop().call_later(
            self.grace_period if delay is None else delay,
            lambda: self._spawn(self._check_abandoned(message_id, stream)),
        )

    async def _check_abandoned(self, message_id: UUID, stream: _Stream) -> None:
        stream.abandon_timer = None
        if stream.finished or stream.watchers > 0:
            return
        if self._mirror is not None:
            try:
                left_ms = await self._mirror.watch_left_ms(message_id)
            except Exception:
                left_ms = -1  # Redis down: only local readers count
            if stream.finished or stream.watchers > 0:
                return
            if left_ms > 0:  # a reader on another worker: look again when its watch ends
                self._arm_abandon_timer(message_id, stream, left_ms / 1000)
                return
        logger.info(
            "answer abandoned after the grace period", extra={"message_id": str(message_id)}
        )
        if stream.task is not None:
            stream.task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- following

    async def owner(self, message_id: UUID) -> Owner | None:
        """Who may follow this answer; None when no worker journals it (any more)."""
        stream = self._streams.get(message_id)
        if stream is not None:
            return stream.owner
        if self._mirror is not None:
            try:
                return await self._mirror.owner(message_id)
            except Exception as exc:
                logger.warning(
                    "resume journal: Redis read failed", extra={"error": type(exc).__name__}
                )
        return None

    def is_local(self, message_id: UUID) -> bool:
        return message_id in self._streams

    async def follow(
        self, message_id: UUID, after: int, *, ping_interval: float
    ) -> AsyncIterator[JournalEvent | None]:
        """Events with id > `after`, live until the final one; None after `ping_interval` idle.

        Raises `ReplayExpiredError` when those events are no longer buffered, and
        `StreamLostError` when the answer's journal disappears before its final event.
        """
        stream = self._streams.get(message_id)
        if stream is not None:
            source = self._follow_local(message_id, stream, after, ping_interval)
        elif self._mirror is not None:
            source = self._follow_redis(message_id, after, ping_interval)
        else:
            raise StreamLostError(str(message_id))
        # aclosing: a reader that leaves must run the inner generator's cleanup at once.
        async with contextlib.aclosing(source) as events:
            async for event in events:
                yield event

    async def _follow_local(
        self, message_id: UUID, stream: _Stream, after: int, ping_interval: float
    ) -> AsyncGenerator[JournalEvent | None, None]:
        stream.watchers += 1
        if stream.abandon_timer is not None:
            stream.abandon_timer.cancel()
            stream.abandon_timer = None
        position = after
        try:
            while True:
                if position + 1 < stream.first_id:
                    raise ReplayExpiredError(str(message_id))
                while position < stream.last_id:
                    event = stream.events[position + 1 - stream.first_id]
                    position = event.id
                    yield event
                    if event.name in TERMINAL:
                        return
                    if position + 1 < stream.first_id:  # the reader fell behind the bound
                        raise ReplayExpiredError(str(message_id))
                if stream.finished or (stream.events and stream.events[-1].name in TERMINAL):
                    return
                changed = stream.changed
                try:
                    async with asyncio.timeout(ping_interval):
                        await changed.wait()
                except TimeoutError:
                    yield None
        finally:
            stream.watchers -= 1
            if stream.watchers == 0 and not stream.finished:
                self._arm_abandon_timer(message_id, stream)

    async def _follow_redis(
        self, message_id: UUID, after: int, ping_interval: float
    ) -> AsyncGenerator[JournalEvent | None, None]:
        mirror = self._mirror
        assert mirror is not None
        grace_ms = int(self.grace_period * 1000)
        heartbeat = max(self.grace_period / 3, 0.01)
        block_ms = int(min(ping_interval, heartbeat) * 1000)
        first = await mirror.first_id(message_id)
        if first is not None and after + 1 < first:
            raise ReplayExpiredError(str(message_id))
        position = after
        idle_since = watched_at = time.monotonic()
        await mirror.watch(message_id, grace_ms)
        try:
            while True:
                events, exists = await mirror.read(message_id, position, block_ms)
                now = time.monotonic()
                if now - watched_at >= heartbeat:
                    await mirror.watch(message_id, grace_ms)
                    watched_at = now
                for event in events:
                    if event.id != position + 1:  # trimmed while we read
                        raise ReplayExpiredError(str(message_id))
                    position = event.id
                    idle_since = now
                    yield event
                    if event.name in TERMINAL:
                        return
                if not events:
                    if not exists:
                        raise StreamLostError(str(message_id))
                    if now - idle_since >= ping_interval:
                        idle_since = now
                        yield None
        finally:
            # The reader left now: its watch (and so the grace period) ends `grace` from now.
            self._spawn(self._rewatch(message_id, grace_ms))

    async def _rewatch(self, message_id: UUID, grace_ms: int) -> None:
        assert self._mirror is not None
        with contextlib.suppress(Exception):
            await self._mirror.watch(message_id, grace_ms)

    # ---- lifecycle

    async def wait_finished(self, message_id: UUID) -> None:
        """Until this process's answer `message_id` has ended (tests, shutdown)."""
        stream = self._streams.get(message_id)
        if stream is not None and stream.task is not None:
            await asyncio.gather(stream.task, return_exceptions=True)

    def active(self) -> int:
        return sum(1 for s in self._streams.values() if not s.finished)

    async def close(self) -> None:
        """Stop every answer still running (each saves itself as interrupted)."""
        tasks = [s.task for s in self._streams.values() if s.task is not None and not s.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._mirror is not None:
            await self._mirror.close()
