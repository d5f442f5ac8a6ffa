"""OpenAPI as a frontend developer reads it: events, security, headers, examples, ids.

Litestar documents one media type per status code; the SSE route needs two and the
event payload schemas, so they are generated from the msgspec Structs here. Litestar has
no way to document headers on error responses (`Retry-After` on 429) nor examples for
msgspec Structs, so `finish_document` adds them to the built document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)

from bookchat.answer.grounding import Citation
from bookchat.chat.schemas import (
    NO_NUL,
    NOT_BLANK,
    ChatFilters,
    ChatRequest,
    ChatResponse,
    CitationsEvent,
    DoneEvent,
    ErrorEvent,
    FeedbackRequest,
    SessionEvent,
    TokenEvent,
    Usage,
)

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

EVENTS = {
    "session": SessionEvent,
    "citations": CitationsEvent,
    "token": TokenEvent,
    "done": DoneEvent,
    "error": ErrorEvent,
}
_REF = "#/components/schemas/{name}"
REQUEST_STRUCTS = (ChatRequest, ChatFilters, FeedbackRequest)
_KEYWORDS = {"if": "schema_if", "else": "schema_else"}  # Python keywords in Litestar's Schema
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [{type: T, ...}, {type: null}]` (msgspec's `T | None`) as `type: [T, null]`.

    The same JSON Schema, but Scalar's document validator rejects the anyOf form in schemas
    reached through an SSE event's `contentSchema` ("Expected union value" for SessionEvent
    and DoneEvent); a `$ref | None` union stays as it is.
    """
    variants = node.get("anyOf")
    if not (isinstance(variants, list) and len(variants) == 2 and {"type": "null"} in variants):
        return node
    if set(node) - {"anyOf", "default", "description", "title"}:
        return node
    (other,) = [v for v in variants if v != {"type": "null"}]
    if "$ref" in other or not isinstance(other.get("type"), str):
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    return {**other, **rest, "type": [other["type"], "null"]}


def _schema(node: Any) -> Schema | Reference:
    """Convert a JSON-schema dict (as msgspec emits it) into Litestar's Schema objects."""
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    node = _nullable(node)
    kwargs: dict[str, Any] = {}
    for key, value in node.items():
        name = _SNAKE.sub("_", key).lower()
        if key == "type":
            kwargs["type"] = (
                OpenAPIType(value) if isinstance(value, str) else [OpenAPIType(v) for v in value]
            )
        elif key == "properties":
            kwargs["properties"] = {k: _schema(v) for k, v in value.items()}
        elif key in ("if", "then", "else"):
            kwargs[_KEYWORDS.get(key, key)] = _schema(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            kwargs[name] = [_schema(v) for v in value]
        elif key == "items":
            kwargs["items"] = _schema(value)
        elif key == "additionalProperties" and isinstance(value, dict):
            kwargs["additional_properties"] = _schema(value)
        else:
            kwargs[name] = value
    return Schema(**kwargs)


def chat_components() -> dict[str, Schema]:
    """Schemas of every SSE event payload and of ChatResponse, for OpenAPI components."""
    _, components = msgspec.json.schema_components(
        [*EVENTS.values(), ChatResponse], ref_template=_REF
    )
    return {name: _schema(body) for name, body in components.items()}  # type: ignore[misc]


def _event_schema() -> Schema:
    """One SSE event as a client sees it (`event`, `id`, `data`), as Open API 3.2's
    `itemSchema` and Schemathesis read it: `data` is JSON whose schema depends on the
    event name."""
    return Schema(
        one_of=[
            Schema(
                type=OpenAPIType.OBJECT,
                required=["event", "data"],
                properties={
                    "event": Schema(type=OpenAPIType.STRING, const=name),
                    "id": Schema(type=OpenAPIType.STRING),
                    "data": Schema(
                        type=OpenAPIType.STRING,
                        content_media_type="application/json",
                        content_schema=Reference(ref=_REF.format(name=struct.__name__)),
                    ),
                },
            )
            for name, struct in EVENTS.items()
        ],
        description="One SSE event; its `data` is JSON. `event:` names: "
        + ", ".join(f"`{name}` → {struct.__name__}" for name, struct in EVENTS.items()),
    )


@dataclass
class ChatOperation(Operation):
    """Documents 200 as both `text/event-stream` and `application/json`."""

    def __post_init__(self) -> None:
        if self.responses is None:
            return
        self.responses["200"] = OpenAPIResponse(
            description="The answer: an SSE stream by default, one JSON object with "
            "`Accept: application/json`",
            content={
                "text/event-stream": OpenAPIMediaType(
                    schema=_event_schema(), example=example_stream()
                ),
                "application/json": OpenAPIMediaType(
                    schema=Reference(ref=_REF.format(name="ChatResponse"))
                ),
            },
        )


@dataclass
class EventsOperation(Operation):
    """Documents 200 of the resume endpoint as `text/event-stream` of the chat's events."""

    def __post_init__(self) -> None:
        if self.responses is None:
            return
        self.responses["200"] = OpenAPIResponse(
            description="The events after `Last-Event-ID`, each with its original `id`",
            content={
                "text/event-stream": OpenAPIMediaType(
                    schema=_event_schema(), example=example_stream(after=3)
                )
            },
        )


def document_request_rules(schemas: dict[str, Schema]) -> None:
    """Replace Litestar's request body schemas with exact ones.

    Litestar's generator drops `forbid_unknown_fields` and the constraints on list items
    (e.g. an empty tag); msgspec's own JSON schema has both. The rules of
    `ChatRequest.__post_init__` (no blank message, no NUL, a selection in
    `selected_text_only` mode) are added by hand.
    """
    _, components = msgspec.json.schema_components(REQUEST_STRUCTS, ref_template=_REF)
    chat = components[ChatRequest.__name__]
    chat["properties"]["message"]["pattern"] = NOT_BLANK
    chat["properties"]["message"]["description"] = "1–4000 characters, not only whitespace, no NUL"
    chat["properties"]["selected_text"]["anyOf"][0]["pattern"] = NO_NUL
    chat["properties"]["source_section"]["description"] = (
        "page hint (e.g. the page title); longer than 300 characters is cut at a word boundary"
    )
    chat["properties"]["source_doc_path"]["description"] = (
        "page path hint; longer than 512 characters is cut at a word boundary"
    )
    chat["if"] = {"properties": {"mode": {"const": "selected_text_only"}}, "required": ["mode"]}
    chat["then"] = {
        "required": ["selected_text"],
        "properties": {"selected_text": {"type": "string", "pattern": NOT_BLANK}},
    }
    for name, body in components.items():
        schemas[name] = _schema(body)  # type: ignore[assignment]


# --- security, operation ids, headers and examples -------------------------------------

BEARER = "bearerToken"
SECURITY_SCHEMES = {
    BEARER: SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="bc_… (from X-Bookchat-Token), an API key, or a sign-in JWT",
        description="The token `POST /api/v1/chat` returns in `X-Bookchat-Token` (and in "
        "the `session` event) the first time an anonymous reader asks, an API key from "
        "`API_KEYS`, or a signed-in reader's verified JWT (required by `/api/v1/auth/…`). "
        "Send it as `Authorization: Bearer <token>`.",
    )
}
# Controllers' `security`: the history needs a token; chat works without one (anonymous).
TOKEN_REQUIRED: list[dict[str, list[str]]] = [{BEARER: []}]
TOKEN_OPTIONAL: list[dict[str, list[str]]] = [{}, {BEARER: []}]


