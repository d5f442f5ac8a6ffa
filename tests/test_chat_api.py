"""The chat API in process: protocol, sessions, tokens, ownership, limits, failures."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from bookchat.search.types import VectorStoreUnavailableError
from bookchat.settings import Settings

from .chat_helpers import LogCapture, aingest_sample_book, app_client, ask, ingest_sample_book
from .conftest import make_settings
from .rag_fakes import RaisingEmbedder, UnavailableStore

PID = "How does PID control work?"


@pytest.fixture
def book_settings(settings: Settings) -> Settings:
    ingest_sample_book(settings)
    return settings


@pytest.fixture
async def client(book_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for test_client in app_client(book_settings):
        yield test_client


async def test_chat_streams_events_in_protocol_order(client: httpx.AsyncClient) -> None:
    answer = await ask(client, PID)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    names = answer.names()
    assert names[0] == "session" and names[1] == "citations" and names[-1] == "done"
    assert set(names[2:-1]) == {"token"} and len(names) > 5
    assert answer.ids == [str(i) for i in range(1, len(names) + 1)]

    session = answer.first("session")
    assert session["token"] == answer.headers["x-bookchat-token"]
    citations = answer.first("citations")["citations"]
    assert citations and citations[0]["n"] == 1
    assert set(citations[0]) == {
        "n",
        "doc_path",
        "title",
        "section",
        "url",
        "module",
        "chapter",
        "score",
    }
    assert citations[0]["url"].startswith("https://book.example.org/")
    assert not citations[0]["doc_path"].endswith((".md", ".mdx"))

    done = answer.first("done")
    assert done["message_id"] == session["message_id"]
    assert done["session_id"] == session["session_id"]
    assert done["grounded"] is True
    assert set(done["usage"]) == {"prompt_tokens", "completion_tokens"}
    cited = {c["n"] for c in done["citations"]}
    assert cited and cited <= {c["n"] for c in citations}
    assert "PID" in answer.text or "pid" in answer.text.lower()


async def test_stream_events_pass_the_layers_that_act_on_start_and_end_only(
    book_settings: Settings,
) -> None:
    """Hooks and middleware see the SSE response's start and its end, not every event."""
    from litestar.config.app import AppConfig
    from litestar.plugins import InitPluginProtocol
    from litestar.testing import AsyncTestClient

    from bookchat.app import create_app

    seen: list[tuple[str, bool]] = []

    async def record(message: Any, scope: Any) -> None:
        if scope["path"] == "/api/v1/chat":
            seen.append((message["type"], bool(message.get("more_body"))))

    class RecordSends(InitPluginProtocol):
        def on_app_init(self, app_config: AppConfig) -> AppConfig:
            app_config.before_send.append(record)
            return app_config

    def chats_timed(metrics: str) -> float:
        found = re.search(
            r'duration_seconds_count\{[^}]*path="/api/v1/chat",status_code="200"\} (\S+)', metrics
        )
        return float(found.group(1)) if found else 0.0

    async with AsyncTestClient(app=create_app(book_settings, plugins=[RecordSends()])) as client:
        before = chats_timed((await client.get("/metrics")).text)
        answer = await ask(client, PID)
        after = chats_timed((await client.get("/metrics")).text)
    names = answer.names()
    assert names[0] == "session" and names[-1] == "done" and names.count("token") > 3
    assert answer.headers["x-request-id"]
    assert seen == [("http.response.start", False), ("http.response.body", False)]
    assert after == before + 1  # the request's metrics still time the response


