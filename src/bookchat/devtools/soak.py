"""`bookchat soak`: many concurrent conversations for a while; nothing lost, nothing leaked.

Runs `bookchat serve` (granian) on PostgreSQL against the fake Gemini, keeps
`--concurrency` conversations going for `--seconds` (each a few turns on one session),
then checks:

- 0 errors: every chat got HTTP 200 and ended with `done`, without `persistence_warning`;
- rows: exactly one user and one assistant message per started chat (by message id and
  per session), and one user per conversation;
- the pool back to idle: no `active` / `idle in transaction` connection of the app's
  database in `pg_stat_activity` once the load stops;
- memory: the server's RSS (all its processes) at the end within 20% of its level
  after the warm-up.

By default it creates a fresh database on the local test server and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
QUESTIONS = [
    "How does PID control work?",
    "What are its limitations?",
    "What is lidar used for?",
    "How does odometry drift?",
    "What is a ROS 2 node?",
]
TURNS_PER_CONVERSATION = 3
RSS_TOLERANCE = 0.20


@dataclass
class Tally:
    """What the load generator saw."""

    chats_started: int = 0  # HTTP 200 with a `session` event: the question is stored
    chats_done: int = 0
    conversations: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    assistant_ids: set[str] = field(default_factory=set)
    questions_per_session: Counter[str] = field(default_factory=Counter)
    ttft_ms: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    stack.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling interval while a subprocess starts
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


async def _chat(
    client: httpx.AsyncClient, tally: Tally, body: dict[str, Any], token: str | None
) -> tuple[str | None, str | None]:
    """One chat turn; returns (token, session_id) for the next turn."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.perf_counter()
    session: dict[str, Any] | None = None
    try:
        async with client.stream("POST", "/api/v1/chat", json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                tally.errors[f"http_{response.status_code}"] += 1
                return token, body.get("session_id")
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = msgspec.json.decode(line[6:])
                    if event == "session":
                        session = data
                        tally.chats_started += 1
                        tally.assistant_ids.add(data["message_id"])
                        tally.questions_per_session[data["session_id"]] += 1
                    elif event == "token" and started:
                        tally.ttft_ms.append((time.perf_counter() - started) * 1000)
                        started = 0.0  # only the first token counts
                    elif event == "done":
                        tally.chats_done += 1
                        if data.get("persistence_warning"):
                            tally.errors["persistence_warning"] += 1
                    elif event == "error":
                        tally.errors[f"event_{data.get('code')}"] += 1
    except httpx.HTTPError as exc:
        tally.errors[type(exc).__name__] += 1
    if session is None:
        return token, body.get("session_id")
    return session.get("token") or token, session["session_id"]


async def _conversations(
    base_url: str, concurrency: int, seconds: float, think: float, tally: Tally
) -> None:
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def converse(worker: int) -> None:
            turn = worker
            jitter = random.Random(worker)
            # Start spread over one think time, as readers do, instead of all at once.
            await asyncio.sleep(jitter.uniform(0, think))
            while time.monotonic() < stop_at:
                tally.conversations += 1
                token: str | None = None
                session_id: str | None = None
                for _ in range(TURNS_PER_CONVERSATION):
                    if time.monotonic() >= stop_at:
                        break
                    body: dict[str, Any] = {"message": QUESTIONS[turn % len(QUESTIONS)]}
                    if session_id:
                        body["session_id"] = session_id
                    token, session_id = await _chat(client, tally, body, token)
                    turn += 1
                    pause = jitter.uniform(0.5 * think, 1.5 * think)  # reading the answer
                    await asyncio.sleep(max(0.0, min(pause, stop_at - time.monotonic())))

        await asyncio.gather(*(converse(i) for i in range(concurrency)))


async def _pg(url: str) -> Any:
    import asyncpg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return await asyncpg.connect(dsn)


async def _count_rows(database_url: str) -> dict[str, Any]:
    connection = await _pg(database_url)
    try:
        users = await connection.fetchval("SELECT count(*) FROM users")
        assistants = await connection.fetch(
            "SELECT id::text AS id, status FROM messages WHERE role = 'assistant'"
        )
        per_session = await connection.fetch(
            "SELECT session_id::text AS session_id, count(*) AS n FROM messages "
            "WHERE role = 'user' GROUP BY session_id"
        )
    finally:
        await connection.close()
    return {
        "users": users,
        "assistant_ids": {row["id"] for row in assistants},
        "assistant_status": Counter(row["status"] for row in assistants),
        "user_rows_per_session": {row["session_id"]: row["n"] for row in per_session},
    }


async def _busy_connections(admin_url: str, database: str, wait: float) -> dict[str, int]:
    """Connections of `database` that are not idle; polls until none or `wait` seconds."""
    connection = await _pg(admin_url)
    try:
        deadline = time.monotonic() + wait
        while True:
            rows = await connection.fetch(
                "SELECT coalesce(state, '') AS state, count(*) AS n FROM pg_stat_activity "
                "WHERE datname = $1 GROUP BY state",
                database,
            )
            states = {row["state"]: row["n"] for row in rows}
            busy = {s: n for s, n in states.items() if s in ("active", "idle in transaction")}
            if not busy or time.monotonic() > deadline:
                return states
            await asyncio.sleep(0.2)  # polling pg_stat_activity until the pool settles
    finally:
        await connection.close()


def create_database(admin_url: str, prefix: str = "bookchat_soak") -> str:
    """A new, empty database next to `admin_url`'s; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        connection = await _pg(admin_url)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, database: str) -> None:
    """Drop `database`, disconnecting whoever is still on it."""

    async def drop() -> None:
        connection = await _pg(admin_url)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, load, check; returns the report (``ok`` says whether every check passed)."""
    from bookchat.db.migrate import run_migrations
    from bookchat.ingest.pipeline import run_ingest
    from bookchat.settings import SAMPLE_BOOK, load_settings

    admin_url = args.database_url or os.environ.get("TEST_POSTGRES_URL") or DEFAULT_ADMIN_URL
    created = args.database_url is None
    database_url = create_database(admin_url) if created else admin_url
    database = make_url(database_url).database or ""
    workdir = Path(tempfile.mkdtemp(prefix="bookchat-soak-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        gemini_port = _free_port()
        fake = subprocess.Popen(
            [sys.executable, "-m", "bookchat.devtools.fake_gemini", "--port", str(gemini_port),
             "--first-token-ms", str(args.first_token_ms),
             "--tokens-per-second", str(args.tokens_per_second), "--answer-words", "40",
             "--words-per-chunk", str(args.words_per_chunk),
             "--answer", "PID control combines proportional, integral and derivative terms [1]."],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(fake)
        gemini_url = f"http://127.0.0.1:{gemini_port}"
        _wait_healthy(f"{gemini_url}/v1beta/models", fake)
        unlimited = str(10**9)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "QDRANT_PATH": str(workdir / "qdrant"),
            "GEMINI_API_KEY": "soak-key",
            "GEMINI_BASE_URL": gemini_url,
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT_ANONYMOUS": unlimited,
            "RATE_LIMIT_TOKEN": unlimited,
            "RATE_LIMIT_IP": unlimited,
            "DATABASE_POOL_SIZE": str(args.pool_size),
        }
        env.pop("REDIS_URL", None)
        settings = load_settings({k: v for k, v in env.items() if k.isupper()}, env_file=None)
        run_migrations(database_url)
        asyncio.run(run_ingest(settings, SAMPLE_BOOK, site_url=settings.site_url))

        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bookchat.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(args.workers)],
            env=env,
        )  # fmt: skip
        processes.append(server)
        base_url = f"http://127.0.0.1:{port}"
        _wait_healthy(f"{base_url}/healthz", server)

        warmup = Tally()
        asyncio.run(_conversations(base_url, args.concurrency, args.warmup, args.think, warmup))
        rss_after_warmup = _rss_bytes(server.pid)
        tally = Tally()
        samples: list[int] = []

        async def load_with_rss_samples() -> None:
            async def sample() -> None:
                while True:
                    samples.append(_rss_bytes(server.pid))
                    await asyncio.sleep(1.0)  # one RSS sample a second

            sampler = asyncio.create_task(sample())
            try:
                await _conversations(base_url, args.concurrency, args.seconds, args.think, tally)
            finally:
                sampler.cancel()

        started = time.perf_counter()
        asyncio.run(load_with_rss_samples())
        elapsed = time.perf_counter() - started
        rss_end = _rss_bytes(server.pid)
        connections = asyncio.run(_busy_connections(admin_url, database, wait=10))
        rows = asyncio.run(_count_rows(database_url))
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if created and not args.keep_database:
            drop_database(admin_url, database)

    # The warm-up's chats are in the database too: check rows against both runs.
    expected_ids = warmup.assistant_ids | tally.assistant_ids
    expected_per_session = warmup.questions_per_session + tally.questions_per_session
    started_chats = warmup.chats_started + tally.chats_started
    missing = len(expected_ids - rows["assistant_ids"])
    unexpected = len(rows["assistant_ids"] - expected_ids)
    wrong_sessions = sum(
        1
        for session_id in set(expected_per_session) | set(rows["user_rows_per_session"])
        if expected_per_session.get(session_id, 0)
        != rows["user_rows_per_session"].get(session_id, 0)
    )
    user_rows = sum(rows["user_rows_per_session"].values())
    busy = {s: n for s, n in connections.items() if s in ("active", "idle in transaction")}
    growth = (rss_end - rss_after_warmup) / rss_after_warmup if rss_after_warmup else 0.0
    ttft = sorted(tally.ttft_ms) or [0.0]
    errors = dict(warmup.errors + tally.errors)
    report: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "concurrency": args.concurrency,
        "workers": args.workers,
        "think_seconds": args.think,
        "chats_started": tally.chats_started,
        "chats_done": tally.chats_done,
        "chats_per_second": round(tally.chats_started / elapsed, 1) if elapsed else 0.0,
        "conversations": tally.conversations,
        "ttft_ms_p50": round(ttft[len(ttft) // 2], 1),
        "ttft_ms_p99": round(ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))], 1),
        "errors": errors,
        "warmup_chats": warmup.chats_started,
        "user_rows": user_rows,
        "assistant_rows": len(rows["assistant_ids"]),
        "expected_rows_each": started_chats,
        "missing_assistant_rows": missing,
        "unexpected_assistant_rows": unexpected,
        "sessions_with_wrong_user_rows": wrong_sessions,
        "assistant_status": dict(rows["assistant_status"]),
        "users": rows["users"],
        "conversations_total": warmup.conversations + tally.conversations,
        "pg_connections_after": connections,
        "rss_mb_after_warmup": round(rss_after_warmup / 2**20, 1),
        "rss_mb_end": round(rss_end / 2**20, 1),
        "rss_mb_max": round(max(samples or [rss_end]) / 2**20, 1),
        "rss_growth_pct": round(growth * 100, 1),
    }
    report["ok"] = (
        not errors
        and tally.chats_started > 0
        and tally.chats_done == tally.chats_started
        and user_rows == started_chats == len(rows["assistant_ids"])
        and missing == unexpected == wrong_sessions == 0
        and set(rows["assistant_status"]) == {"complete"}
        and not busy
        and abs(growth) <= RSS_TOLERANCE
    )
    return report


