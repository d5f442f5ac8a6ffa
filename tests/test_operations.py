"""Operations: archiving idle sessions, application metrics, the quick-start command."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bookchat.db.config import create_engine
from bookchat.db.models import ChatSession
from bookchat.db.services import ChatSessionService, session_title
from bookchat.metrics import RouteMetricsMiddleware
from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book, app_client, ask


async def test_archive_soft_deletes_only_idle_sessions(any_db_settings: Settings) -> None:
    await aingest_sample_book(any_db_settings)
    async for client in app_client(any_db_settings):
        old = await ask(client, "What is lidar?")
        token = old.first("session")["token"]
        fresh = await ask(client, "What is odometry?", token=token)
    engine = create_engine(any_db_settings)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    old_id = old.first("session")["session_id"]
    async with maker() as session, session.begin():
        await session.execute(
            update(ChatSession)
            .where(ChatSession.id == old_id)
            .values(last_activity=datetime.now(UTC) - timedelta(days=31))
        )
    async with maker() as session, session.begin():
        archived = await ChatSessionService(session=session).archive_idle(30)
    async with maker() as session:
        statuses = dict((await session.execute(select(ChatSession.id, ChatSession.status))).all())
    await engine.dispose()
    assert archived == 1
    assert {str(k): v for k, v in statuses.items()} == {
        old_id: "archived",
        fresh.first("session")["session_id"]: "active",
    }


def test_archive_command_reports_the_count(tmp_path: Path, sqlite_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    result = subprocess.run(
        [sys.executable, "-m", "bookchat.cli", "archive", "--idle-days", "30"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "archived 0 session(s)" in result.stdout


def test_session_title_is_cut_at_a_word_boundary() -> None:
    assert session_title("  What   is lidar? ") == "What is lidar?"
    long = "word " * 40
    title = session_title(long)
    assert len(title) <= 100 and title.endswith("…") and "wor…" not in title


async def test_metrics_count_chat_outcomes_and_latencies(settings: Settings) -> None:
    await aingest_sample_book(settings)
    async for client in app_client(settings):
        await ask(client, "What is lidar?")
        await ask(client, "What is the GDP of Brazil?")
        text = (await client.get("/metrics")).text
    assert 'bookchat_chat_outcomes_total{outcome="complete"}' in text
    assert 'bookchat_chat_outcomes_total{outcome="abstained"}' in text
    assert "bookchat_time_to_first_token_seconds_count" in text
    assert "bookchat_retrieval_seconds_count" in text
    assert "bookchat_zero_hit_retrievals_total" in text
    assert "bookchat_active_streams 0.0" in text
    assert 'bookchat_requests_total{app_name="bookchat"' in text


def test_metrics_endpoint_is_not_in_the_api_docs(settings: Settings) -> None:
    from litestar.testing import TestClient

    from bookchat.app import create_app

    with TestClient(app=create_app(settings)) as client:
        paths = client.get("/schema/openapi.json").json()["paths"]
    assert "/metrics" not in paths and "/api/v1/chat" in paths


@pytest.mark.parametrize("middleware", [PrometheusMiddleware, RouteMetricsMiddleware])
def test_request_metrics_count_by_method_route_and_status(
    middleware: type[PrometheusMiddleware],
) -> None:
    """bookchat's request metrics middleware records what Litestar's own records."""
    from litestar import Litestar, get
    from litestar.exceptions import HTTPException
    from litestar.params import FromPath
    from litestar.testing import TestClient

    @get("/items/{n:int}", sync_to_thread=False)
    def item(n: FromPath[int]) -> dict[str, int]:
        return {"n": n}

    @get("/broken", sync_to_thread=False)
    def broken() -> None:
        raise HTTPException(status_code=503, detail="down")

    app_name = f"metrics-test-{middleware.__name__}"
    config = PrometheusConfig(
        app_name=app_name, prefix="bookchat", group_path=True, middleware_class=middleware
    )
    app = Litestar([item, broken], middleware=[config.middleware])

    def sample(name: str, path: str, status: int) -> float:
        labels = {"method": "GET", "path": path, "status_code": str(status), "app_name": app_name}
        return REGISTRY.get_sample_value(f"bookchat_{name}", labels) or 0.0

    with TestClient(app=app) as client:
        assert client.get("/items/1").status_code == 200
        assert client.get("/items/2").status_code == 200
        assert client.get("/broken").status_code == 503
    assert sample("requests_total", "/items/{n}", 200) == 2
    assert sample("request_duration_seconds_count", "/items/{n}", 200) == 2
    assert sample("request_duration_seconds_sum", "/items/{n}", 200) > 0
    assert sample("requests_error_total", "/items/{n}", 200) == 0
    assert sample("requests_total", "/broken", 503) == 1
    assert sample("requests_error_total", "/broken", 503) == 1
    assert sample("requests_in_progress", "/items/{n}", 200) == 0
    assert sample("requests_in_progress", "/broken", 200) == 0