async def test_json_mode_returns_the_same_answer(client: httpx.AsyncClient) -> None:
    streamed = await ask(client, PID)
    response = await client.post(
        "/api/v1/chat", json={"message": PID}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["answer"] == streamed.text
    assert body["citations"] == streamed.first("done")["citations"]
    assert body["grounded"] is True
    assert body["token"] == response.headers["x-bookchat-token"]
    assert {"message_id", "session_id", "usage"} <= set(body)


async def test_out_of_book_question_abstains_with_grounded_false(client: httpx.AsyncClient) -> None:
    answer = await ask(client, "What is the GDP of Brazil?")
    done = answer.first("done")
    assert done["grounded"] is False and done["finish_reason"] == "abstained"
    assert "does not" in answer.text or "couldn't" in answer.text


async def test_second_message_continues_the_session(client: httpx.AsyncClient) -> None:
    first = await ask(client, "What are the limitations of wheel odometry?")
    token = first.first("session")["token"]
    session_id = first.first("session")["session_id"]
    second = await ask(client, "How can they be reduced?", token=token, session_id=session_id)
    assert second.status == 200
    assert second.first("session")["session_id"] == session_id
    assert "token" not in second.first("session")  # only a new user gets one
    assert "x-bookchat-token" not in second.headers


async def test_a_follow_up_stays_on_the_page_the_previous_answer_cited_first(
    client: httpx.AsyncClient,
) -> None:
    # The stored answer's citations are the follow-up's topic: "can that go wrong?" after
    # the PID integral went to the gyro page ("a heading integrated from a gyro"), which
    # the first answer also cited, after the PID page.
    first = await ask(client, "what does the integral part of pid do?")
    cited = [c["doc_path"] for c in first.first("done")["citations"]]
    assert cited[0] == "02-motion/02-pid-control"
    session = first.first("session")
    second = await ask(
        client, "can that go wrong?", token=session["token"], session_id=session["session_id"]
    )
    sources = [c["doc_path"] for c in second.first("citations")["citations"]]
    assert sources[0] == "02-motion/02-pid-control"
    assert "integral keeps growing" in second.text


@pytest.mark.parametrize(
    "body",
    [
        {"message": ""},
        {"message": "   \n\t "},
        {"message": "x" * 4001},
        {"message": "hi", "mode": "selected_text_only"},
        {"message": "hi", "mode": "selected_text_only", "selected_text": "   "},
        {"message": "hi", "mode": "bogus"},
        {"message": "hi", "filters": {"top_k": 21}},
        {"message": "hi", "filters": {"top_k": 0}},
        {"message": "hi", "selected_text": "x" * 10_001, "mode": "selected_text_only"},
        {"message": "hi", "session_id": "not-a-uuid"},
        {"message": "hi", "unexpected": 1},
        {"message": 42},
    ],
)
async def test_invalid_chat_requests_are_400(client: httpx.AsyncClient, body: dict) -> None:
    response = await client.post("/api/v1/chat", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"


async def test_unknown_token_is_anonymous_on_chat_and_401_on_history(
    client: httpx.AsyncClient,
) -> None:
    # A bearer bookchat does not know (e.g. the site's own sign-in token) must never be a
    # 401 on chat: the site's widget would sign the reader out of the whole site.
    answer = await ask(client, PID, token="bc_not-a-real-token")
    assert answer.status == 200
    assert answer.first("session")["token"].startswith("bc_")  # served as a new guest
    response = await client.get(
        "/api/v1/sessions", headers={"Authorization": "Bearer bc_not-a-real-token"}
    )
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "unauthorized", "message": "unknown or revoked token"}
    }


async def test_unknown_session_is_404(client: httpx.AsyncClient) -> None:
    first = await ask(client, PID)
    token = first.first("session")["token"]
    answer = await ask(client, PID, token=token, session_id=str(uuid.uuid4()))
    assert answer.status == 404
    assert answer.error_body["error"]["code"] == "session_not_found"  # type: ignore[index]


async def test_other_users_sessions_and_messages_are_404(client: httpx.AsyncClient) -> None:
    a = await ask(client, PID)
    b = await ask(client, "What is lidar?")
    token_a, token_b = a.first("session")["token"], b.first("session")["token"]
    session_a = a.first("session")["session_id"]
    message_a = a.first("done")["message_id"]
    as_b = {"Authorization": f"Bearer {token_b}"}

    assert (
        await client.get(f"/api/v1/sessions/{session_a}/messages", headers=as_b)
    ).status_code == 404
    assert (await client.delete(f"/api/v1/sessions/{session_a}", headers=as_b)).status_code == 404
    feedback = await client.post(
        f"/api/v1/messages/{message_a}/feedback", json={"rating": "down"}, headers=as_b
    )
    assert feedback.status_code == 404
    assert (await ask(client, PID, token=token_b, session_id=session_a)).status == 404
    sessions_b = (await client.get("/api/v1/sessions", headers=as_b)).json()
    assert session_a not in {s["id"] for s in sessions_b["sessions"]}
    # A's own view is untouched.
    as_a = {"Authorization": f"Bearer {token_a}"}
    own = await client.get(f"/api/v1/sessions/{session_a}/messages", headers=as_a)
    assert own.status_code == 200 and len(own.json()["messages"]) == 2