def operation_id(
    route_handler: HTTPRouteHandler, http_method: str, path_components: list[Any]
) -> str:
    """`listSessions`, `chat`, …: the handler's name in camelCase (Litestar's default joins
    the path and the name, e.g. `ApiV1ChatChat`). Stable while the handler keeps its name."""
    head, *rest = route_handler.handler_name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _header(description: str, integer: bool = False) -> OpenAPIHeader:
    kind = OpenAPIType.INTEGER if integer else OpenAPIType.STRING
    return OpenAPIHeader(schema=Schema(type=kind), description=description)


REQUEST_ID = {
    "X-Request-ID": _header(
        "The request's own `X-Request-ID` if it sent a sane one, else a new id; the same id "
        "is in the server's log line for this request."
    )
}
RATE_LIMIT = {
    "RateLimit-Limit": _header("Messages allowed per window for this caller", integer=True),
    "RateLimit-Remaining": _header("Messages left in the current window", integer=True),
    "RateLimit-Reset": _header("Seconds until the window resets", integer=True),
}
NEW_TOKEN = {
    "X-Bookchat-Token": _header(
        "Only when this request created a new anonymous user: its bearer token. Store it "
        "and send it as `Authorization: Bearer <token>` to keep the history."
    )
}
RETRY_AFTER = {"Retry-After": _header("Seconds to wait before asking again", integer=True)}

