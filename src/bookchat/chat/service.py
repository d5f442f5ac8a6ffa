"""The chat flow: decide everything that can fail before streaming, then stream and persist.

`ChatService.begin()` runs inside the request: it checks the session, retrieves, and saves
the question together with the answer's row (`streaming`, owned by this process), so
failures become HTTP statuses (404, 503) and the announced `message_id` exists from the
first byte. `ChatService.run()` then produces the events of BRIEF §6 in a task of its own
and completes the answer's row through its own database session (the request's session
is already closed once the response starts). The completion runs in a task of its own
that a cancellation cannot stop, and retries with backoff within `SAVE_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.util import greenlet_spawn
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)
from uuid_utils.compat import uuid7

from bookchat import metrics
from bookchat.answer.grounding import Citation, related_sections
from bookchat.answer.pipeline import (
    ABSTAINED,
    NOT_COVERED,
    AnswerDone,
    AnswerPipeline,
    AnswerToken,
    PreparedAnswer,
    Retrieved,
)
from bookchat.chat.identity import Identity
from bookchat.chat.schemas import (
    ChatRequest,
    ChatResponse,
    CitationsEvent,
    DoneEvent,
    ErrorEvent,
    SessionEvent,
    TokenEvent,
    Usage,
)
from bookchat.db import ownership
from bookchat.db.config import hold_sqlite_writes
from bookchat.db.models import ChatSession, Message, User, utcnow
from bookchat.db.services import (
    ChatSessionService,
    MessageService,
    hash_token,
    new_token,
    session_title,
)
from bookchat.errors import ApiError
from bookchat.llm.base import GenerationError, Turn, cited_pages
from bookchat.search.types import SearchFilters, VectorStoreUnavailableError

logger = logging.getLogger("bookchat.chat")

# The tables the chat path writes with Core statements (see `_save_question`).
USERS: Table = User.__table__  # type: ignore[assignment]
SESSIONS: Table = ChatSession.__table__  # type: ignore[assignment]
MESSAGES: Table = Message.__table__  # type: ignore[assignment]
# Built once and executed with parameters: a reused statement keeps its compiled form and
# cache key, where `.values(...)` per chat rebuilt and re-hashed every clause each time.
INSERT_USER = insert(USERS)
INSERT_SESSION = insert(SESSIONS)
INSERT_MESSAGES = insert(MESSAGES)
TOUCH_SESSION = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("touched_session_id"))
    .values(last_activity=bindparam("touched_at"))
)
# The SET clause comes from the parameters' column names (one shape per chat path).
COMPLETE_ANSWER = update(MESSAGES).where(MESSAGES.c.id == bindparam("completed_message_id"))

DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError, ConnectionError)
SAVE_TIMEOUT = 30.0  # generous: under overload the save queues for a pooled connection
HEARTBEAT_TIMEOUT = 5.0
SAVE_RETRY_WAIT = (0.05, 2.0)  # backoff between save attempts: first and longest wait (s)
PERSISTENCE_WARNING = "the answer could not be saved; it will be missing from the history"


@dataclass
class ChatTurn:
    """One accepted question, ready to stream."""

    request: ChatRequest
    session_id: UUID
    message_id: UUID  # the assistant message's id, announced in the `session` event
    prepared: PreparedAnswer
    started: float
    token: str | None = None  # set when this request created a new anonymous user
    retrieved_chunks: int = 0

    def reference(self) -> dict[str, str]:
        """Where this turn is stored, for an error that ends it (JSON mode)."""
        found = {"session_id": str(self.session_id), "message_id": str(self.message_id)}
        return found | ({"token": self.token} if self.token else {})


@dataclass
class StreamOutcome:
    """What happened while streaming; saved as the assistant message."""

    status: str = "complete"
    text_parts: list[str] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    grounded: bool = False
    model: str | None = None
    ttft_ms: int | None = None
    error: GenerationError | None = None


Event = tuple[str, msgspec.Struct]


class OpenedSession(NamedTuple):
    """The session a question continues (None: a new one) and its prompt history."""

    chat: ChatSession | None
    history: list[Turn]


def _filters(request: ChatRequest) -> tuple[SearchFilters | None, int]:
    if request.filters is None:
        return None, 5
    f = request.filters
    filters = SearchFilters(
        modules=tuple(f.modules),
        chapters=tuple(f.chapters),
        content_types=tuple(f.content_types),
        tags=tuple(f.tags),
    )
    return (None if filters.is_empty() else filters), f.top_k


def _history(messages: list[Message]) -> list[Turn]:
    return [
        Turn(role="user", text=m.content)
        if m.role == "user"
        else Turn(
            role="model",
            text=m.content,
            pages=cited_pages(c.get("doc_path") for c in m.citations or () if isinstance(c, dict)),
        )
        for m in messages
        if m.content
    ]


def _related(turn: ChatTurn, outcome: StreamOutcome) -> list[dict[str, Any]] | None:
    """For a refusal, the closest sections the search found (what author insights show)."""
    retrieval = turn.prepared.retrieval
    if outcome.finish_reason not in (ABSTAINED, NOT_COVERED) or retrieval is None:
        return None
    return msgspec.to_builtins(related_sections(retrieval.hits))


class ChatService:
    """Answers questions for the HTTP layer; owns no state beyond the shared runtime."""

    def __init__(
        self,
        pipeline: AnswerPipeline,
        session_maker: Any,
        *,
        connect: Callable[[], AbstractContextManager[Connection]],
        history_messages: int,
        heartbeat_interval: float = 10.0,
    ) -> None:
        self.pipeline = pipeline
        self.session_maker = session_maker
        # The answer's completion writes on a plain connection (the sync side of
        # `AsyncEngine`'s engine, `Engine.connect`): an ORM session around two Core
        # statements cost a fifth of that transaction. It is opened, written, committed
        # and closed in one greenlet (`_connect_write_and_commit`), not in the three plus a
        # close task that `async with AsyncEngine.connect()` takes.
        self.connect = connect
        self.history_messages = history_messages
        # This process's boot id owns the answers it streams (see db/ownership.py).
        self.owner = ownership.ProcessIdentity.current()
        self.heartbeat_interval = heartbeat_interval
        self.save_timeout = SAVE_TIMEOUT  # tests shorten it
        # Whether this process's last database write failed (readiness reports it).
        self.last_write_failed = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        # Completions in flight: strong references, so a cancelled stream cannot drop one.
        self._saves: set[asyncio.Task[str | None]] = set()
        # SQLite has one writer; a waiting writer naps in SQLite's busy handler (up to
        # 100 ms a nap) and misses the lock's release, so under load writes convoy and
        # TTFT p99 reaches seconds. This process's writers queue on an asyncio lock
        # instead and start the moment the previous commit ends; chats' questions and
        # answers that queue meanwhile are committed together (`_write_grouped`).
        # PostgreSQL: no lock, no grouping (its writers do not wait for each other).
        bind = getattr(session_maker, "kw", {}).get("bind")
        self._serialise_writes = bind is not None and bind.dialect.name == "sqlite"
        self._answer_in_one_statement = bind is not None and bind.dialect.name == "postgresql"
        self._write_lock: asyncio.Lock | None = None
        self._write_lock_loop: asyncio.AbstractEventLoop | None = None
        # SQLite: chats' writes waiting for the next group commit (`_write_grouped`).
        self._group: _Group | None = None

    def _writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Hold while a write transaction is open (SQLite only; see `__init__`)."""
        if not self._serialise_writes:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        if self._write_lock is None or self._write_lock_loop is not loop:
            # One lock per event loop: tests may drive one service from several loops.
            self._write_lock, self._write_lock_loop = asyncio.Lock(), loop
        return self._write_lock

    async def _write_grouped(self, statements: list[tuple[Any, Any]]) -> None:
        """SQLite: commit `statements` together with the other chats' writes that are
        waiting meanwhile (a group commit); raises what their own transaction raised.

        With one writer, each commit holds the write lock for a trip to aiosqlite's
        thread and back through a busy event loop: at 100 concurrent chats the questions
        and answers queued behind it for ~200 ms, the bulk of the time to the first
        token. One transaction for everything that queued during the previous commit
        costs that trip once per batch instead of once per write; alone, a write goes
        at once as before. A batch that fails is retried write by write, so one write's
        error (a constraint, a bad value) is its own chat's only.
        """
        loop = asyncio.get_running_loop()
        group = self._group
        if group is None or group.loop is not loop:
            # One group per event loop, like the lock: tests may drive one service from
            # several loops.
            group = self._group = _Group(loop)
        if group.busy:
            committed: asyncio.Future[None] = loop.create_future()
            group.waiting.append((statements, committed))
            await committed
            return
        # Nothing in flight: this write goes at once, in this task (no committer task and
        # future for the usual write that finds nobody ahead of it); writes that queue
        # meanwhile go together after it.
        group.busy = True
        try:
            async with self._writing():
                await self._commit(statements)
        finally:
            if group.waiting:
                group.committer = loop.create_task(self._commit_grouped(group))
            else:
                group.busy = False

    async def _commit_grouped(self, group: _Group) -> None:
        batch: list[_GroupedWrite] = []
        try:
            while group.waiting:
                batch, group.waiting = group.waiting, []
                async with self._writing():
                    await self._commit_batch(batch)
        finally:
            group.busy = False
            # Cancelled (the loop is closing): nobody may wait for a commit forever, and
            # the writes nobody waits for any more are not made later.
            stranded, group.waiting = [*batch, *group.waiting], []
            for _statements, committed in stranded:
                if not committed.done():
                    committed.cancel()

    async def _commit(self, statements: list[tuple[Any, Any]]) -> None:
        """`statements` in one transaction on a connection of their own."""
        await greenlet_spawn(_connect_write_and_commit, self.connect, statements)

    async def _commit_batch(self, batch: list[_GroupedWrite]) -> None:
        try:
            await self._commit([statement for statements, _ in batch for statement in statements])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            for statements, committed in batch:  # whose write failed: each alone
                try:
                    await self._commit(statements)
                except Exception as alone:
                    _settle(committed, alone)
                else:
                    _settle(committed, None)
            return
        for _statements, committed in batch:
            _settle(committed, None)

    @property
    def dead_after(self) -> float:
        """A process whose heartbeat is older than this is dead (three missed beats)."""
        return 3 * self.heartbeat_interval

    async def start(self) -> None:
        """Register this process, repair answers left by dead ones, start the heartbeat."""
        await self._keep_ownership()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())

    async def stop(self) -> None:
        """Finish pending completions, mark this process's unfinished answers, unregister."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        if self._saves:
            await asyncio.wait(self._saves, timeout=self.save_timeout)
        try:
            async with (
                asyncio.timeout(HEARTBEAT_TIMEOUT),
                self._writing(),
                self.session_maker() as session,
            ):
                left = await ownership.release(session, self.owner)
        except DB_ERRORS as exc:
            logger.warning(
                "could not release answers at shutdown", extra={"error": type(exc).__name__}
            )
            return
        if left:
            logger.warning("answers left unfinished at shutdown", extra={"count": left})

    async def _keep_ownership(self) -> None:
        try:
            # Bounded: a database that hangs must not hold up startup or the loop.
            async with (
                asyncio.timeout(HEARTBEAT_TIMEOUT),
                self._writing(),
                self.session_maker() as session,
            ):
                await ownership.heartbeat(session, self.owner)
                repaired = await ownership.interrupt_orphans(
                    session, self.owner, dead_after=self.dead_after
                )
        except DB_ERRORS as exc:
            self.last_write_failed = True
            logger.warning("stream heartbeat failed", extra={"error": type(exc).__name__})
            return
        self.last_write_failed = False
        if repaired:
            metrics.CHAT_OUTCOMES.labels("interrupted").inc(repaired)
            logger.warning(
                "marked answers of exited processes interrupted", extra={"count": repaired}
            )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self._keep_ownership()

    async def open_session(
        self, data: ChatRequest, identity: Identity, db: AsyncSession
    ) -> OpenedSession:
        """The session to continue (None: a new one) and its history; 404 if not the caller's.

        Runs before the rate limiter counts the request: a refused request costs nothing.
        """
        try:
            chat, history = await self._load_session(data, identity, db)
            if db.in_transaction():
                # Give the connection back while retrieval waits on the network (query
                # embedding, vector search): held there, 200 streams starved the pool.
                await db.commit()
        except DB_ERRORS as exc:
            raise ApiError(503, "service_unavailable", "the database is unavailable") from exc
        return OpenedSession(chat, history)

    async def begin(
        self,
        data: ChatRequest,
        identity: Identity,
        db: AsyncSession,
        opened: OpenedSession | None = None,
    ) -> ChatTurn:
        """Check, retrieve and save the question; raises ApiError for 404/503."""
        started = time.perf_counter()
        chat, history = opened or await self.open_session(data, identity, db)
        filters, top_k = _filters(data)
        try:
            prepared = await self.pipeline.prepare(
                data.message,
                mode=data.mode,
                selected_text=data.selected_text,
                source_doc_path=data.source_doc_path,
                source_section=data.source_section,
                history=history,
                filters=filters,
                top_k=top_k,
            )
        except VectorStoreUnavailableError as exc:
            logger.warning("retrieval failed", extra={"error": str(exc)})
            raise ApiError(503, "retrieval_failed", "the book's index is unavailable") from exc
        if prepared.retrieval is not None:
            metrics.RETRIEVAL_LATENCY.observe(prepared.retrieval.elapsed_ms / 1000)
            if not prepared.retrieval.relevant:
                metrics.ZERO_HIT_RETRIEVALS.inc()
        try:
            saved = await self._save_question(data, identity, chat, db)
        except DB_ERRORS as exc:
            self.last_write_failed = True
            raise ApiError(503, "service_unavailable", "the database is unavailable") from exc
        self.last_write_failed = False
        token, session_id, answer_id = saved
        return ChatTurn(
            request=data,
            session_id=session_id,
            message_id=answer_id,
            prepared=prepared,
            started=started,
            token=token,
            retrieved_chunks=len(prepared.citations),
        )

    async def _load_session(
        self, data: ChatRequest, identity: Identity, db: AsyncSession
    ) -> tuple[ChatSession | None, list[Turn]]:
        if data.session_id is None:
            return None, []
        sessions = ChatSessionService(session=db)
        if identity.user is not None:
            chat = await sessions.get_owned(data.session_id, identity.user.id)
        elif identity.client_binding is not None:
            # Tokenless continuation: only a session created tokenless from this client IP.
            chat = await sessions.get_bound(data.session_id, identity.client_binding)
        else:
            chat = None
        if chat is None:
            raise ApiError(404, "session_not_found", "no such session")
        recent = await MessageService(session=db).recent_history(chat.id, self.history_messages)
        return chat, _history(recent)

    async def _save_question(
        self,
        data: ChatRequest,
        identity: Identity,
        chat: ChatSession | None,
        db: AsyncSession,
    ) -> tuple[str | None, UUID, UUID]:
        """The question and its answer's row (`streaming`, owned by this process).

        One transaction, no read-backs: ids and defaults are made here (every column of
        the new rows is given, so that on SQLite they are held without SQLAlchemy's
        execution path: `bookchat.db.config.HeldWrites`). SQLAlchemy Core
        inserts rather than ORM objects: the unit of work's flush cost more CPU than the
        statements themselves, on every chat's critical path.
        """
        token = None
        if chat is None:
            user_id = identity.user.id if identity.user is not None else None
            if user_id is None:
                token = new_token()
                user_id = uuid7()
            session_id = uuid7()
        else:
            session_id = chat.id
        asked_at = utcnow()
        answer_id = uuid7()
        question = {
            "id": uuid7(),
            "session_id": session_id,
            "role": "user",
            "content": data.message,
            "retrieval_mode": data.mode,
            "selected_text": data.selected_text,
            "source_doc_path": data.source_doc_path,
            "citations": [],
            "chunk_count": 0,
            "status": "complete",
            "owner_id": None,
            "created_at": asked_at,
        }
        answer = {
            **question,
            "id": answer_id,
            "role": "assistant",
            "content": "",
            "selected_text": None,
            "source_doc_path": None,
            "status": "streaming",
            "owner_id": self.owner.id,
            # After its question in the history's (created_at, id) order.
            "created_at": asked_at + timedelta(microseconds=1),
        }
        statements: list[tuple[Any, Any]] = []
        if token is not None:
            user = {
                "id": user_id,
                "token_hash": hash_token(token),
                "tier": "token",
                "created_at": asked_at,
                "last_seen_at": asked_at,
            }
            statements.append((INSERT_USER, user))
        if chat is None:
            new_session = {
                "id": session_id,
                "user_id": user_id,
                "title": session_title(data.message),
                "status": "active",
                "created_at": asked_at,
                "last_activity": asked_at,
                # Created tokenless: may be continued tokenless from this client IP.
                "client_binding": identity.client_binding if identity.user is None else None,
            }
            statements.append((INSERT_SESSION, new_session))
        else:
            statements.append(
                (TOUCH_SESSION, {"touched_session_id": session_id, "touched_at": asked_at})
            )
        statements.append((INSERT_MESSAGES, [question, answer]))
        # Commit now: the stream runs after the request's session is closed.
        if self._serialise_writes and not db.in_transaction():
            await self._write_grouped(statements)
        else:
            async with self._writing():
                await db.run_sync(_write_session_and_commit, statements)
        return token, session_id, answer_id

    async def run(self, turn: ChatTurn) -> AsyncGenerator[Event, None]:
        """The events of one answer; completes its row before `done`, or when cancelled."""
        outcome = StreamOutcome()
        warning: str | None = None
        metrics.ACTIVE_STREAMS.inc()
        try:
            yield (
                "session",
                SessionEvent(
                    session_id=turn.session_id, message_id=turn.message_id, token=turn.token
                ),
            )
            async for event in turn.prepared.stream():
                if isinstance(event, AnswerToken):
                    if outcome.ttft_ms is None:
                        outcome.ttft_ms = int((time.perf_counter() - turn.started) * 1000)
                        metrics.TIME_TO_FIRST_TOKEN.observe(outcome.ttft_ms / 1000)
                    outcome.text_parts.append(event.text)
                    yield "token", TokenEvent(content=event.text)
                elif isinstance(event, Retrieved):
                    yield "citations", CitationsEvent(citations=event.citations)
                elif isinstance(event, AnswerDone):
                    outcome.citations = event.citations
                    outcome.usage = Usage(
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                    )
                    outcome.finish_reason = event.finish_reason
                    outcome.grounded = event.grounded
                    outcome.model = event.model or None
        except GenerationError as exc:
            outcome.status, outcome.error = "failed", exc
            metrics.LLM_ERRORS.labels(exc.code).inc()
        except (asyncio.CancelledError, GeneratorExit):
            outcome.status = "interrupted"  # the client left: keep what was said
            raise
        except BaseException:
            outcome.status = "failed"
            raise
        finally:
            metrics.ACTIVE_STREAMS.dec()
            # Runs on every path, the disconnect and an error included; see `_complete`.
            warning = await self._complete(turn, outcome, finish=outcome.status != "interrupted")
        if outcome.error is not None:
            yield (
                "error",
                ErrorEvent(
                    code=outcome.error.code,
                    message=outcome.error.message,
                    retryable=outcome.error.retryable,
                ),
            )
            return
        yield (
            "done",
            DoneEvent(
                message_id=turn.message_id,
                session_id=turn.session_id,
                citations=outcome.citations,
                usage=outcome.usage,
                finish_reason=outcome.finish_reason,
                grounded=outcome.grounded,
                persistence_warning=warning,
            ),
        )

    async def answer(self, turn: ChatTurn) -> ChatResponse:
        """JSON mode: the same events, collected into one response."""
        parts: list[str] = []
        done: DoneEvent | None = None
        async for _name, payload in self.run(turn):
            if isinstance(payload, TokenEvent):
                parts.append(payload.content)
            elif isinstance(payload, DoneEvent):
                done = payload
            elif isinstance(payload, ErrorEvent):
                status = 504 if payload.code == "generation_timeout" else 502
                # The question, session and (new) user exist: say where to find them.
                raise ApiError(status, payload.code, payload.message, located=turn.reference())
        assert done is not None
        return ChatResponse(
            message_id=turn.message_id,
            session_id=turn.session_id,
            answer="".join(parts),
            citations=done.citations,
            usage=done.usage,
            grounded=done.grounded,
            finish_reason=done.finish_reason,
            token=turn.token,
            persistence_warning=done.persistence_warning,
        )

    async def _complete(
        self, turn: ChatTurn, outcome: StreamOutcome, *, finish: bool
    ) -> str | None:
        """Complete the answer's row in a task a cancellation cannot stop.

        If the stream is cancelled while waiting (the client left during the save), the
        save goes on: the task is kept in `_saves` and `stop()` waits for it. `finish`:
        the answer was fully generated, so a cancellation now (the reader's Stop, a
        moment too late) has nothing left to stop: the stream waits for the save and ends
        with `done` as stored, instead of readers seeing "interrupted" for an answer the
        database holds complete.
        """
        task = asyncio.create_task(self._save_answer(turn, outcome))
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not finish or current is None or current.cancelling() > 1:
                raise  # interrupted anyway, or cancelled twice (shutting down): stop here
            current.uncancel()
            return await task

    async def _save_answer(self, turn: ChatTurn, outcome: StreamOutcome) -> str | None:
        """Complete the assistant row, retrying with backoff within `save_timeout`.

        Returns a warning instead of raising when every attempt failed; the row then stays
        `streaming` until this process exits and a successor marks it `interrupted`.
        """
        label = outcome.status
        if label == "complete" and not outcome.grounded:
            label = "abstained"
        metrics.answer_tokens("prompt").inc(outcome.usage.prompt_tokens)
        metrics.answer_tokens("completion").inc(outcome.usage.completion_tokens)
        values = {
            "content": "".join(outcome.text_parts),
            "citations": msgspec.to_builtins(outcome.citations),
            "chunk_count": turn.retrieved_chunks,
            "status": outcome.status,
            "owner_id": None,
            "error_code": outcome.error.code if outcome.error else None,
            "model": outcome.model,
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "ttft_ms": outcome.ttft_ms,
            "latency_ms": int((time.perf_counter() - turn.started) * 1000),
            "finish_reason": outcome.finish_reason if outcome.status == "complete" else None,
            "related": _related(turn, outcome),
        }
        attempts = 1
        try:
            # asyncio's own timeout: anyio's cancel scope cost 50 k instructions a chat.
            async with asyncio.timeout(self.save_timeout):
                # The first attempt without the retry machinery (it nearly always succeeds,
                # and tenacity's per-call setup cost more than the statements).
                failed: BaseException | None = None
                try:
                    await self._write_answer(turn, values)
                except DB_ERRORS as exc:
                    failed = exc
                if failed is not None:
                    # tenacity: backoff with jitter between attempts, starting from the
                    # first one's failure; the outer limit bounds an attempt that hangs
                    # (tenacity only stops between attempts).
                    async for attempt in AsyncRetrying(
                        retry=retry_if_exception_type(DB_ERRORS),
                        wait=wait_random_exponential(
                            multiplier=SAVE_RETRY_WAIT[0], max=SAVE_RETRY_WAIT[1]
                        ),
                        stop=stop_after_delay(self.save_timeout),
                        reraise=True,
                    ):
                        with attempt:
                            if failed is not None:
                                first, failed = failed, None
                                raise first  # attempt 1, made above
                            attempts += 1
                            await self._write_answer(turn, values)
        except (*DB_ERRORS, TimeoutError) as exc:
            self.last_write_failed = True
            metrics.PERSISTENCE_FAILURES.inc()
            logger.error(
                "could not save answer",
                extra={
                    "message_id": str(turn.message_id),
                    "error": type(exc).__name__,
                    "attempts": attempts,
                },
            )
            return PERSISTENCE_WARNING
        if attempts > 1:
            logger.warning(
                "answer saved after retries",
                extra={"message_id": str(turn.message_id), "attempts": attempts},
            )
        self.last_write_failed = False
        # Counted once the row says so: `chat_outcomes` equals the stored rows.
        metrics.chat_outcome(label).inc()
        return None

    async def _write_answer(self, turn: ChatTurn, values: dict[str, Any]) -> None:
        statements = [
            (COMPLETE_ANSWER, {"completed_message_id": turn.message_id, **values}),
            (TOUCH_SESSION, {"touched_session_id": turn.session_id, "touched_at": utcnow()}),
        ]
        if self._answer_in_one_statement:
            # BEGIN, two statements (a parse and an execute each) and COMMIT were six
            # round trips; one statement in autocommit is one.
            statement = [one_statement(statements)]
            await greenlet_spawn(_connect_write_and_commit, self.connect, statement, AUTOCOMMIT)
            return
        if self._serialise_writes:
            await self._write_grouped(statements)
            return
        await self._commit(statements)


# A chat's statements, and the future its chat waits on until they are committed.
_GroupedWrite = tuple[list[tuple[Any, Any]], asyncio.Future[None]]


@dataclass(eq=False)
class _Group:
    """An event loop's writes waiting for the next group commit, and its committer."""

    loop: asyncio.AbstractEventLoop
    waiting: list[_GroupedWrite] = field(default_factory=list)
    busy: bool = False  # a write or a group of them is being committed
    committer: asyncio.Task[None] | None = None  # strong reference to the running one


