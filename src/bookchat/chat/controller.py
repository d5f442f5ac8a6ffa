"""HTTP for the chat API: sessions, messages, feedback and the SSE chat stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from bookchat import metrics
from bookchat.answer.grounding import Citation
from bookchat.chat.identity import Identity, client_network
from bookchat.chat.journal import ReplayExpiredError, StreamJournal, StreamLostError
from bookchat.chat.openapi import TOKEN_OPTIONAL, TOKEN_REQUIRED, ChatOperation, EventsOperation
from bookchat.chat.ratelimit import Window
from bookchat.chat.schemas import (
    ChatRequest,
    ErrorEnvelope,
    FeedbackOut,
    FeedbackRequest,
    MessageList,
    MessageOut,
    SessionList,
    SessionSummary,
)
from bookchat.chat.service import DB_ERRORS, ChatService, ChatTurn
from bookchat.chat.sse import EventStream
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


SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}


def sse_messages(
    journal: StreamJournal, service: ChatService, turn: ChatTurn, ping_interval: float
) -> AsyncIterator[bytes]:
    """The answer's events as SSE bytes, journaled so that a dropped reader can resume.

    The answer runs in a task of its own (`chat/journal.py`); this response is its first
    follower: events are encoded once, one timer per follower sends the idle pings, the
    answer stops pulling from the provider while this reader is `buffer_events` behind,
    and a reader stuck for `SSE_WRITE_TIMEOUT` is treated as gone. A reader that leaves
    starts the grace period (`RESUME_GRACE_SECONDS`) after which the answer is stopped
    and saved `interrupted`, unless someone resumes it.
    """
    return journal.answer(turn.message_id, service.run(turn), ping_interval=ping_interval)


def _windows(identity: Identity, settings: Settings) -> list[Window]:
    if identity.tier == "api_key":
        return [Window(identity.subject, settings.rate_limit_api_key)]
    if identity.tier == "token":
        return [
            Window(identity.subject, settings.rate_limit_token),
            Window(f"tokens-ip:{client_network(identity.client_ip)}", settings.rate_limit_ip),
        ]
    return [Window(identity.subject, settings.rate_limit_anonymous)]


SSE_DESCRIPTION = """Server-Sent Events (default) or, with `Accept: application/json`, one
`ChatResponse`. Events, each with an `id`, in order:

- `session` → `SessionEvent` (`token` only when a new anonymous user was created)
- `citations` → `CitationsEvent` (the numbered sources retrieved)
- `token` → `TokenEvent` (repeated)
- `done` → `DoneEvent` (citations actually cited, usage, `grounded`, `persistence_warning?`)
- `error` → `ErrorEvent` (last event on failure: `generation_failed`, `generation_timeout`,
  `generation_blocked`, `rate_limited`, `internal_error`, `interrupted`)

