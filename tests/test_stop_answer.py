"""The reader's Stop: `POST /api/v1/messages/{id}/stop` ends the answer at once, on real
granian servers (same worker, and another one through Redis).

Dropping the connection keeps an answer going for the grace period (a reconnect may resume
it); Stop must not: the grace period here is 30 s, and the provider's stream has to be
closed within a few seconds of the stop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse

from bookchat.devtools.fake_gemini import FakeGemini

from .servers import running_server
from .test_resume_server import ANSWER, QUESTION, Event, book_env, settled_answer, text_of

pytestmark = pytest.mark.server

GRACE = 30.0
PROMPT = 3.0  # how soon after the stop the provider's stream must be closed


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeGemini]:
    with FakeGemini(answer=ANSWER) as fake:
        yield fake


@pytest.fixture
def fake(module_fake: FakeGemini) -> FakeGemini:
    module_fake.reset()
    module_fake.configure(token_delay=0.2)  # about 8 s of answer, far less than the grace
    return module_fake


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_fake: FakeGemini) -> Iterator[str]:
    env = book_env(tmp_path_factory.mktemp("stop"), module_fake, grace=GRACE)
    with running_server(env) as base_url:
        yield base_url


async def read_then_stop(
    reader: httpx.AsyncClient, stopper: httpx.AsyncClient, tokens: int
) -> tuple[list[Event], float, httpx.Response]:
    """Read the answer; after `tokens` tokens press Stop (on `stopper`) and read on to the
    end of the stream. Returns the events, when Stop was sent, and Stop's response."""
    seen: list[Event] = []
    stopped_at = 0.0
    response: httpx.Response | None = None
    async with aconnect_sse(reader, "POST", "/api/v1/chat", json=QUESTION) as source:
        async for sse in source.aiter_sse():
            if not sse.data:
                continue
            seen.append(Event(int(sse.id), sse.event, msgspec.json.decode(sse.data)))
            if response is None and sum(e.name == "token" for e in seen) == tokens:
                session = seen[0].data
                stopped_at = time.monotonic()
                response = await stopper.post(
                    f"/api/v1/messages/{session['message_id']}/stop",
                    headers={"Authorization": f"Bearer {session['token']}"},
                )
    assert response is not None
    return seen, stopped_at, response


async def test_stop_closes_the_provider_stream_at_once_and_saves_what_was_written(
    server: str, fake: FakeGemini
) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        events, stopped_at, response = await read_then_stop(http, http, tokens=3)
        session = events[0].data
        stored = await settled_answer(http, session)
    assert response.status_code == 204 and response.content == b""
    assert await fake.until(lambda f: f.stream_closures, within=10)
    [closure] = fake.stream_closures
    assert closure.reason == "client_closed"
    assert closure.closed_at - stopped_at < PROMPT  # not the 30 s grace period
    # The reader's stream ends with `interrupted`; the stored answer is what it was sent.
    assert events[-1].name == "error" and events[-1].data["code"] == "interrupted"
    assert stored["status"] == "interrupted"
    assert stored["content"] == text_of(events)
    assert len(stored["content"]) < len(ANSWER)


async def test_stop_is_404_for_another_readers_answer_and_204_once_it_has_finished(
    server: str, fake: FakeGemini
) -> None:
    fake.configure(token_delay=0.0)
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        response = await http.post(
            "/api/v1/chat", json=QUESTION, headers={"accept": "application/json"}
        )
        answer = response.json()
        token = response.headers["x-bookchat-token"]
        path = f"/api/v1/messages/{answer['message_id']}/stop"
        other = await http.post(
            "/api/v1/chat", json=QUESTION, headers={"accept": "application/json"}
        )
        other_token = other.headers["x-bookchat-token"]
        foreign = await http.post(path, headers={"Authorization": f"Bearer {other_token}"})
        unknown = await http.post(
            "/api/v1/messages/00000000-0000-0000-0000-000000000000/stop",
            headers={"Authorization": f"Bearer {token}"},
        )
        finished = await http.post(path, headers={"Authorization": f"Bearer {token}"})
        stored = await settled_answer(http, {"session_id": answer["session_id"], "token": token})
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "message_not_found"
    assert unknown.status_code == 404
    assert finished.status_code == 204
    assert stored["status"] == "complete" and stored["content"] == ANSWER


@pytest.fixture
def redis_workers(tmp_path: Path, fake: FakeGemini, redis_url: str) -> Iterator[tuple[str, str]]:
    """Two server processes on one database and one Redis (two workers or replicas)."""
    env = book_env(tmp_path, fake, grace=GRACE, REDIS_URL=redis_url)
    with ExitStack() as stack:
        yield stack.enter_context(running_server(env)), stack.enter_context(running_server(env))


@pytest.mark.redis
async def test_stop_sent_to_another_worker_reaches_the_one_writing_the_answer_through_redis(
    redis_workers: tuple[str, str], fake: FakeGemini
) -> None:
    worker_a, worker_b = redis_workers
    async with (
        httpx.AsyncClient(base_url=worker_a, timeout=30) as on_a,
        httpx.AsyncClient(base_url=worker_b, timeout=30) as on_b,
    ):
        events, stopped_at, response = await read_then_stop(on_a, on_b, tokens=3)
        stored = await settled_answer(on_b, events[0].data)
    assert response.status_code == 204
    assert await fake.until(lambda f: f.stream_closures, within=10)
    [closure] = fake.stream_closures
    assert closure.reason == "client_closed"
    assert closure.closed_at - stopped_at < PROMPT
    assert events[-1].name == "error" and events[-1].data["code"] == "interrupted"
    assert stored["status"] == "interrupted" and stored["content"] == text_of(events)
