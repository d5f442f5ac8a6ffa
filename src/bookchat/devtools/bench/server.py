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
from bookchat.devtools.bench.procstat import descendants, rss_bytes, tree_cpu_seconds

# Anonymous chats from one IP would hit the per-IP limit within a second.
UNLIMITED = "100000000"


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bench_env(data_dir: Path, fake_url: str, provider: str = "gemini") -> dict[str, str]:
    """Environment for a server on `data_dir` talking to the fake at `fake_url`.

    `provider="openai"`: answers and embeddings from the fake OpenAI-compatible server
    (`fake_url` is its `api_base`), i.e. a fully self-hosted deployment's shape.
    """
    models = (
        {
            "GEMINI_API_KEY": "bench-key",
            "GEMINI_BASE_URL": fake_url,
            "LLM_PROVIDER": "gemini",
            "EMBEDDING_PROVIDER": "gemini",
            "EMBEDDING_MODEL": "gemini-embedding-001",
        }
        if provider == "gemini"
        else {
            "GEMINI_API_KEY": "",
            "LLM_PROVIDER": "openai",
            "OPENAI_BASE_URL": fake_url,
            "OPENAI_MODEL": "bench-model",
            "EMBEDDING_PROVIDER": "openai",
            "EMBEDDING_MODEL": "bench-embedding",
        }
    )
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'bench.db'}",
        "QDRANT_PATH": str(data_dir / "qdrant"),
        "SITE_URL": "https://book.example.org",
        "LOG_LEVEL": "WARNING",
        **models,
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


class Server:
    """A running `bookchat serve` subprocess: base URL, worker pid and RSS probes."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        self.process = process
        self.base_url = base_url
        workers = descendants(process.pid)
        # The worker is the process that serves requests; fall back to the parent.
        self.worker_pid = workers[-1] if workers else process.pid

    @property
    def worker_pids(self) -> list[int]:
        return descendants(self.process.pid) or [self.process.pid]

    def worker_rss(self) -> int:
        """RSS of the workers, summed (one worker: that worker's)."""
        return sum(rss_bytes(p) for p in self.worker_pids)

    def cpu_seconds(self) -> float:
        """utime + stime of the whole server so far (parent, workers, their threads)."""
        return tree_cpu_seconds(self.process.pid)

    def total_rss(self) -> int:
        return rss_bytes(self.process.pid) + sum(
            rss_bytes(p) for p in descendants(self.process.pid)
        )


@contextmanager
def running_server(
    env: dict[str, str],
    *,
    workers: int = 1,
    timeout: float = 60,
    app: str = BENCH_APP,
    cpus: set[int] | None = None,
) -> Iterator[Server]:
    """`bookchat serve` on a free port (the tests use it too); SIGTERM on exit.

    `cpus`: the CPUs the server (and so every worker it forks) may run on.
    """
    port = free_port()

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    process = subprocess.Popen(
        [sys.executable, "-m", "bookchat.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--app", app],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=pin if cpus else None,
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
    """Samples processes' summed RSS in a thread while a load runs; keeps the maximum."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
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
            self.peak = max(self.peak, sum(rss_bytes(p) for p in self.pids))