def _settle(committed: asyncio.Future[None], error: BaseException | None) -> None:
    """Tell a grouped write's chat how its commit went (unless it stopped waiting)."""
    if committed.done():
        return
    if error is None:
        committed.set_result(None)
    else:
        committed.set_exception(error)


AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def _connect_write_and_commit(
    connect: Callable[[], AbstractContextManager[Connection]],
    statements: list[tuple[Any, Any]],
    options: dict[str, Any] | None = None,
) -> None:
    """`_write_and_commit` on a connection of its own, closed when done (in a greenlet of
    SQLAlchemy's async adaptation: its waits on the driver are awaits of the caller);
    `options`: the connection's execution options (`AUTOCOMMIT` for one statement)."""
    with connect() as connection:
        if options:
            connection.execution_options(**options)
        _write_and_commit(connection, statements)


def _write_session_and_commit(session: Session, statements: list[tuple[Any, Any]]) -> None:
    """`_write_and_commit` for the request's session: on a plain connection of its engine
    when the session holds no transaction (a new reader's chat: nothing read), else on
    the session's connection, committed through the session.

    The ORM transaction around the statements (autobegin, commit events, snapshots, close)
    cost more than the plain connection's checkout, begin and commit.
    """
    bind = session.get_bind()
    one = bind.dialect.name == "postgresql"
    if one:
        statements = [one_statement(statements)]
    if isinstance(bind, Engine) and not session.in_transaction():
        _connect_write_and_commit(bind.connect, statements, AUTOCOMMIT if one else None)
        return
    _write(session.connection(), statements)
    session.commit()


