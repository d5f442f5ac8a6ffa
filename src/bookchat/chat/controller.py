"""HTTP for the chat API: sessions, messages, feedback and the SSE chat stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

import anyio
import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from bookchat import metrics
from bookchat.answer.grounding import Citation
from bookchat.chat.identity import Identity
from bookchat.chat.openapi import TOKEN_OPTIONAL, TOKEN_REQUIRED, ChatOperation
from bookchat.chat.ratelimit import Window
from bookchat.chat.schemas import (
    ChatRequest,
    ErrorEnvelope,
    ErrorEvent,
    FeedbackOut,
    FeedbackRequest,
    MessageList,
    MessageOut,
    SessionList,
    SessionSummary,
)
from bookchat.chat.service import DB_ERRORS, ChatService, ChatTurn
from bookchat.db.models import ChatSession, Message, User
from bookchat.db.services import ChatSessionService, MessageService
from bookchat.errors import ApiError
from bookchat.settings import Settings

logger = logging.getLogger("bookchat.chat")

ERRORS = {
    400: ResponseSpec(ErrorEnvelope, description="validation_error"),
    401: ResponseSpec(ErrorEnvelope, description="unauthorized"),
    404: ResponseSpec(ErrorEnvelope, description="session_not_found / message_not_found"),
    503: ResponseSpec(ErrorEnvelope, description="service_unavailable (database down)"),
}
JSON_BODY_ERRORS = {
    413: ResponseSpec(ErrorEnvelope, description="payload_too_large (over MAX_BODY_BYTES)"),
    415: ResponseSpec(ErrorEnvelope, description="unsupported_media_type (not application/json)"),
}


def message_out(message: Message) -> MessageOut:
    return MessageOut(
        id=message.id,
        role=message.role,  # type: ignore[arg-type]
        content=message.content,
        retrieval_mode=message.retrieval_mode,  # type: ignore[arg-type]
        citations=msgspec.convert(message.citations or [], list[Citation]),
        status=message.status,  # type: ignore[arg-type]
        created_at=message.created_at,
    )


async def require_user(request: Request[Any, Any, Any], state: State, db: AsyncSession) -> User:
    """The token's (or signed-in reader's) user; 401 without a valid bearer: the history
    endpoints are per user, and tokenless readers have no history to list."""
    identity: Identity = await state.runtime.identities.resolve(request, db, require_user=True)
    assert identity.user is not None
    return identity.user


async def owned_session(
    request: Request[Any, Any, Any], state: State, db: AsyncSession, session_id: UUID
) -> ChatSession:
    """The caller's active session; 404 for anyone else's, so ids cannot be probed."""
    user = await require_user(request, state, db)
    chat = await ChatSessionService(session=db).get_owned(session_id, user.id)
    if chat is None:
        raise ApiError(404, "session_not_found", "no such session")
    return chat


async def commit_or_503(db: AsyncSession) -> None:
    """Commit before answering, so a failed write is a 503 rather than a lost change."""
    try:
        await db.commit()
    except DB_ERRORS as exc:
        raise ApiError(503, "service_unavailable", "the database is unavailable") from exc


class SessionsController(Controller):
    path = "/api/v1"
    tags = ["sessions"]
    security = TOKEN_REQUIRED

    @get("/sessions", summary="My sessions, newest activity first", responses=ERRORS)
    async def list_sessions(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> SessionList:
        user = await require_user(request, state, db_session)
        rows, total = await ChatSessionService(session=db_session).list_for_user(
            user.id, limit=limit, offset=offset
        )
        return SessionList(sessions=[SessionSummary(**row) for row in rows], total=total)

    @get(
        "/sessions/{session_id:uuid}/messages",
        summary="A session's messages, oldest first",
        responses=ERRORS,
    )
    async def list_messages(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        session_id: FromPath[UUID],
    ) -> MessageList:
        chat = await owned_session(request, state, db_session, session_id)
        messages = await MessageService(session=db_session).list_for_session(chat.id)
        return MessageList(session_id=chat.id, messages=[message_out(m) for m in messages])

    @delete(
        "/sessions/{session_id:uuid}", summary="Archive a session (soft delete)", responses=ERRORS
    )
    async def archive_session(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        session_id: FromPath[UUID],
    ) -> None:
        chat = await owned_session(request, state, db_session, session_id)
        chat.status = "archived"
        await commit_or_503(db_session)

    @post(
        "/messages/{message_id:uuid}/feedback",
        summary="Rate an answer",
        status_code=200,
        responses={**ERRORS, **JSON_BODY_ERRORS},
    )
    async def feedback(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        message_id: FromPath[UUID],
        data: JSONBody[FeedbackRequest],
    ) -> FeedbackOut:
        user = await require_user(request, state, db_session)
        message = await MessageService(session=db_session).get_owned(message_id, user.id)
        if message is None or message.role != "assistant":
            raise ApiError(404, "message_not_found", "no such answer")
        message.feedback_rating = data.rating
        message.feedback_comment = data.comment
        await commit_or_503(db_session)
        return FeedbackOut(message_id=message.id, rating=data.rating, comment=data.comment)


STREAM_BUFFER_EVENTS = 32  # events queued for a client before the answer stops pulling


# Litestar's `ServerSentEventMessage.encode` (StringIO, two regexes per event) and its
# iterator's thread hop per response cost more than the rest of a token's trip, so the
# events are encoded here. msgspec's JSON never holds a raw newline: one `data:` line.
SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
PING = b": ping\r\n\r\n"


def sse_event(name: str, event_id: int, payload: msgspec.Struct) -> bytes:
    """One SSE event, byte for byte what Litestar's `ServerSentEventMessage` would send."""
    return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
        event_id,
        name.encode(),
        msgspec.json.encode(payload),
    )


