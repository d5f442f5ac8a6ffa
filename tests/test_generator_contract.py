"""The guarantees every answer provider gives, run against Gemini and the OpenAI-compatible
provider alike, each through its real SDK client and the project's fake server: streaming,
usage, retries before the first token, fallback, first-token and total deadlines, partial
text then an error on a cut stream, and the provider connection closed when the consumer
stops. Provider-specific behaviour is in test_gemini_generator.py / test_openai_generator.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from bookchat.devtools.fake_gemini import (
    DEFAULT_ANSWER,
    Blocked,
    Cut,
    FakeGemini,
    Hang,
    RateLimited,
    Reply,
    ServerError,
)
from bookchat.devtools.fake_openai import FakeOpenAI
from bookchat.llm.base import (
    GenerationFinished,
    TokenDelta,
)
from bookchat.llm.gemini import GeminiProvider, close_genai_client, make_genai_client
from bookchat.llm.openai import OpenAIProvider, make_openai_client
from bookchat.llm.streaming import (
    Provider,
    Route,
    StreamDeadline,
    StreamingGenerator,
    StreamPiece,
)

from .generator_helpers import REQUEST, collect, text_of

MAIN, FALLBACK = "model-main", "model-fallback"


@dataclass
class Harness:
    """One provider behind its fake: `generator()` tries MAIN then FALLBACK."""

    fake: FakeGemini  # FakeOpenAI is one too
    provider: Provider

    def generator(self, **overrides: float) -> StreamingGenerator:
        options = {"first_token_timeout": 2.0, "total_timeout": 5.0, "backoff_base": 0.01}
        options.update(overrides)
        return StreamingGenerator(
            [Route(self.provider, MAIN), Route(self.provider, FALLBACK)],
            first_token_timeout=options["first_token_timeout"],
            total_timeout=options["total_timeout"],
            backoff_base=options["backoff_base"],
            max_retries=3,
        )


@pytest.fixture(params=["gemini", "openai"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "gemini":
        with FakeGemini() as gemini:
            genai_client = make_genai_client("test-key", gemini.base_url)
            yield Harness(gemini, GeminiProvider(genai_client))
            await close_genai_client(genai_client)
        return
    with FakeOpenAI() as fake:
        openai_client = make_openai_client("test-key", fake.api_base)
        yield Harness(fake, OpenAIProvider(openai_client))
        await openai_client.close()


def closed_early(fake: FakeGemini) -> object:
    return fake.stream_closed_early


async def test_streams_tokens_then_finished_with_usage(harness: Harness) -> None:
    events, error = await collect(harness.generator())

    assert error is None
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert len(deltas) == len(DEFAULT_ANSWER.split(" "))  # one event per streamed chunk
    assert text_of(events) == DEFAULT_ANSWER
    finished = events[-1]
    assert isinstance(finished, GenerationFinished)
    assert finished.finish_reason == "stop"
    assert finished.model == MAIN
    assert finished.completion_tokens == len(deltas)
    assert finished.prompt_tokens > 0


async def test_429_twice_then_answer(harness: Harness) -> None:
    harness.fake.script_generate(RateLimited(retry_delay=None), RateLimited(retry_delay=None))

    events, error = await collect(harness.generator())

    assert error is None
    assert text_of(events) == DEFAULT_ANSWER
    assert harness.fake.generate_requests == 3
    assert {r.model for r in harness.fake.requests} == {MAIN}


async def test_retry_honours_the_servers_retry_delay(harness: Harness) -> None:
    harness.fake.script_generate(RateLimited(retry_delay=0.3))

    _, error = await collect(harness.generator())

    assert error is None
    first, second = harness.fake.requests
    assert second.at - first.at >= 0.3


async def test_500_forever_on_main_falls_back(harness: Harness) -> None:
    harness.fake.set_model_rule(MAIN, ServerError())

    events, error = await collect(harness.generator())

    assert error is None
    assert text_of(events) == DEFAULT_ANSWER
    assert isinstance(events[-1], GenerationFinished) and events[-1].model == FALLBACK
    assert [r.model for r in harness.fake.requests] == [MAIN] * 4 + [FALLBACK]


async def test_429_that_never_clears_is_rate_limited(harness: Harness) -> None:
    harness.fake.set_model_rule(MAIN, RateLimited(retry_delay=None))
    harness.fake.set_model_rule(FALLBACK, RateLimited(retry_delay=None))

    events, error = await collect(harness.generator())

    assert events == []
    assert error is not None and error.code == "rate_limited" and error.retryable
    assert harness.fake.generate_requests == 8


async def test_client_errors_are_not_retried(harness: Harness) -> None:
    harness.fake.script_generate(ServerError(status=400, message="bad request"))

    _, error = await collect(harness.generator())

    assert error is not None and error.code == "generation_failed" and "400" in error.message
    assert harness.fake.generate_requests == 1


async def test_no_first_token_in_time_is_generation_timeout(harness: Harness) -> None:
    harness.fake.script_generate(Hang())
    started = time.monotonic()

    events, error = await collect(harness.generator(first_token_timeout=0.3))

    assert events == []
    assert error is not None and error.code == "generation_timeout" and error.retryable
    assert time.monotonic() - started < 1.5
    # The abandoned request is closed, not left hanging on the provider.
    assert await harness.fake.until(closed_early, within=1.0)


async def test_total_timeout_after_first_token(harness: Harness) -> None:
    harness.fake.configure(token_delay=0.2)

    events, error = await collect(harness.generator(total_timeout=0.5))

    assert 1 <= len(events) < len(DEFAULT_ANSWER.split(" "))
    assert error is not None and error.code == "generation_timeout"


async def test_tokens_arriving_one_by_one_arm_one_timer_per_deadline(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first-token and total deadlines are a loop timer each, not one per read."""
    harness.fake.configure(token_delay=0.02)
    loop = asyncio.get_running_loop()
    deadline_timers: list[object] = []
    call_at = loop.call_at

    def recording_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(getattr(callback, "__self__", None), asyncio.Timeout | StreamDeadline):
            deadline_timers.append(callback)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", recording_call_at)
    events, error = await collect(harness.generator())

    assert error is None and len(events) > 5
    # The two deadlines, and aiohttp's connect timeout when it opens a connection.
    assert len(deadline_timers) <= 3