_ONE_STATEMENTS: dict[tuple[Any, ...], tuple[Any, list[dict[str, str]]]] = {}


def one_statement(statements: list[tuple[Any, Any]]) -> tuple[Any, dict[str, Any]]:
    """PostgreSQL: a transaction's writes as one statement, every one but the last a CTE of
    the last (a new reader's question: the user's and the session's inserts and the
    question's row around its answer's row; an answer's completion and its session's
    touch), to be run in autocommit: BEGIN, a parse and an execute per statement (prepared
    statements are off for PgBouncer) and COMMIT were eight round trips.

    An insert of several rows becomes one insert per row (a multi-row VALUES is compiled
    anew on every execution: SQLAlchemy does not cache it). A parameter that is not one of
    its statement's own bound parameters names a column to set (an insert's values, an
    update's SET clause): it gets an explicit VALUES or SET entry with a name of its own
    per write, so that no parameter sets a same-named column of another table (`status`,
    for one). Built once per shape.
    """
    writes: list[tuple[Any, dict[str, Any]]] = []
    for statement, rows in statements:
        if isinstance(rows, list):
            writes.extend((statement, row) for row in rows)
        else:
            writes.append((statement, rows))
    shape = tuple((id(statement), tuple(row)) for statement, row in writes)
    built = _ONE_STATEMENTS.get(shape)
    if built is None:
        parts, renames = [], []
        for n, (statement, row) in enumerate(writes):
            own = {b.key for b in visitors.iterate(statement) if isinstance(b, BindParameter)}
            renamed = {key: f"w{n}_{key}" for key in row if key not in own}
            if renamed:
                statement = statement.values(
                    {key: bindparam(name) for key, name in renamed.items()}
                )
            parts.append(statement)
            renames.append(renamed)
        *ctes, main = parts
        built = _ONE_STATEMENTS[shape] = (
            main.add_cte(*(cte.cte(f"write_{n}") for n, cte in enumerate(ctes))),
            renames,
        )
    statement, renames = built
    parameters: dict[str, Any] = {}
    for (_, row), renamed in zip(writes, renames, strict=True):
        parameters.update({renamed.get(key, key): value for key, value in row.items()})
    return statement, parameters


def _write_and_commit(connection: Connection, statements: list[tuple[Any, Any]]) -> None:
    """Core statements on `connection`, then the commit, in one greenlet.

    SQLAlchemy Core rather than ORM objects: the unit of work's flush cost more CPU than
    the statements themselves, on every chat's critical path. One `run_sync` rather than
    an awaited call per statement: each of those is a greenlet of SQLAlchemy's async
    adaptation, made and switched into and out of. On SQLite the writes are held for the
    commit and go to aiosqlite's thread with it, in one trip (`hold_sqlite_writes`).
    """
    _write(connection, statements)
    connection.commit()


def _write(connection: Connection, statements: list[tuple[Any, Any]]) -> None:
    held = hold_sqlite_writes(connection)
    for statement, parameters in statements:
        if held is None or not held.add(statement, parameters):
            connection.execute(statement, parameters)