async def sse_messages(
    service: ChatService, turn: ChatTurn, ping_interval: float, write_timeout: float
) -> AsyncIterator[bytes]:
    """Encode the answer's events as SSE, with a comment ping after `ping_interval` idle.

    The answer runs in a task feeding a bounded queue, so that a ping can go out while the
    answer waits, without cancelling it; one timer per stream watches for idleness
    (re-armed at most once per interval) instead of a timeout around every event. The
    bound is the backpressure: a client that does not drain its socket blocks granian's
    `send` (granian ≥ 2.8 bounds its body channel), the queue fills, and the answer stops
    pulling from the provider. If the queue stays full for `write_timeout`, the client is
    treated as gone: the answer is saved `interrupted` and the stuck send is cancelled,
    which ends the response.
    """
    queue: asyncio.Queue[tuple[str, msgspec.Struct] | bytes | None] = asyncio.Queue(
        STREAM_BUFFER_EVENTS
    )
    writer = asyncio.current_task()  # the task that sends this response's body
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    timer: asyncio.TimerHandle | None = None

    def ping_if_idle() -> None:
        nonlocal timer
        now = loop.time()
        if now - last_sent < ping_interval:
            timer = loop.call_at(last_sent + ping_interval, ping_if_idle)
            return
        if not queue.full():  # a full queue is not idle: its events are on their way
            queue.put_nowait(PING)
        timer = loop.call_at(now + ping_interval, ping_if_idle)

    async def put(item: tuple[str, msgspec.Struct] | None) -> None:
        if queue.full():  # only a put that must wait runs under the write timeout
            async with asyncio.timeout(write_timeout):
                await queue.put(item)
        else:
            queue.put_nowait(item)

    async def produce() -> None:
        answer = service.run(turn)
        try:
            async for event in answer:
                await put(event)
        except TimeoutError:
            metrics.SLOW_READERS.inc()
            logger.warning("client stopped reading; stream ended", extra={"timeout": write_timeout})
            await answer.aclose()  # interrupted, saved
            if writer is not None:
                writer.cancel()  # unblock the send that waits on the client
            return
        except Exception:
            logger.exception("chat stream failed")
            await queue.put(
                (
                    "error",
                    ErrorEvent(code="internal_error", message="internal error", retryable=True),
                )
            )
        await queue.put(None)

    task = asyncio.create_task(produce())
    timer = loop.call_at(last_sent + ping_interval, ping_if_idle)
    event_id = 0
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            last_sent = loop.time()
            if isinstance(item, bytes):
                yield item
                continue
            name, payload = item
            event_id += 1
            yield sse_event(name, event_id, payload)
    finally:
        if timer is not None:
            timer.cancel()
        if not task.done():
            task.cancel()  # the client left: stop generating, save what was said
        with anyio.CancelScope(shield=True):
            await asyncio.gather(task, return_exceptions=True)


