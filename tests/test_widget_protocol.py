"""Compatibility with the book site's deployed widget and sign-in, spoken exactly as the
widget speaks (tests/widget_protocol.py): these must not regress."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import httpx
import pytest

from bookchat.chat.schemas import cut_at_word
from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book
from .identity_helpers import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    SigningKey,
    app_at,
    bearer,
    count_rows,
    scalar,
)
from .servers import prepare_book_env, running_server
from .widget_protocol import SIGNED_OUT, DeployedWidget, parse_crlf_sse

READER_IP = "203.0.113.7"


@pytest.fixture
async def book(settings: Settings) -> Settings:
    await aingest_sample_book(settings)
    return settings


def better_auth_session_token() -> str:
    """The shape of a Better-Auth bearer-plugin token: `<session token>.<signature>`."""
    return secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(32)


async def test_widget_follow_ups_stay_in_one_session_without_a_token(book: Settings) -> None:
    async with app_at(book) as at:
        widget = DeployedWidget(at.client(READER_IP))
        answers = [
            await widget.ask("What is lidar?"),
            await widget.ask("How far can it see?"),
            await widget.ask("What are its limitations?"),
        ]
    assert [a.status for a in answers] == [200, 200, 200]
    assert not any(a.retried_without_session for a in answers)
    assert len({a.first("session")["session_id"] for a in answers}) == 1
    assert all(a.text and a.events[-1].name == "done" for a in answers)
    assert [e.id for e in answers[0].events] == [
        str(i) for i in range(1, len(answers[0].events) + 1)
    ]
    assert await count_rows(book.database_url, "users") == 1
    assert await count_rows(book.database_url, "messages") == 6


async def test_widget_stale_session_is_retried_once_and_costs_one_hit(book: Settings) -> None:
    async with app_at(book) as at:
        widget = DeployedWidget(at.client(READER_IP), session_id=str(uuid.uuid4()))
        answer = await widget.ask("What is lidar?")
    assert answer.status == 200 and answer.retried_without_session
    assert answer.headers is not None
    assert answer.headers["ratelimit-remaining"] == str(book.rate_limit_anonymous - 1)


async def test_widget_ten_answers_fit_the_anonymous_limit(book: Settings) -> None:
    # Before: each follow-up was a 404 plus a retry (two hits), so the 6th answer was a 429.
    async with app_at(book) as at:
        widget = DeployedWidget(at.client(READER_IP))
        statuses = [(await widget.ask(f"What is lidar? ({i})")).status for i in range(10)]
        over = await widget.ask("And one more?")
    assert statuses == [200] * 10
    assert over.status == 429


async def test_widget_with_a_better_auth_bearer_is_never_signed_out(book: Settings) -> None:
    async with app_at(book) as at:
        widget = DeployedWidget(at.client(READER_IP), bearer_token=better_auth_session_token())
        first = await widget.ask("What is lidar?")
        second = await widget.ask("What are its limitations?")
    assert [first.status, second.status] == [200, 200]
    assert widget.bearer_token is not None and SIGNED_OUT not in widget.shown_errors
    assert first.first("session")["session_id"] == second.first("session")["session_id"]
    assert not second.retried_without_session


async def test_widget_with_a_better_auth_jwt_is_signed_in(book: Settings) -> None:
    # Better-Auth's JWT plugin signs with EdDSA and publishes a JWKS.
    key = SigningKey.make("EdDSA")
    with JwksServer([key]).running() as jwks:
        configured = book.replace(
            auth_jwks_url=jwks.url, auth_jwt_issuer=ISSUER, auth_jwt_audience=AUDIENCE
        )
        async with app_at(configured) as at:
            token = key.sign("better-auth-user-42")
            widget = DeployedWidget(at.client(READER_IP), bearer_token=token)
            first = await widget.ask("What is lidar?")
            second = await widget.ask("What are its limitations?")
            history = await at.client("198.51.100.23").get(
                "/api/v1/sessions", headers=bearer(token)
            )
    assert [first.status, second.status] == [200, 200]
    assert "token" not in first.first("session")
    assert first.first("session")["session_id"] == second.first("session")["session_id"]
    assert [s["id"] for s in history.json()["sessions"]] == [first.first("session")["session_id"]]
    assert SIGNED_OUT not in widget.shown_errors


async def test_widget_long_page_title_is_accepted(book: Settings) -> None:
    words = "Humanoid Robotics Sensor Fusion and Perception Chapter"
    title = (" ".join([words] * 40))[:1000]
    assert len(title) == 1000
    async with app_at(book) as at:
        widget = DeployedWidget(
            at.client(READER_IP), document_title=title, pathname="/docs/" + "sensors/" * 150
        )
        answer = await widget.ask("What is lidar?")
    assert answer.status == 200
    stored = await scalar(
        book.database_url, "SELECT source_doc_path FROM messages WHERE role='user'"
    )
    assert len(stored) <= 512 and stored.startswith("/docs/sensors/")


def test_page_hints_are_cut_at_a_word_boundary() -> None:
    import msgspec

    from bookchat.chat.schemas import ChatRequest

    body = {"message": "hi", "source_section": "Sensor Fusion " * 80, "source_doc_path": "a/" * 400}
    request = msgspec.convert(body, ChatRequest)
    assert request.source_section is not None and request.source_doc_path is not None
    assert len(request.source_section) <= 300 and request.source_section.endswith(
        ("Sensor", "Fusion")
    )
    assert len(request.source_doc_path) <= 512 and request.source_doc_path.endswith("a")
    assert cut_at_word("short title", 300) == "short title"
    title = "word " * 100  # 500 characters
    cut = cut_at_word(title, 300)
    assert len(cut) <= 300 and cut.endswith("word") and set(cut.split()) == {"word"}
    assert cut_at_word("x" * 400, 300) == "x" * 300  # one long word: cut hard
    assert cut_at_word("/docs/" + "a/" * 300, 512).endswith("a")


async def test_limits_on_message_and_selection_stay(book: Settings) -> None:
    async with app_at(book) as at:
        client = at.client(READER_IP)
        too_long = await client.post("/api/v1/chat", json={"message": "x" * 4001})
        selection = await client.post(
            "/api/v1/chat",
            json={"message": "hi", "mode": "selected_text_only", "selected_text": "x" * 10_001},
        )
    assert too_long.status_code == 400 and selection.status_code == 400


@pytest.fixture
def proxied_server_env(tmp_path: Path) -> dict[str, str]:
    return prepare_book_env(tmp_path, TRUSTED_PROXIES="127.0.0.1")


@pytest.mark.server
async def test_widget_protocol_on_a_real_server_behind_a_proxy(
    proxied_server_env: dict[str, str],
) -> None:
    """Over TCP on granian: CRLF framing on the wire, the reader's IP from X-Forwarded-For."""
    with running_server(proxied_server_env) as base_url:
        async with httpx.AsyncClient(
            base_url=base_url, headers={"X-Forwarded-For": READER_IP}, timeout=30
        ) as http:
            widget = DeployedWidget(http)
            answers = [await widget.ask(q) for q in ("What is lidar?", "What are its limits?")]
            raw = await http.post(
                "/api/v1/chat",
                json={"message": "And its cost?", "session_id": widget.session_id},
                headers={"X-Forwarded-For": "198.51.100.23"},  # another reader, same id
            )
    assert [a.status for a in answers] == [200, 200]
    assert answers[0].first("session")["session_id"] == answers[1].first("session")["session_id"]
    assert not answers[1].retried_without_session
    assert raw.status_code == 404
    assert parse_crlf_sse("event: x\r\ndata: {}\r\n\r\n")[0].name == "x"