def cmd_soak(args: argparse.Namespace) -> None:
    report = run_soak(args)
    if args.json:
        print(json.dumps(report))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    if not report["ok"]:
        raise SystemExit(1)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bookchat soak` to the CLI."""
    soak = sub.add_parser(
        "soak", help="concurrent conversations against granian + PostgreSQL; checks rows, pool, RSS"
    )
    soak.add_argument("--seconds", type=float, default=60.0, help="measured load duration")
    soak.add_argument("--concurrency", type=int, default=200, help="concurrent conversations")
    soak.add_argument(
        "--warmup", type=float, default=10.0, help="seconds of load before RSS baseline"
    )
    soak.add_argument(
        "--database-url",
        help="PostgreSQL URL to use as is (default: a fresh database on TEST_POSTGRES_URL "
        f"or {DEFAULT_ADMIN_URL}, dropped afterwards)",
    )
    soak.add_argument("--keep-database", action="store_true", help="do not drop the fresh database")
    soak.add_argument("--workers", type=int, default=1, help="granian workers")
    soak.add_argument(
        "--pool-size", type=int, default=20, help="DATABASE_POOL_SIZE (+ as many overflow)"
    )
    soak.add_argument(
        "--first-token-ms", type=float, default=50.0, help="fake Gemini's first-token delay"
    )
    soak.add_argument(
        "--think",
        type=float,
        default=5.0,
        help="mean seconds a reader waits between answers (0: back to back, an overload test)",
    )
    soak.add_argument(
        "--words-per-chunk", type=int, default=8, help="words per fake Gemini chunk (as Gemini)"
    )
    soak.add_argument("--tokens-per-second", type=float, default=200.0, help="fake Gemini's pace")
    soak.add_argument("--json", action="store_true", help="print the report as one JSON object")
    soak.set_defaults(func=cmd_soak)