async def test_sessions_list_newest_activity_first_with_counts(client: httpx.AsyncClient) -> None:
    first = await ask(client, "What is lidar?")
    token = first.first("session")["token"]
    s1 = first.first("session")["session_id"]
    s2 = (await ask(client, "Explain A* search", token=token)).first("session")["session_id"]
    await ask(client, "What is an occupancy grid?", token=token, session_id=s1)
    headers = {"Authorization": f"Bearer {token}"}
    body = (await client.get("/api/v1/sessions", headers=headers)).json()
    assert body["total"] == 2
    assert [s["id"] for s in body["sessions"]] == [s1, s2]
    assert body["sessions"][0]["message_count"] == 4
    assert body["sessions"][0]["title"] == "What is lidar?"
    page = (await client.get("/api/v1/sessions?limit=1&offset=1", headers=headers)).json()
    assert page["total"] == 2 and [s["id"] for s in page["sessions"]] == [s2]
    assert (await client.get("/api/v1/sessions?limit=0", headers=headers)).status_code == 400
    assert (await client.get("/api/v1/sessions")).status_code == 401


async def test_delete_archives_the_session(client: httpx.AsyncClient) -> None:
    first = await ask(client, "What is lidar?")
    token, session_id = first.first("session")["token"], first.first("session")["session_id"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        await client.delete(f"/api/v1/sessions/{session_id}", headers=headers)
    ).status_code == 204
    assert (
        await client.get(f"/api/v1/sessions/{session_id}/messages", headers=headers)
    ).status_code == 404
    assert (await client.get("/api/v1/sessions", headers=headers)).json()["total"] == 0


async def test_feedback_on_own_answer(client: httpx.AsyncClient) -> None:
    first = await ask(client, "What is lidar?")
    token = first.first("session")["token"]
    headers = {"Authorization": f"Bearer {token}"}
    message_id = first.first("done")["message_id"]
    response = await client.post(
        f"/api/v1/messages/{message_id}/feedback",
        json={"rating": "up", "comment": "clear"},
        headers=headers,
    )
    assert response.status_code == 200
    assert response.json() == {"message_id": message_id, "rating": "up", "comment": "clear"}
    bad = await client.post(
        f"/api/v1/messages/{message_id}/feedback", json={"rating": "meh"}, headers=headers
    )
    assert bad.status_code == 400


async def test_twenty_messages_come_back_in_order(any_db_settings: Settings) -> None:
    await aingest_sample_book(any_db_settings)
    questions = ["What is lidar?", "What is odometry?", "Explain PID", "What is SLAM?",
                 "Explain A*", "What is RRT?", "What are topics?", "What is QoS?",
                 "What is a particle filter?", "What is integral windup?"]  # fmt: skip
    async for client in app_client(any_db_settings):
        first = await ask(client, questions[0])
        token, session_id = first.first("session")["token"], first.first("session")["session_id"]
        for question in questions[1:]:
            answer = await ask(client, question, token=token, session_id=session_id)
            assert answer.status == 200
        response = await client.get(
            f"/api/v1/sessions/{session_id}/messages", headers={"Authorization": f"Bearer {token}"}
        )
        messages = response.json()["messages"]
        assert len(messages) == 20
        assert [m["role"] for m in messages] == ["user", "assistant"] * 10
        assert [m["content"] for m in messages[::2]] == questions
        assert all(m["status"] == "complete" for m in messages)
        times = [m["created_at"] for m in messages]
        assert times == sorted(times)


