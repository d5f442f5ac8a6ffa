"""GeminiGenerator against the fake Gemini through the real google-genai client."""

from __future__ import annotations

import asyncio
import time

import pytest
from google import genai

from bookchat.devtools.fake_gemini import (
    DEFAULT_ANSWER,
    Blocked,
    Cut,
    FakeGemini,
    Hang,
    PromptBlocked,
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
from bookchat.llm.gemini import GeminiGenerator, retry_delay_hint

# Fixtures `fake_gemini` and `genai_client`.
pytest_plugins = ["tests.gemini_fixtures"]

MAIN, FALLBACK = "gemini-main", "gemini-fallback"
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


def make_generator(client: genai.Client, **overrides: float) -> GeminiGenerator:
    options: dict[str, float] = {
        "first_token_timeout": 2.0,
        "total_timeout": 5.0,
        "backoff_base": 0.01,
    }
    options.update(overrides)
    return GeminiGenerator(
        client,
        MAIN,
        FALLBACK,
        first_token_timeout=options["first_token_timeout"],
        total_timeout=options["total_timeout"],
        backoff_base=options["backoff_base"],
        max_retries=3,
    )


async def collect(
    generator: GeminiGenerator, request: GenerationRequest = REQUEST
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
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    events, error = await collect(make_generator(genai_client))

    assert error is None
    assert text_of(events) == DEFAULT_ANSWER
    finished = events[-1]
    assert isinstance(finished, GenerationFinished)
    assert finished.finish_reason == "stop"
    assert finished.model == MAIN
    assert finished.completion_tokens == len(DEFAULT_ANSWER.split(" "))
    assert finished.prompt_tokens > 0
    (record,) = fake_gemini.requests
    assert [c["role"] for c in record.body["contents"]] == ["user", "model", "user"]
    assert record.body["systemInstruction"]["parts"][0]["text"] == REQUEST.system_instruction


async def test_429_twice_then_answer(fake_gemini: FakeGemini, genai_client: genai.Client) -> None:
    fake_gemini.script_generate(RateLimited(), RateLimited())

    events, error = await collect(make_generator(genai_client))

    assert error is None
    assert text_of(events) == DEFAULT_ANSWER
    assert fake_gemini.generate_requests == 3
    assert {r.model for r in fake_gemini.requests} == {MAIN}


async def test_retry_honours_the_servers_retry_delay(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(RateLimited(retry_delay=0.3))

    _, error = await collect(make_generator(genai_client))

    assert error is None
    first, second = fake_gemini.requests
    assert second.at - first.at >= 0.3


async def test_500_forever_on_main_falls_back(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.set_model_rule(MAIN, ServerError())

    events, error = await collect(make_generator(genai_client))

    assert error is None
    assert text_of(events) == DEFAULT_ANSWER
    assert isinstance(events[-1], GenerationFinished) and events[-1].model == FALLBACK
    assert [r.model for r in fake_gemini.requests] == [MAIN] * 4 + [FALLBACK]


async def test_429_that_never_clears_is_rate_limited(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.set_model_rule(MAIN, RateLimited(retry_delay=None))
    fake_gemini.set_model_rule(FALLBACK, RateLimited(retry_delay=None))

    events, error = await collect(make_generator(genai_client))

    assert events == []
    assert error is not None and error.code == "rate_limited" and error.retryable
    assert fake_gemini.generate_requests == 8


async def test_client_errors_are_not_retried(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(ServerError(status=400, message="bad request"))

    _, error = await collect(make_generator(genai_client))

    assert error is not None and error.code == "generation_failed"
    assert fake_gemini.generate_requests == 1


async def test_no_first_token_in_time_is_generation_timeout(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(Hang())
    started = time.monotonic()

    events, error = await collect(make_generator(genai_client, first_token_timeout=0.3))

    assert events == []
    assert error is not None and error.code == "generation_timeout" and error.retryable
    assert time.monotonic() - started < 1.5
    # The abandoned request is closed, not left hanging on the provider.
    assert await fake_gemini.until(lambda f: f.stream_closed_early, within=1.0)


async def test_total_timeout_after_first_token(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.configure(token_delay=0.2)

    events, error = await collect(make_generator(genai_client, total_timeout=0.5))

    assert 1 <= len(events) < len(DEFAULT_ANSWER.split(" "))
    assert error is not None and error.code == "generation_timeout"


async def test_cut_stream_gives_partial_tokens_then_error(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(Cut(after_tokens=4))

    events, error = await collect(make_generator(genai_client))

    assert text_of(events) == "Odometry integrates wheel rotations "
    assert all(isinstance(e, TokenDelta) for e in events)
    assert error is not None and error.code == "generation_failed"
    assert fake_gemini.generate_requests == 1  # never retried after the first token


async def test_cut_before_first_token_is_retried(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(Cut(after_tokens=0))

    events, error = await collect(make_generator(genai_client))

    assert error is None and text_of(events) == DEFAULT_ANSWER
    assert fake_gemini.generate_requests == 2


async def test_consumer_stopping_closes_the_provider_stream(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.configure(token_delay=0.1)
    stream = make_generator(genai_client).stream(REQUEST)
    received = [await anext(stream) for _ in range(3)]
    assert all(isinstance(e, TokenDelta) for e in received)

    await stream.aclose()
    closed_at = time.monotonic()

    assert await fake_gemini.until(lambda f: f.stream_closed_early, within=1.0)
    (closure,) = fake_gemini.stream_closed_early
    assert closure.tokens_sent == 3
    assert closure.closed_at - closed_at < 1.0


async def test_cancelled_consumer_closes_the_provider_stream(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.configure(token_delay=0.1)
    first_token = asyncio.Event()

    async def consume() -> None:
        async for _ in make_generator(genai_client).stream(REQUEST):
            first_token.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_token.wait(), timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await fake_gemini.until(lambda f: f.stream_closed_early, within=1.0)


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST"])
async def test_safety_finish_is_generation_blocked(
    fake_gemini: FakeGemini, genai_client: genai.Client, reason: str
) -> None:
    fake_gemini.script_generate(Blocked(after_tokens=2, reason=reason))

    events, error = await collect(make_generator(genai_client))

    assert text_of(events) == "Odometry integrates "
    assert error is not None and error.code == "generation_blocked" and not error.retryable


async def test_blocked_prompt_is_generation_blocked(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(PromptBlocked())

    events, error = await collect(make_generator(genai_client))

    assert events == []
    assert error is not None and error.code == "generation_blocked"
    assert fake_gemini.generate_requests == 1


async def test_exact_texts_pass_through_unchanged(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(Reply(["Odometry drifts [1]", " and [9]."]))

    events, _ = await collect(make_generator(genai_client))

    assert [e.text for e in events if isinstance(e, TokenDelta)] == [
        "Odometry drifts [1]",
        " and [9].",
    ]


def test_retry_delay_hint_reads_retry_info() -> None:
    class Fake(Exception):
        details = {
            "error": {
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.Help"},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"},
                ]
            }
        }

    assert retry_delay_hint(Fake()) == 17.0
    assert retry_delay_hint(ValueError()) is None
