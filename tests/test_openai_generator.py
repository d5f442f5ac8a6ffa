"""OpenAI-specific generator behaviour, through the real `openai` client and the fake.

The guarantees shared with Gemini (streaming, usage, retries, fallback, deadlines, cut
streams, closing on disconnect) run for both providers in test_generator_contract.py.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from google import genai

from bookchat.devtools.fake_gemini import FakeGemini
from bookchat.devtools.fake_openai import (
    DEFAULT_ANSWER,
    Cut,
    FakeOpenAI,
    Reply,
    ServerError,
)
from bookchat.llm.base import (
    GenerationFinished,
    GenerationRequest,
)
from bookchat.llm.gemini import GeminiProvider
from bookchat.llm.openai import (
    OpenAIProvider,
    StreamFailed,
    _decode_chunk,
    _piece_of,
    is_retryable_error,
    retry_delay_hint,
)
from bookchat.llm.streaming import Route, StreamingGenerator

from .generator_helpers import REQUEST, collect, text_of

# Fixtures `fake_openai`, `openai_client`, `fake_gemini`, `genai_client`.
pytest_plugins = ["tests.openai_fixtures", "tests.gemini_fixtures"]

MAIN, FALLBACK = "gpt-main", "gpt-fallback"


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


async def test_usage_is_requested_and_history_sent_openai_style(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    events, error = await collect(make_generator(openai_client))

    assert error is None and text_of(events) == DEFAULT_ANSWER
    # Usage arrives in a last chunk, which only `stream_options.include_usage` asks for.
    finished = events[-1]
    assert isinstance(finished, GenerationFinished) and finished.prompt_tokens > 0
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


async def test_the_empty_role_chunk_is_not_the_first_token(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    # The role-only chunk arrives at once; the first real token would come after 2 s.
    fake_openai.script_generate(Reply(first_token_delay=2.0))

    events, error = await collect(make_generator(openai_client, first_token_timeout=0.3))

    assert events == []
    assert error is not None and error.code == "generation_timeout"
    assert await fake_openai.until(lambda f: f.stream_closed_early, within=1.0)


async def test_a_cut_stream_is_a_transport_error_after_the_partial_text(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_generate(Cut(after_tokens=4))

    events, error = await collect(make_generator(openai_client))

    assert text_of(events) == "Odometry integrates wheel rotations "
    assert error is not None and error.code == "generation_failed"
    assert isinstance(error.__cause__, httpx.TransportError)


def test_an_error_chunk_inside_the_stream_is_a_retryable_failure() -> None:
    # OpenRouter and vLLM report a failure after the 200 as `data: {"error": ...}`.
    with pytest.raises(StreamFailed, match="upstream overloaded") as failure:
        _piece_of(_decode_chunk(b'{"error": {"message": "upstream overloaded", "code": 502}}'))
    assert is_retryable_error(failure.value)


def test_retry_delay_hint_reads_retry_after_headers() -> None:
    def error(headers: dict[str, str]) -> openai.APIStatusError:
        response = httpx.Response(429, headers=headers, request=httpx.Request("POST", "http://x"))
        return openai.RateLimitError("slow down", response=response, body=None)

    assert retry_delay_hint(error({"retry-after-ms": "250"})) == 0.25
    assert retry_delay_hint(error({"retry-after": "3"})) == 3.0
    assert retry_delay_hint(error({})) is None
    assert retry_delay_hint(ValueError()) is None