async def test_a_chats_writes_store_the_question_and_answer_and_touch_the_session(
    any_db_settings: Settings,
) -> None:
    """On PostgreSQL each of a chat's two writes is one statement: the question's with the
    new user and session (or the session's touch) as CTEs, the answer's with the touch."""
    from litestar.testing import AsyncTestClient
    from sqlalchemy import event

    from bookchat.app import create_app

    await aingest_sample_book(any_db_settings)
    app = create_app(any_db_settings)
    engine = app.state.runtime.engine
    writes: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(("WITH", "INSERT", "UPDATE")) and "messages" in statement:
            writes.append(statement)  # the chat's writes (not, e.g., a first secret's)

    async with AsyncTestClient(app=app) as client:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        first = await ask(client, PID)
        session = first.first("session")
        auth = {"Authorization": f"Bearer {session['token']}"}
        second = await ask(client, "And its limits?", token=session["token"],
                           session_id=session["session_id"])  # fmt: skip
        event.remove(engine.sync_engine, "before_cursor_execute", record)
        (listed,) = (await client.get("/api/v1/sessions", headers=auth)).json()["sessions"]
        messages = (
            await client.get(f"/api/v1/sessions/{session['session_id']}/messages", headers=auth)
        ).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert [m["status"] for m in messages[1::2]] == ["complete", "complete"]
    assert [m["content"] for m in messages[1::2]] == [first.text, second.text]
    assert messages[3]["id"] == second.first("session")["message_id"]
    # Touched when the last answer was completed, after its question and its row.
    assert listed["last_activity"] > messages[3]["created_at"]
    if engine.dialect.name == "postgresql":
        assert len(writes) == 4  # two per chat
        new_reader, completion, continued, completion_again = writes
        assert new_reader.startswith("WITH write_0 AS") and "INSERT INTO users" in new_reader
        assert "INSERT INTO chat_sessions" in new_reader
        assert continued.startswith("WITH write_0 AS") and "UPDATE chat_sessions" in continued
        for statement in (completion, completion_again):
            assert statement.startswith("WITH write_0 AS") and "UPDATE messages" in statement
            assert "UPDATE chat_sessions" in statement


async def test_thirty_concurrent_anonymous_messages_allow_exactly_ten(
    client: httpx.AsyncClient,
) -> None:
    responses = await asyncio.gather(
        *(client.post("/api/v1/chat", json={"message": "What is lidar?"},
                      headers={"Accept": "application/json"}) for _ in range(30))
    )  # fmt: skip
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-limit"] == "10"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.redis
async def test_rate_limits_are_shared_through_redis(
    book_settings: Settings, redis_url: str
) -> None:
    settings = book_settings.replace(redis_url=redis_url)
    results: list[int] = []
    # Two app instances (two "workers") share one Redis: the limit holds across them.
    async for a in app_client(settings):
        async for b in app_client(settings):
            responses = await asyncio.gather(
                *((a if i % 2 else b).post("/api/v1/chat", json={"message": "What is lidar?"},
                  headers={"Accept": "application/json"}) for i in range(30))
            )  # fmt: skip
            results = [r.status_code for r in responses]
    assert results.count(200) == 10 and results.count(429) == 20


