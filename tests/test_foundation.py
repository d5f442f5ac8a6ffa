"""The service foundation: liveness, docs, OpenAPI, the error envelope, health, logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from bookchat.app import create_app
from bookchat.settings import Settings

from .conftest import make_settings


async def test_healthz_answers_without_io(client: AsyncTestClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_openapi_is_valid_3_1(client: AsyncTestClient) -> None:
    from openapi_spec_validator import validate

    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.1")
    validate(spec)
    assert "/api/v1/health" in spec["paths"]


async def test_docs_render_from_local_assets(client: AsyncTestClient) -> None:
    response = await client.get("/docs", follow_redirects=True)
    assert response.status_code == 200
    html = response.text
    assert "/static/scalar/standalone.js" in html
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    script = await client.get("/static/scalar/standalone.js")
    assert script.status_code == 200 and len(script.content) > 1_000_000


def _envelope(response: object, status: int, code: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text  # type: ignore[attr-defined]


FEEDBACK = f"/api/v1/messages/{uuid.uuid4()}/feedback"


async def test_malformed_json_is_400_envelope(client: AsyncTestClient) -> None:
    response = await client.post(
        FEEDBACK, content=b'{"rating": "up"', headers={"content-type": "application/json"}
    )
    _envelope(response, 400, "validation_error")


async def test_wrong_types_are_400_envelope(client: AsyncTestClient) -> None:
    response = await client.post(FEEDBACK, json={"rating": 5})
    _envelope(response, 400, "validation_error")
    assert "rating" in response.json()["error"]["message"]


async def test_oversize_body_is_413_envelope(client: AsyncTestClient, settings: Settings) -> None:
    big = {"rating": "up", "comment": "x" * (settings.max_body_bytes + 10)}
    response = await client.post(FEEDBACK, json=big)
    _envelope(response, 413, "payload_too_large")


async def test_unknown_route_is_404_envelope(client: AsyncTestClient) -> None:
    _envelope(await client.get("/api/v1/nope"), 404, "not_found")


async def test_wrong_method_is_405_envelope(client: AsyncTestClient) -> None:
    _envelope(await client.put("/api/v1/health"), 405, "method_not_allowed")


async def test_invalid_uuid_in_path_is_not_500(client: AsyncTestClient) -> None:
    response = await client.get("/api/v1/sessions/not-a-uuid/messages")
    assert response.status_code in (400, 404)
    assert "error" in response.json()


async def test_health_is_healthy_with_working_dependencies(client: AsyncTestClient) -> None:
    response = await client.get("/api/v1/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy"
    assert body["components"] == {"database": "ok", "vector_store": "ok", "llm": "offline"}
    assert "timestamp" in body


@pytest.fixture
def hanging_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung database)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.mark.parametrize("failure", ["refused", "hangs"])
async def test_health_is_503_within_5s_when_database_is_down(
    tmp_path: Path, hanging_server: int, failure: str
) -> None:
    if failure == "refused":
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
    else:
        port = hanging_server
    settings = make_settings(
        tmp_path, DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nope"
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        started = time.perf_counter()
        response = await client.get("/api/v1/health")
        elapsed = time.perf_counter() - started
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["components"]["database"] == "error"
    assert body["components"]["vector_store"] == "ok"
    assert elapsed < 5


async def test_request_id_is_echoed_and_generated(client: AsyncTestClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["x-request-id"] != "bad id with spaces"
    assert len(generated.headers["x-request-id"]) == 32


async def test_access_log_is_json_with_request_id(client: AsyncTestClient) -> None:
    from bookchat.observability import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access_logger = logging.getLogger("bookchat.access")
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    try:
        await client.get("/api/v1/health", headers={"X-Request-ID": "trace-me"})
    finally:
        access_logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and lines[-1]["request_id"] == "trace-me"
    assert lines[-1]["status"] == 200 and lines[-1]["path"] == "/api/v1/health"
    assert lines[-1]["level"] == "info" and "duration_ms" in lines[-1]


async def test_metrics_are_prometheus_text(client: AsyncTestClient) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "bookchat_requests_total" in response.text


def test_bad_setting_stops_serve_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": "nonsense"}
    result = subprocess.run(
        [sys.executable, "-m", "bookchat.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0] and "Traceback" not in result.stderr


def test_migrations_up_down_up_and_no_drift(database_url: str) -> None:
    from bookchat.db.migrate import migration_commands

    commands = migration_commands(database_url)
    commands.upgrade("head")
    commands.downgrade("base")
    commands.upgrade("head")
    commands.check()  # raises if the models and the migrations disagree


def test_event_loop_free_check() -> None:
    # The migration fixture runs alembic (asyncio.run) outside any running loop.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
