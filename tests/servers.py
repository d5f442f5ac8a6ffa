"""Run bookchat on a real granian server (subprocess) for streaming and disconnect tests.

`AsyncTestClient` buffers streamed bodies and never sees a client disconnect, so SSE
timing and cancellation are tested against `bookchat serve` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bookchat.devtools.bench import server as bench_server
from bookchat.devtools.bench.server import free_port
from bookchat.settings import SAMPLE_BOOK, load_settings

__all__ = ["free_port", "prepare_book_env", "running_server"]


def prepare_book_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Environment for a server with a migrated SQLite DB and the sample book ingested.

    With GEMINI_API_KEY and GEMINI_BASE_URL (a FakeGemini) in `overrides`, the book is
    ingested with dense embeddings too, so the server runs hybrid retrieval.
    """
    from bookchat.db.migrate import run_migrations
    from bookchat.ingest.pipeline import run_ingest

    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'server.db'}",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "SITE_URL": "https://book.example.org",
        "LOG_LEVEL": "WARNING",
        "GEMINI_API_KEY": "",
    }
    env.update(overrides)
    settings = load_settings({k: v for k, v in env.items() if k.isupper()})
    run_migrations(settings.database_url)
    asyncio.run(run_ingest(settings, SAMPLE_BOOK, site_url=settings.site_url))
    return env


@contextmanager
def running_server(env: dict[str, str], *, workers: int = 1, timeout: float = 30) -> Iterator[str]:
    """`bookchat serve` on a free port; yields its base URL; SIGTERM on exit."""
    with bench_server.running_server(env, workers=workers, timeout=timeout) as server:
        yield server.base_url