async def test_cut_stream_gives_partial_tokens_then_error(harness: Harness) -> None:
    harness.fake.script_generate(Cut(after_tokens=4))

    events, error = await collect(harness.generator())

    assert text_of(events) == "Odometry integrates wheel rotations "
    assert all(isinstance(e, TokenDelta) for e in events)
    assert error is not None and error.code == "generation_failed" and error.retryable
    assert harness.fake.generate_requests == 1  # never retried after the first token


async def test_cut_before_first_token_is_retried(harness: Harness) -> None:
    harness.fake.script_generate(Cut(after_tokens=0))

    events, error = await collect(harness.generator())

    assert error is None and text_of(events) == DEFAULT_ANSWER
    assert harness.fake.generate_requests == 2


async def test_consumer_stopping_closes_the_provider_stream(harness: Harness) -> None:
    harness.fake.configure(token_delay=0.1)
    stream = harness.generator().stream(REQUEST)
    received = [await anext(stream) for _ in range(3)]
    assert all(isinstance(e, TokenDelta) for e in received)

    await stream.aclose()
    closed_at = time.monotonic()

    assert await harness.fake.until(closed_early, within=1.0)
    (closure,) = harness.fake.stream_closed_early
    assert closure.reason == "client_closed" and closure.tokens_sent == 3
    assert closure.closed_at - closed_at < 1.0


async def test_cancelled_consumer_closes_the_provider_stream(harness: Harness) -> None:
    harness.fake.configure(token_delay=0.1)
    first_token = asyncio.Event()

    async def consume() -> None:
        async for _ in harness.generator().stream(REQUEST):
            first_token.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_token.wait(), timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await harness.fake.until(closed_early, within=1.0)


async def test_safety_finish_is_generation_blocked(harness: Harness) -> None:
    harness.fake.script_generate(Blocked(after_tokens=2))

    events, error = await collect(harness.generator())

    assert text_of(events) == "Odometry integrates "
    assert error is not None and error.code == "generation_blocked" and not error.retryable


async def test_exact_texts_pass_through_unchanged(harness: Harness) -> None:
    harness.fake.script_generate(Reply(["Odometry drifts [1]", " and [9]."]))

    events, _ = await collect(harness.generator())

    assert [e.text for e in events if isinstance(e, TokenDelta)] == [
        "Odometry drifts [1]",
        " and [9].",
    ]


class _ReadAhead:
    """A provider stream whose one read brings three pieces, then the end."""

    model = MAIN

    def __init__(self) -> None:
        self.calls = 0  # of next_piece
        self.reads = 0
        self.decoded: list[StreamPiece] = []

    async def next_piece(self, deadline: float) -> StreamPiece:
        self.calls += 1
        if not self.decoded:
            self.reads += 1
            if self.reads > 1:
                raise StopAsyncIteration
            self.decoded = [
                StreamPiece(text="Odometry "),
                StreamPiece(text="drifts "),
                StreamPiece(text="slowly.", finish_reason="stop", completion_tokens=3),
            ]
        return self.decoded.pop(0)

    def buffered_piece(self) -> StreamPiece | None:
        return self.decoded.pop(0) if self.decoded else None

    async def close(self) -> None:
        pass


class _ReadAheadProvider:
    name = "read-ahead"

    def __init__(self) -> None:
        self.stream = _ReadAhead()

    def open_stream(self, model: str, request: object) -> _ReadAhead:
        return self.stream

    def is_retryable(self, exc: BaseException) -> bool:
        return False

    def is_rate_limited(self, exc: BaseException) -> bool:
        return False

    def retry_hint(self, exc: BaseException) -> float | None:
        return None

    def describe(self, exc: BaseException) -> str:
        return type(exc).__name__


async def test_pieces_a_read_brought_are_taken_without_waiting_for_another() -> None:
    provider = _ReadAheadProvider()
    generator = StreamingGenerator(
        [Route(provider, MAIN)], first_token_timeout=2.0, total_timeout=5.0
    )

    events, error = await collect(generator)

    assert error is None and text_of(events) == "Odometry drifts slowly."
    assert isinstance(events[-1], GenerationFinished) and events[-1].completion_tokens == 3
    # The read that brought the three, and the end: no coroutine for the two read ahead.
    assert provider.stream.calls == provider.stream.reads == 2
