"""Serving hardening (issue 14, items 5 and 13–20): timeouts, ports, hosts, readiness that
writes, storage that vanishes, worker warnings, CORS rejections, cheap history reads."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import event
from sqlalchemy.engine import make_url

from bookchat.app import create_app
from bookchat.cli import startup_warnings
from bookchat.db.migrate import run_migrations
from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book, app_client, ask
from .conftest import make_settings
from .servers import prepare_book_env, running_server

PID = "How does PID control work?"
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return prepare_book_env(
        tmp_path_factory.mktemp("serving"), HTTP_HEADER_TIMEOUT="1", HTTP_BODY_TIMEOUT="1"
    )


@pytest.fixture(scope="module")
def server(server_env: dict[str, str]) -> Iterator[str]:
    with running_server(server_env) as base_url:
        yield base_url


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def closed_within(port: int, payload: bytes, limit: float) -> tuple[float, bytes]:
    """Send `payload`, read until the server closes; (seconds taken, bytes received)."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.settimeout(limit)
        started = time.monotonic()
        connection.sendall(payload)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return time.monotonic() - started, received


# --------------------------------------------------------------------------- item 13


@pytest.mark.server
def test_slow_headers_idle_keep_alive_and_slow_bodies_are_timed_out(server: str) -> None:
    port = port_of(server)
    took, _ = closed_within(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", limit=10)
    assert took < 5  # incomplete headers: closed after HTTP_HEADER_TIMEOUT
    took, received = closed_within(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", limit=10)
    assert received.startswith(b"HTTP/1.1 200") and took < 5  # idle keep-alive closed
    body = b'{"message": "How does PID'  # of the 40 bytes announced
    request = (
        b"POST /api/v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 40\r\n\r\n" + body
    )
    took, received = closed_within(port, request, limit=10)
    assert received.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in received
    assert took < 5


# --------------------------------------------------------------------------- items 14, 15


def serve(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bookchat.cli", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.server
def test_a_second_serve_on_a_busy_port_exits_with_one_line(
    server: str, server_env: dict[str, str]
) -> None:
    result = serve(server_env, "--host", "127.0.0.1", "--port", str(port_of(server)))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "already in use" in lines[0] and str(port_of(server)) in lines[0]
    assert httpx.get(f"{server}/healthz").status_code == 200  # the first one is untouched


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid"])
def test_an_invalid_host_is_one_line(host: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"}
    result = serve({**env, "HOST": host})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HOST" in lines[0] and host in lines[0], result.stderr
    flag = serve(env, "--host", host)
    assert flag.returncode != 0 and len(flag.stderr.strip().splitlines()) == 1


@pytest.mark.server
@pytest.mark.parametrize("how", ["env", "flag"])
def test_host_names_are_accepted(server_env: dict[str, str], how: str) -> None:
    env = {**server_env, "HOST": "localhost"} if how == "env" else dict(server_env)
    args = ("--app", "bookchat.app:create_app")
    if how == "flag":
        args = ("--host", "localhost", *args)
    from .servers import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bookchat.cli", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)  # polling while the server starts
    finally:
        process.terminate()
        process.wait(timeout=30)


# --------------------------------------------------------------------------- item 17


def test_several_workers_without_redis_warn_that_limits_multiply(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, WORKERS="3")
    (warning,) = startup_warnings(settings)
    assert "WORKERS=3" in warning and "REDIS_URL" in warning and "3x" in warning
    assert "resumed on the worker that writes it" in warning
    assert startup_warnings(make_settings(tmp_path, WORKERS="3", REDIS_URL="redis://r")) == []
    assert startup_warnings(make_settings(tmp_path)) == []


def test_serve_prints_the_worker_warning_at_startup(tmp_path: Path) -> None:
    from .servers import free_port

    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        "QDRANT_PATH": str(tmp_path / "q"),
        "WORKERS": "2",
        "PORT": str(free_port()),
    }
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "bookchat.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # printed before granian starts
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert first.startswith("bookchat: warning: WORKERS=2 without REDIS_URL")


# --------------------------------------------------------------------------- item 16


@pytest.fixture
def book(tmp_path: Path, sqlite_url: str) -> Settings:
    settings = make_settings(tmp_path, DATABASE_URL=sqlite_url)
    asyncio.run(aingest_sample_book(settings))
    return settings


async def test_health_is_503_within_5s_when_sqlite_cannot_be_written(book: Settings) -> None:
    path = make_url(book.database_url).database
    assert path
    async with AsyncTestClient(app=create_app(book)) as client:
        assert (await client.get("/api/v1/health")).status_code == 200
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the database: SELECT works
        try:
            started = time.perf_counter()
            response = await client.get("/api/v1/health")
            elapsed = time.perf_counter() - started
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert response.status_code == 503
        assert response.json()["components"]["database"] == "error"
        assert elapsed < 5
        assert (await client.get("/api/v1/health")).status_code == 200


@pytest.fixture
def pg_url() -> Iterator[str]:
    from .conftest import fresh_pg_database

    with fresh_pg_database("bookchat_readonly") as url:
        yield url


@pytest.mark.postgres
async def test_health_is_503_when_postgres_is_read_only(tmp_path: Path, pg_url: str) -> None:
    import asyncpg

    url = pg_url
    await asyncio.to_thread(run_migrations, url)
    settings = make_settings(tmp_path, DATABASE_URL=url)
    await aingest_sample_book(settings)
    name = make_url(url).database
    dsn = make_url(url).set(drivername="postgresql", database="postgres")
    admin = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        async with AsyncTestClient(app=create_app(settings)) as client:
            assert (await client.get("/api/v1/health")).status_code == 200
            await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
            response = await client.get("/api/v1/health")
            assert response.status_code == 503
            assert response.json()["components"]["database"] == "error"
            chat = await client.post("/api/v1/chat", json={"message": PID}, headers=JSON)
            assert chat.status_code == 503  # what the probe predicted
            await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
    finally:
        await admin.close()


async def test_a_failed_answer_save_makes_health_503_until_a_write_succeeds(
    book: Settings,
) -> None:
    from .test_chat_api import _FlakySessions

    async for client in app_client(book):
        chat = client.app.state.runtime.chat  # type: ignore[attr-defined]
        real = chat.connect
        # The answer's writes fail (on SQLite the question's, on the same connections, not).
        question = 1 if chat._serialise_writes else 0
        chat.connect = _FlakySessions(real, failures=10**6, after=question)
        chat.save_timeout = 0.3
        answer = await ask(client, PID)
        assert answer.first("done")["persistence_warning"]
        assert (await client.get("/api/v1/health")).status_code == 503
        chat.connect = real
        assert (await ask(client, PID)).status == 200  # a write that works
        assert (await client.get("/api/v1/health")).status_code == 200


# --------------------------------------------------------------------------- item 5


async def test_storage_deleted_while_serving_is_503_until_restored(tmp_path: Path) -> None:
    var = tmp_path / "var"
    url = f"sqlite+aiosqlite:///{var / 'bookchat.db'}"
    await asyncio.to_thread(run_migrations, url)
    settings = make_settings(tmp_path, DATABASE_URL=url, QDRANT_PATH=str(var / "qdrant"))
    await aingest_sample_book(settings)
    async for client in app_client(settings):
        assert (await ask(client, PID)).status == 200
        shutil.rmtree(var)  # rm -rf var/ while serving
        health = await client.get("/api/v1/health")
        assert health.status_code == 503
        assert health.json()["components"]["database"] == "error"
        lost = await ask(client, PID)
        assert lost.status == 503 and lost.error_body is not None
        assert lost.error_body["error"]["code"] == "service_unavailable"
        # `bookchat migrate` recreates the database: chats go to the new file, but the
        # index is still gone.
        await asyncio.to_thread(run_migrations, url)
        no_index = await ask(client, PID)
        assert no_index.status == 503 and no_index.error_body is not None
        assert no_index.error_body["error"]["code"] == "retrieval_failed"
        await aingest_sample_book(settings)
        back = await ask(client, PID)
        assert back.status == 200 and back.text
        assert (await client.get("/api/v1/health")).status_code == 200
    with sqlite3.connect(var / "bookchat.db") as connection:
        roles = connection.execute("SELECT role, status FROM messages").fetchall()
    assert sorted(roles) == [("assistant", "complete"), ("user", "complete")]


# --------------------------------------------------------------------------- item 18


async def test_rejected_cors_preflights_use_the_error_envelope(settings: Settings) -> None:
    configured = settings.replace(cors_origins=("https://book.example.org",))
    async for client in app_client(configured):
        denied = await client.options(
            "/api/v1/chat",
            headers={
                "Origin": "https://evil.example.com",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert denied.status_code == 400
        assert denied.headers["content-type"].startswith("application/json")
        assert denied.json() == {
            "error": {
                "code": "cors_rejected",
                "message": "CORS preflight rejected: Origin not allowed",
            }
        }


# --------------------------------------------------------------------------- item 20


def recorder(statements: list[str]) -> Callable[..., None]:
    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    return record


async def test_session_list_counts_without_scanning_every_message(book: Settings) -> None:
    async for client in app_client(book):
        first = await ask(client, PID)
        token = first.first("session")["token"]
        engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
        statements: list[str] = []
        record = recorder(statements)
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            for _ in range(3):
                listed = await client.get(
                    "/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}
                )
                assert listed.json()["sessions"][0]["message_count"] == 2
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)
        query = next(s for s in statements if "FROM chat_sessions" in s and "count" in s)
        async with engine.connect() as connection:
            rows = await connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {query}", (b"\0" * 16, "active", 20, 0)
            )
            plans = [str(row[-1]) for row in rows]
        assert not any("SCAN messages" in p or "MATERIALIZE" in p for p in plans), plans
        # Throttled: listing three times wrote `last_seen_at` never (it was just set).
        assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE USERS")]
