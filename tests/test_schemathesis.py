"""Schemathesis against `/schema/openapi.json`: every operation, a bounded number of examples.

Each generated request (valid and invalid) must get no 5xx, a status code and body that
the schema documents, and, for every 4xx, the error envelope `{"error": {"code",
"message"}}`. Requests carry a real bearer token so the session endpoints are reached
past authentication; rate limits are raised so fuzzing never meets a 429.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from litestar.testing import TestClient
from schemathesis import GenerationMode

from bookchat.app import create_app
from bookchat.settings import Settings

from .chat_helpers import ingest_sample_book
from .conftest import make_settings

MAX_EXAMPLES = 40


@schemathesis.check
def errors_use_the_envelope(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every 4xx body is `{"error": {"code": str, "message": str}}` and nothing else."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the envelope: {body!r}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, f"bad error: {error!r}"
    assert isinstance(error["code"], str) and error["code"], "error.code must be a string"
    assert isinstance(error["message"], str), "error.message must be a string"
    assert "Traceback" not in error["message"]
    return None


@pytest.fixture(scope="module")
def fuzzed_settings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str]:
    """A migrated SQLite DB with the sample book, plus one user's token."""
    from bookchat.db.migrate import run_migrations

    tmp_path: Path = tmp_path_factory.mktemp("schemathesis")
    settings = make_settings(
        tmp_path,
        RATE_LIMIT_ANONYMOUS="100000",
        RATE_LIMIT_TOKEN="100000",
        RATE_LIMIT_IP="100000",
        API_KEYS=ADMIN_KEY,
    )
    run_migrations(settings.database_url)
    ingest_sample_book(settings)
    # A user with one session and one answer, made on an app of its own: shutting a
    # TestClient down closes its app's runtime, and Schemathesis starts the one it fuzzes.
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/api/v1/chat",
            json={"message": "What is lidar?"},
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 200, response.text
        token = response.json()["token"]
    return settings, token


@pytest.fixture
def api_schema(fuzzed_settings: tuple[Settings, str]) -> schemathesis.BaseSchema:
    # A fresh app per test: Schemathesis's pytest plugin ends every ASGI lifespan it
    # started when a test finishes, which closes that app's runtime.
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", create_app(fuzzed_settings[0]))
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        deterministic=True,
        database="none",
        # The bearer scheme is documented; the test sends the real token itself (below), so
        # generated Authorization values (a negative case "missing" a header the harness then
        # adds) would only test the harness.
        with_security_parameters=False,
    )
    return schema


@pytest.fixture(scope="module")
def token(fuzzed_settings: tuple[Settings, str]) -> str:
    return fuzzed_settings[1]


# Every documented operation; a test below fails when the schema gains or loses one.
OPERATIONS = [
    "GET /healthz",
    "GET /api/v1/health",
    "GET /api/v1/sessions",
    "GET /api/v1/sessions/{session_id}/messages",
    "DELETE /api/v1/sessions/{session_id}",
    "POST /api/v1/messages/{message_id}/feedback",
    "GET /api/v1/messages/{message_id}/events",
    "POST /api/v1/messages/{message_id}/stop",
    "POST /api/v1/chat",
    "POST /api/v1/auth/migrate-sessions",
    "GET /api/v1/admin/insights",
]
ADMIN_KEY = "schemathesis-admin-key"
ADMIN_ONLY = {"GET /api/v1/admin/insights"}  # fuzzed past authentication with an API key
INPUTLESS = {"GET /healthz", "GET /api/v1/health"}  # nothing to make invalid
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# (operation, generation mode, Accept): the chat route answers SSE by default, JSON on request.
CASES = [
    *((label, POSITIVE, "*/*") for label in OPERATIONS),
    *((label, NEGATIVE, "*/*") for label in OPERATIONS if label not in INPUTLESS),
    ("POST /api/v1/chat", POSITIVE, "application/json"),
    ("POST /api/v1/chat", NEGATIVE, "application/json"),
]


def test_every_documented_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize(
    ("label", "mode", "accept"), CASES, ids=[f"{op}-{m.value}-{a}" for op, m, a in CASES]
)
def test_api_conforms_to_its_schema(
    api_schema: schemathesis.BaseSchema, token: str, label: str, mode: GenerationMode, accept: str
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        headers = dict(case.headers or {})
        credential = ADMIN_KEY if label in ADMIN_ONLY else token
        headers.setdefault("Authorization", f"Bearer {credential}")
        headers.setdefault("Accept", accept)
        case.call_and_validate(headers=headers, additional_checks=[errors_use_the_envelope])

    check()
