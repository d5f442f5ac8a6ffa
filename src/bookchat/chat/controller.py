"""HTTP for the chat API: sessions, messages, feedback and the SSE chat stream."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from bookchat.chat.identity import Identity
from bookchat.chat.schemas import (
    ErrorEnvelope,
    FeedbackOut,
    FeedbackRequest,
    MessageList,
    MessageOut,
    SessionList,
    SessionSummary,
)
from bookchat.db.models import Message
from bookchat.db.services import ChatSessionService, MessageService
from bookchat.errors import ApiError
from bookchat.rag.grounding import Citation

ERRORS = {
    400: ResponseSpec(ErrorEnvelope, description="validation_error"),
    401: ResponseSpec(ErrorEnvelope, description="unauthorized"),
    404: ResponseSpec(ErrorEnvelope, description="session_not_found / message_not_found"),
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


async def require_user(request: Request[Any, Any, Any], state: State, db: AsyncSession) -> Identity:
    identity: Identity = await state.runtime.identities.resolve(request, db)
    if identity.user is None:
        raise ApiError(401, "unauthorized", "a bearer token is required for this endpoint")
    return identity


class SessionsController(Controller):
    path = "/api/v1"
    tags = ["sessions"]

    @get("/sessions", summary="My sessions, newest activity first", responses=ERRORS)
    async def list_sessions(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> SessionList:
        identity = await require_user(request, state, db_session)
        assert identity.user is not None
        rows, total = await ChatSessionService(session=db_session).list_for_user(
            identity.user.id, limit=limit, offset=offset
        )
        return SessionList(sessions=[SessionSummary(**row) for row in rows], total=total)

    @get("/sessions/{session_id:uuid}/messages", summary="A session's messages, oldest first", responses=ERRORS)
    async def list_messages(
        self, request: Request[Any, Any, Any], state: State, db_session: NamedDependency[AsyncSession], session_id: FromPath[UUID]
    ) -> MessageList:
        identity = await require_user(request, state, db_session)
        assert identity.user is not None
        chat = await ChatSessionService(session=db_session).get_owned(session_id, identity.user.id)
        if chat is None:
            raise ApiError(404, "session_not_found", "no such session")
        messages = await MessageService(session=db_session).list_for_session(chat.id)
        return MessageList(session_id=chat.id, messages=[message_out(m) for m in messages])

    @delete("/sessions/{session_id:uuid}", summary="Archive a session (soft delete)", responses=ERRORS)
    async def archive_session(
        self, request: Request[Any, Any, Any], state: State, db_session: NamedDependency[AsyncSession], session_id: FromPath[UUID]
    ) -> None:
        identity = await require_user(request, state, db_session)
        assert identity.user is not None
        chat = await ChatSessionService(session=db_session).get_owned(session_id, identity.user.id)
        if chat is None:
            raise ApiError(404, "session_not_found", "no such session")
        chat.status = "archived"

    @post(
        "/messages/{message_id:uuid}/feedback",
        summary="Rate an answer",
        status_code=200,
        responses=ERRORS,
    )
    async def feedback(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        message_id: FromPath[UUID],
        data: JSONBody[FeedbackRequest],
    ) -> FeedbackOut:
        identity = await require_user(request, state, db_session)
        assert identity.user is not None
        message = await MessageService(session=db_session).get_owned(message_id, identity.user.id)
        if message is None or message.role != "assistant":
            raise ApiError(404, "message_not_found", "no such answer")
        message.feedback_rating = data.rating
        message.feedback_comment = data.comment
        return FeedbackOut(message_id=message.id, rating=data.rating, comment=data.comment)
