"""The bench's floor app and the probes the bench adds to the product app.

`create_floor_app()` is a tiny Litestar app served by the same `bookchat serve` (granian,
same worker count) as bookchat itself, with nothing of bookchat in it:

- `POST /bench/floor?events=N`: the bare floor, N SSE events shaped like a chat's
  (`session`, `citations`, `token`s, `done`) with no LLM client, database or middleware;
  `first` and `gap` (seconds) pace it like the fake model when the bench asks.
- `POST /bench/floor-genai`: the floor plus one google-genai streaming call to the fake
  Gemini through the SDK's public API (`client.aio.models.generate_content_stream`), one
  `token` event per chunk, so the SDK's own share of a chat's CPU is visible.
- `GET /healthz` and `GET /bench/loop-lag`, as on the product app.

`create_bench_app()` is the product app (`bookchat.app.create_app`) plus the loop-lag
probe: the worst event-loop lag a ticker task observed since the previous read, so the
bench can see whether anything blocks the loop while streams run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, get, post
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.plugins import InitPluginProtocol
from litestar.response import ServerSentEvent, ServerSentEventMessage

# The granian target of the bench server (`bookchat serve --app ...`).
BENCH_APP = "bookchat.devtools.bench.floor:create_bench_app"
FLOOR_APP = "bookchat.devtools.bench.floor:create_floor_app"
# Short enough to see a 10 ms stall, long enough to cost well under 1% of a core.
TICK_S = 0.002


class _Question(msgspec.Struct):
    message: str


class _Session(msgspec.Struct):
    session_id: uuid.UUID
    message_id: uuid.UUID
    token: str | None = None


class _Token(msgspec.Struct):
    content: str


class _Done(msgspec.Struct):
    message_id: uuid.UUID
    session_id: uuid.UUID
    tokens: int
    grounded: bool = True


# A `citations` payload the size of a chat's (five sources).
_CITATIONS = msgspec.json.encode(
    {
        "citations": [
            {"n": n, "doc_path": f"02-motion/0{n}-page", "title": f"Page {n}",
             "section": "Section", "url": f"https://book.example.org/docs/page-{n}#section",
             "module": "Motion", "chapter": "Chapter", "score": 0.5}
            for n in range(1, 6)
        ]
    }
).decode()  # fmt: skip


class LoopLagMonitor:
    """A ticker task that records how late the event loop wakes it up."""

    def __init__(self, tick: float = TICK_S) -> None:
        self.tick = tick
        self.max_lag = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.tick)
            self.max_lag = max(self.max_lag, time.perf_counter() - started - self.tick)
            self.ticks += 1

    def read_and_reset(self) -> dict[str, float]:
        """Worst lag (ms) and tick count since the previous read."""
        result = {"max_lag_ms": round(self.max_lag * 1000, 3), "ticks": self.ticks}
        self.max_lag, self.ticks = 0.0, 0
        return result


@get("/bench/loop-lag", include_in_schema=False)
async def loop_lag(state: State) -> dict[str, float]:
    """The worst loop lag since the last call (then reset)."""
    monitor: LoopLagMonitor = state.bench_loop_monitor
    return monitor.read_and_reset()


async def _start_monitor(app: Litestar) -> None:
    monitor = LoopLagMonitor()
    monitor.start()
    app.state.bench_loop_monitor = monitor


async def _stop_monitor(app: Litestar) -> None:
    await app.state.bench_loop_monitor.stop()


class BenchPlugin(InitPluginProtocol):
    """Adds the loop-lag probe and its ticker to the product app."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.append(loop_lag)
        app_config.on_startup.append(_start_monitor)
        app_config.on_shutdown.append(_stop_monitor)
        return app_config


def create_bench_app() -> Litestar:
    """The product app with the loop-lag probe added (granian factory)."""
    from bookchat.app import create_app

    return create_app(plugins=[BenchPlugin()])


# --------------------------------------------------------------------------- the floor


