"""The one place the application is assembled: `create_app()`."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from advanced_alchemy.exceptions import RepositoryError
from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar, get, route
from litestar.config.cors import CORSConfig
from litestar.datastructures import MutableScopeHeaders, State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.params import FromPath
from litestar.plugins import PluginProtocol
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.response import File, Redirect
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send
from sqlalchemy.exc import SQLAlchemyError

from bookchat import __version__
from bookchat.chat.controller import ChatController, SessionsController
from bookchat.chat.openapi import finish_document, operation_id
from bookchat.chat.signin import AuthController
from bookchat.chat.sse import SERVER_SEND
from bookchat.db.config import make_alchemy_config
from bookchat.errors import (
    ApiError,
    JsonBodyRequest,
    database_error_handler,
    error_body,
    http_exception_handler,
    internal_error_handler,
    repository_error_handler,
)
from bookchat.health import HealthController
from bookchat.insights.controller import InsightsController, insights_page
from bookchat.metrics import RouteMetricsMiddleware
from bookchat.observability import configure_logging, request_id_middleware
from bookchat.runtime import Runtime
from bookchat.settings import Settings, get_settings
from bookchat.web.routes import demo_page, widget_js

STATIC_DIR = Path(__file__).parent / "web" / "static"
# Allocations (net of frees) between two young garbage collections; Python's default is 700.
GC_YOUNG_THRESHOLD = 10_000
_heap_settled = False


def settle_heap() -> None:
    """Once per process, after startup: keep the garbage collector off what startup built.

    The ~235k objects of imports, routes and clients live as long as the process, yet
    every full collection walked them (about 100 ms each under load), and 100 streams in
    flight kept promoting their state to the middle generation, so collections cost
    0.35 ms per chat. Frozen (`gc.freeze`) and with young collections every 10,000
    allocations instead of 700, the same load spends 0.1 ms per chat in the collector.
    """
    global _heap_settled
    if _heap_settled:
        return
    _heap_settled = True
    gc.collect()
    gc.freeze()
    _young, *older = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


@get("/docs", include_in_schema=False)
async def docs_redirect() -> Redirect:
    """The API reference (Scalar, served from this app so it works offline)."""
    return Redirect("/schema/scalar")


@get("/favicon.ico", include_in_schema=False, cache=86400)
async def favicon() -> File:
    """The demo page's and the API reference's icon (an SVG; browsers take it here too)."""
    return File(
        STATIC_DIR / "favicon.svg", media_type="image/svg+xml", content_disposition_type="inline"
    )


@route(
    ["/{unmatched:path}", "/api/v1/{unmatched:path}"],
    http_method=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def not_found(unmatched: FromPath[str]) -> None:
    """Unknown paths end here rather than in the router, so that they pass through the
    middleware: the access log and the request metrics see the 404 (one series, not one
    per probed URL). Litestar's router does not fall back from a matched prefix to the
    root, hence the second path for everything under /api/v1."""
    raise NotFoundException()


def _openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="bookchat API",
        version=__version__,
        description="Ask a book questions; answers stream over Server-Sent Events with "
        "citations that deep-link into the book. Errors are always "
        '`{"error": {"code", "message"}}`.',
        path="/schema",
        operation_id_creator=operation_id,
        render_plugins=[
            ScalarRenderPlugin(
                path="/scalar",
                js_url="/static/scalar/standalone.js",
                css_url="/static/scalar/bookchat.css",
                # No web fonts and no "Ask AI" (both need the internet).
                options={
                    "withDefaultFonts": False,
                    "hideClientButton": True,
                    "agent": {"disabled": True},
                },
                favicon="<link rel='icon' href='/favicon.ico' type='image/svg+xml'>",
            )
        ],
    )


def _cors_config(settings: Settings) -> CORSConfig | None:
    if not settings.cors_origins:
        return None  # same-origin only (the demo page and the widget served from here)
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID", "Last-Event-ID"],
        expose_headers=[
            "X-Bookchat-Token",
            "X-Request-ID",
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
        ],
        allow_credentials=False,
        max_age=600,
    )


# Sent on every response unless the route set its own (the demo page sends a CSP).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


# As raw ASGI headers: one pass over a response's headers instead of a case-insensitive
# lookup (lower-casing every header) per name.
_SECURITY_RAW = [
    (name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
]
_CACHE_CONTROL = (b"cache-control", b"no-store")


async def add_security_headers(message: Message, scope: Scope) -> None:
    """`SECURITY_HEADERS`, and `Cache-Control: no-store` on the API (tokens, history).

    A `before_send` hook rather than middleware: it also sees the router's own 404/405.
    """
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers", ()))
    present = {name.lower() for name, _ in headers}
    headers += [header for header in _SECURITY_RAW if header[0] not in present]
    if scope["path"].startswith("/api/") and _CACHE_CONTROL[0] not in present:
        headers.append(_CACHE_CONTROL)
    message["headers"] = headers


_CORS_REJECTION = "bookchat.cors_rejection"


async def cors_rejection_in_envelope(message: Message, scope: Scope) -> None:
    """Litestar answers a rejected CORS preflight `400 text/plain`; use the error envelope.

    A `before_send` hook, because the CORS middleware builds that response itself.
    """
    if scope.get("method") != "OPTIONS":
        return
    if message["type"] == "http.response.start" and message["status"] == 400:
        headers = MutableScopeHeaders.from_message(message)
        if headers.get("content-type", "").startswith("text/plain"):
            scope[_CORS_REJECTION] = True  # type: ignore[literal-required]
            headers["content-type"] = "application/json"
            del headers["content-length"]  # the body is rewritten below
    elif message["type"] == "http.response.body" and scope.pop(_CORS_REJECTION, False):  # type: ignore[misc]
        reason = message.get("body", b"").decode(errors="replace").removeprefix("Disallowed CORS ")
        message["body"] = msgspec.json.encode(
            error_body("cors_rejected", f"CORS preflight rejected: {reason} not allowed")
        )


async def shape_response(message: Message, scope: Scope) -> None:
    """The `before_send` hooks above as one: Litestar awaits every hook for every message,
    and a chat's stream sends ~50 bodies that neither changes."""
    if message["type"] == "http.response.body" and _CORS_REJECTION not in scope:
        return
    await add_security_headers(message, scope)
    await cors_rejection_in_envelope(message, scope)


