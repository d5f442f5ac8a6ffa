"""SSE against a real granian server: incremental delivery, disconnects, pings, workers.

Each test runs twice: Gemini behind the server, then an OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse

from bookchat.devtools.fake_gemini import FakeGemini
from bookchat.devtools.fake_openai import FakeOpenAI

from .servers import prepare_book_env, running_server

pytestmark = pytest.mark.server

ANSWER_WORDS = [f"w{i}" for i in range(20)]
ANSWER = "PID control combines proportional, integral and derivative terms [1]. " + " ".join(
    ANSWER_WORDS
)


@pytest.fixture(scope="module", params=["gemini", "openai"])
def provider(request: pytest.FixtureRequest) -> str:
    """Each test runs against a Gemini-backed and an OpenAI-compatible-backed server."""
    return str(request.param)


@pytest.fixture(scope="module")
def module_fake(provider: str) -> Iterator[FakeGemini]:
    fake_class = FakeOpenAI if provider == "openai" else FakeGemini
    with fake_class(answer=ANSWER) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_fake: FakeGemini, provider: str
) -> Iterator[str]:
    """One server per module and provider (startup and ingestion dominate the time)."""
    models = (
        {"GEMINI_API_KEY": "test-key", "GEMINI_BASE_URL": module_fake.base_url}
        if provider == "gemini"
        else {
            "LLM_PROVIDER": "openai",
            "OPENAI_BASE_URL": module_fake.api_url,
            "EMBEDDING_PROVIDER": "openai",
            "EMBEDDING_MODEL": "fake-embedding",
        }
    )
    # No grace period: a client that leaves stops its answer at once (resuming has its
    # own tests in test_resume_server.py).
    env = prepare_book_env(
        tmp_path_factory.mktemp("server"),
        SSE_PING_INTERVAL="0.2",
        RESUME_GRACE_SECONDS="0",
        **models,
    )
    with running_server(env) as base_url:
        yield base_url


@pytest.fixture
def fake(module_fake: FakeGemini, server: str) -> FakeGemini:
    """The module's fake, with its counters and pacing reset for this test."""
    module_fake.reset()
    return module_fake


async def test_events_arrive_incrementally_in_protocol_order(server: str, fake: FakeGemini) -> None:
    fake.configure(token_delay=0.05)
    arrivals: list[tuple[float, str, dict]] = []
    async with httpx.AsyncClient(base_url=server, timeout=30) as client:
        started = time.perf_counter()
        async with aconnect_sse(
            client, "POST", "/api/v1/chat", json={"message": "How does PID control work?"}
        ) as source:
            assert source.response.status_code == 200
            async for event in source.aiter_sse():
                if not event.data:
                    continue  # a ping comment
                arrivals.append(
                    (time.perf_counter() - started, event.event, msgspec.json.decode(event.data))
                )
    names = [name for _, name, _ in arrivals]
    assert names[:2] == ["session", "citations"] and names[-1] == "done"
    tokens = [(t, data["content"]) for t, name, data in arrivals if name == "token"]
    assert len(tokens) >= 10
    # The first token is on screen long before the fake has sent its last one.
    first_token_at, last_token_at = tokens[0][0], tokens[-1][0]
    assert last_token_at - first_token_at > 0.5
    assert first_token_at < last_token_at / 2
    text = "".join(content for _, content in tokens)
    assert text.split()[-1] == "w19"
    done = arrivals[-1][2]
    assert done["grounded"] is True and [c["n"] for c in done["citations"]] == [1]
    assert done["usage"]["completion_tokens"] > 0
    assert fake.generate_requests == 1

    # JSON mode returns the same answer.
    fake.configure(token_delay=0.0)
    async with httpx.AsyncClient(base_url=server, timeout=30) as client:
        response = await client.post(
            "/api/v1/chat",
            json={"message": "How does PID control work?"},
            headers={"Accept": "application/json"},
        )
    assert response.status_code == 200
    assert response.json()["answer"] == text


async def test_client_disconnect_stops_generation_and_saves_interrupted(
    server: str, fake: FakeGemini
) -> None:
    fake.configure(token_delay=0.2)
    seen: list[str] = []
    token = ""
    async with httpx.AsyncClient(base_url=server, timeout=30) as client:
        async with aconnect_sse(
            client, "POST", "/api/v1/chat", json={"message": "How does PID control work?"}
        ) as source:
            async for event in source.aiter_sse():
                if not event.data:
                    continue  # a ping comment
                data = msgspec.json.decode(event.data)
                if event.event == "session":
                    token, session_id = data["token"], data["session_id"]
                elif event.event == "token":
                    seen.append(data["content"])
                    if len(seen) == 3:
                        break
        closed_at = time.monotonic()
    # The fake sees its stream closed within a second of the client leaving.
    assert fake.wait_until(lambda f: f.stream_closed_early, timeout=5)
    closure = fake.stream_closed_early[0]
    assert closure.closed_at - closed_at < 1.0

    async with httpx.AsyncClient(base_url=server, timeout=30) as client:
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 5
        while True:
            messages = (
                await client.get(f"/api/v1/sessions/{session_id}/messages", headers=headers)
            ).json()["messages"]
            if messages[-1]["status"] != "streaming" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # polling the API until the shielded save lands
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["status"] == "interrupted"
    assert messages[1]["content"].startswith("".join(seen))


async def test_idle_stream_gets_comment_pings(server: str, fake: FakeGemini) -> None:
    fake.configure(first_token_delay=0.8)
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=server, timeout=30) as client,
        client.stream(
            "POST", "/api/v1/chat", json={"message": "How does PID control work?"}
        ) as response,
    ):
        async for line in response.aiter_lines():
            lines.append(line)
    pings = [line for line in lines if line.startswith(":")]
    assert pings and all(line == ": ping" for line in pings)
    assert any(line == "event: done" for line in lines)