async def test_token_holders_have_their_own_limit(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(
        tmp_path, DATABASE_URL=sqlite_url, RATE_LIMIT_ANONYMOUS="1", RATE_LIMIT_TOKEN="2"
    )
    await aingest_sample_book(settings)
    async for client in app_client(settings):
        first = await ask(client, "What is lidar?")
        assert first.status == 200
        assert (await ask(client, "What is lidar?")).status == 429
        token = first.first("session")["token"]
        assert (await ask(client, "What is lidar?", token=token)).status == 200
        assert (await ask(client, "What is lidar?", token=token)).status == 200
        assert (await ask(client, "What is lidar?", token=token)).status == 429


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("10.0.0.5", "203.0.113.7", (), "10.0.0.5"),  # no trusted proxies: header ignored
        ("10.0.0.5", "203.0.113.7", ("10.0.0.0/8",), "203.0.113.7"),
        ("198.51.100.9", "203.0.113.7", ("10.0.0.0/8",), "198.51.100.9"),  # untrusted peer
        ("10.0.0.5", "1.2.3.4, 203.0.113.7, 10.0.0.9", ("10.0.0.0/8",), "203.0.113.7"),
        ("10.0.0.5", "garbage", ("10.0.0.0/8",), "10.0.0.5"),
        ("10.0.0.5", "", ("10.0.0.0/8",), "10.0.0.5"),
    ],
)
def test_client_ip_honours_forwarded_for_only_behind_trusted_proxies(
    peer: str, forwarded: str, trusted: tuple[str, ...], expected: str
) -> None:
    from types import SimpleNamespace

    from bookchat.chat.identity import TrustedProxies

    request = SimpleNamespace(
        client=SimpleNamespace(host=peer),
        headers={"x-forwarded-for": forwarded} if forwarded else {},
    )
    assert TrustedProxies(trusted).client_ip(request) == expected  # type: ignore[arg-type]


async def test_vector_store_down_is_503_before_streaming(settings: Settings) -> None:
    async for client in app_client(settings, store=UnavailableStore()):
        answer = await ask(client, PID)
        assert answer.status == 503
        assert answer.error_body["error"]["code"] == "retrieval_failed"  # type: ignore[index]


async def test_database_down_at_start_is_503(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/none"
    )
    await aingest_sample_book(settings)
    async for client in app_client(settings):
        answer = await ask(client, PID)
        assert answer.status == 503
        assert answer.error_body["error"]["code"] == "service_unavailable"  # type: ignore[index]


class _FailingSessions:
    """A connection factory whose connections fail like a database that went away."""

    def __call__(self) -> _FailingSessions:
        return self

    def __enter__(self) -> _FailingSessions:
        raise OperationalError("INSERT", {}, ConnectionRefusedError("database went away"))

    def __exit__(self, *exc: object) -> None:
        return None


