"""Tokenless continuation (the book's deployed widget sends only `session_id`) and refused
requests that cost no rate-limit hit, in process and with Redis."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from pathlib import Path

import pytest

from bookchat.chat.identity import client_network
from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book, ask
from .conftest import make_settings
from .identity_helpers import app_at, count_rows, scalar
from .rag_fakes import ScriptedGenerator

IP_A = "203.0.113.7"
IP_B = "198.51.100.23"
LIDAR = "What is lidar?"


@pytest.fixture
async def book(settings: Settings) -> Settings:
    await aingest_sample_book(settings)
    return settings


def _contents(generator: ScriptedGenerator, index: int) -> list[str]:
    return [turn.text for turn in generator.requests[index].contents]


async def test_three_tokenless_questions_from_one_ip_share_one_session_and_history(
    book: Settings,
) -> None:
    generator = ScriptedGenerator(["Lidar measures distance with laser pulses [1]."])
    async with app_at(book, generator=generator) as at:
        reader = at.client(IP_A)
        first = await ask(reader, LIDAR)
        session_id = first.first("session")["session_id"]
        assert await count_rows(book.database_url, "users") == 1
        second = await ask(reader, "How far can it see?", session_id=session_id)
        third = await ask(reader, "What are its limitations?", session_id=session_id)
    assert [first.status, second.status, third.status] == [200, 200, 200]
    assert second.first("session")["session_id"] == session_id
    assert third.first("session")["session_id"] == session_id
    # Only the session's creation shows a token; follow-ups create no user.
    assert "token" not in second.first("session") and "token" not in third.first("session")
    assert await count_rows(book.database_url, "users") == 1
    assert await count_rows(book.database_url, "chat_sessions") == 1
    # The third prompt carries the conversation so far (both questions and answers).
    contents = _contents(generator, len(generator.requests) - 1)
    assert LIDAR in contents and "How far can it see?" in contents
    assert "Lidar measures distance with laser pulses [1]." in contents
    assert "What are its limitations?" in contents[-1]


async def test_same_session_id_from_another_ip_is_404(book: Settings) -> None:
    async with app_at(book) as at:
        first = await ask(at.client(IP_A), LIDAR)
        session_id = first.first("session")["session_id"]
        other = await ask(at.client(IP_B), "What are its limitations?", session_id=session_id)
    assert other.status == 404
    assert other.error_body == {
        "error": {"code": "session_not_found", "message": "no such session"}
    }


async def test_token_created_session_continued_without_the_token_is_404(book: Settings) -> None:
    async with app_at(book) as at:
        reader = at.client(IP_A)
        token = (await ask(reader, LIDAR)).first("session")["token"]
        with_token = await ask(reader, "What is odometry?", token=token)  # a new session
        session_id = with_token.first("session")["session_id"]
        assert (
            await ask(reader, "And its drift?", token=token, session_id=session_id)
        ).status == 200
        tokenless = await ask(reader, "And its drift?", session_id=session_id)
    assert tokenless.status == 404
    binding = await scalar(
        book.database_url,
        "SELECT client_binding FROM chat_sessions WHERE id = :id",
        id=uuid.UUID(session_id).bytes if book.is_sqlite else uuid.UUID(session_id),
    )
    assert binding is None  # token-only


async def test_archived_tokenless_session_is_not_continued(book: Settings) -> None:
    async with app_at(book) as at:
        reader = at.client(IP_A)
        first = await ask(reader, LIDAR)
        session_id, token = first.first("session")["session_id"], first.first("session")["token"]
        archived = await reader.delete(
            f"/api/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {token}"}
        )
        assert archived.status_code == 204
        assert (await ask(reader, "What are its limitations?", session_id=session_id)).status == 404


async def test_history_endpoints_without_a_token_are_401(book: Settings) -> None:
    async with app_at(book) as at:
        reader = at.client(IP_A)
        first = await ask(reader, LIDAR)
        session_id = first.first("session")["session_id"]
        message_id = first.first("session")["message_id"]
        responses = [
            await reader.get("/api/v1/sessions"),
            await reader.get(f"/api/v1/sessions/{session_id}/messages"),
            await reader.delete(f"/api/v1/sessions/{session_id}"),
            await reader.post(f"/api/v1/messages/{message_id}/feedback", json={"rating": "up"}),
        ]
    assert [r.status_code for r in responses] == [401, 401, 401, 401]
    assert {r.json()["error"]["code"] for r in responses} == {"unauthorized"}


async def test_binding_is_an_hmac_under_a_generated_key_kept_in_the_database(
    book: Settings,
) -> None:
    async with app_at(book) as at:
        first = await ask(at.client(IP_A), LIDAR)
    session_id = first.first("session")["session_id"]
    key = await scalar(book.database_url, "SELECT value FROM server_secrets")
    stored = await scalar(book.database_url, "SELECT client_binding FROM chat_sessions")
    assert key and len(key) >= 48
    assert stored == hmac.new(key.encode(), f"ip:{IP_A}".encode(), hashlib.sha256).hexdigest()
    assert IP_A not in stored
    # A new process (another worker or replica) reads the same key and continues the chat.
    async with app_at(book) as again:
        follow_up = await ask(
            again.client(IP_A), "What are its limitations?", session_id=session_id
        )
    assert follow_up.status == 200
    assert await count_rows(book.database_url, "server_secrets") == 1


async def test_configured_binding_secret_is_used_and_nothing_is_generated(
    book: Settings,
) -> None:
    secret = "operator-chosen-binding-secret-0123456789abcdef"
    configured = book.replace(session_binding_secret=secret)
    async with app_at(configured) as at:
        await ask(at.client(IP_A), LIDAR)
    stored = await scalar(book.database_url, "SELECT client_binding FROM chat_sessions")
    assert stored == hmac.new(secret.encode(), f"ip:{IP_A}".encode(), hashlib.sha256).hexdigest()
    assert await count_rows(book.database_url, "server_secrets") == 0


async def test_tokenless_sessions_can_be_turned_off(book: Settings) -> None:
    off = book.replace(tokenless_sessions=False)
    async with app_at(off) as at:
        reader = at.client(IP_A)
        first = await ask(reader, LIDAR)
        session_id, token = first.first("session")["session_id"], first.first("session")["token"]
        assert (await ask(reader, "What are its limitations?", session_id=session_id)).status == 404
        with_token = await ask(
            reader, "What are its limitations?", token=token, session_id=session_id
        )
        assert with_token.status == 200  # the token still works
    assert await scalar(book.database_url, "SELECT client_binding FROM chat_sessions") is None


def test_tokenless_sessions_setting_reads_false_from_the_environment(tmp_path: Path) -> None:
    assert make_settings(tmp_path).tokenless_sessions is True
    assert make_settings(tmp_path, TOKENLESS_SESSIONS="false").tokenless_sessions is False


async def test_binding_honours_trusted_proxies(book: Settings) -> None:
    proxied = book.replace(trusted_proxies=("10.0.0.0/8",))
    async with app_at(proxied) as at:
        proxy = at.client("10.0.0.5")
        first = await ask(proxy, LIDAR, headers={"X-Forwarded-For": IP_A})
        session_id = first.first("session")["session_id"]
        elsewhere = await ask(
            proxy,
            "What are its limitations?",
            session_id=session_id,
            headers={"X-Forwarded-For": IP_B},
        )
        same_reader = await ask(
            proxy,
            "What are its limitations?",
            session_id=session_id,
            headers={"X-Forwarded-For": f"{IP_A}, 10.0.0.9"},
        )
    assert elsewhere.status == 404
    assert same_reader.status == 200


# --------------------------------------------------------------------------- refused = free


async def _refused_then_accepted(settings: Settings, ip: str) -> list[int]:
    """Limit 2: one accepted chat, then 404s and 400s, then the second and a third."""
    limited = settings.replace(rate_limit_anonymous=2)
    async with app_at(limited) as at:
        reader = at.client(ip)
        statuses = [(await ask(reader, LIDAR)).status]
        foreign = str(uuid.uuid4())
        for _ in range(5):
            statuses.append(
                (await ask(reader, "What are its limitations?", session_id=foreign)).status
            )
        for _ in range(3):
            statuses.append((await reader.post("/api/v1/chat", json={"message": "  "})).status_code)
        second = await ask(reader, LIDAR)
        statuses.append(second.status)
        assert second.headers["ratelimit-remaining"] == "0"
        statuses.append((await ask(reader, LIDAR)).status)
    return statuses


async def test_refused_chats_do_not_count_against_the_limit_in_process(book: Settings) -> None:
    assert await _refused_then_accepted(book, IP_A) == [200] + [404] * 5 + [400] * 3 + [200, 429]


@pytest.mark.redis
async def test_refused_chats_do_not_count_against_the_limit_with_redis(
    book: Settings, redis_url: str
) -> None:
    import redis.asyncio as redis

    with_redis = book.replace(redis_url=redis_url)
    limited = with_redis.replace(rate_limit_anonymous=5)
    client = redis.Redis.from_url(redis_url)
    try:
        async with app_at(limited) as at:
            reader = at.client(IP_A)
            assert (await ask(reader, LIDAR)).status == 200
            key = f"bookchat:rl:ip:{IP_A}"
            assert int(await client.get(key) or 0) == 1
            for _ in range(4):
                refused = await ask(reader, "Its limits?", session_id=str(uuid.uuid4()))
                assert refused.status == 404
            assert int(await client.get(key) or 0) == 1  # unchanged by the 404s
        assert await _refused_then_accepted(with_redis, IP_B) == (
            [200] + [404] * 5 + [400] * 3 + [200, 429]
        )
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- IPv6 /64

V6_HOST = "2001:db8:5:7:a1b2:c3d4:e5f6:1"
V6_SAME_LAN = "2001:db8:5:7:9999:8888:7777:2"  # the same host after a privacy-address rotation
V6_OTHER_LAN = "2001:db8:5:8::1"


def test_the_client_network_is_the_ipv4_address_or_the_ipv6_slash_64() -> None:
    assert client_network(IP_A) == IP_A
    assert client_network(f"::ffff:{IP_A}") == IP_A
    assert client_network(V6_HOST) == client_network(V6_SAME_LAN) == "2001:db8:5:7::/64"
    assert client_network(V6_OTHER_LAN) == "2001:db8:5:8::/64"
    assert client_network("unknown") == "unknown"


async def test_a_tokenless_session_survives_an_ipv6_address_rotation(book: Settings) -> None:
    async with app_at(book) as at:
        first = await ask(at.client(V6_HOST), LIDAR)
        session_id = first.first("session")["session_id"]
        rotated = await ask(
            at.client(V6_SAME_LAN), "What are its limitations?", session_id=session_id
        )
        other = await ask(
            at.client(V6_OTHER_LAN), "What are its limitations?", session_id=session_id
        )
    assert rotated.status == 200
    assert rotated.first("session")["session_id"] == session_id
    assert other.status == 404


async def test_the_anonymous_limit_counts_an_ipv6_slash_64_as_one_reader(book: Settings) -> None:
    limited = book.replace(rate_limit_anonymous=2)
    async with app_at(limited) as at:
        statuses = [
            (await ask(at.client(f"2001:db8:5:7::{n:x}"), LIDAR)).status for n in range(1, 5)
        ]
        elsewhere = await ask(at.client(V6_OTHER_LAN), LIDAR)
    assert statuses == [200, 200, 429, 429]  # four addresses, one network, limit 2
    assert elsewhere.status == 200
