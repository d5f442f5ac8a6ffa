"""`POST /api/v1/auth/migrate-sessions`: a reader who signs in keeps their guest chats."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from bookchat.chat.identity import Identity
from bookchat.chat.openapi import TOKEN_REQUIRED
from bookchat.chat.schemas import ErrorEnvelope, MigrateSessionsRequest, MigrateSessionsResponse
from bookchat.chat.service import DB_ERRORS
from bookchat.db.services import ChatSessionService, UserService, hash_token
from bookchat.errors import ApiError

RESPONSES = {
    400: ResponseSpec(ErrorEnvelope, description="validation_error"),
    401: ResponseSpec(ErrorEnvelope, description="unauthorized (no verified sign-in JWT)"),
    413: ResponseSpec(ErrorEnvelope, description="payload_too_large (over MAX_BODY_BYTES)"),
    415: ResponseSpec(ErrorEnvelope, description="unsupported_media_type (not application/json)"),
    503: ResponseSpec(
        ErrorEnvelope, description="service_unavailable (database or identity provider down)"
    ),
}


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]
    security = TOKEN_REQUIRED  # the reader's verified JWT as the bearer

    @post(
        "/migrate-sessions",
        summary="Move a guest's sessions to the signed-in reader",
        description="Needs a verified JWT of the site's identity provider as the bearer. "
        "Moves every session of the anonymous bookchat token `anonymous_token`; without "
        "one (or with a token that is not a bookchat guest's), the active sessions created "
        "without a token from the caller's client IP. Idempotent: a second call moves "
        "nothing and answers `migrated_count: 0`.",
        status_code=200,
        responses=RESPONSES,
    )
    async def migrate_sessions(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        data: JSONBody[MigrateSessionsRequest],
    ) -> MigrateSessionsResponse:
        runtime = state.runtime
        try:
            identity: Identity = await runtime.identities.resolve(
                request, db_session, require_user=True
            )
            if not identity.signed_in or identity.user is None:
                raise ApiError(401, "unauthorized", "a verified sign-in token (JWT) is required")
            guest_hash = None
            if data.anonymous_token:
                token_hash = hash_token(data.anonymous_token)
                guest = await UserService(session=db_session).get_one_or_none(
                    token_hash=token_hash, idp_subject=None, tier="token"
                )
                guest_hash = token_hash if guest is not None else None
            binding = None
            if guest_hash is None and runtime.settings.tokenless_sessions:
                binding = await runtime.identities.binding(identity.client_ip)
            moved = await ChatSessionService(session=db_session).migrate_guest_sessions(
                identity.user.id, guest_token_hash=guest_hash, client_binding=binding
            )
            await db_session.commit()
        except DB_ERRORS as exc:
            raise ApiError(503, "service_unavailable", "the database is unavailable") from exc
        return MigrateSessionsResponse(migrated_count=moved)