async def test_database_failing_mid_chat_still_streams_with_warning(
    book_settings: Settings,
) -> None:
    async for client in app_client(book_settings):
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        real_connect = runtime.chat.connect
        # The stream's own connections fail (on SQLite the question's, a grouped commit
        # on the same connections, is made first).
        question = 1 if runtime.chat._serialise_writes else 0
        runtime.chat.connect = _FlakySessions(real_connect, failures=10**6, after=question)
        runtime.chat.save_timeout = 0.5  # retried until then
        with LogCapture("bookchat.chat") as logs:
            started = time.perf_counter()
            answer = await ask(client, PID)
            elapsed = time.perf_counter() - started
        assert answer.status == 200
        assert answer.text  # the answer still streamed
        done = answer.first("done")
        assert done["persistence_warning"]
        assert elapsed < 3  # gave up within the save timeout
        (failure,) = [r for r in logs.records() if r["msg"] == "could not save answer"]
        assert failure["attempts"] > 1 and failure["message_id"] == done["message_id"]
        runtime.chat.connect = real_connect
        # The answer's row exists (as `streaming`) until this process exits.
        session = answer.first("session")
        stored = await client.get(
            f"/api/v1/sessions/{session['session_id']}/messages",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        assert [m["status"] for m in stored.json()["messages"]] == ["complete", "streaming"]


class _FlakySessions:
    """Connections that fail `failures` times like a cut one (after `after` that work),
    then work."""

    def __init__(self, real: Any, failures: int, after: int = 0) -> None:
        self.real, self.failures, self.after, self.calls = real, failures, after, 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.after < self.calls <= self.after + self.failures:
            return _FailingSessions()
        return self.real()


async def _write_after_a_stop(
    runtime: Any, write: Any, stopped: list[bool], turn: Any, values: dict[str, Any]
) -> None:
    stopped.append(await runtime.journal.stop(turn.message_id))  # the reader's Stop, now
    await write(turn, values)


async def test_stop_during_the_final_save_still_ends_with_done_as_stored(
    book_settings: Settings,
) -> None:
    # The answer was fully generated and is being saved when the reader presses Stop:
    # nothing is left to stop, so readers get `done`, and the row says `complete`.
    async for client in app_client(book_settings):
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        stopped: list[bool] = []
        runtime.chat._write_answer = functools.partial(
            _write_after_a_stop, runtime, runtime.chat._write_answer, stopped
        )
        answer = await ask(client, PID)
        assert stopped == [True]
        assert answer.names()[-1] == "done" and answer.text
        session = answer.first("session")
        stored = await client.get(
            f"/api/v1/sessions/{session['session_id']}/messages",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        assert [m["status"] for m in stored.json()["messages"]] == ["complete", "complete"]
        assert stored.json()["messages"][1]["content"] == answer.text


async def test_a_failed_answer_save_is_retried_with_backoff(book_settings: Settings) -> None:
    async for client in app_client(book_settings):
        chat = client.app.state.runtime.chat  # type: ignore[attr-defined]
        # On SQLite the question's write is the first connection (a grouped commit).
        question = 1 if chat._serialise_writes else 0
        chat.connect = flaky = _FlakySessions(chat.connect, failures=3, after=question)
        answer = await ask(client, PID)
        done = answer.first("done")
        assert "persistence_warning" not in done
        assert flaky.calls == question + 4
        session = answer.first("session")
        stored = await client.get(
            f"/api/v1/sessions/{session['session_id']}/messages",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        messages = stored.json()["messages"]
        assert [m["status"] for m in messages] == ["complete", "complete"]
        assert messages[1]["content"] == answer.text and messages[1]["id"] == done["message_id"]


async def test_selected_text_mode_never_touches_store_or_embedder(settings: Settings) -> None:
    class ClosableRaisingStore(UnavailableStore):
        async def search(self, **kwargs: object) -> list:  # type: ignore[override]
            raise AssertionError("vector store searched in selected_text_only mode")

    async for client in app_client(
        settings, store=ClosableRaisingStore(), embedder=RaisingEmbedder()
    ):
        selection = (
            "Wheel odometry integrates encoder ticks to estimate the pose of the robot, "
            "but wheel slip and uneven floors make the error grow without bound over time."
        )
        answer = await ask(
            client, "Why does the error grow?", mode="selected_text_only", selected_text=selection
        )
        assert answer.status == 200
        assert answer.first("done")["grounded"] is True
        assert [c["title"] for c in answer.first("done")["citations"]] == ["Selected text"]


async def test_logs_never_contain_message_text_or_tokens(client: httpx.AsyncClient) -> None:
    from bookchat.observability import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    secret_question = "What is lidar zebra-unicorn-4242?"
    try:
        first = await ask(client, secret_question)
        token = first.first("session")["token"]
        await ask(client, "What is odometry quokka-9999?", token=token)
        await ask(client, "x", token="bc_wrong-token-value")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    logs = stream.getvalue()
    assert logs  # something was logged
    for secret in ("zebra-unicorn-4242", "quokka-9999", token, "bc_wrong-token-value"):
        assert secret not in logs
    for line in logs.splitlines():
        json.loads(line)


def test_vector_store_unavailable_error_is_runtime_error() -> None:
    assert issubclass(VectorStoreUnavailableError, RuntimeError)


async def test_history_endpoints_are_503_when_the_database_breaks(book_settings: Settings) -> None:
    from sqlalchemy import text

    async for client in app_client(book_settings):
        first = await ask(client, "What is lidar?")
        token = first.first("session")["token"]
        session_id = first.first("session")["session_id"]
        message_id = first.first("done")["message_id"]
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        async with runtime.engine.begin() as connection:
            await connection.execute(text("DROP TABLE messages"))
        headers = {"Authorization": f"Bearer {token}"}
        for response in (
            await client.get(f"/api/v1/sessions/{session_id}/messages", headers=headers),
            await client.get("/api/v1/sessions", headers=headers),
            await client.post(
                f"/api/v1/messages/{message_id}/feedback", json={"rating": "up"}, headers=headers
            ),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "service_unavailable"
