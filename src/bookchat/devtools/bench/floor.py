"""Opt-in benchmark routes served by the real app: the SSE floor and a loop-lag probe.

`create_bench_app()` is the real app (`bookchat.app.create_app`) plus a plugin that adds:

- `POST /bench/floor`: streams the fake Gemini's tokens through the same generator and
  google-genai client setup as the chat path (`GeminiGenerator`) and re-emits each one as a
  `token` SSE event with Litestar's `ServerSentEvent`, then a `done` event. No database,
  retrieval, prompt or citation work: what is left is the cost of the framework, the
  server and the SDK, i.e. the floor the chat endpoint is compared against.
- `GET /bench/loop-lag`: the worst event-loop lag a ticker task observed since the
  previous read (reset on read), so the bench can see whether anything blocks the loop
  while streams run.

Both live in the same app, process and middleware stack as `/api/v1/chat`, so the
comparison isolates the chat path itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
from litestar import Litestar, get, post
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.plugins import InitPluginProtocol
from litestar.response import ServerSentEvent, ServerSentEventMessage

# The granian target of the bench server (`bookchat serve --app ...`).
BENCH_APP = "bookchat.devtools.bench.floor:create_bench_app"
# Short enough to see a 10 ms stall, long enough to cost well under 1% of a core.
TICK_S = 0.002


class _Token(msgspec.Struct):
    content: str


class _Done(msgspec.Struct):
    tokens: int


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


@post("/bench/floor", include_in_schema=False, status_code=200)
async def floor_stream(state: State) -> ServerSentEvent:
    """The fake model's tokens as SSE, with nothing of the chat path in between."""
    from bookchat.llm.base import GenerationRequest, TokenDelta, Turn
    from bookchat.llm.gemini import GeminiGenerator

    # The same generator (and so the same client and decoding) as the chat path.
    generator = GeminiGenerator(
        state.bench_genai_client,
        state.settings.chat_model,
        first_token_timeout=60.0,
        total_timeout=120.0,
    )
    request = GenerationRequest(
        system_instruction="", contents=[Turn(role="user", text="floor")], question="floor",
        context=[],
    )  # fmt: skip

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        count = 0
        async for event in generator.stream(request):
            if isinstance(event, TokenDelta) and event.text:
                count += 1
                yield ServerSentEventMessage(
                    event="token", id=count, data=msgspec.json.encode(_Token(event.text)).decode()
                )
        yield ServerSentEventMessage(
            event="done", id=count + 1, data=msgspec.json.encode(_Done(count)).decode()
        )

    return ServerSentEvent(events(), headers={"X-Accel-Buffering": "no"})


@get("/bench/loop-lag", include_in_schema=False)
async def loop_lag(state: State) -> dict[str, float]:
    """The worst loop lag since the last call (then reset)."""
    monitor: LoopLagMonitor = state.bench_loop_monitor
    return monitor.read_and_reset()


class BenchPlugin(InitPluginProtocol):
    """Adds the floor route, the loop-lag probe and their startup/shutdown hooks."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend([floor_stream, loop_lag])
        app_config.on_startup.append(self._start)
        app_config.on_shutdown.append(self._stop)
        return app_config

    async def _start(self, app: Litestar) -> None:
        from bookchat.llm.gemini import make_genai_client

        settings = app.state.settings
        monitor = LoopLagMonitor()
        monitor.start()
        app.state.bench_loop_monitor = monitor
        # Same factory, pool limits and hooks as the chat path's generator client.
        app.state.bench_genai_client = make_genai_client(
            settings.gemini_api_key or "bench", settings.gemini_base_url
        )

    async def _stop(self, app: Litestar) -> None:
        from bookchat.llm.gemini import close_genai_client

        await app.state.bench_loop_monitor.stop()
        await close_genai_client(app.state.bench_genai_client)


def create_bench_app() -> Litestar:
    """The product app with the floor route and loop-lag probe added (granian factory)."""
    from bookchat.app import create_app

    return create_app(plugins=[BenchPlugin()])
