"""The OpenAPI document as a frontend developer reads it (issue 16): security, headers,
operation ids, examples that validate against their own schemas."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from litestar.testing import AsyncTestClient

ROOT = Path(__file__).resolve().parents[1]
OPERATION_IDS = {
    ("get", "/healthz"): "liveness",
    ("get", "/api/v1/health"): "readiness",
    ("post", "/api/v1/chat"): "chat",
    ("get", "/api/v1/sessions"): "listSessions",
    ("get", "/api/v1/sessions/{session_id}/messages"): "listMessages",
    ("delete", "/api/v1/sessions/{session_id}"): "archiveSession",
    ("post", "/api/v1/messages/{message_id}/feedback"): "feedback",
    ("get", "/api/v1/messages/{message_id}/events"): "resumeEvents",
    ("post", "/api/v1/messages/{message_id}/stop"): "stopAnswer",
    ("post", "/api/v1/auth/migrate-sessions"): "migrateSessions",
    ("get", "/api/v1/admin/insights"): "insights",
}


@pytest.fixture
async def spec(client: AsyncTestClient) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()}


async def test_operation_ids_are_readable_and_stable(spec: dict[str, Any]) -> None:
    assert {key: op["operationId"] for key, op in _operations(spec).items()} == OPERATION_IDS


async def test_bearer_security_scheme_on_the_operations_that_take_a_token(
    spec: dict[str, Any],
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {"bearerToken": schemes["bearerToken"]}
    assert schemes["bearerToken"]["type"] == "http"
    assert schemes["bearerToken"]["scheme"] == "bearer"
    operations = _operations(spec)
    for key, op in operations.items():
        path = key[1]
        if path.endswith(("/events", "/stop")):  # resuming, stopping: the chat's identity rules
            assert op["security"] == [{}, {"bearerToken": []}]
        elif path.startswith(("/api/v1/sessions", "/api/v1/messages", "/api/v1/auth")):
            assert op["security"] == [{"bearerToken": []}], key  # 401 without a token
        elif path == "/api/v1/chat":
            assert op["security"] == [{}, {"bearerToken": []}]  # anonymous works too
        else:
            assert "security" not in op, key  # health probes take no token


async def test_response_headers_are_documented(spec: dict[str, Any]) -> None:
    operations = _operations(spec)
    for key, op in operations.items():
        for status, response in op["responses"].items():
            assert "X-Request-ID" in response.get("headers", {}), (key, status)
    chat = operations[("post", "/api/v1/chat")]["responses"]
    ok = chat["200"]["headers"]
    assert {"X-Bookchat-Token", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
        ok
    )
    assert ok["RateLimit-Remaining"]["schema"] == {"type": "integer"}
    limited = chat["429"]["headers"]
    assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
        limited
    )
    assert limited["Retry-After"]["schema"] == {"type": "integer"}


async def test_headers_documented_are_the_ones_the_api_sends(client: AsyncTestClient) -> None:
    # The documented names match what a real answer carries (a new anonymous reader).
    response = await client.post(
        "/api/v1/chat", json={"message": "What is lidar?"}, headers={"Accept": "application/json"}
    )
    sent = {name.lower() for name in response.headers}
    for name in (
        "x-request-id",
        "x-bookchat-token",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ):
        assert name in sent, name


def _validate(spec: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """Validate against a component schema, its `$ref`s resolved among the components."""

    def local(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: v.replace("#/components/schemas/", "#/$defs/") if k == "$ref" else local(v)
                for k, v in node.items()
            }
        return [local(v) for v in node] if isinstance(node, list) else node

    defs = local(spec["components"]["schemas"])
    Draft202012Validator({**local(schema), "$defs": defs}).validate(value)


async def test_request_and_event_schemas_have_examples_that_validate(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    names = ("ChatRequest", "FeedbackRequest", "SessionEvent", "CitationsEvent", "TokenEvent",
             "DoneEvent", "ErrorEvent", "ChatResponse")  # fmt: skip
    for name in names:
        examples = schemas[name].get("examples")
        assert examples, name
        for example in examples:
            _validate(spec, schemas[name], example)
    stream = spec["paths"]["/api/v1/chat"]["post"]["responses"]["200"]["content"]
    text = stream["text/event-stream"]["example"]
    assert text.startswith("event: session\nid: 1\ndata: {") and "event: done" in text


async def test_event_schemas_use_type_lists_for_nullable_fields(spec: dict[str, Any]) -> None:
    # Scalar's validator flagged SessionEvent and DoneEvent for `anyOf: [T, null]`.
    schemas = spec["components"]["schemas"]
    assert schemas["SessionEvent"]["properties"]["token"]["type"] == ["string", "null"]
    assert schemas["DoneEvent"]["properties"]["persistence_warning"]["type"] == ["string", "null"]


def test_no_import_from_litestar_private_modules() -> None:
    for path in (ROOT / "src" / "bookchat").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("litestar._"), (path, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("litestar._"), (path, alias.name)
