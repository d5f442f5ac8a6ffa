"""The load generator: N closed-loop conversations on raw sockets, in a process of its own.

It runs as a subprocess of the bench (`python -m bookchat.devtools.bench.load`, a `LoadSpec`
as JSON on stdin, a `LoadResult` as JSON on stdout), pinned to its own CPU when the
machine has two or more, so that its CPU use never competes with the server's.

Hand-written HTTP/1.1 on an `asyncio.Protocol` (uvloop when installed) rather than httpx:
an httpx client spends more CPU per streamed event than the server under test does, so on
a shared core it measured itself. Each virtual user keeps one keep-alive connection,
POSTs, parses the chunked body as it arrives (no await per chunk), notes the time of the
first `token` event (TTFT, from just before the request is written), then starts the next
chat at once until the duration is over.

Around the measured phase it reads the server's CPU time (utime + stime of its process
tree, from /proc), so CPU per chat covers exactly the measured chats.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import cast
from urllib.parse import urlsplit

import msgspec

from bookchat.devtools.bench.procstat import tree_cpu_seconds

_TOKEN = b"event: token"
_DONE = b"event: done"
_ERROR = b"event: error"
_EVENT = b"event: "
_GROUNDED = b'"grounded":true'


class LoadSpec(msgspec.Struct, kw_only=True):
    """One load run against one URL."""

    url: str
    bodies: list[bytes]  # JSON request bodies, used round-robin
    concurrency: int
    duration: float  # seconds of measured load after the warm-up
    warmup: float = 0.5  # seconds of unmeasured chats on up to 10 connections first
    max_chats: int | None = None  # stop starting chats after this many measured ones
    timeout: float = 60.0
    server_pid: int | None = None  # read this process tree's CPU time around the measured phase
    cpus: list[int] | None = None  # pin the load generator to these CPUs


class LoadResult(msgspec.Struct, kw_only=True):
    """Client-side measurements of the measured chats."""

    ttft: list[float]  # seconds, one per successful chat
    latency: list[float]  # seconds to the last byte, one per successful chat
    chats: int  # successful measured chats
    grounded: int = 0  # chats whose `done` event says grounded (bookchat only)
    events: int  # SSE events received in measured chats
    errors: dict[str, int]  # kind -> count
    elapsed: float  # seconds from the end of the warm-up to the last chat's end
    peak_open: int  # most streams open at once
    server_cpu_s: float = 0.0  # server's utime + stime during the measured phase
    client_cpu_s: float = 0.0  # this process's CPU time during the measured phase
    event_loop: str = "asyncio"


class ChatFailed(Exception):
    """A chat that did not complete; `kind` is what the error counts are keyed by."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _Reply:
    """One HTTP response being parsed: status, body, time of the first token event."""

    __slots__ = ("body", "close", "length", "started", "status", "tail", "ttft")

    def __init__(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.length = -1  # Content-Length, or -1 for a chunked body
        self.close = False
        self.body: list[bytes] = []
        self.tail = b""
        self.ttft = 0.0


class _Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection that parses replies in `data_received`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.reply: _Reply | None = None
        self.waiter: asyncio.Future[_Reply] | None = None
        self.in_head = True
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection_lost")

    def _fail(self, kind: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ChatFailed(kind))

    def request(self, head: bytes, body: bytes) -> asyncio.Future[_Reply]:
        assert self.transport is not None
        self.reply = _Reply(time.perf_counter())
        self.in_head = True
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        reply = self.reply
        if reply is None:
            return
        buffer = self.buffer
        if self.in_head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            del buffer[: end + 4]
            reply.status = int(lines[0].split(b" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    reply.length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    reply.close = True
            self.in_head = False
        if reply.length >= 0:
            if len(buffer) >= reply.length:
                reply.body.append(bytes(buffer[: reply.length]))
                del buffer[: reply.length]
                self._finish()
            return
        while True:  # chunked: size line, data, CRLF; a 0-size chunk ends the body
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(buffer[:line_end].split(b";", 1)[0], 16)
            start = line_end + 2
            if size == 0:
                if len(buffer) < start + 2:
                    return
                del buffer[: start + 2]
                self._finish()
                return
            if len(buffer) < start + size + 2:
                return
            chunk = bytes(buffer[start : start + size])
            del buffer[: start + size + 2]
            # The marker may straddle two chunks: look across the previous chunk's tail too.
            if not reply.ttft and (_TOKEN in chunk or _TOKEN in reply.tail + chunk[:12]):
                reply.ttft = time.perf_counter() - reply.started
            reply.tail = chunk[-12:]
            reply.body.append(chunk)

    def _finish(self) -> None:
        reply, self.reply = self.reply, None
        if self.waiter is not None and not self.waiter.done() and reply is not None:
            self.waiter.set_result(reply)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Client:
    """One virtual user: one connection (re-opened after a close), one chat at a time."""

    def __init__(self, host: str, port: int, path: str, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            "Content-Length: "
        ).encode()
        self.connection: _Connection | None = None

    async def chat(self, body: bytes) -> tuple[float, float, int, bool]:
        """(ttft, latency, events, grounded); raises ChatFailed."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                if self.connection is None or self.connection.closed:
                    loop = asyncio.get_running_loop()
                    _, self.connection = await loop.create_connection(
                        _Connection, self.host, self.port
                    )
                connection = self.connection
                reply = await connection.request(self.head + b"%d\r\n\r\n" % len(body), body)
        except TimeoutError:
            self.drop()
            raise ChatFailed("timeout") from None
        except OSError as exc:
            self.drop()
            raise ChatFailed(type(exc).__name__) from None
        except ChatFailed:
            self.drop()
            raise
        if reply.close:
            self.drop()
        latency = time.perf_counter() - started
        if reply.status != 200:
            raise ChatFailed(f"http_{reply.status}")
        body_bytes = b"".join(reply.body)
        if _ERROR in body_bytes:
            raise ChatFailed("error_event")
        if _DONE not in body_bytes:
            raise ChatFailed("no_done_event")
        if not reply.ttft:
            raise ChatFailed("no_token")
        return reply.ttft, latency, body_bytes.count(_EVENT), _GROUNDED in body_bytes

    def drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run `spec.concurrency` conversations: a warm-up, then `duration` seconds measured.

    The warm-up is a separate phase (chats on up to ten conversations) so the measured
    phase starts with a warm server. Measured conversations start chats until the
    duration is over; chats in flight then still complete and count, so every
    conversation finishes at least one chat even when a chat outlasts the duration.
    """
    url = urlsplit(spec.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = url.path + (f"?{url.query}" if url.query else "")
    result = LoadResult(ttft=[], latency=[], chats=0, events=0, errors={}, elapsed=0.0, peak_open=0)
    open_now = 0
    started_chats = 0
    clients = [_Client(host, port, path, spec.timeout) for _ in range(spec.concurrency)]

    if spec.warmup > 0:
        warm_until = time.perf_counter() + spec.warmup

        async def warm_up(client: _Client, index: int) -> None:
            while time.perf_counter() < warm_until:
                with contextlib.suppress(ChatFailed):
                    await client.chat(spec.bodies[index % len(spec.bodies)])

        await asyncio.gather(*(warm_up(c, i) for i, c in enumerate(clients[:10])))

    server_cpu = tree_cpu_seconds(spec.server_pid) if spec.server_pid else 0.0
    client_cpu = time.process_time()
    measure_from = time.perf_counter()
    stop_at = measure_from + spec.duration

    async def conversation(client: _Client, index: int) -> None:
        nonlocal open_now, started_chats
        n = index
        first = True
        while first or time.perf_counter() < stop_at:
            if spec.max_chats is not None and started_chats >= spec.max_chats:
                return
            first = False
            started_chats += 1
            body = spec.bodies[n % len(spec.bodies)]
            n += spec.concurrency
            open_now += 1
            result.peak_open = max(result.peak_open, open_now)
            try:
                ttft, latency, events, grounded = await client.chat(body)
            except ChatFailed as exc:
                result.errors[exc.kind] = result.errors.get(exc.kind, 0) + 1
                continue
            finally:
                open_now -= 1
            result.events += events
            result.chats += 1
            result.grounded += grounded
            result.ttft.append(ttft)
            result.latency.append(latency)

    await asyncio.gather(*(conversation(c, i) for i, c in enumerate(clients)))
    result.elapsed = time.perf_counter() - measure_from
    if spec.server_pid:
        result.server_cpu_s = tree_cpu_seconds(spec.server_pid) - server_cpu
    result.client_cpu_s = time.process_time() - client_cpu
    for client in clients:
        client.drop()
    return result


def main() -> None:
    """Read a LoadSpec from stdin, write a LoadResult to stdout."""
    spec = msgspec.json.decode(sys.stdin.buffer.read(), type=LoadSpec)
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    try:
        import uvloop
    except ImportError:  # uvloop is optional: the load generator is cheaper with it
        result = asyncio.run(run_load(spec))
    else:
        result = uvloop.run(run_load(spec))
        result.event_loop = "uvloop"
    sys.stdout.buffer.write(msgspec.json.encode(result))


if __name__ == "__main__":
    main()
