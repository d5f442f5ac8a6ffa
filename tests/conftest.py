"""Shared fixtures: databases (SQLite always, PostgreSQL when TEST_POSTGRES_URL is set),
Redis (TEST_REDIS_URL), and an app wired to temporary stores."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy.engine import make_url

from bookchat.settings import Settings, load_settings

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("TEST_REDIS_URL")
NO_POSTGRES = "PostgreSQL tests need TEST_POSTGRES_URL (CI sets it)"
NO_REDIS = "Redis tests need TEST_REDIS_URL (CI sets it)"


def pytest_configure(config: pytest.Config) -> None:
    # In CI the PostgreSQL and Redis tests must run, never skip quietly.
    if os.environ.get("CI") == "true" and not (POSTGRES_URL and REDIS_URL):
        raise pytest.UsageError("CI=true needs TEST_POSTGRES_URL and TEST_REDIS_URL")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many PostgreSQL/Redis-backed tests ran, so CI logs prove it."""
    for marker in ("postgres", "redis"):
        counts = {}
        for outcome in ("passed", "failed", "skipped"):
            reports = terminalreporter.stats.get(outcome, [])
            counts[outcome] = sum(
                1
                for r in reports
                if getattr(r, "when", "call") in ("call", "setup")
                and marker in getattr(r, "keywords", {})
                and (outcome != "passed" or r.when == "call")
            )
        terminalreporter.write_line(
            f"{marker} tests: {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['skipped']} skipped"
        )


def _admin_dsn() -> str:
    assert POSTGRES_URL
    return make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)


async def _create_pg_database(name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_admin_dsn())
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_pg_database(name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_admin_dsn())
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'bookchat.db'}"
        return
    with fresh_pg_database() as url:
        yield url


@contextmanager
def fresh_pg_database(prefix: str = "bookchat_test") -> Iterator[str]:
    """A new, empty PostgreSQL database (skips without TEST_POSTGRES_URL); dropped after."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_pg_database(name))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_drop_pg_database(name))


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    """The database with every migration applied."""
    from bookchat.db.migrate import run_migrations

    run_migrations(database_url)
    return database_url


_redis_counter = itertools.count()


@pytest.fixture
def redis_url() -> str:
    """A flushed Redis database (1–15) of this test's own, so xdist workers do not collide."""
    if not REDIS_URL:
        pytest.skip(NO_REDIS)
    import redis

    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    index = (worker * 7 + next(_redis_counter)) % 15 + 1
    url = urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{index}"))
    redis.Redis.from_url(url).flushdb()
    return url


def make_settings(tmp_path: Path, **overrides: str) -> Settings:
    """Settings for a test: temporary SQLite and vector store, offline unless told."""
    env = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "LOG_LEVEL": "WARNING",
        "SITE_URL": "https://book.example.org",
    }
    env.update(overrides)
    return load_settings(env)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database (for tests that are not about the database)."""
    from bookchat.db.migrate import run_migrations

    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    run_migrations(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return make_settings(tmp_path, DATABASE_URL=sqlite_url)


@pytest.fixture
def any_db_settings(tmp_path: Path, migrated_database_url: str) -> Settings:
    """Settings on SQLite and, when available, on PostgreSQL (parametrized)."""
    return make_settings(tmp_path, DATABASE_URL=migrated_database_url)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[object]:
    """An in-process AsyncTestClient (buffers streams: use a real server for SSE timing)."""
    from litestar.testing import AsyncTestClient

    from bookchat.app import create_app

    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client