_SESSION = UUID("0193b3a2-7c1e-7d4a-9f00-3c5e2a1b9d01")
_MESSAGE = UUID("0193b3a2-7c2f-7a10-8e11-4b6f3c2d1e02")
_CITATION = Citation(
    n=1,
    doc_path="module-2/sensors/lidar",
    title="Lidar",
    section="How lidar measures distance",
    url="https://book.example.org/docs/module-2/sensors/lidar#how-lidar-measures-distance",
    module="module-2",
    chapter="sensors",
    score=0.82,
)
_USAGE = Usage(prompt_tokens=812, completion_tokens=64)
# One example per schema, built from the Structs themselves so that they stay valid.
EXAMPLES: dict[str, list[msgspec.Struct]] = {
    "ChatRequest": [
        ChatRequest(message="How does a lidar measure distance?"),
        ChatRequest(
            message="Explain this in simpler words",
            mode="selected_text_only",
            selected_text="The range is half the round trip multiplied by the speed of light.",
            source_doc_path="module-2/sensors/lidar",
            source_section="How lidar measures distance",
        ),
        ChatRequest(
            message="Which sensors does a mobile robot need?",
            session_id=_SESSION,
            filters=ChatFilters(modules=["module-2"], top_k=5),
        ),
    ],
    "FeedbackRequest": [
        FeedbackRequest(rating="up"),
        FeedbackRequest(rating="down", comment="cites the wrong page"),
    ],
    "SessionEvent": [
        SessionEvent(session_id=_SESSION, message_id=_MESSAGE, token="bc_" + "x" * 43)
    ],
    "CitationsEvent": [CitationsEvent(citations=[_CITATION])],
    "TokenEvent": [TokenEvent(content="A lidar times a laser pulse")],
    "DoneEvent": [
        DoneEvent(
            message_id=_MESSAGE,
            session_id=_SESSION,
            citations=[_CITATION],
            usage=_USAGE,
            finish_reason="stop",
            grounded=True,
        )
    ],
    "ErrorEvent": [
        ErrorEvent(
            code="generation_timeout", message="the model did not answer in time", retryable=True
        )
    ],
    "ChatResponse": [
        ChatResponse(
            message_id=_MESSAGE,
            session_id=_SESSION,
            answer="A lidar times a laser pulse: the range is half the round trip [1].",
            citations=[_CITATION],
            usage=_USAGE,
            grounded=True,
            finish_reason="stop",
        )
    ],
}


def example_stream(after: int = 0) -> str:
    """A whole SSE answer as it arrives (the events after id `after`), for the
    `text/event-stream` media type."""
    events = [
        ("session", EXAMPLES["SessionEvent"][0]),
        ("citations", EXAMPLES["CitationsEvent"][0]),
        ("token", TokenEvent(content="A lidar times a laser pulse: ")),
        ("token", TokenEvent(content="the range is half the round trip [1].")),
        ("done", EXAMPLES["DoneEvent"][0]),
    ]
    return "".join(
        f"event: {name}\nid: {n}\ndata: {msgspec.json.encode(payload).decode()}\n\n"
        for n, (name, payload) in enumerate(events, start=1)
        if n > after
    )


def _operations(openapi: OpenAPI) -> list[tuple[str, Operation]]:
    found = []
    for path, item in (openapi.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is not None:
                found.append((path, operation))
    return found


def _null_as_type(node: Schema | Reference) -> Schema | Reference:
    """Litestar's `oneOf: [T, null]` as `type: [T, null]` (see `_nullable`), recursively."""
    if not isinstance(node, Schema):
        return node
    variants = node.one_of or node.any_of
    if variants and len(variants) == 2:
        nulls = [v for v in variants if isinstance(v, Schema) and v.type == OpenAPIType.NULL]
        others = [v for v in variants if v not in nulls]
        if len(nulls) == 1 and len(others) == 1 and isinstance(others[0], Schema):
            other = others[0]
            if isinstance(other.type, OpenAPIType) and other.type != OpenAPIType.NULL:
                merged = replace(other, type=[other.type, OpenAPIType.NULL])
                if node.description and not merged.description:
                    merged.description = node.description
                return merged
    if node.properties:
        node.properties = {k: _null_as_type(v) for k, v in node.properties.items()}
    if isinstance(node.items, (Schema, Reference)):
        node.items = _null_as_type(node.items)
    return node


def finish_document(openapi: OpenAPI) -> None:
    """Add what Litestar cannot express to the built document (see the module docstring)."""
    components = openapi.components
    schemas = components.schemas if components else None
    if components is None or schemas is None:
        return
    for name, schema in chat_components().items():
        schemas.setdefault(name, schema)
    document_request_rules(schemas)
    for name, schema in list(schemas.items()):
        schemas[name] = _null_as_type(schema)  # type: ignore[assignment]
    components.security_schemes = {**(components.security_schemes or {}), **SECURITY_SCHEMES}
    for name, examples in EXAMPLES.items():
        target = schemas.get(name)
        if isinstance(target, Schema):
            target.examples = [msgspec.to_builtins(e) for e in examples]
    for _path, operation in _operations(openapi):
        for status, response in (operation.responses or {}).items():
            if not isinstance(response, OpenAPIResponse):
                continue
            headers: dict[str, Any] = dict(response.headers or {})
            headers.update(REQUEST_ID)
            if operation.operation_id == "chat" and status == "200":
                headers.update({**RATE_LIMIT, **NEW_TOKEN})
            if status == "429":
                headers.update({**RETRY_AFTER, **RATE_LIMIT})
            response.headers = headers
