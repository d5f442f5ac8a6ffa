"""`GET /api/v1/admin/insights` (API key only) and the static `/admin/insights` page."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from bookchat.chat.identity import Identity
from bookchat.chat.schemas import ErrorEnvelope
from bookchat.db.services import hash_token
from bookchat.errors import ApiError
from bookchat.insights.report import (
    SINCE_PATTERN,
    InsightsError,
    InsightsReport,
    build_report,
    parse_since,
)
from bookchat.search.types import VectorStoreUnavailableError

INSIGHTS_PAGE = Path(__file__).parents[1] / "web" / "static" / "insights.html"
# The page runs only /static/insights.js and talks only to this origin.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


async def require_api_key(request: Request[Any, Any, Any], state: State, db: AsyncSession) -> None:
    """Pass only a configured API key: 401 without a credential, 403 with a reader's."""
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer)")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() == "bearer" and key and len(key) <= 512:
        key_hash = hash_token(key)
        hashes = state.runtime.identities.api_key_hashes
        if any(hmac.compare_digest(key_hash, known) for known in hashes):
            return
    identity: Identity = await state.runtime.identities.resolve(request, db)  # 401 if unknown
    if identity.user is None:
        raise ApiError(401, "unauthorized", "unknown or revoked credential")
    raise ApiError(403, "forbidden", "author insights need an API key (API_KEYS)")


class InsightsController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]

    @get(
        "/insights",
        summary="Author insights: questions, content gaps, disliked answers, cited pages",
        description="Needs an API key from `API_KEYS` as `Authorization: Bearer <key>`. "
        "Holds question and answer text, feedback comments and page references only: "
        "no tokens, user or session ids, or IP addresses. `since`: `30d`, `12h` or `4w`, "
        "at most 10 years back.",
        responses={
            400: ResponseSpec(ErrorEnvelope, description="validation_error (bad `since`)"),
            401: ResponseSpec(ErrorEnvelope, description="unauthorized (no or unknown key)"),
            403: ResponseSpec(ErrorEnvelope, description="forbidden (a reader's credential)"),
            503: ResponseSpec(ErrorEnvelope, description="service_unavailable"),
        },
    )
    async def insights(
        self,
        request: Request[Any, Any, Any],
        state: State,
        db_session: NamedDependency[AsyncSession],
        since: Annotated[
            str,
            QueryParameter(
                pattern=SINCE_PATTERN,
                description="how far back: hours, days or weeks (`12h`, `30d`, `4w`)",
            ),
        ] = "30d",
    ) -> InsightsReport:
        await require_api_key(request, state, db_session)
        try:
            start = parse_since(since)
        except InsightsError as exc:
            raise ApiError(400, "validation_error", str(exc)) from None
        try:
            points = await state.runtime.store.stored_points()
        except VectorStoreUnavailableError as exc:
            raise ApiError(503, "service_unavailable", "the book's index is unavailable") from exc
        return await build_report(db_session, points, since=start)


@get("/admin/insights", include_in_schema=False, sync_to_thread=False)
def insights_page() -> Response[bytes]:
    """The authors' page; the API key is typed into it and kept only in memory."""
    return Response(
        INSIGHTS_PAGE.read_bytes(),
        media_type="text/html",
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"},
    )
