"""OpenAPI for the chat route: a `text/event-stream` of typed events or one JSON answer.

Litestar documents one media type per status code; the SSE route needs two and the
event payload schemas, so they are generated from the msgspec Structs here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)

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
)

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


def _schema(node: Any) -> Schema | Reference:
    """Convert a JSON-schema dict (as msgspec emits it) into Litestar's Schema objects."""
    if "$ref" in node:
        return Reference(ref=node["$ref"])
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


@dataclass
class ChatOperation(Operation):
    """Documents 200 as both `text/event-stream` and `application/json`."""

    def __post_init__(self) -> None:
        if self.responses is None:
            return
        # One SSE event as a client sees it (`event`, `id`, `data`), as Open API 3.2's
        # `itemSchema` and Schemathesis read it: `data` is JSON whose schema depends on
        # the event name.
        events = Schema(
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
        self.responses["200"] = OpenAPIResponse(
            description="The answer: an SSE stream by default, one JSON object with "
            "`Accept: application/json`",
            content={
                "text/event-stream": OpenAPIMediaType(schema=events),
                "application/json": OpenAPIMediaType(
                    schema=Reference(ref=_REF.format(name="ChatResponse"))
                ),
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
