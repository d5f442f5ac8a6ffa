"""Resumable answer streams: every answer's SSE events journaled so a reader can reconnect.

An answer runs in a task of its own (`StreamJournal.answer`) that encodes each event once
as SSE bytes with its id (1, 2, 3, …) and appends it to an in-process buffer. Readers
("followers") replay the bytes after a `Last-Event-ID` and go on live until `done` or
`error`; the POST that asked is just the first follower. When the last follower leaves,
the answer keeps going for `grace_period` seconds; if nobody follows again by then, its
task is cancelled (the service saves the partial answer as `interrupted` and closes the
provider stream). A grace period of 0 stops it at once, as before resuming existed.

Backpressure and slow readers: the answer stops pulling from the provider while a
follower on this worker is more than `buffer_events` events behind (its socket does not
drain); if that lasts `write_timeout` seconds, the follower is treated as gone (its
response is cancelled) and the grace period starts.

With Redis, events are also mirrored to one Redis stream per message, written by one
background task in pipelined batches (one `XADD` per message per batch, `MAXLEN`
bounded, expiring), so the token path never waits on Redis. A follower on another worker
or replica reads that stream and keeps a watch key alive, which the producing worker
checks before it gives up on its readers. Without Redis, only the worker that runs the
answer can resume it (README, "Resuming a dropped stream").

A reader who presses Stop means it (`StreamJournal.stop`): the answer's task is cancelled
at once, with no grace period, so the saved answer ends about where the reader stopped
reading and the provider stream is closed. On another worker the request travels as a
Redis key that the producing worker's mirror checks with each batch it writes.

Buffers are bounded (`max_events` per answer) and freed when the answer has finished and
every follower has received its final event, or `retention` seconds after the end when
no follower was attached then (a reader that dropped may still come back for the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import msgspec

from bookchat import metrics

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger("bookchat.chat.journal")

TERMINAL = frozenset({"done", "error"})
PING = b": ping\r\n\r\n"
KEY_PREFIX = "bookchat:resume:"
_MIN_LIVE_TTL = 300.0  # a live answer's Redis keys outlive any generation deadline
_FIRST_FOLLOWER_WAIT = 10.0
REDIS_SOCKET_TIMEOUT = 30.0  # the POST's own follower attaches within this, grace or not


class _Interrupted(msgspec.Struct):
    code: str = "interrupted"
    message: str = "the answer was stopped before it finished"
    retryable: bool = True


_INTERNAL_ERROR = {"code": "internal_error", "message": "internal error", "retryable": True}


def sse_event(name: str, event_id: int, payload: Any) -> bytes:
    """One SSE event, byte for byte what Litestar's `ServerSentEventMessage` would send.

    Litestar's encoder (StringIO, two regexes per event) costs more than the rest of a
    token's trip; msgspec's JSON never holds a raw newline, so one `data:` line is enough.
    """
    return _SSE_EVENT % (event_id, name.encode(), msgspec.json.encode(payload))


_SSE_EVENT = b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n"


class ReplayExpiredError(Exception):
    """The events after the requested id are no longer buffered."""


class StreamLostError(Exception):
    """No worker journals this answer (any more): finished and freed, or elsewhere."""


@dataclass(eq=False)
class _Follower:
    position: int  # id of the last event handed to this reader
    writer: asyncio.Task[Any] | None  # the task sending this reader's response
    waiter: asyncio.Future[bytes | None] | None = None


@dataclass(eq=False)
class _Stream:
    events: list[bytes] = field(default_factory=list)  # SSE bytes of ids first_id..last_id
    first_id: int = 1  # id of events[0] (older ones were dropped to stay bounded)
    ended: bool = False  # the final event (`done` / `error`) is in
    finished: bool = False  # and the answer's task is over
    followers: list[_Follower] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    abandon_timer: asyncio.TimerHandle | None = None
    room: asyncio.Future[None] | None = None  # the answer waits for a slow follower
    asker_first: bytes | None = None  # event 1 with the new reader's token, for the asker

    @property
    def last_id(self) -> int:
        return self.first_id + len(self.events) - 1

    def append(self, event: bytes, max_events: int) -> None:
        """Add `event` and wake the followers (`StreamJournal._produce` inlines this)."""
        events = self.events
        events.append(event)
        if len(events) > max_events:
            self.drop_oldest(max_events)
        self.wake()

    def drop_oldest(self, max_events: int) -> None:
        # Drop a quarter at a time: amortised O(1) per event, bounded memory.
        events = self.events
        drop = len(events) - max_events + max_events // 4
        del events[:drop]
        self.first_id += drop

    def wake(self, value: bytes | None = None) -> None:
        for follower in self.followers:
            waiter = follower.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(value)

    def slowest(self) -> int:
        followers = self.followers
        if len(followers) == 1:
            return followers[0].position
        return min(f.position for f in followers)


def _keys(message_id: UUID) -> tuple[str, str]:
    base = f"{KEY_PREFIX}{message_id}"
    return f"{base}:events", f"{base}:watch"


def _stop_key(message_id: UUID) -> str:
    return f"{KEY_PREFIX}{message_id}:stop"


class _RedisMirror:
    """Writes journal events to Redis in order, batched; reads them for other workers.

    One stream entry per message per write batch: its id is the batch's last event id and
    its fields are the events (`"<id>"` → SSE bytes), plus `"end"` once the final one is in.
    """

    def __init__(
        self,
        url: str,
        *,
        max_events: int,
        retention: float,
        live_ttl: float,
        on_stop: Callable[[UUID], None],
    ) -> None:
        import redis.asyncio as aioredis

        # A Redis that hangs must not stall the mirror for good; XREAD's own BLOCK (at most
        # the ping interval, 15 s) stays well within the socket timeout.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=REDIS_SOCKET_TIMEOUT
        )
        self.max_events = max_events
        self.retention_ms = max(1, int(retention * 1000))
        self.live_ttl_ms = int(live_ttl * 1000)
        self.on_stop = on_stop  # a reader on another worker pressed Stop
        self._failed_batches = 0  # batches lost in the current Redis outage (0: none)
        self._failing_since = 0.0
        self._queue: asyncio.Queue[tuple[UUID, int, bytes | None]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def publish(self, message_id: UUID, event_id: int, event: bytes | None) -> None:
        """Queue event `event_id` (None: the stream's end, after event `event_id`)."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        self._queue.put_nowait((message_id, event_id, event))

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            entries: dict[UUID, dict[str, bytes]] = {}
            last: dict[UUID, int] = {}
            for message_id, event_id, event in batch:
                fields = entries.setdefault(message_id, {})
                if event is None:
                    fields["end"] = b"%d" % event_id
                else:
                    fields[str(event_id)] = event
                    last[message_id] = event_id
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    live = [m for m, fields in entries.items() if "end" not in fields]
                    for message_id in live:
                        pipe.exists(_stop_key(message_id))
                    for message_id, fields in entries.items():
                        key = _keys(message_id)[0]
                        entry_id = last.get(message_id) or int(fields["end"])
                        # An end alone shares its last event's id: a later sequence number.
                        pipe.xadd(
                            key,
                            fields,  # type: ignore[arg-type]
                            id=f"{entry_id}-{0 if message_id in last else 1}",
                            maxlen=self.max_events,
                            approximate=True,
                        )
                        ttl = self.retention_ms if "end" in fields else self.live_ttl_ms
                        pipe.pexpire(key, ttl)
                    replies = await pipe.execute()
                for message_id, stop in zip(live, replies, strict=False):
                    if stop:
                        self.on_stop(message_id)
            except Exception as exc:  # the local buffer still serves this worker's readers
                self.write_failed(exc)
            else:
                if self._failed_batches:
                    logger.warning(
                        "resume journal: Redis writes recovered",
                        extra={
                            "failed_batches": self._failed_batches,
                            "seconds": round(time.monotonic() - self._failing_since, 1),
                        },
                    )
                    self._failed_batches = 0
            finally:
                for _ in batch:
                    self._queue.task_done()

    def write_failed(self, exc: Exception) -> None:
        """Count a failed Redis write: one line per outage, not one per batch (a batch goes
        out every few tokens); the next batch written logs the recovery."""
        if not self._failed_batches:
            self._failing_since = time.monotonic()
            logger.warning(
                "resume journal: Redis write failed; later failures are counted until it recovers",
                extra={"error": type(exc).__name__},
            )
        self._failed_batches += 1

    async def request_stop(self, message_id: UUID) -> None:
        await self.redis.set(_stop_key(message_id), b"1", px=self.live_ttl_ms)

    async def watch(self, message_id: UUID, grace_ms: int) -> None:
        await self.redis.set(_keys(message_id)[1], b"1", px=max(1, grace_ms))

    async def watch_left_ms(self, message_id: UUID) -> int:
        return int(await self.redis.pttl(_keys(message_id)[1]))

    async def read(
        self, message_id: UUID, after: int, block_ms: int
    ) -> tuple[list[tuple[int, bytes]], bool, bool]:
        """(events after `after`, whether the end is among them, whether the stream exists);
        waits up to `block_ms` for new entries."""
        key = _keys(message_id)[0]
        # After `after-0`: the entries with later events, and an end-only entry `after-1`.
        reply: Any = await self.redis.xread({key: f"{after}-0"}, count=100, block=max(1, block_ms))
        events: list[tuple[int, bytes]] = []
        ended = False
        for _key, entries in reply or []:
            for _entry_id, fields in entries:
                for name, value in fields.items():
                    if name == b"end":
                        ended = True
                    elif (event_id := int(name)) > after:
                        events.append((event_id, value))
        if events or ended:
            return events, ended, True
        return [], False, bool(await self.redis.exists(key))

    async def first_id(self, message_id: UUID) -> int | None:
        """The oldest event id Redis still holds for this answer (None: no such stream)."""
        entries: Any = await self.redis.xrange(_keys(message_id)[0], count=1)
        if not entries:
            return None
        ids = [int(name) for name in entries[0][1] if name != b"end"]
        return min(ids) if ids else int(entries[0][1][b"end"]) + 1

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
        buffer_events: int = 32,
        write_timeout: float = 30.0,
        redis_url: str | None = None,
        live_ttl: float | None = None,
    ) -> None:
        self.grace_period = grace_period
        self.retention = retention
        self.max_events = max_events
        self.buffer_events = buffer_events
        self.write_timeout = write_timeout
        self._streams: dict[UUID, _Stream] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._mirror = (
            _RedisMirror(
                redis_url,
                max_events=max_events,
                retention=retention,
                live_ttl=max(live_ttl or 0.0, _MIN_LIVE_TTL),
                on_stop=self._stop_local,
            )
            if redis_url
            else None
        )

    # ---- producing

    def answer(
        self,
        message_id: UUID,
        events: AsyncGenerator[tuple[str, Any], None],
        *,
        ping_interval: float,
    ) -> AsyncIterator[bytes]:
        """Start journaling `events` (name, payload) in a task; the SSE bytes for the asker."""
        self.start(message_id, events)
        return self._follow_local(
            message_id, self._streams[message_id], 0, ping_interval, asker=True
        )

    def start(self, message_id: UUID, events: AsyncGenerator[tuple[str, Any], None]) -> None:
        """Run `events` (name, payload) to the end in a task of its own, journaling each."""
        stream = _Stream()
        self._streams[message_id] = stream
        stream.task = asyncio.get_running_loop().create_task(
            self._produce(message_id, stream, events)
        )
        # Nobody follows yet: the first follower must attach before this timer fires.
        self._arm_abandon_timer(message_id, stream, max(self.grace_period, _FIRST_FOLLOWER_WAIT))

    async def _produce(
        self, message_id: UUID, stream: _Stream, events: AsyncGenerator[tuple[str, Any], None]
    ) -> None:
        mirror, max_events, bound = self._mirror, self.max_events, self.buffer_events
        this_task = asyncio.current_task()
        encode = msgspec.json.encode
        buffered, followers = stream.events, stream.followers  # lists never replaced
        next_id = 0
        terminal = False
        try:
            # aclosing: cancelled outside the answer (waiting for room), it must still end.
            async with contextlib.aclosing(events):
                async for name, payload in events:
                    next_id += 1
                    if next_id == 1 and getattr(payload, "token", None):
                        # A new reader's token goes to the asker only: replays, other
                        # readers and Redis get the `session` event without it.
                        stream.asker_first = sse_event(name, 1, payload)
                        payload = msgspec.structs.replace(payload, token=None)
                    # `sse_event()` and `stream.append()`, inlined: this runs per token.
                    event = _SSE_EVENT % (next_id, name.encode(), encode(payload))
                    if name in TERMINAL:
                        terminal = stream.ended = True
                    buffered.append(event)
                    if len(buffered) > max_events:
                        stream.drop_oldest(max_events)
                    for follower in followers:
                        waiter = follower.waiter
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
                    if mirror is not None:
                        mirror.publish(message_id, next_id, event)
                        if terminal:
                            mirror.publish(message_id, next_id, None)
                    if terminal:
                        continue
                    if followers:
                        # `stream.slowest()`, inlined for the usual one follower (per token).
                        slowest = followers[0].position if len(followers) == 1 else stream.slowest()
                        if next_id - slowest > bound:
                            await self._wait_for_room(message_id, stream)
                    if this_task is not None and this_task.cancelling():
                        # Stopped (abandoned, no grace): the provider's chunks that are
                        # already read ahead would go on without a suspension point.
                        await asyncio.sleep(0)
        except Exception:
            logger.exception("chat stream failed")
            if not terminal:
                next_id += 1
                event = sse_event("error", next_id, _INTERNAL_ERROR)
                terminal = stream.ended = True
                stream.append(event, max_events)
                if mirror is not None:
                    mirror.publish(message_id, next_id, event)
                    mirror.publish(message_id, next_id, None)
        finally:
            if not terminal:  # cancelled (abandoned, shutdown): say so to late readers
                next_id += 1
                event = sse_event("error", next_id, _Interrupted())
                stream.ended = True
                stream.append(event, max_events)
                if mirror is not None:
                    mirror.publish(message_id, next_id, event)
                    mirror.publish(message_id, next_id, None)
            stream.finished = True
            stream.wake()
            if stream.abandon_timer is not None:
                stream.abandon_timer.cancel()
                stream.abandon_timer = None
            if not stream.followers:
                self._free_later(message_id, stream)

    async def _wait_for_room(self, message_id: UUID, stream: _Stream) -> None:
        """Until the slowest follower is within the buffer again; after `write_timeout`,
        followers that stayed behind are treated as gone (their responses cancelled)."""
        room = stream.room = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.write_timeout):
                await room
        except TimeoutError:
            metrics.SLOW_READERS.inc()
            logger.warning(
                "client stopped reading; stream ended", extra={"timeout": self.write_timeout}
            )
            last = stream.last_id
            for follower in list(stream.followers):
                if last - follower.position > self.buffer_events:
                    stream.followers.remove(follower)
                    if follower.writer is not None:
                        follower.writer.cancel()  # unblock the send that waits on the client
            if not stream.followers:
                self._reader_left(message_id, stream)
        finally:
            stream.room = None

    def _free_later(self, message_id: UUID, stream: _Stream) -> None:
        def free() -> None:
            if self._streams.get(message_id) is stream:
                del self._streams[message_id]

        if self.retention > 0:
            asyncio.get_running_loop().call_later(self.retention, free)
        else:
            free()

    # ---- stopping: the reader pressed Stop

    async def stop(self, message_id: UUID) -> bool:
        """Stop generating `message_id` now; its partial answer is saved `interrupted`.

        True when this worker, or through Redis the one that runs it, was told; False when
        no worker this one can reach is generating it (finished, or another worker with
        no Redis: that one stops it when the grace period after its reader left ends).
        """
        if message_id in self._streams:
            self._stop_local(message_id)
            return True
        if self._mirror is None:
            return False
        try:
            await self._mirror.request_stop(message_id)
        except Exception as exc:
            self._mirror.write_failed(exc)
            return False
        return True

    def _stop_local(self, message_id: UUID) -> None:
        stream = self._streams.get(message_id)
        if stream is not None and not stream.finished and stream.task is not None:
            logger.info("answer stopped by its reader", extra={"message_id": str(message_id)})
            stream.task.cancel()

    # ---- abandonment: the grace period after the last reader left

    def _reader_left(self, message_id: UUID, stream: _Stream) -> None:
        """The last follower left an unfinished answer: start the grace period."""
        if self.grace_period <= 0 and stream.task is not None:
            stream.task.cancel()  # no grace: stop at once, as before resuming existed
        else:
            self._arm_abandon_timer(message_id, stream)

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
        if stream.finished or stream.followers:
            return
        if self._mirror is not None:
            try:
                left_ms = await self._mirror.watch_left_ms(message_id)
            except Exception:
                left_ms = -1  # Redis down: only local readers count
            if stream.finished or stream.followers:
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

    def is_local(self, message_id: UUID) -> bool:
        return message_id in self._streams

    async def resume(
        self, message_id: UUID, after: int, *, ping_interval: float
    ) -> AsyncGenerator[bytes, None]:
        """The SSE bytes of the events with id > `after`, live until the final one.

        Raises, before anything is sent, `ReplayExpiredError` when those events are no
        longer buffered and `StreamLostError` when no worker journals this answer.
        """
        stream = self._streams.get(message_id)
        if stream is not None:
            if after + 1 < stream.first_id:
                raise ReplayExpiredError(str(message_id))
            return self._follow_local(message_id, stream, after, ping_interval)
        if self._mirror is not None:
            try:
                first = await self._mirror.first_id(message_id)
            except Exception as exc:
                logger.warning(
                    "resume journal: Redis read failed", extra={"error": type(exc).__name__}
                )
                raise StreamLostError(str(message_id)) from exc
            if first is not None:
                if after + 1 < first:
                    raise ReplayExpiredError(str(message_id))
                return self._follow_redis(message_id, after, ping_interval)
        raise StreamLostError(str(message_id))

    async def follow(
        self, message_id: UUID, after: int, *, ping_interval: float
    ) -> AsyncIterator[bytes]:
        """`resume()` as one generator (the errors come with its first step)."""
        source = await self.resume(message_id, after, ping_interval=ping_interval)
        # aclosing: a reader that leaves must run the inner generator's cleanup at once.
        async with contextlib.aclosing(source) as events:
            async for event in events:
                yield event

    async def _follow_local(
        self,
        message_id: UUID,
        stream: _Stream,
        after: int,
        ping_interval: float,
        *,
        asker: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """Replay, then live: pending events go out joined in one write.

        One loop timer per follower sends a `: ping` after `ping_interval` without a
        write, re-armed at most once per interval (no timeout around every event).
        """
        loop = asyncio.get_running_loop()
        follower = _Follower(position=after, writer=asyncio.current_task())
        stream.followers.append(follower)
        if stream.abandon_timer is not None:
            stream.abandon_timer.cancel()
            stream.abandon_timer = None
        last_sent = loop.time()
        timer: asyncio.TimerHandle | None = None

        def ping_if_idle() -> None:
            nonlocal timer
            now = loop.time()
            if now - last_sent < ping_interval:
                timer = loop.call_at(last_sent + ping_interval, ping_if_idle)
                return
            waiter = follower.waiter
            if waiter is not None and not waiter.done():  # blocked in a send is not idle
                waiter.set_result(PING)
            timer = loop.call_at(now + ping_interval, ping_if_idle)

        timer = loop.call_at(last_sent + ping_interval, ping_if_idle)
        events = stream.events  # trimmed in place, never replaced
        try:
            while True:
                # `stream.last_id`, inlined: this runs for every write and every wait.
                first = stream.first_id
                last = first + len(events) - 1
                position = follower.position
                if position < last:
                    start = position + 1 - first
                    if start < 0:  # fell behind the bound: the gap cannot be filled
                        return
                    if asker and start == 0 and stream.asker_first is not None:
                        chunk = b"".join([stream.asker_first, *events[1:]])
                    elif last - position == 1:
                        chunk = events[start]
                    else:
                        chunk = b"".join(events[start:])
                    follower.position = last
                    last_sent = loop.time()
                    yield chunk
                    room = stream.room
                    if (
                        room is not None
                        and not room.done()
                        and stream.last_id - stream.slowest() <= self.buffer_events // 2
                    ):
                        room.set_result(None)
                    continue
                if stream.ended or stream.finished:
                    return
                # `loop.create_future()` without its Python frame (per wait).
                follower.waiter = asyncio.Future(loop=loop)
                ping = await follower.waiter
                follower.waiter = None
                if ping is not None:
                    yield ping
        finally:
            if timer is not None:
                timer.cancel()
            if follower in stream.followers:
                stream.followers.remove(follower)
            room = stream.room
            behind = stream.last_id - stream.slowest() if stream.followers else 0
            if room is not None and not room.done() and behind <= self.buffer_events:
                room.set_result(None)
            if not stream.followers:
                if stream.ended:
                    if follower.position < stream.last_id:
                        self._free_later(message_id, stream)  # it did not get the end
                    elif self._streams.get(message_id) is stream:
                        del self._streams[message_id]
                else:
                    self._reader_left(message_id, stream)
                    if self.grace_period <= 0 and stream.task is not None:
                        # No grace: the response ends once the partial answer is saved.
                        with anyio.CancelScope(shield=True):
                            await asyncio.gather(stream.task, return_exceptions=True)

    async def _follow_redis(
        self, message_id: UUID, after: int, ping_interval: float
    ) -> AsyncGenerator[bytes, None]:
        mirror = self._mirror
        assert mirror is not None
        grace_ms = max(1, int(self.grace_period * 1000))
        heartbeat = max(self.grace_period / 3, 0.01)
        block_ms = int(min(ping_interval, heartbeat, REDIS_SOCKET_TIMEOUT / 2) * 1000)
        position = after
        idle_since = watched_at = time.monotonic()
        await mirror.watch(message_id, grace_ms)
        try:
            while True:
                events, ended, exists = await mirror.read(message_id, position, block_ms)
                now = time.monotonic()
                if now - watched_at >= heartbeat:
                    await mirror.watch(message_id, grace_ms)
                    watched_at = now
                if events:
                    if events[0][0] != position + 1:  # trimmed while we read
                        return
                    position = events[-1][0]
                    idle_since = now
                    yield b"".join(event for _id, event in events)
                if ended:
                    return
                if not events:
                    if not exists:  # the producing worker is gone (its keys expired)
                        yield sse_event("error", position + 1, _Interrupted())
                        return
                    if now - idle_since >= ping_interval:
                        idle_since = now
                        yield PING
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
