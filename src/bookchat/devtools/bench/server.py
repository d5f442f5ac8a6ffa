"""The bench's server setup: a prepared data directory, granian in a subprocess, RSS probes.

The server is `bookchat serve --app` the bench app (granian, 1 worker), so the
chat route and the floor route share one process, one middleware stack and one loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bookchat.devtools.bench.floor import BENCH_APP

# Anonymous chats from one IP would hit the per-IP limit within a second.
UNLIMITED = "100000000"


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bench_env(data_dir: Path, fake_url: str) -> dict[str, str]:
    """Environment for a server on `data_dir` talking to the fake Gemini at `fake_url`."""
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'bench.db'}",
        "QDRANT_PATH": str(data_dir / "qdrant"),
        "SITE_URL": "https://book.example.org",
        "LOG_LEVEL": "WARNING",
        "GEMINI_API_KEY": "bench-key",
        "GEMINI_BASE_URL": fake_url,
        "RATE_LIMIT_ANONYMOUS": UNLIMITED,
        "RATE_LIMIT_IP": UNLIMITED,
        "RATE_LIMIT_TOKEN": UNLIMITED,
        "RATE_LIMIT_API_KEY": UNLIMITED,
    }


def prepare_data(env: dict[str, str], docs_root: Path) -> object:
    """Migrate the database and ingest `docs_root` (dense vectors from the fake)."""
    from bookchat.db.migrate import run_migrations
    from bookchat.ingest.pipeline import run_ingest
    from bookchat.settings import load_settings

    settings = load_settings({k: v for k, v in env.items() if k.isupper()}, env_file=None)
    run_migrations(settings.database_url)
    return asyncio.run(run_ingest(settings, docs_root, site_url=settings.site_url))


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (granian's workers)."""
    result: list[int] = []
    stack = _children(pid)
    while stack:
        child = stack.pop()
        result.append(child)
        stack += _children(child)
    return result


def rss_bytes(pid: int) -> int:
    """VmRSS of one process, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Server:
    """A running `bookchat serve` subprocess: base URL, worker pid and RSS probes."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        self.process = process
        self.base_url = base_url
        workers = descendants(process.pid)
        # The worker is the process that serves requests; fall back to the parent.
        self.worker_pid = workers[-1] if workers else process.pid

    def worker_rss(self) -> int:
        return rss_bytes(self.worker_pid)

    def total_rss(self) -> int:
        return rss_bytes(self.process.pid) + sum(
            rss_bytes(p) for p in descendants(self.process.pid)
        )


@contextmanager
def running_server(
    env: dict[str, str], *, workers: int = 1, timeout: float = 60, app: str = BENCH_APP
) -> Iterator[Server]:
    """`bookchat serve` on a free port (the tests use it too); SIGTERM on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bookchat.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--app", app],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"server exited: {stderr[-2000:]}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not become healthy")
            time.sleep(0.05)  # polling interval while the server starts
        # Drain stderr so a chatty server can never block on a full pipe.
        threading.Thread(target=_drain, args=(process,), daemon=True).start()
        yield Server(process, base_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _drain(process: subprocess.Popen[bytes]) -> None:
    if process.stderr is None:
        return
    for _line in process.stderr:
        pass


class RssSampler:
    """Samples a process's RSS in a thread while a load runs; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))
