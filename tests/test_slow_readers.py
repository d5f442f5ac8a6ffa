"""Slow readers: the per-stream buffer is bounded, the answer stops pulling from the
provider when the client does not drain, and a write timeout ends the stream."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from bookchat.chat.controller import sse_messages
from bookchat.chat.identity import Identity
from bookchat.chat.journal import StreamJournal
from bookchat.chat.schemas import ChatRequest
from bookchat.chat.service import ChatService, ChatTurn
from bookchat.db.models import Message
from bookchat.devtools.bench import server as bench_server
from bookchat.devtools.bench.server import UNLIMITED
from bookchat.devtools.fake_gemini import FakeGemini
from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book, app_client
from .servers import prepare_book_env

LONG_ANSWER = "PID control [1]. " + " ".join(f"w{i}" for i in range(2000))


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(answer=LONG_ANSWER) as gemini:
        yield gemini


async def write_until_stuck(
    journal: StreamJournal, chat: ChatService, turn: ChatTurn, *, events: int, taken: list[int]
) -> None:
    """Like Litestar's stream task: sends events until a send blocks on the client."""
    stuck = asyncio.get_running_loop().create_future()
    async for message in sse_messages(journal, chat, turn, ping_interval=60):
        taken[0] += message.count(b"\r\nevent: ")  # pending events go out in one write
        if taken[0] >= events:
            await stuck  # the client's socket is full: this send never returns


async def test_a_client_that_stops_reading_stops_generation_and_ends_after_the_write_timeout(
    settings: Settings, fake: FakeGemini
) -> None:
    configured = settings.replace(gemini_api_key="test-key", gemini_base_url=fake.base_url)
    await aingest_sample_book(configured)
    fake.configure(token_delay=0.001)
    async for client in app_client(configured):
        chat = client.app.state.runtime.chat  # type: ignore[attr-defined]
        async with chat.session_maker() as db:
            turn = await chat.begin(
                ChatRequest(message="How does PID control work?"),
                Identity(user=None, tier="anonymous", client_ip="127.0.0.1", subject="ip"),
                db,
            )
        # No grace period: the stuck client's answer stops at once (as before resuming).
        journal = StreamJournal(grace_period=0, write_timeout=1.0)
        taken = [0]
        started = time.perf_counter()
        task = asyncio.create_task(write_until_stuck(journal, chat, turn, events=5, taken=taken))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        elapsed = time.perf_counter() - started
        assert task.cancelled()
        assert 1.0 <= elapsed < 10  # ended by the write timeout, not by the answer's end
        # Backpressure: generation stopped early; the provider's stream was closed.
        assert await fake.until(lambda f: f.stream_closed_early, 5)
        # The stuck reader's send was cancelled first; the answer saves itself after.
        await asyncio.wait_for(journal.wait_finished(turn.message_id), 10)
        async with chat.session_maker() as db:
            answer = await db.get(Message, turn.message_id)
            assert answer is not None
            words = answer.content.split()
        assert answer.status == "interrupted"
        # At most the buffer and the events taken were generated, far from the 2000 words.
        assert len(words) <= taken[0] + journal.buffer_events + 4


# --------------------------------------------------------------------------- real server

CLIENTS = 300
HOLD_SECONDS = 60
QUESTION = b'{"message": "How does PID control work?"}'
REQUEST = (
    b"POST /api/v1/chat HTTP/1.1\r\nHost: bookchat\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(QUESTION), QUESTION)
)


async def non_reader(port: int) -> asyncio.StreamWriter:
    """A client that sends one chat request and never reads a byte of the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(REQUEST)
    await writer.drain()
    return writer


@pytest.mark.server
async def test_300_clients_that_never_read_keep_rss_bounded_and_every_answer_stored(
    tmp_path: Path,
) -> None:
    words = " ".join(f"w{i}" for i in range(400))
    with FakeGemini(answer=f"PID control combines three terms [1]. {words}") as gemini:
        env = await asyncio.to_thread(
            prepare_book_env,
            tmp_path,
            GEMINI_API_KEY="test-key",
            GEMINI_BASE_URL=gemini.base_url,
            SSE_WRITE_TIMEOUT="5",
            RATE_LIMIT_ANONYMOUS=UNLIMITED,
            RATE_LIMIT_IP=UNLIMITED,
        )
        with bench_server.running_server(env) as server:
            port = int(server.base_url.rsplit(":", 1)[1])
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                for _ in range(2):  # warm up: first-use allocations are not a leak
                    warm = [
                        client.post("/api/v1/chat", json={"message": "PID?"}) for _ in range(20)
                    ]
                    assert {r.status_code for r in await asyncio.gather(*warm)} == {200}
            base = server.worker_rss()
            with bench_server.RssSampler([server.worker_pid]) as sampler:
                writers = [await non_reader(port) for _ in range(CLIENTS)]
                await asyncio.sleep(HOLD_SECONDS)  # the load itself: 60 s of not reading
                async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
                    health = await client.get("/healthz")  # still serving others
                for writer in writers:
                    writer.close()
            growth = sampler.peak - base
            database = make_url(env["DATABASE_URL"]).database
            assert database is not None
            rows = await wait_for_settled_rows(database)
    print(
        f"300 non-readers for {HOLD_SECONDS} s: worker RSS {base / 1e6:.0f} MB -> peak "
        f"{sampler.peak / 1e6:.0f} MB (+{growth / 1e6:.0f} MB); rows {rows}"
    )
    assert health.status_code == 200
    assert growth < 100e6
    questions = rows.get(("user", "complete"), 0)
    assert questions == 40 + CLIENTS
    answers = {status: n for (role, status), n in rows.items() if role == "assistant"}
    assert sum(answers.values()) == questions  # one answer row per question
    assert set(answers) <= {"complete", "interrupted"}


async def wait_for_settled_rows(database: str) -> dict[tuple[str, str], int]:
    """Message counts by (role, status) once no answer is `streaming` any more."""
    deadline = time.monotonic() + 60
    while True:
        with sqlite3.connect(database) as connection:
            counts = connection.execute(
                "SELECT role, status, count(*) FROM messages GROUP BY role, status"
            ).fetchall()
        rows = {(role, status): n for role, status, n in counts}
        if ("assistant", "streaming") not in rows or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)  # polling until the last saves land
