"""Security properties that docs/SECURITY.md claims: headers, CORS, token storage, pinning."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book, app_client, ask
from .rag_fakes import UnavailableStore

JSON = {"Accept": "application/json"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    await aingest_sample_book(settings)
    async for test_client in app_client(settings):
        yield test_client


async def test_security_headers_on_every_kind_of_response(client: httpx.AsyncClient) -> None:
    chat = await ask(client, "What is lidar?")
    responses = {
        "json": await client.get("/api/v1/health"),
        "error": await client.get("/api/v1/nope"),
        "docs": await client.get("/docs", follow_redirects=True),
        "liveness": await client.get("/healthz"),
    }
    headers = [chat.headers, *(r.headers for r in responses.values())]
    for each in headers:
        assert each["x-content-type-options"] == "nosniff"
        assert each["referrer-policy"] == "no-referrer"
        assert each["x-frame-options"] == "DENY"


async def test_demo_page_keeps_its_own_strict_csp(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    if page.status_code == 404:
        pytest.skip("demo page not mounted in this build")
    csp = page.headers["content-security-policy"]
    assert (
        "script-src 'self'" in csp
        and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    )
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_api_responses_are_not_cacheable(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/chat", json={"message": "What is lidar?"}, headers=JSON)
    assert created.headers["cache-control"] == "no-store"  # the body carries a new token
    sessions = await client.get(
        "/api/v1/sessions", headers={"Authorization": f"Bearer {created.json()['token']}"}
    )
    assert sessions.headers["cache-control"] == "no-store"
    stream = await ask(client, "What is lidar?")
    assert (
        "no-cache" in stream.headers["cache-control"]
        or "no-store" in stream.headers["cache-control"]
    )


async def test_tokens_are_stored_only_as_sha256_hashes(any_db_settings: Settings) -> None:
    await aingest_sample_book(any_db_settings)
    async for client in app_client(any_db_settings):
        answer = await ask(client, "What is lidar?")
        token = answer.first("session")["token"]
    assert re.fullmatch(r"bc_[A-Za-z0-9_-]{43}", token)  # 256 random bits
    engine = create_async_engine(any_db_settings.database_url)
    try:
        async with engine.connect() as connection:
            hashes = (
                (await connection.execute(text("SELECT token_hash FROM users"))).scalars().all()
            )
            rows = []
            for table in ("users", "chat_sessions", "messages"):
                rows += (await connection.execute(text(f"SELECT * FROM {table}"))).all()
            dump = " ".join(str(row) for row in rows)
    finally:
        await engine.dispose()
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in dump and token[3:] not in dump


async def test_token_is_shown_once_and_never_listed(client: httpx.AsyncClient) -> None:
    first = await ask(client, "What is lidar?")
    token = first.first("session")["token"]
    headers = {"Authorization": f"Bearer {token}"}
    again = await ask(client, "What is odometry?", token=token)
    assert "token" not in again.first("session") and "x-bookchat-token" not in again.headers
    for path in (
        "/api/v1/sessions",
        f"/api/v1/sessions/{first.first('session')['session_id']}/messages",
    ):
        assert token not in (await client.get(path, headers=headers)).text


async def test_cors_allows_only_configured_origins(settings: Settings) -> None:
    configured = settings.replace(cors_origins=("https://book.example.org",))
    async for client in app_client(configured):
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        allowed = await client.options(
            "/api/v1/chat", headers={"Origin": "https://book.example.org", **preflight}
        )
        assert allowed.status_code in (200, 204)
        assert allowed.headers["access-control-allow-origin"] == "https://book.example.org"
        assert "access-control-allow-credentials" not in allowed.headers
        denied = await client.options(
            "/api/v1/chat", headers={"Origin": "https://evil.example.com", **preflight}
        )
        assert denied.headers.get("access-control-allow-origin") != "https://evil.example.com"
        simple = await client.get("/healthz", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in simple.headers


async def test_no_cors_headers_without_configured_origins(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"Origin": "https://book.example.org"})
    assert "access-control-allow-origin" not in response.headers


async def test_unexpected_errors_are_500_envelope_without_details(settings: Settings) -> None:
    class BrokenStore(UnavailableStore):
        async def search(self, **kwargs: object) -> list:  # type: ignore[override]
            raise RuntimeError("secret internal detail /etc/passwd")

    async for client in app_client(settings, store=BrokenStore()):
        response = await client.post(
            "/api/v1/chat", json={"message": "What is lidar?"}, headers=JSON
        )
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal error"}}
    assert "secret" not in response.text and "Traceback" not in response.text
