"""The OpenAI-compatible generator against the fake through the real `openai` client.

Same guarantees as the Gemini generator (tests/test_gemini_generator.py): streaming,
usage, retries before the first token, fallback (also across providers), first-token
and total deadlines, partial text then an error on a cut stream, and the provider's
connection closed as soon as the consumer stops.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from google import genai

from bookchat.devtools.fake_gemini import FakeGemini
from bookchat.devtools.fake_openai import (
    DEFAULT_ANSWER,
    Blocked,
    Cut,
    FakeOpenAI,
    Hang,
    RateLimited,
    Reply,
    ServerError,
)
from bookchat.llm.base import (
    GenerationError,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TokenDelta,
    Turn,
)
from bookchat.llm.gemini import GeminiProvider
from bookchat.llm.openai import OpenAIProvider, retry_delay_hint
from bookchat.llm.streaming import Route, StreamingGenerator

# Fixtures `fake_openai`, `openai_client`, `fake_gemini`, `genai_client`.
pytest_plugins = ["tests.openai_fixtures", "tests.gemini_fixtures"]

MAIN, FALLBACK = "gpt-main", "gpt-fallback"
REQUEST = GenerationRequest(
    system_instruction="You are a tutor for the book. Answer only from the context.",
    contents=[
        Turn(role="user", text="What is a robot?"),
        Turn(role="model", text="A machine that senses and acts [1]."),
        Turn(role="user", text="What is odometry?"),
    ],
    question="What is odometry?",
    context=[],
)


def make_generator(
    client: openai.AsyncOpenAI, *routes: Route, **overrides: float
) -> StreamingGenerator:
    options = {"first_token_timeout": 2.0, "total_timeout": 5.0, "backoff_base": 0.01}
    options.update(overrides)
    provider = OpenAIProvider(client)
    return StreamingGenerator(
        routes or (Route(provider, MAIN), Route(provider, FALLBACK)),
        first_token_timeout=options["first_token_timeout"],
        total_timeout=options["total_timeout"],
        backoff_base=options["backoff_base"],
        max_retries=3,
    )


async def collect(
    generator: StreamingGenerator, request: GenerationRequest = REQUEST
) -> tuple[list[GenerationEvent], GenerationError | None]:
    events: list[GenerationEvent] = []
    try:
        async for event in generator.stream(request):
            events.append(event)
    except GenerationError as exc:
        return events, exc
    return events, None


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


async def test_streams_tokens_then_finished_with_usage(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    events, error = await collect(make_generator(openai_client))

    assert error is None
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert len(deltas) == len(DEFAULT_ANSWER.split(" "))  # one event per streamed chunk
    assert text_of(events) == DEFAULT_ANSWER
    finished = events[-1]
    assert isinstance(finished, GenerationFinished)
    assert finished.finish_reason == "stop"
    assert finished.model == MAIN
    # Usage comes from the last chunk, which only `stream_options.include_usage` asks for.
    assert finished.completion_tokens == len(deltas)
    assert finished.prompt_tokens > 0
    (record,) = fake_openai.requests
    assert record.body["stream"] is True
    assert record.body["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in record.body["messages"]] == ["system", "user", "assistant", "user"]
    assert record.body["messages"][0]["content"] == REQUEST.system_instruction


async def test_without_history_the_question_is_the_user_message(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    request = GenerationRequest(system_instruction="", contents=[], question="Why?", context=[])

    _, error = await collect(make_generator(openai_client), request)

    assert error is None
    assert fake_openai.requests[0].body["messages"] == [{"role": "user", "content": "Why?"}]


async def test_429_twice_then_answer(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(RateLimited(retry_delay=None), RateLimited(retry_delay=None))

    events, error = await collect(make_generator(openai_client))

    assert error is None
    assert text_of(events) == DEFAULT_ANSWER
    assert fake_openai.generate_requests == 3
    assert {r.model for r in fake_openai.requests} == {MAIN}


async def test_retry_honours_the_servers_retry_after(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(RateLimited(retry_delay=0.3))

    _, error = await collect(make_generator(openai_client))

    assert error is None
    first, second = fake_openai.requests
    assert second.at - first.at >= 0.3


async def test_500_forever_on_main_falls_back(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.set_model_rule(MAIN, ServerError())

    events, error = await collect(make_generator(openai_client))

    assert error is None
    assert text_of(events) == DEFAULT_ANSWER
    assert isinstance(events[-1], GenerationFinished) and events[-1].model == FALLBACK
    assert [r.model for r in fake_openai.requests] == [MAIN] * 4 + [FALLBACK]


async def test_gemini_primary_failing_falls_back_to_the_openai_compatible_model(
    fake_gemini: FakeGemini,
    genai_client: genai.Client,
    fake_openai: FakeOpenAI,
    openai_client: openai.AsyncOpenAI,
) -> None:
    fake_gemini.set_model_rule("gemini-main", ServerError(status=503))
    generator = make_generator(
        openai_client,
        Route(GeminiProvider(genai_client), "gemini-main"),
        Route(OpenAIProvider(openai_client), "local-llama"),
    )

    events, error = await collect(generator)

    assert error is None
    assert text_of(events) == DEFAULT_ANSWER
    assert isinstance(events[-1], GenerationFinished) and events[-1].model == "local-llama"
    assert fake_gemini.generate_requests == 4
    assert [r.model for r in fake_openai.requests] == ["local-llama"]


async def test_429_that_never_clears_is_rate_limited(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.set_model_rule(MAIN, RateLimited(retry_delay=None))
    fake_openai.set_model_rule(FALLBACK, RateLimited(retry_delay=None))

    events, error = await collect(make_generator(openai_client))

    assert events == []
    assert error is not None and error.code == "rate_limited" and error.retryable
    assert fake_openai.generate_requests == 8


async def test_client_errors_are_not_retried(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(ServerError(status=400, message="bad request"))

    _, error = await collect(make_generator(openai_client))

    assert error is not None and error.code == "generation_failed" and "HTTP 400" in error.message
    assert fake_openai.generate_requests == 1


async def test_no_first_token_in_time_is_generation_timeout(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(Hang())
    started = time.monotonic()

    events, error = await collect(make_generator(openai_client, first_token_timeout=0.3))

    assert events == []
    assert error is not None and error.code == "generation_timeout" and error.retryable
    assert time.monotonic() - started < 1.5
    assert await fake_openai.until(lambda f: f.stream_closed_early, within=1.0)


async def test_the_empty_role_chunk_is_not_the_first_token(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    # The role-only chunk arrives at once; the first real token would come after 2 s.
    fake_openai.script_generate(Reply(first_token_delay=2.0))

    events, error = await collect(make_generator(openai_client, first_token_timeout=0.3))

    assert events == []
    assert error is not None and error.code == "generation_timeout"
    assert await fake_openai.until(lambda f: f.stream_closed_early, within=1.0)


async def test_total_timeout_after_first_token(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.configure(token_delay=0.2)

    events, error = await collect(make_generator(openai_client, total_timeout=0.5))

    assert 1 <= len(events) < len(DEFAULT_ANSWER.split(" "))
    assert error is not None and error.code == "generation_timeout"


async def test_cut_stream_gives_partial_tokens_then_error(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(Cut(after_tokens=4))

    events, error = await collect(make_generator(openai_client))

    assert text_of(events) == "Odometry integrates wheel rotations "
    assert all(isinstance(e, TokenDelta) for e in events)
    assert error is not None and error.code == "generation_failed" and error.retryable
    assert isinstance(error.__cause__, httpx.TransportError)
    assert fake_openai.generate_requests == 1  # never retried after the first token


async def test_cut_before_first_token_is_retried(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(Cut(after_tokens=0))

    events, error = await collect(make_generator(openai_client))

    assert error is None and text_of(events) == DEFAULT_ANSWER
    assert fake_openai.generate_requests == 2


async def test_consumer_stopping_closes_the_provider_connection(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.configure(token_delay=0.1)
    stream = make_generator(openai_client).stream(REQUEST)
    received = [await anext(stream) for _ in range(3)]
    assert all(isinstance(e, TokenDelta) for e in received)

    await stream.aclose()
    closed_at = time.monotonic()

    assert await fake_openai.until(lambda f: f.stream_closed_early, within=1.0)
    (closure,) = fake_openai.stream_closed_early
    assert closure.reason == "client_closed" and closure.tokens_sent == 3
    assert closure.closed_at - closed_at < 1.0


async def test_cancelled_consumer_closes_the_provider_connection(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.configure(token_delay=0.1)
    first_token = asyncio.Event()

    async def consume() -> None:
        async for _ in make_generator(openai_client).stream(REQUEST):
            first_token.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_token.wait(), timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await fake_openai.until(lambda f: f.stream_closed_early, within=1.0)


async def test_content_filter_finish_is_generation_blocked(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(Blocked(after_tokens=2))

    events, error = await collect(make_generator(openai_client))

    assert text_of(events) == "Odometry integrates "
    assert error is not None and error.code == "generation_blocked" and not error.retryable


async def test_exact_texts_pass_through_unchanged(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(Reply(["Odometry drifts [1]", " and [9]."]))

    events, _ = await collect(make_generator(openai_client))

    assert [e.text for e in events if isinstance(e, TokenDelta)] == [
        "Odometry drifts [1]",
        " and [9].",
    ]


def test_retry_delay_hint_reads_retry_after_headers() -> None:
    def error(headers: dict[str, str]) -> openai.APIStatusError:
        response = httpx.Response(429, headers=headers, request=httpx.Request("POST", "http://x"))
        return openai.RateLimitError("slow down", response=response, body=None)

    assert retry_delay_hint(error({"retry-after-ms": "250"})) == 0.25
    assert retry_delay_hint(error({"retry-after": "3"})) == 3.0
    assert retry_delay_hint(error({})) is None
    assert retry_delay_hint(ValueError()) is None