def body_read_timeout(seconds: float) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware: a request body must arrive within `seconds`, else 408.

    granian has no body-read timeout (granian#728, wontfix): a client that stops halfway
    through its body would hold the request, and its buffer, forever.
    """

    def middleware_factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            body_done = False

            async def timed_receive() -> ReceiveMessage:
                nonlocal body_done
                if body_done:  # e.g. a stream listening for the disconnect: no limit
                    return await receive()
                try:
                    async with asyncio.timeout(seconds):
                        message = await receive()
                except TimeoutError:
                    raise ApiError(
                        408,
                        "request_timeout",
                        f"the request body did not arrive within {seconds:g} s",
                        headers={"Connection": "close"},
                    ) from None
                if message["type"] != "http.request" or not message.get("more_body"):
                    body_done = True
                return message

            await app(scope, timed_receive, send)

        return middleware

    return middleware_factory


class BookchatApp(Litestar):
    """Litestar, with the server's own `send` kept in each HTTP request's scope state: the
    SSE routes send their events with it, past the layers that only act on a response's
    start and end (`bookchat.chat.sse`)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    plugins: Sequence[PluginProtocol] = (),
) -> Litestar:
    """Build the Litestar app; `runtime` lets tests inject their own clients, `plugins`
    lets a wrapper (e.g. the bench's floor routes) add routes and hooks."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    runtime = runtime or Runtime.build(settings)
    alchemy = make_alchemy_config(settings, runtime.engine)
    prometheus = PrometheusConfig(
        app_name="bookchat",
        prefix="bookchat",
        group_path=True,
        exclude=["/metrics", "/static"],
        middleware_class=RouteMetricsMiddleware,
    )

    def add_event_schemas(app: Litestar) -> None:
        # Litestar rebuilds `components.schemas` from its registry, dropping configured
        # ones, so the SSE event schemas (and headers, examples, security) are added to the
        # built document instead.
        finish_document(app.openapi_schema)

    async def start_runtime() -> None:
        await runtime.start()
        settle_heap()

    async def close_runtime() -> None:
        await runtime.close()

    return BookchatApp(
        route_handlers=[
            HealthController,
            SessionsController,
            ChatController,
            AuthController,
            InsightsController,
            insights_page,
            MetricsController,
            docs_redirect,
            demo_page,
            widget_js,
            favicon,
            not_found,
            create_static_files_router(
                path="/static", directories=[STATIC_DIR], include_in_schema=False
            ),
        ],
        plugins=[SQLAlchemyPlugin(config=alchemy), *plugins],
        middleware=[
            request_id_middleware,
            body_read_timeout(settings.http_body_timeout),
            prometheus.middleware,
        ],
        before_send=[shape_response],
        openapi_config=_openapi_config(),
        cors_config=_cors_config(settings),
        exception_handlers={
            HTTPException: http_exception_handler,
            RepositoryError: repository_error_handler,
            SQLAlchemyError: database_error_handler,
            Exception: internal_error_handler,
        },
        request_max_body_size=settings.max_body_bytes,
        request_class=JsonBodyRequest,
        state=State({"runtime": runtime, "settings": settings}),
        on_startup=[add_event_schemas, start_runtime],
        on_shutdown=[close_runtime],
        logging_config=None,
        debug=False,
    )
