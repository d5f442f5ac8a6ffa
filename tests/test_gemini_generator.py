"""Gemini-specific generator behaviour (the shared guarantees: test_generator_contract.py)."""

from __future__ import annotations

import asyncio

import pytest
from google import genai

from bookchat.devtools.fake_gemini import (
    DEFAULT_ANSWER,
    Blocked,
    FakeGemini,
    PromptBlocked,
    ServerError,
)
from bookchat.llm.gemini import (
    GeminiGenerator,
    _decode_chunk,
    _piece_of,
    env_proxy,
    retry_delay_hint,
)
from bookchat.llm.health import LLMHealth, TrackedGenerator
from bookchat.llm.streaming import close_shielded

from .generator_helpers import REQUEST, collect, text_of

# Fixtures `fake_gemini` and `genai_client`.
pytest_plugins = ["tests.gemini_fixtures"]

MAIN, FALLBACK = "gemini-main", "gemini-fallback"


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


async def test_history_and_instructions_are_sent_gemini_style(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    events, error = await collect(make_generator(genai_client))

    assert error is None and text_of(events) == DEFAULT_ANSWER
    (record,) = fake_gemini.requests
    assert [c["role"] for c in record.body["contents"]] == ["user", "model", "user"]
    assert record.body["systemInstruction"]["parts"][0]["text"] == REQUEST.system_instruction


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


async def test_a_gemini_stream_closes_without_a_task_of_its_own(
    fake_gemini: FakeGemini, genai_client: genai.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp releases a response at once, so the close needs no task and shield to
    outlive a cancellation."""
    made: list[object] = []
    monkeypatch.setattr(
        asyncio, "ensure_future", lambda *a, **k: made.append(a) or pytest.fail("a task")
    )

    events, error = await collect(make_generator(genai_client))

    assert error is None and text_of(events) == DEFAULT_ANSWER and made == []


async def test_a_close_that_never_waits_runs_even_for_a_cancelled_consumer() -> None:
    class Stream:
        model = "m"
        closed = 0

        def close_now(self) -> None:
            self.closed += 1

        async def close(self) -> None:
            raise AssertionError("close_now() is the one to call")

    stream = Stream()

    async def consumer() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # cancelled while closing: the close still runs, before the cancel
        await close_shielded(stream)
        assert stream.closed == 1
        await asyncio.sleep(0)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(consumer())
    assert stream.closed == 1


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


def test_the_environment_proxy_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The REST calls go through aiohttp; HTTPS_PROXY / NO_PROXY apply as they did to the
    SDK's httpx client."""
    api = "https://generativelanguage.googleapis.com/v1beta/"
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy(api) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert env_proxy(api) == "http://proxy.internal:3128"
    monkeypatch.setenv("NO_PROXY", "googleapis.com")
    assert env_proxy(api) is None


def test_chunk_text_leaves_out_thought_summaries() -> None:
    """One part (the usual chunk) or several: the answer's text, without thoughts."""

    def text(parts: str) -> str:
        chunk = _decode_chunk(b'{"candidates": [{"content": {"parts": %s}}]}' % parts.encode())
        return _piece_of(chunk).text

    assert text('[{"text": "Lidar"}]') == "Lidar"
    assert text('[{"text": "plan", "thought": true}]') == ""
    assert text("[{}]") == ""
    assert text("[]") == ""
    assert text('[{"text": "a", "thought": true}, {"text": "b"}, {"text": "c"}]') == "bc"


class _Plain:
    """A generator that does not report health itself: TrackedGenerator wraps its stream."""

    def __init__(self, inner: GeminiGenerator) -> None:
        self.inner = inner
        self.name = inner.name

    def stream(self, request):  # type: ignore[no-untyped-def]
        return self.inner.stream(request)


@pytest.mark.parametrize(
    ("script", "state", "error"),
    [
        (None, "ok", None),
        (Blocked(after_tokens=2), "ok", None),  # safety filters are not an outage
        (PromptBlocked(), "ok", None),
        (ServerError(status=400, message="API key not valid"), "failing", "generation_failed: "),
    ],
)
async def test_the_generator_reports_health_as_the_tracking_wrapper_does(
    fake_gemini: FakeGemini,
    genai_client: genai.Client,
    script: object,
    state: str,
    error: str | None,
) -> None:
    """`TrackedGenerator` hands its LLMHealth to the Gemini generator (no wrapper per
    event): the same events, errors and health as around a generator it must wrap."""
    outcomes = []
    for wrap in (lambda g: g, _Plain):
        if script is not None:
            fake_gemini.script_generate(script)  # type: ignore[arg-type]
        health = LLMHealth()
        tracked = TrackedGenerator(wrap(make_generator(genai_client)), health)
        events, failure = await collect(tracked)
        assert health.state == state
        assert (health.error or "").startswith(error or "") and bool(health.error) == bool(error)
        outcomes.append((events, failure.code if failure else None, health.error))
    assert outcomes[0] == outcomes[1]
