"""Resuming a dropped answer stream (Last-Event-ID) against real granian servers.

The fake Gemini streams slowly, so an answer is still being written when its reader
drops after 3 tokens; the reader comes back with `Last-Event-ID: 3` on the same worker or,
through Redis, on another server process on the same database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse

from bookchat.devtools.fake_gemini import FakeGemini

from .servers import prepare_book_env, running_server

pytestmark = pytest.mark.server

GRACE = 2.0
WORDS = [f"w{i}" for i in range(40)]
ANSWER = "PID control combines proportional, integral and derivative terms [1]. " + " ".join(WORDS)
QUESTION = {"message": "How does PID control work?"}


class Event(NamedTuple):
    id: int
    name: str
    data: dict[str, Any]


async def ask_and_drop(http: httpx.AsyncClient, tokens: int) -> list[Event]:
    """POST a question and close the connection once `tokens` tokens have arrived."""
    seen: list[Event] = []
    async with aconnect_sse(http, "POST", "/api/v1/chat", json=QUESTION) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # a ping
            seen.append(Event(int(sse.id), sse.event, msgspec.json.decode(sse.data)))
            if sum(e.name == "token" for e in seen) == tokens:
                break  # leaving the block drops the connection mid-answer
    return seen


async def resume(
    http: httpx.AsyncClient, message_id: str, last_id: int, token: str | None = None
) -> list[Event]:
    """GET the events after `last_id` to the end of the stream."""
    headers = {"Last-Event-ID": str(last_id)}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    events: list[Event] = []
    async with aconnect_sse(
        http, "GET", f"/api/v1/messages/{message_id}/events", headers=headers
    ) as source:
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            if sse.data:
                events.append(Event(int(sse.id), sse.event, msgspec.json.decode(sse.data)))
    return events


def text_of(events: list[Event]) -> str:
    return "".join(e.data["content"] for e in events if e.name == "token")


async def settled_answer(http: httpx.AsyncClient, session: dict[str, Any]) -> dict[str, Any]:
    """The stored answer once it is no longer `streaming` (polls the history API)."""
    headers = {"Authorization": f"Bearer {session['token']}"}
    deadline = time.monotonic() + 15
    while True:
        response = await http.get(
            f"/api/v1/sessions/{session['session_id']}/messages", headers=headers
        )
        answer = response.json()["messages"][-1]
        if answer["status"] != "streaming":
            return dict(answer)
        assert time.monotonic() < deadline, "the answer was never completed"
        await _pause()


async def _pause() -> None:
    await asyncio.sleep(0.05)  # polling interval between two reads of the history


def assert_resumed_exactly_once(first: list[Event], resumed: list[Event], after: int) -> None:
    """The resumed events are every event after `after`, once each, in order, to `done`."""
    ids = [e.id for e in resumed]
    assert ids == list(range(after + 1, after + 1 + len(ids))), ids
    assert resumed[-1].name == "done"
    assert [e.name for e in resumed[:-1]] == ["token"] * (len(resumed) - 1)
    # The events the first connection had seen after `after` come again, identical.
    overlap = [e for e in first if e.id > after]
    assert resumed[: len(overlap)] == overlap


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeGemini]:
    with FakeGemini(answer=ANSWER) as fake:
        yield fake


@pytest.fixture
def fake(module_fake: FakeGemini) -> FakeGemini:
    module_fake.reset()
    return module_fake


def book_env(
    tmp_path: Path, fake: FakeGemini, grace: float = GRACE, **overrides: str
) -> dict[str, str]:
    return prepare_book_env(
        tmp_path,
        GEMINI_API_KEY="test-key",
        GEMINI_BASE_URL=fake.base_url,
        RESUME_GRACE_SECONDS=str(grace),
        SSE_PING_INTERVAL="0.5",
        **overrides,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_fake: FakeGemini) -> Iterator[str]:
    with running_server(book_env(tmp_path_factory.mktemp("resume"), module_fake)) as base_url:
        yield base_url


async def test_resume_on_the_same_worker_gets_every_later_event_once_and_a_complete_answer(
    server: str, fake: FakeGemini
) -> None:
    fake.configure(token_delay=0.1)  # about 4 s of answer: it outlives the grace period
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        first = await ask_and_drop(http, tokens=3)
        session = first[0].data
        assert [e.name for e in first] == ["session", "citations", "token", "token", "token"]
        assert fake.active_streams == 1  # the answer is still being written
        resumed = await resume(http, session["message_id"], 3, session["token"])
        stored = await settled_answer(http, session)
    assert_resumed_exactly_once(first, resumed, after=3)
    text = text_of([e for e in first if e.id <= 3] + resumed)
    assert text == ANSWER
    assert stored["id"] == session["message_id"]
    assert stored["status"] == "complete" and stored["content"] == text
    assert await fake.until(lambda f: f.stream_closures, within=10)
    assert [c.reason for c in fake.stream_closures] == ["completed"]


async def test_no_reconnect_stops_the_answer_after_the_grace_period_and_saves_it_interrupted(
    server: str, fake: FakeGemini
) -> None:
    fake.configure(token_delay=0.2)  # about 8 s of answer: far longer than the grace period
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        first = await ask_and_drop(http, tokens=3)
        dropped = time.monotonic()
        session = first[0].data
        # The provider's stream is closed by the server, once the grace period is over.
        assert await fake.until(lambda f: f.stream_closures, within=15)
        [closure] = fake.stream_closures
        assert closure.reason == "client_closed"
        assert GRACE * 0.9 <= closure.closed_at - dropped < GRACE + 2.0
        assert closure.tokens_sent < len(ANSWER.split())
        stored = await settled_answer(http, session)
        assert stored["status"] == "interrupted"
        assert stored["content"].startswith(text_of(first))
        assert len(stored["content"]) < len(ANSWER)
        # Still kept for a late reader: all that was said, then `interrupted`.
        replay = await resume(http, session["message_id"], 0, session["token"])
    assert [e.id for e in replay] == list(range(1, 1 + len(replay)))
    # The replayed `session` event never carries the new reader's token again.
    assert replay[0].name == "session" and "token" not in replay[0].data
    assert replay[0].data["message_id"] == session["message_id"]
    assert replay[1:5] == first[1:5]
    assert text_of(replay) == stored["content"]
    assert replay[-1].name == "error" and replay[-1].data["code"] == "interrupted"


async def test_an_answer_that_finished_while_the_reader_was_away_is_replayed_to_done(
    server: str, fake: FakeGemini
) -> None:
    fake.configure(token_delay=0.03)
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        first = await ask_and_drop(http, tokens=3)
        session = first[0].data
        stored = await settled_answer(http, session)  # finished without its reader
        assert stored["status"] == "complete"
        resumed = await resume(http, session["message_id"], 3)  # tokenless, same IP
    assert_resumed_exactly_once(first, resumed, after=3)
    assert text_of([e for e in first if e.id <= 3] + resumed) == stored["content"] == ANSWER


@pytest.fixture
def redis_workers(tmp_path: Path, fake: FakeGemini, redis_url: str) -> Iterator[tuple[str, str]]:
    """Two server processes on one database and one Redis (two workers or replicas)."""
    env = book_env(tmp_path, fake, REDIS_URL=redis_url)
    with ExitStack() as stack:
        yield stack.enter_context(running_server(env)), stack.enter_context(running_server(env))


@pytest.mark.redis
async def test_resume_on_another_worker_through_redis_gets_every_later_event_once(
    redis_workers: tuple[str, str], fake: FakeGemini
) -> None:
    worker_a, worker_b = redis_workers
    fake.configure(token_delay=0.1)
    async with (
        httpx.AsyncClient(base_url=worker_a, timeout=30) as on_a,
        httpx.AsyncClient(base_url=worker_b, timeout=30) as on_b,
    ):
        first = await ask_and_drop(on_a, tokens=3)
        session = first[0].data
        assert fake.active_streams == 1
        resumed = await resume(on_b, session["message_id"], 3, session["token"])
        stored = await settled_answer(on_b, session)
    assert_resumed_exactly_once(first, resumed, after=3)
    assert text_of([e for e in first if e.id <= 3] + resumed) == ANSWER
    # Worker A kept generating for the reader on B (about 4 s, past A's grace period).
    assert stored["status"] == "complete" and stored["content"] == ANSWER
    assert await fake.until(lambda f: f.stream_closures, within=10)
    assert [c.reason for c in fake.stream_closures] == ["completed"]


@pytest.fixture
def workers_without_redis(tmp_path: Path, fake: FakeGemini) -> Iterator[tuple[str, str]]:
    env = book_env(tmp_path, fake)
    with ExitStack() as stack:
        yield stack.enter_context(running_server(env)), stack.enter_context(running_server(env))


async def test_without_redis_another_worker_answers_503_resume_unavailable(
    workers_without_redis: tuple[str, str], fake: FakeGemini
) -> None:
    worker_a, worker_b = workers_without_redis
    fake.configure(token_delay=0.1)
    async with (
        httpx.AsyncClient(base_url=worker_a, timeout=30) as on_a,
        httpx.AsyncClient(base_url=worker_b, timeout=30) as on_b,
    ):
        first = await ask_and_drop(on_a, tokens=3)
        session = first[0].data
        path = f"/api/v1/messages/{session['message_id']}/events"
        headers = {"Authorization": f"Bearer {session['token']}", "Last-Event-ID": "3"}
        elsewhere = await on_b.get(path, headers=headers)
        # The worker that writes the answer resumes it.
        here = await resume(on_a, session["message_id"], 3, session["token"])
    assert elsewhere.status_code == 503
    assert elsewhere.headers["retry-after"] == "1"
    assert elsewhere.json()["error"]["code"] == "resume_unavailable"
    assert_resumed_exactly_once(first, here, after=3)
