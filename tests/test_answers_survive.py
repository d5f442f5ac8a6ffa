"""No answer is lost: a real granian server on SQLite and PostgreSQL, clients that leave at
every moment of a stream (and during the save, under a held lock), and `kill -9`.

After each scenario the question has exactly one answer row, stored `complete` or
`interrupted`, and the server's `chat_outcomes` counter equals the stored rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest
from advanced_alchemy.types import GUID
from httpx_sse import aconnect_sse
from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bookchat.devtools.bench import server as bench_server
from bookchat.devtools.bench.server import UNLIMITED
from bookchat.devtools.fake_gemini import FakeGemini

from .conftest import fresh_pg_database
from .servers import prepare_book_env

pytestmark = pytest.mark.server

PID = "How does PID control work?"
WORDS = [f"w{i}" for i in range(20)]
ANSWER = "PID control combines proportional, integral and derivative terms [1]. " + " ".join(WORDS)
LIMITS = {
    "RATE_LIMIT_ANONYMOUS": UNLIMITED,
    "RATE_LIMIT_IP": UNLIMITED,
    "RATE_LIMIT_TOKEN": UNLIMITED,
}


@dataclass
class Backend:
    name: str
    database_url: str
    env: dict[str, str]
    fake: FakeGemini
    base_url: str = ""


@contextlib.contextmanager
def database(name: str, tmp_path: Path) -> Iterator[str]:
    if name == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'survive.db'}"
        return
    with fresh_pg_database("bookchat_survive") as url:
        yield url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """One server per database for the module (startup and ingestion dominate)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    with FakeGemini(answer=ANSWER) as fake, database(request.param, tmp_path) as url:
        env = prepare_book_env(
            tmp_path,
            DATABASE_URL=url,
            GEMINI_API_KEY="test-key",
            GEMINI_BASE_URL=fake.base_url,
            # A client that leaves stops its answer at once, so every moment of leaving is
            # a moment of saving (the grace period has its own tests: test_resume_server).
            RESUME_GRACE_SECONDS="0",
            **LIMITS,
        )
        found = Backend(request.param, url, env, fake)
        with bench_server.running_server(env) as server:
            found.base_url = server.base_url
            yield found


async def fetch(database_url: str, query: str, **ids: UUID) -> list[tuple[Any, ...]]:
    """Rows of `query`; `ids` are bound as the models' GUIDs (bytes on SQLite)."""
    statement = text(query).bindparams(*(bindparam(name, type_=GUID()) for name in ids))
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(statement, ids)]
    finally:
        await engine.dispose()


async def session_rows(backend: Backend, session_id: str) -> list[tuple[str, str, str]]:
    """(role, status, content) of a session's messages, oldest first."""
    rows = await fetch(
        backend.database_url,
        "SELECT role, status, content FROM messages WHERE session_id = :sid"
        " ORDER BY created_at, id",
        sid=UUID(session_id),
    )
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


async def settled(backend: Backend, session_id: str) -> list[tuple[str, str, str]]:
    """The session's rows once its answer is no longer `streaming` (the save landed)."""
    deadline = time.monotonic() + 30
    while True:
        rows = await session_rows(backend, session_id)
        if all(status != "streaming" for _, status, _ in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)  # polling the database until the shielded save lands


