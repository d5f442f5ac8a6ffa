"""The chat flow: decide everything that can fail before streaming, then stream and persist.

`ChatService.begin()` runs inside the request: it checks the session, retrieves, and saves
the user message, so failures become HTTP statuses (404, 503). `ChatService.run()` then
produces the events of BRIEF §6 in a task of its own and saves the answer through its own
database session (the request's session is already closed once the response starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import anyio
import msgspec
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from bookchat import metrics
from bookchat.answer.grounding import Citation
from bookchat.answer.pipeline import (
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
from bookchat.db.models import ChatSession, Message, User, utcnow
from bookchat.db.services import (
    ChatSessionService,
    MessageService,
    new_user_with_token,
    session_title,
)
from bookchat.errors import ApiError
from bookchat.llm.base import GenerationError, Turn
from bookchat.search.types import SearchFilters, VectorStoreUnavailableError

logger = logging.getLogger("bookchat.chat")

DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError, ConnectionError)
SAVE_TIMEOUT = 30.0  # generous: under overload the save queues for a pooled connection
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
        Turn(role="user" if m.role == "user" else "model", text=m.content)
        for m in messages
        if m.content
    ]


class ChatService:
    """Answers questions for the HTTP layer; owns no state beyond the shared runtime."""

    def __init__(
        self,
        pipeline: AnswerPipeline,
        session_maker: Any,
        *,
        history_messages: int,
    ) -> None:
        self.pipeline = pipeline
        self.session_maker = session_maker
        self.history_messages = history_messages
        # SQLite has one writer; a waiting writer naps in SQLite's busy handler (up to
        # 100 ms a nap) and misses the lock's release, so under load writes convoy and
        # TTFT p99 reaches seconds. This process's writers queue on an asyncio lock
        # instead and start the moment the previous commit ends. PostgreSQL: no lock.
        bind = getattr(session_maker, "kw", {}).get("bind")
        self._serialise_writes = bind is not None and bind.dialect.name == "sqlite"
        self._write_lock: asyncio.Lock | None = None
        self._write_lock_loop: asyncio.AbstractEventLoop | None = None

    def _writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Hold while a write transaction is open (SQLite only; see `__init__`)."""
        if not self._serialise_writes:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        if self._write_lock is None or self._write_lock_loop is not loop:
            # One lock per event loop: tests may drive one service from several loops.
            self._write_lock, self._write_lock_loop = asyncio.Lock(), loop
        return self._write_lock

    async def begin(self, data: ChatRequest, identity: Identity, db: AsyncSession) -> ChatTurn:
        """Check, retrieve and save the question; raises ApiError for 404/503."""
        started = time.perf_counter()
        try:
            chat, history = await self._load_session(data, identity, db)
            if db.in_transaction():
                # Give the connection back while retrieval waits on the network (query
                # embedding, vector search): held there, 200 streams starved the pool.
                await db.commit()
        except DB_ERRORS as exc:
            raise ApiError(503, "service_unavailable", "the database is unavailable") from exc
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
            async with self._writing():
                token, chat = await self._save_question(data, identity, chat, db, prepared)
        except DB_ERRORS as exc:
            raise ApiError(503, "service_unavailable", "the database is unavailable") from exc
        return ChatTurn(
            request=data,
            session_id=chat.id,
            message_id=uuid7(),
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
        if identity.user is None:
            raise ApiError(404, "session_not_found", "no such session")
        chat = await ChatSessionService(session=db).get_owned(data.session_id, identity.user.id)
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
        prepared: PreparedAnswer,
    ) -> tuple[str | None, ChatSession]:
        # One transaction, no read-backs: ids and defaults are made here, so the new rows
        # need no flush-and-refresh round trips (they are on every chat's critical path).
        token = None
        user: User | None = identity.user
        rows: list[object] = []
        if user is None:
            user, token = new_user_with_token()
            rows.append(user)
        if chat is None:
            chat = ChatSession(id=uuid7(), user_id=user.id, title=session_title(data.message))
            rows.append(chat)
        else:
            chat.last_activity = utcnow()
        rows.append(
            Message(
                id=uuid7(),
                session_id=chat.id,
                role="user",
                content=data.message,
                retrieval_mode=data.mode,
                selected_text=data.selected_text,
                source_doc_path=data.source_doc_path,
                citations=[],
                chunk_count=0,
                status="complete",
            )
        )
        db.add_all(rows)
        # Commit now: the stream runs after the request's session is closed.
        await db.commit()
        return token, chat

    async def run(self, turn: ChatTurn) -> AsyncIterator[Event]:
        """The events of one answer; persists it before `done` (or on cancellation)."""
        outcome = StreamOutcome()
        yield (
            "session",
            SessionEvent(session_id=turn.session_id, message_id=turn.message_id, token=turn.token),
        )
        metrics.ACTIVE_STREAMS.inc()
        try:
            try:
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
                outcome.status = "interrupted"
                # Shielded: the client is gone and our scope is cancelled, but the partial
                # answer must still be saved.
                with anyio.CancelScope(shield=True):
                    await self._save_answer(turn, outcome)
                raise
            warning = await self._save_answer(turn, outcome)
        finally:
            metrics.ACTIVE_STREAMS.dec()
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
                raise ApiError(status, payload.code, payload.message)
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

    async def _save_answer(self, turn: ChatTurn, outcome: StreamOutcome) -> str | None:
        """Store the assistant message; returns a warning instead of raising if the DB fails."""
        label = outcome.status
        if label == "complete" and not outcome.grounded:
            label = "abstained"
        metrics.CHAT_OUTCOMES.labels(label).inc()
        metrics.ANSWER_TOKENS.labels("prompt").inc(outcome.usage.prompt_tokens)
        metrics.ANSWER_TOKENS.labels("completion").inc(outcome.usage.completion_tokens)
        message = Message(
            id=turn.message_id,
            session_id=turn.session_id,
            role="assistant",
            content="".join(outcome.text_parts),
            retrieval_mode=turn.request.mode,
            citations=msgspec.to_builtins(outcome.citations),
            chunk_count=turn.retrieved_chunks,
            status=outcome.status,
            error_code=outcome.error.code if outcome.error else None,
            model=outcome.model,
            prompt_tokens=outcome.usage.prompt_tokens,
            completion_tokens=outcome.usage.completion_tokens,
            ttft_ms=outcome.ttft_ms,
            latency_ms=int((time.perf_counter() - turn.started) * 1000),
        )
        try:
            with anyio.fail_after(SAVE_TIMEOUT):
                async with self._writing(), self.session_maker() as session:
                    session.add(message)
                    await session.execute(
                        update(ChatSession)
                        .where(ChatSession.id == turn.session_id)
                        .values(last_activity=utcnow())
                    )
                    await session.commit()
        except (*DB_ERRORS, TimeoutError) as exc:
            metrics.PERSISTENCE_FAILURES.inc()
            logger.error(
                "could not save answer",
                extra={"message_id": str(turn.message_id), "error": type(exc).__name__},
            )
            return PERSISTENCE_WARNING
        return None
