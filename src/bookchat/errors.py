"""The one place that maps exceptions to HTTP: every 4xx/5xx is `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
from typing import Any

from advanced_alchemy.exceptions import (
    DuplicateKeyError,
    ForeignKeyError,
    IntegrityError,
    NotFoundError,
    RepositoryError,
)
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

logger = logging.getLogger("bookchat.errors")

ERROR_CODES_BY_STATUS = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


class ApiError(HTTPException):
    """An error with an explicit machine-readable code (e.g. `session_not_found`)."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        located: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, status_code=status_code, headers=headers)
        self.code = code
        self.message = message
        self.located = located  # top-level fields beside `error` (where a chat was stored)


def error_body(code: str, message: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}, **(extra or {})}


def error_response(
    status_code: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    return Response(
        content=error_body(code, message, extra),
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _validation_message(exc: ValidationException) -> str:
    # Litestar puts per-field problems in `extra`: [{"message", "key", "source"}].
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for problem in problems:
        if isinstance(problem, dict):
            key = problem.get("key")
            text = str(problem.get("message", "")).strip()
            parts.append(f"{key}: {text}" if key else text)
    detail = "; ".join(p for p in parts if p)
    return detail or (exc.detail if exc.detail else "invalid request")


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Wrap Litestar's HTTP errors and our ApiErrors in the envelope."""
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.headers, exc.located)
    status = exc.status_code
    code = ERROR_CODES_BY_STATUS.get(status, "internal_error" if status >= 500 else "bad_request")
    if isinstance(exc, ValidationException):
        message = _validation_message(exc)
    elif status == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    elif status >= 500:
        message = "internal error"
    else:
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
    return error_response(status, code, message, exc.headers)


class JsonBodyRequest(Request[Any, Any, Any]):
    """A request whose JSON body problems are 4xx, never 500.

    Litestar decodes JSON bodies whatever the `Content-Type` (so a cross-site
    `text/plain` or form POST, which needs no CORS preflight, would be accepted) and
    only maps msgspec's own decode errors to 400: invalid UTF-8 and too deep nesting
    escaped as 500s.
    """

    async def json(self) -> Any:
        media_type, _ = self.content_type
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise ApiError(
                415,
                "unsupported_media_type",
                "expected a JSON body (Content-Type: application/json)",
            )
        try:
            return await super().json()
        except UnicodeDecodeError:
            raise ValidationException("JSON is malformed: the body is not valid UTF-8") from None
        except RecursionError:
            raise ValidationException("JSON is malformed: nested too deeply") from None


def repository_error_handler(
    request: Request[Any, Any, Any], exc: RepositoryError
) -> Response[Any]:
    """advanced-alchemy's errors in the envelope; a database we cannot use is a 503.

    Its own handler answers without the envelope, and it files driver failures (e.g.
    SQLite's "unable to open database file") under IntegrityError, i.e. 409.
    """
    if isinstance(exc, NotFoundError):
        return error_response(404, "not_found", "not found")
    if _database_unavailable(exc.__cause__):
        return database_error_handler(request, exc.__cause__)  # type: ignore[arg-type]
    if isinstance(exc, (DuplicateKeyError, IntegrityError, ForeignKeyError)):
        return error_response(409, "conflict", "the request conflicts with stored data")
    return internal_error_handler(request, exc)


_UNAVAILABLE = (DBAPIError, PoolTimeoutError, OSError, TimeoutError)  # incl. pool exhausted


def _database_unavailable(exc: BaseException | None) -> bool:
    return isinstance(exc, _UNAVAILABLE) and not isinstance(exc, SAIntegrityError)


def database_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A database we cannot reach or use (raw SQLAlchemy errors from our own queries): 503."""
    if not _database_unavailable(exc):
        return internal_error_handler(request, exc)
    logger.warning(
        "database unavailable on %s %s",
        request.method,
        request.url.path,
        extra={"error": type(exc).__name__},
    )
    return error_response(503, "service_unavailable", "the database is unavailable")


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything unexpected: log it with its traceback, answer 500 without one."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error")
