"""Run bookchat on a real granian server (subprocess) for streaming and disconnect tests.

`AsyncTestClient` buffers streamed bodies and never sees a client disconnect, so SSE
timing and cancellation are tested against `bookchat serve` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bookchat.settings import SAMPLE_BOOK, load_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare_book_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Environment for a server with a migrated SQLite DB and the sample book ingested.

    With GEMINI_API_KEY and GEMINI_BASE_URL (a FakeGemini) in `overrides`, the book is
    ingested with dense embeddings too, so the server runs hybrid retrieval.
    """
    from bookchat.cli import run_ingest, run_migrations

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
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bookchat.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not become healthy")
            time.sleep(0.05)  # polling interval while waiting for startup, not synchronisation
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
