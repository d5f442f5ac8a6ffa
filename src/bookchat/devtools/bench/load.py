"""The load generator: N closed-loop conversations of async httpx clients, one process.

It runs as a subprocess of the bench (`python -m bookchat.devtools.bench.load`, a `LoadSpec` as
JSON on stdin, a `LoadResult` as JSON on stdout) so that its CPU use is scheduled apart
from the server and the fake, and its GIL is its own.

Each conversation POSTs, reads the SSE body as it arrives and notes the time of the
first `token` event (TTFT, measured from just before the request is sent), then starts
the next chat at once, until the duration is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable

import httpx
import msgspec

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


async def _chat(
    client: httpx.AsyncClient, url: str, body: bytes
) -> tuple[float, float, int, str | None, bool]:
    """One chat: (ttft, latency, events, error kind or None, grounded)."""
    started = time.perf_counter()
    ttft = 0.0
    parts: list[bytes] = []
    tail = b""
    async with client.stream(
        "POST",
        url,
        content=body,
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return 0.0, 0.0, 0, f"http_{response.status_code}", False
        async for chunk in response.aiter_raw():
            # The marker may straddle two reads: look across the previous read's tail too.
            if not ttft and (_TOKEN in chunk or _TOKEN in tail + chunk[: len(_TOKEN)]):
                ttft = time.perf_counter() - started
            tail = chunk[-len(_TOKEN) :]
            parts.append(chunk)
    latency = time.perf_counter() - started
    body_bytes = b"".join(parts)
    events = body_bytes.count(_EVENT)
    error = None
    if _ERROR in body_bytes:
        error = "error_event"
    elif _DONE not in body_bytes:
        error = "no_done_event"
    elif not ttft:
        error = "no_token"
    return ttft, latency, events, error, _GROUNDED in body_bytes


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run `spec.concurrency` conversations: a warm-up, then `duration` seconds measured.

    The warm-up is a separate phase (one chat per conversation on a few conversations)
    so the measured phase starts with warm connections and a warm server. Measured
    conversations start chats until the duration is over; chats in flight then still
    complete and count, so every conversation finishes at least one chat even when a
    chat takes longer than the duration (500 streams).
    """
    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
    )
    timeout = httpx.Timeout(spec.timeout, connect=spec.timeout, pool=spec.timeout)
    result = LoadResult(ttft=[], latency=[], chats=0, events=0, errors={}, elapsed=0.0, peak_open=0)
    open_now = 0
    started_chats = 0

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        if spec.warmup > 0:
            warm_until = time.perf_counter() + spec.warmup
            warm = min(spec.concurrency, 10)

            async def warm_up(index: int) -> None:
                while time.perf_counter() < warm_until:
                    with contextlib.suppress(httpx.HTTPError):
                        await _chat(client, spec.url, spec.bodies[index % len(spec.bodies)])

            await asyncio.gather(*(warm_up(i) for i in range(warm)))

        measure_from = time.perf_counter()
        stop_at = measure_from + spec.duration

        async def conversation(index: int) -> None:
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
                    ttft, latency, events, error, grounded = await _chat(client, spec.url, body)
                except httpx.HTTPError as exc:
                    ttft, latency, events, error, grounded = 0.0, 0.0, 0, type(exc).__name__, False
                finally:
                    open_now -= 1
                result.events += events
                if error is not None:
                    result.errors[error] = result.errors.get(error, 0) + 1
                    continue
                result.chats += 1
                result.grounded += grounded
                result.ttft.append(ttft)
                result.latency.append(latency)

        await asyncio.gather(*(conversation(i) for i in range(spec.concurrency)))
        result.elapsed = time.perf_counter() - measure_from
    return result


def main() -> None:
    """Read a LoadSpec from stdin, write a LoadResult to stdout."""
    spec = msgspec.json.decode(sys.stdin.buffer.read(), type=LoadSpec)
    runner: Callable[..., LoadResult]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop is optional: the load generator is faster with it
        runner = asyncio.run
    result = runner(run_load(spec))
    sys.stdout.buffer.write(msgspec.json.encode(result))


if __name__ == "__main__":
    main()
