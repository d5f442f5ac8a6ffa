"""Fault injection: the vector store, the database, Gemini and Redis failing for real.

Beyond the in-process fakes of test_chat_api.py, these cut real connections (a TCP proxy
in front of PostgreSQL and Redis), point the app at dead ports, and run a real granian
server for the faults that happen mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse
from sqlalchemy.engine import make_url

from bookchat.devtools.fake_gemini import FakeGemini, Hang
from bookchat.settings import Settings

from .chat_helpers import LogCapture, aingest_sample_book, app_client, ask
from .conftest import fresh_pg_database, make_settings
from .faults import TcpProxy
from .servers import prepare_book_env, running_server

PID = "How does PID control work?"
JSON = {"Accept": "application/json"}


def dead_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards)."""
    with fresh_pg_database("bookchat_faults") as url:
        yield url


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of PostgreSQL and the database URL that goes through it."""
    from bookchat.db.migrate import run_migrations

    run_migrations(pg_url)
    url = make_url(pg_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield (
            proxy,
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        )


# --------------------------------------------------------------------------- vector store


async def test_qdrant_server_down_is_503_retrieval_failed(settings: Settings) -> None:
    down = settings.replace(qdrant_url=f"http://127.0.0.1:{dead_port()}")
    async for client in app_client(down):
        answer = await ask(client, PID)
        assert answer.status == 503 and not answer.events
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.error_body == {
            "error": {"code": "retrieval_failed", "message": "the book's index is unavailable"}
        }
        health = await client.get("/api/v1/health")
        assert health.status_code == 503
        assert health.json()["components"]["vector_store"] == "error"


@pytest.mark.server
async def test_vector_store_down_on_a_real_server_is_503_before_any_sse_byte(
    tmp_path: Path,
) -> None:
    from bookchat.db.migrate import run_migrations

    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'server.db'}",
        "QDRANT_URL": f"http://127.0.0.1:{dead_port()}",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "GEMINI_API_KEY": "",
        "LOG_LEVEL": "WARNING",
    }
    await asyncio.to_thread(run_migrations, env["DATABASE_URL"])
    with running_server(env) as base_url:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=30) as client,
            client.stream("POST", "/api/v1/chat", json={"message": PID}) as response,
        ):
            body = await response.aread()
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "retrieval_failed"
    assert b"event:" not in body


# --------------------------------------------------------------------------- database


@pytest.mark.parametrize("damage", ["corrupt", "unmigrated", "vanished"])
async def test_unusable_sqlite_database_is_503_envelope(tmp_path: Path, damage: str) -> None:
    # advanced-alchemy files these under IntegrityError: it answered 409 without the envelope.
    database = tmp_path / "db" / "app.db"
    database.parent.mkdir()
    if damage == "corrupt":
        database.write_bytes(b"this is not a database" * 100)
    settings = make_settings(tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{database}")
    await aingest_sample_book(settings)
    async for client in app_client(settings):
        if damage == "vanished":
            shutil.rmtree(database.parent)  # the volume went away after start
        answer = await ask(client, PID)
        assert answer.status == 503
        assert answer.error_body == {
            "error": {"code": "service_unavailable", "message": "the database is unavailable"}
        }


@pytest.mark.postgres
async def test_postgres_going_away_between_chats_is_503_then_recovers(
    tmp_path: Path, pg_proxy: tuple[TcpProxy, str]
) -> None:
    proxy, url = pg_proxy
    settings = make_settings(tmp_path, DATABASE_URL=url)
    await aingest_sample_book(settings)
    async for client in app_client(settings):
        first = await ask(client, PID)
        assert first.status == 200  # the pool now holds live connections through the proxy
        token = first.first("session")["token"]
        proxy.cut()
        down = await ask(client, PID, token=token)
        assert down.status == 503
        assert down.error_body["error"]["code"] == "service_unavailable"  # type: ignore[index]
        proxy.restore()
        deadline = time.monotonic() + 10
        while (again := await ask(client, PID, token=token)).status != 200:
            assert again.status == 503 and time.monotonic() < deadline
        assert again.names()[-1] == "done" and "persistence_warning" not in again.first("done")


@pytest.mark.postgres
async def test_pooled_postgres_connections_are_pinged_after_sitting_idle_only(
    pg_url: str,
) -> None:
    """Back-to-back checkouts take the connection as it is; one that sat idle is pinged,
    and one that died meanwhile is replaced before a statement can fail on it."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from bookchat.db.config import ping_idle_connections

    engine = create_async_engine(pg_url, pool_size=1, max_overflow=0)
    dialect = engine.sync_engine.dialect
    pings: list[object] = []
    real_ping = dialect.do_ping

    def counting_ping(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)

    dialect.do_ping = counting_ping  # type: ignore[method-assign]
    ping_idle_connections(engine, idle_after=0.2)

    async def backend_pid() -> int:
        async with engine.connect() as connection:
            return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    try:
        first = await backend_pid()
        assert [await backend_pid() for _ in range(3)] == [first] * 3
        assert pings == []
        await asyncio.sleep(0.3)
        assert await backend_pid() == first and len(pings) == 1

        admin = create_async_engine(pg_url)
        async with admin.connect() as connection:
            await connection.execute(text(f"SELECT pg_terminate_backend({first})"))
        await admin.dispose()
        await asyncio.sleep(0.3)
        assert await backend_pid() != first  # the failed ping made the pool connect anew
        assert len(pings) == 2
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.server
async def test_postgres_cut_mid_stream_on_a_real_server_saves_the_answer_after_retries(
    tmp_path: Path, pg_proxy: tuple[TcpProxy, str], pg_url: str
) -> None:
    proxy, url = pg_proxy
    words = [f"w{i}" for i in range(12)]
    answer_text = "PID control combines proportional, integral and derivative terms [1]. "
    with FakeGemini(answer=answer_text + " ".join(words)) as fake:
        env = await asyncio.to_thread(
            prepare_book_env,
            tmp_path,
            DATABASE_URL=url,
            GEMINI_API_KEY="test-key",
            GEMINI_BASE_URL=fake.base_url,
        )
        fake.configure(token_delay=0.05)
        with running_server(env) as base_url:
            events: list[tuple[str, dict]] = []
            async with (
                httpx.AsyncClient(base_url=base_url, timeout=30) as client,
                aconnect_sse(client, "POST", "/api/v1/chat", json={"message": PID}) as source,
            ):
                assert source.response.status_code == 200
                async for event in source.aiter_sse():
                    events.append((event.event, msgspec.json.decode(event.data)))
                    if event.event == "token" and proxy.mode == "forward":
                        proxy.cut()  # every connection is reset after the first token
                    if event.event == "token" and event.data.endswith('w11"}'):
                        # Back before the save's retries run out: the save must land.
                        assert fake.wait_until(lambda f: f.active_streams == 0, timeout=5)
                        proxy.restore()
            names = [name for name, _ in events]
            assert names[:2] == ["session", "citations"] and names[-1] == "done"
            text = "".join(data["content"] for name, data in events if name == "token")
            assert text.split()[-1] == "w11"  # the whole answer streamed
            done = events[-1][1]
            assert "persistence_warning" not in done
            session_id = events[0][1]["session_id"]
    import asyncpg

    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT role, status, content FROM messages WHERE session_id = $1"
            " ORDER BY created_at, id",
            uuid.UUID(session_id),
        )
    finally:
        await connection.close()
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert rows[1]["content"] == text