def _message(name: str, event_id: int, data: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=name, id=event_id, data=data)


def _opening(session_id: uuid.UUID, message_id: uuid.UUID) -> list[ServerSentEventMessage]:
    session = msgspec.json.encode(_Session(session_id=session_id, message_id=message_id))
    return [_message("session", 1, session.decode()), _message("citations", 2, _CITATIONS)]


def _closing(
    session_id: uuid.UUID, message_id: uuid.UUID, event_id: int, tokens: int
) -> ServerSentEventMessage:
    done = _Done(message_id=message_id, session_id=session_id, tokens=tokens)
    return _message("done", event_id, msgspec.json.encode(done).decode())


_FLOOR_WORDS = ("Odometry ", "integrates ", "wheel ", "rotations ", "to ", "estimate ", "pose. ")


@post("/bench/floor", status_code=200)
async def bare_floor(
    data: _Question, events: int = 53, first: float = 0.0, gap: float = 0.0
) -> ServerSentEvent:
    """`events` SSE events shaped like a chat's, with no work in between (the floor)."""
    session_id, message_id = uuid.uuid4(), uuid.uuid4()
    tokens = max(events - 3, 1)

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        for message in _opening(session_id, message_id):
            yield message
        if first:
            await asyncio.sleep(first)  # paced like the fake model when the bench asks
        for n in range(tokens):
            if gap and n:
                await asyncio.sleep(gap)
            word = _FLOOR_WORDS[n % len(_FLOOR_WORDS)]
            yield _message("token", n + 3, msgspec.json.encode(_Token(word)).decode())
        yield _closing(session_id, message_id, tokens + 3, tokens)

    return ServerSentEvent(stream(), headers={"X-Accel-Buffering": "no"})


@post("/bench/floor-genai", status_code=200)
async def genai_floor(state: State, data: _Question) -> ServerSentEvent:
    """The floor plus one google-genai streaming call (public API), one event per chunk."""
    client = _genai_client(state)
    session_id, message_id = uuid.uuid4(), uuid.uuid4()

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        for message in _opening(session_id, message_id):
            yield message
        event_id = 2
        chunks = await client.aio.models.generate_content_stream(
            model=state.floor_model, contents=data.message
        )
        async for chunk in chunks:
            text = chunk.text
            if text:
                event_id += 1
                yield _message("token", event_id, msgspec.json.encode(_Token(text)).decode())
        yield _closing(session_id, message_id, event_id + 1, event_id - 2)

    return ServerSentEvent(stream(), headers={"X-Accel-Buffering": "no"})


def _genai_client(state: State) -> Any:
    """Built on first use, so the bare floor's process never holds an LLM client."""
    if state.get("floor_genai_client") is None:
        from bookchat.llm.gemini import make_genai_client

        # Same factory (pool limits, API version) as bookchat's generator client.
        state.floor_genai_client = make_genai_client(
            state.floor_api_key, state.floor_base_url or None
        )
    return state.floor_genai_client


@get("/healthz")
async def floor_health() -> dict[str, str]:
    return {"status": "ok"}


async def _close_genai(app: Litestar) -> None:
    client = app.state.get("floor_genai_client")
    if client is not None:
        from bookchat.llm.gemini import close_genai_client

        await close_genai_client(client)


def create_floor_app() -> Litestar:
    """The bench's floor: bare Litestar SSE routes, no middleware (granian factory)."""
    import os

    return Litestar(
        route_handlers=[bare_floor, genai_floor, floor_health, loop_lag],
        state=State(
            {
                "floor_model": os.environ.get("CHAT_MODEL", "gemini-2.5-flash"),
                "floor_api_key": os.environ.get("GEMINI_API_KEY", "bench"),
                "floor_base_url": os.environ.get("GEMINI_BASE_URL", ""),
            }
        ),
        on_startup=[_start_monitor],
        on_shutdown=[_stop_monitor, _close_genai],
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