A reader whose connection drops resumes with `GET /api/v1/messages/{message_id}/events`
and `Last-Event-ID` (the `session` event's `message_id`); the answer goes on for
`RESUME_GRACE_SECONDS` (10 s) without a reader before it is stopped and saved
`interrupted`.

Comment lines (`: ping`) keep idle connections open every 15 s. Everything that can be
decided before streaming is an HTTP status with the error envelope instead: 400, 404,
429 (with `Retry-After`), 503. Refused requests (400, 404) do not count against the rate
limit.

Identity: a bookchat token, an API key or a verified JWT of the site's identity provider
as `Authorization: Bearer …`; any other bearer (unknown, expired, malformed) is treated
as anonymous here, never a 401. Without a token, a `session_id` created without a token
may be continued from the same client IP (`TOKENLESS_SESSIONS`). `source_section` and
`source_doc_path` longer than 300 / 512 characters are cut at a word boundary."""


LAST_ID_HEADER = "The `id` of the last event received (what EventSource sends on reconnect)"
LAST_ID_QUERY = "As the `Last-Event-ID` header (the header wins); 0: from the start"
RESUME_DESCRIPTION = """Replays the events of an answer (`POST /api/v1/chat`'s stream) that
come after `Last-Event-ID` (header, or the `last_event_id` query parameter), then goes on
live until `done` or `error` while the answer is still being generated; an answer that
has finished is replayed to its end and the stream closes. The ids are the stream's own
`id:` lines; the assistant message id is the `session` event's `message_id`.

A reader that drops does not stop the answer at once: it goes on for
`RESUME_GRACE_SECONDS` (10 s) so a reconnect can catch up; without one it is stopped and
saved `interrupted` (its stream then ends with `error` code `interrupted`). After the
end the events are kept while a reader is still missing them (60 s), then only the
stored message remains: `410 stream_expired` says to read it from
`GET /api/v1/sessions/{session_id}/messages` (the envelope carries both ids).

Identity as on chat: the answer's owner (`Authorization: Bearer …`), or, for a session
created without a token, the same client IP (`TOKENLESS_SESSIONS`); anyone else's or an
unknown message is `404 message_not_found`. With several workers or replicas the events
travel through Redis (`REDIS_URL`); without it only the worker that writes the answer
can resume it, and another one answers `503 resume_unavailable` with `Retry-After`."""


STOP_DESCRIPTION = """Stops an answer that is still being generated, at once: the provider
stream is closed and the answer is saved `interrupted` with the text written so far (its
stream, for anyone still reading, ends with `error` code `interrupted`). This is what a
reader's Stop button means; merely dropping the connection instead keeps the answer going
for `RESUME_GRACE_SECONDS` so that a reconnect can resume it.

`204` whether or not anything was still running (an answer that already finished is left
as it is). Identity and `404 message_not_found` as for the events endpoint. With several
workers the request reaches the one writing the answer through Redis (`REDIS_URL`);
without Redis, another worker's answer stops when its grace period ends."""


async def answer_for(identity: Identity, db: AsyncSession, message_id: UUID) -> Message:
    """The caller's assistant message: owned by its user, or (tokenless) bound to its IP."""
    messages = MessageService(session=db)
    message = None
    if identity.user is not None:
        message = await messages.get_owned(message_id, identity.user.id)
    elif identity.client_binding is not None:
        message = await messages.get_bound(message_id, identity.client_binding)
    if message is None or message.role != "assistant":
        raise ApiError(404, "message_not_found", "no such answer")
    return message


async def owned_answer(
    request: Request[Any, Any, Any], state: State, db: AsyncSession, message_id: UUID
) -> Message:
    """The caller's assistant message (`answer_for`), with the request's connection given
    back before a long stream; 404 for anyone else's, 503 when the database fails."""
    try:
        identity: Identity = await state.runtime.identities.resolve(request, db)
        message = await answer_for(identity, db, message_id)
        await db.commit()
    except DB_ERRORS as exc:
        raise ApiError(503, "service_unavailable", "the database is unavailable") from exc
    return message


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
        return EventStream(
            sse_messages(runtime.journal, service, turn, runtime.settings.sse_ping_interval),
            media_type="text/event-stream",
            headers=headers,
        )

    @get(
        "/messages/{message_id:uuid}/events",
        summary="Resume an answer's stream after the last event id seen",
        description=RESUME_DESCRIPTION,
        responses={
            **{status: spec for status, spec in ERRORS.items() if status != 401},
            410: ResponseSpec(
                ErrorEnvelope,
                description="stream_expired: the answer finished and its events are no "
                "longer kept; read it from the session's messages",
            ),
            503: ResponseSpec(
                ErrorEnvelope,
                description="resume_unavailable (Retry-After): still being written by a "
                "worker this one cannot reach (several workers, no REDIS_URL) / "
                "service_unavailable",
            ),
        },
        response_description="text/event-stream of the events after that id",
        operation_class=EventsOperation,
    )
    async def resume_events(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        message_id: FromPath[UUID],
        last_event_id: Annotated[
            int, QueryParameter(ge=0, le=1_000_000_000, description=LAST_ID_QUERY)
        ] = 0,
        last_event_id_header: Annotated[
            int,
            HeaderParameter(
                name="Last-Event-ID", ge=0, le=1_000_000_000, description=LAST_ID_HEADER
            ),
        ] = 0,
    ) -> Response[Any]:
        runtime = state.runtime
        message = await owned_answer(request, state, db_session, message_id)
        after = last_event_id_header if "last-event-id" in request.headers else last_event_id
        located = {"message_id": str(message.id), "session_id": str(message.session_id)}
        try:
            source = await runtime.journal.resume(
                message.id, after, ping_interval=runtime.settings.sse_ping_interval
            )
        except ReplayExpiredError:
            raise ApiError(
                410, "stream_expired", "these events are no longer kept", located=located
            ) from None
        except StreamLostError:
            if message.status == "streaming":
                raise ApiError(
                    503,
                    "resume_unavailable",
                    "this answer is being written by another worker; try again",
                    headers={"Retry-After": "1"},
                    located=located,
                ) from None
            raise ApiError(
                410,
                "stream_expired",
                f"the answer is {message.status} and its events are no longer kept",
                located=located,
            ) from None
        return EventStream(source, media_type="text/event-stream", headers=SSE_HEADERS)

    @post(
        "/messages/{message_id:uuid}/stop",
        summary="Stop an answer that is being written",
        description=STOP_DESCRIPTION,
        status_code=204,
        responses={status: spec for status, spec in ERRORS.items() if status != 401},
    )
    async def stop_answer(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        message_id: FromPath[UUID],
    ) -> None:
        message = await owned_answer(request, state, db_session, message_id)
        if message.status == "streaming":
            await state.runtime.journal.stop(message.id)