# --------------------------------------------------------------------------- Gemini


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(answer="PID control uses three terms [1].") as gemini:
        yield gemini


@pytest.fixture
async def gemini_settings(settings: Settings, fake: FakeGemini) -> AsyncIterator[Settings]:
    configured = settings.replace(
        gemini_api_key="test-key", gemini_base_url=fake.base_url, first_token_timeout=0.5
    )
    await aingest_sample_book(configured)  # dense vectors from the fake
    fake.reset()
    yield configured


@pytest.mark.parametrize("hang", [Hang(), Hang(send_headers=False)], ids=["no-token", "no-headers"])
async def test_gemini_hanging_ends_the_stream_with_generation_timeout(
    gemini_settings: Settings, fake: FakeGemini, hang: Hang
) -> None:
    fake.set_model_rule(gemini_settings.chat_model, hang)
    async for client in app_client(gemini_settings):
        started = time.perf_counter()
        answer = await ask(client, PID)
        elapsed = time.perf_counter() - started
        assert answer.status == 200
        assert answer.names() == ["session", "citations", "error"]
        error = answer.first("error")
        assert error["code"] == "generation_timeout" and error["retryable"] is True
        assert elapsed < 5
        session = answer.first("session")
        stored = await client.get(
            f"/api/v1/sessions/{session['session_id']}/messages",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        assert [m["status"] for m in stored.json()["messages"]] == ["complete", "failed"]
        # JSON mode maps the same timeout to 504 with the envelope, and says where the
        # stored question is: a new reader gets the token that reaches it.
        response = await client.post("/api/v1/chat", json={"message": PID}, headers=JSON)
        assert response.status_code == 504
        body = response.json()
        assert body["error"]["code"] == "generation_timeout"
        assert body["token"] == response.headers["X-Bookchat-Token"]
        reached = await client.get(
            f"/api/v1/sessions/{body['session_id']}/messages",
            headers={"Authorization": f"Bearer {body['token']}"},
        )
        stored = reached.json()["messages"]
        assert [(m["role"], m["status"]) for m in stored] == [
            ("user", "complete"),
            ("assistant", "failed"),
        ]
        assert stored[1]["id"] == body["message_id"]
    assert fake.wait_until(lambda f: f.active_streams == 0, timeout=5)


# --------------------------------------------------------------------------- Redis


async def test_redis_down_fails_open_with_a_logged_warning(settings: Settings) -> None:
    await aingest_sample_book(settings)
    down = f"redis://127.0.0.1:{dead_port()}/0"
    limited = settings.replace(redis_url=down, rate_limit_anonymous=2)
    with LogCapture("bookchat.ratelimit") as logs:
        async for client in app_client(limited):
            statuses = [
                (await client.post("/api/v1/chat", json={"message": PID}, headers=JSON)).status_code
                for _ in range(4)
            ]
    assert statuses == [200, 200, 200, 200]  # the limit of 2 is not enforced while Redis is down
    warnings = [r for r in logs.records() if r["level"] == "warning"]
    assert len(warnings) == 4
    assert warnings[0]["msg"] == "rate limiter unavailable, allowing request"
    assert warnings[0]["error"] == "ConnectionError"


async def status_of(client: httpx.AsyncClient, token: str) -> int:
    return (await ask(client, PID, token=token)).status


@pytest.mark.redis
async def test_redis_cut_and_hanging_fail_open_then_limits_return(
    settings: Settings, redis_url: str
) -> None:
    await aingest_sample_book(settings)
    target = make_url(redis_url.replace("redis://", "postgresql://"))  # host/port parsing only
    with TcpProxy(target.host or "127.0.0.1", target.port or 6379) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}/{target.database or 0}"
        # Limits per token (a fresh user each run), so parallel runs on one Redis don't collide.
        limited = settings.replace(
            redis_url=proxied, rate_limit_anonymous=1000, rate_limit_ip=1000, rate_limit_token=2
        )
        async for client in app_client(limited):
            token = (await ask(client, PID)).first("session")["token"]
            statuses = [await status_of(client, token) for _ in range(3)]
            assert statuses == [200, 200, 429]
            with LogCapture("bookchat.ratelimit") as logs:
                proxy.cut()
                assert await status_of(client, token) == 200  # refused: fail open
                proxy.blackhole()
                started = time.perf_counter()
                # Hanging: fail open after the client's 0.5 s socket timeout.
                assert await status_of(client, token) == 200
                assert time.perf_counter() - started < 3
            assert [r["msg"] for r in logs.records()] == [
                "rate limiter unavailable, allowing request"
            ] * 2
            proxy.restore()
            deadline = time.monotonic() + 10
            # Reconnects; the window still holds the 2 counted before the outage.
            while (code := await status_of(client, token)) == 200:
                assert time.monotonic() < deadline
            assert code == 429