class RowLock:
    """Holds the write lock a save needs: SQLite's database lock, PostgreSQL's row lock."""

    def __init__(self, backend: Backend, message_id: str) -> None:
        self.backend, self.message_id = backend, message_id
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def __aenter__(self) -> RowLock:
        url = make_url(self.backend.database_url)
        if self.backend.name == "sqlite":
            self._sqlite = sqlite3.connect(url.database or "", isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            import asyncpg

            dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._pg = await asyncpg.connect(dsn)
            await self._pg.execute("BEGIN")
            await self._pg.execute(
                "SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", UUID(self.message_id)
            )
        return self

    async def save_is_waiting(self) -> bool:
        """PostgreSQL shows the blocked UPDATE; SQLite cannot tell (True)."""
        if self._pg is None:
            return True
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = await self._pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            if waiting:
                return True
            await asyncio.sleep(0.02)  # polling pg_stat_activity for the blocked save
        return False

    async def __aexit__(self, *exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.execute("ROLLBACK")
            await self._pg.close()


async def leave_at(backend: Backend, moment: str) -> tuple[str, str, list[str]]:
    """Ask, leave at `moment`; returns (session_id, message_id, tokens seen)."""
    seen: list[str] = []
    session: dict[str, Any] = {}
    lock: RowLock | None = None
    async with (
        httpx.AsyncClient(base_url=backend.base_url, timeout=30) as client,
        aconnect_sse(client, "POST", "/api/v1/chat", json={"message": PID}) as source,
    ):
        assert source.response.status_code == 200
        async for event in source.aiter_sse():
            if not event.data:
                continue
            data = msgspec.json.decode(event.data)
            if event.event == "session":
                session = data
                if moment == "before_first_token":
                    break
            elif event.event == "token":
                seen.append(data["content"])
                if moment == "mid_stream" and len(seen) == 3:
                    break
                if moment == "during_save" and lock is None:
                    lock = await RowLock(backend, session["message_id"]).__aenter__()
                if data["content"].endswith(WORDS[-1]):
                    if moment == "after_last_token":
                        break
                    if moment == "during_save":
                        assert lock is not None
                        assert await backend.fake.until(lambda f: f.active_streams == 0, 10)
                        assert await lock.save_is_waiting()
                        break
            elif event.event == "done":
                raise AssertionError(f"{moment}: the stream ended before the client left")
    if lock is not None:
        await lock.__aexit__()  # after the client left: the save was waiting on it
    return session["session_id"], session["message_id"], seen


MOMENTS = ["before_first_token", "mid_stream", "after_last_token", "during_save"]


@pytest.mark.parametrize("moment", MOMENTS)
async def test_a_client_leaving_at_any_moment_leaves_one_stored_answer(
    backend: Backend, moment: str
) -> None:
    backend.fake.reset()
    backend.fake.configure(
        first_token_delay=0.5 if moment == "before_first_token" else 0.0, token_delay=0.03
    )
    session_id, _message_id, seen = await leave_at(backend, moment)
    rows = await settled(backend, session_id)
    assert [role for role, _, _ in rows] == ["user", "assistant"]
    _, status, content = rows[1]
    assert status in {"complete", "interrupted"}
    assert content.startswith("".join(seen))
    if moment in {"before_first_token", "mid_stream"}:
        assert status == "interrupted"
    if moment == "during_save" and backend.name == "postgres":
        # PostgreSQL showed the save waiting on the lock: the answer had ended, and the
        # save completes it after the client left. (SQLite cannot show the waiter, so the
        # client may have left a moment before the server read the provider's last chunk.)
        assert status == "complete" and content.split()[-1] == WORDS[-1]


async def test_the_announced_message_id_exists_from_the_first_byte(backend: Backend) -> None:
    backend.fake.reset()
    backend.fake.configure(first_token_delay=0.3, token_delay=0.03)
    async with (
        httpx.AsyncClient(base_url=backend.base_url, timeout=30) as client,
        aconnect_sse(client, "POST", "/api/v1/chat", json={"message": PID}) as source,
    ):
        events = source.aiter_sse()
        first = await anext(events)
        assert first.event == "session"
        session = msgspec.json.decode(first.data)
        headers = {"Authorization": f"Bearer {session['token']}"}
        # While the answer streams, its row is listed and takes feedback.
        listed = await client.get(
            f"/api/v1/sessions/{session['session_id']}/messages", headers=headers
        )
        assert [(m["id"], m["status"]) for m in listed.json()["messages"]][1] == (
            session["message_id"],
            "streaming",
        )
        rated = await client.post(
            f"/api/v1/messages/{session['message_id']}/feedback",
            json={"rating": "up"},
            headers=headers,
        )
        assert rated.status_code == 200
        names = [event.event async for event in events]
        assert names[-1] == "done"
    rows = await settled(backend, session["session_id"])
    assert [status for _, status, _ in rows] == ["complete", "complete"]
    rating = await fetch(
        backend.database_url,
        "SELECT feedback_rating FROM messages WHERE role = 'assistant' AND status = 'complete'"
        " AND feedback_rating IS NOT NULL",
    )
    assert rating == [("up",)]


def outcomes(metrics_text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("bookchat_chat_outcomes_total{"):
            label = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[label] = float(line.rsplit(" ", 1)[1])
    return found


async def test_chat_outcomes_equal_the_stored_answers(backend: Backend) -> None:
    # Runs after the scenarios above on the same server: every answer they left is counted.
    backend.fake.reset()
    backend.fake.configure(token_delay=0.03)
    session_id, _, _ = await leave_at(backend, "mid_stream")
    await settled(backend, session_id)
    async with httpx.AsyncClient(base_url=backend.base_url, timeout=30) as client:
        answered = await client.post(
            "/api/v1/chat", json={"message": PID}, headers={"Accept": "application/json"}
        )
        assert answered.status_code == 200
        counted = outcomes((await client.get("/metrics")).text)
    stored = dict(
        await fetch(
            backend.database_url,
            "SELECT status, count(*) FROM messages WHERE role = 'assistant' GROUP BY status",
        )
    )
    assert "streaming" not in stored
    assert counted.get("complete", 0) + counted.get("abstained", 0) == stored.get("complete", 0)
    assert counted.get("interrupted", 0) == stored.get("interrupted", 0)
    assert counted.get("failed", 0) == stored.get("failed", 0)
    assert stored.get("interrupted", 0) >= 1 and stored.get("complete", 0) >= 1


# --------------------------------------------------------------------------- kill -9


async def test_kill_9_mid_stream_then_restart_leaves_no_question_without_answer(
    tmp_path: Path, database_url: str
) -> None:
    streams = 8
    url = database_url
    db = make_url(url).get_backend_name()
    with FakeGemini(answer=ANSWER, token_delay=0.5) as fake:
        env = await asyncio.to_thread(
            prepare_book_env,
            tmp_path,
            DATABASE_URL=url,
            GEMINI_API_KEY="test-key",
            GEMINI_BASE_URL=fake.base_url,
            **LIMITS,
        )
        backend = Backend(db, url, env, fake)
        with bench_server.running_server(env) as server:
            backend.base_url = server.base_url
            clients = [
                httpx.AsyncClient(base_url=server.base_url, timeout=30) for _ in range(streams)
            ]
            first_tokens: asyncio.Queue[str] = asyncio.Queue()

            async def stream(client: httpx.AsyncClient) -> None:
                with contextlib.suppress(httpx.HTTPError):
                    async with aconnect_sse(
                        client, "POST", "/api/v1/chat", json={"message": PID}
                    ) as source:
                        session_id = ""
                        async for event in source.aiter_sse():
                            if event.event == "session":
                                session_id = msgspec.json.decode(event.data)["session_id"]
                            elif event.event == "token" and session_id:
                                first_tokens.put_nowait(session_id)
                                session_id = ""  # once per stream

            tasks = [asyncio.create_task(stream(c)) for c in clients]
            sessions = [await asyncio.wait_for(first_tokens.get(), 30) for _ in range(streams)]
            assert all(sessions)
            before = await fetch(
                url, "SELECT role, status, count(*) FROM messages GROUP BY role, status"
            )
            for pid in [*bench_server.descendants(server.process.pid), server.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            server.process.wait()
            await asyncio.gather(*tasks)
            for client in clients:
                await client.aclose()
        assert dict(((r, s), n) for r, s, n in before) == {
            ("user", "complete"): streams,
            ("assistant", "streaming"): streams,
        }
        # Restart on the same database: the dead process's answers are repaired at startup.
        with bench_server.running_server(env) as server:
            after = await fetch(
                url, "SELECT role, status, count(*) FROM messages GROUP BY role, status"
            )
        assert dict(((r, s), n) for r, s, n in after) == {
            ("user", "complete"): streams,
            ("assistant", "interrupted"): streams,
        }
        for session_id in sessions:
            assert [(r, s) for r, s, _ in await session_rows(backend, session_id)] == [
                ("user", "complete"),
                ("assistant", "interrupted"),
            ]
    print(f"kill -9 ({db}): before {sorted(before)}; after restart {sorted(after)}")