def _windows(identity: Identity, settings: Settings) -> list[Window]:
    if identity.tier == "api_key":
        return [Window(identity.subject, settings.rate_limit_api_key)]
    if identity.tier == "token":
        return [
            Window(identity.subject, settings.rate_limit_token),
            Window(f"tokens-ip:{identity.client_ip}", settings.rate_limit_ip),
        ]
    return [Window(identity.subject, settings.rate_limit_anonymous)]


SSE_DESCRIPTION = """Server-Sent Events (default) or, with `Accept: application/json`, one
`ChatResponse`. Events, each with an `id`, in order:

- `session` → `SessionEvent` (`token` only when a new anonymous user was created)
- `citations` → `CitationsEvent` (the numbered sources retrieved)
- `token` → `TokenEvent` (repeated)
- `done` → `DoneEvent` (citations actually cited, usage, `grounded`, `persistence_warning?`)
- `error` → `ErrorEvent` (last event on failure: `generation_failed`, `generation_timeout`,
  `generation_blocked`, `rate_limited`, `internal_error`)

Comment lines (`: ping`) keep idle connections open every 15 s. Everything that can be
decided before streaming is an HTTP status with the error envelope instead: 400, 404,
429 (with `Retry-After`), 503. Refused requests (400, 404) do not count against the rate
limit.

Identity: a bookchat token, an API key or a verified JWT of the site's identity provider
as `Authorization: Bearer …`; any other bearer (unknown, expired, malformed) is treated
as anonymous here, never a 401. Without a token, a `session_id` created without a token
may be continued from the same client IP (`TOKENLESS_SESSIONS`). `source_section` and
`source_doc_path` longer than 300 / 512 characters are cut at a word boundary."""


class ChatController(Controller):
    path = "/api/v1"
    tags = ["chat"]
    security = TOKEN_OPTIONAL

    @post(
        "/chat",
        summary="Ask the book a question (SSE stream or JSON)",
        description=SSE_DESCRIPTION,
        status_code=200,
        responses={
            # No 401: a bearer bookchat cannot verify is answered as anonymous.
            **{status: spec for status, spec in ERRORS.items() if status != 401},
            **JSON_BODY_ERRORS,
            429: ResponseSpec(ErrorEnvelope, description="rate_limit_exceeded (Retry-After)"),
            503: ResponseSpec(ErrorEnvelope, description="retrieval_failed / service_unavailable"),
        },
        response_description="text/event-stream of SessionEvent, CitationsEvent, TokenEvent, "
        "DoneEvent, ErrorEvent; or application/json ChatResponse",
        operation_class=ChatOperation,
    )
    async def chat(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        data: JSONBody[ChatRequest],
    ) -> Response[Any]:
        runtime = state.runtime
        lost = await runtime.storage_lost()
        if lost == "database":
            raise ApiError(503, "service_unavailable", "the database is unavailable")
        if lost == "index":
            raise ApiError(503, "retrieval_failed", "the book's index is unavailable")
        try:
            identity: Identity = await runtime.identities.resolve(request, db_session)
        except DB_ERRORS as exc:
            raise ApiError(503, "service_unavailable", "the database is unavailable") from exc
        service: ChatService = runtime.chat
        # 404 (and every other refusal) before counting: only accepted chats cost a hit.
        opened = await service.open_session(data, identity, db_session)
        decision = await runtime.limiter.hit(
            _windows(identity, runtime.settings), runtime.settings.rate_limit_window
        )
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(identity.tier).inc()
            wait = decision.headers()["Retry-After"]
            raise ApiError(
                429,
                "rate_limit_exceeded",
                f"too many messages; try again in {wait} s",
                headers=decision.headers(),
            )
        turn = await service.begin(data, identity, db_session, opened)
        headers = decision.headers()
        if turn.token:
            headers["X-Bookchat-Token"] = turn.token
        if "application/json" in request.headers.get("accept", ""):
            try:
                answer = await service.answer(turn)
            except ApiError as exc:
                # 502/504 after the question was stored: the token must still reach the reader.
                exc.headers = {**headers, **(exc.headers or {})}
                raise
            return Response(answer, headers=headers)
        headers.update(SSE_HEADERS)  # X-Accel-Buffering: nginx must not buffer the stream
        return Stream(
            sse_messages(
                service,
                turn,
                runtime.settings.sse_ping_interval,
                runtime.settings.sse_write_timeout,
            ),
            media_type="text/event-stream",
            headers=headers,
        )
