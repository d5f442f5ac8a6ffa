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
    ChatResponse,
    CitationsEvent,
    DoneEvent,
    ErrorEvent,
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
        events = Schema(
            one_of=[Reference(ref=_REF.format(name=struct.__name__)) for struct in EVENTS.values()],
            description="One SSE event's `data` (JSON). `event:` names: "
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
