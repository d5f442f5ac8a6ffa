"""Signed-in readers: JWTs of the site's identity provider (HS256 secret or a JWKS served
on 127.0.0.1 with RS256/ES256/EdDSA keys the test makes), and migrate-sessions."""

from __future__ import annotations

import time

import pytest

from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book, ask
from .identity_helpers import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    JwksServer,
    SigningKey,
    app_at,
    bearer,
    count_rows,
    hs256,
)
from .test_faults import LogCapture, dead_port

PHONE, LAPTOP = "203.0.113.7", "198.51.100.23"
LIDAR = "What is lidar?"


@pytest.fixture
async def book(settings: Settings) -> Settings:
    await aingest_sample_book(settings)
    return settings


def hs_settings(settings: Settings) -> Settings:
    return settings.replace(
        auth_jwt_secret=HS_SECRET, auth_jwt_issuer=ISSUER, auth_jwt_audience=AUDIENCE
    )


async def test_hs256_reader_is_signed_in_with_history_on_two_devices(book: Settings) -> None:
    async with app_at(hs_settings(book)) as at:
        phone, laptop = at.client(PHONE), at.client(LAPTOP)
        first = await ask(phone, LIDAR, token=hs256("reader-1"))
        assert first.status == 200
        session = first.first("session")
        assert "token" not in session  # a signed-in reader gets no guest token
        assert "x-bookchat-token" not in first.headers
        assert first.headers["ratelimit-limit"] == str(book.rate_limit_token)  # token tier

        # The laptop, with a token issued later, sees and continues the same conversation.
        later = hs256("reader-1", iat=int(time.time()) + 1)
        listed = await laptop.get("/api/v1/sessions", headers=bearer(later))
        assert listed.status_code == 200
        assert [s["id"] for s in listed.json()["sessions"]] == [session["session_id"]]
        follow_up = await ask(
            laptop, "What are its limitations?", token=later, session_id=session["session_id"]
        )
        assert follow_up.status == 200
        messages = await laptop.get(
            f"/api/v1/sessions/{session['session_id']}/messages", headers=bearer(later)
        )
        assert [m["role"] for m in messages.json()["messages"]] == ["user", "assistant"] * 2

        # Another signed-in reader sees none of it.
        other = await laptop.get("/api/v1/sessions", headers=bearer(hs256("reader-2")))
        assert other.status_code == 200 and other.json()["sessions"] == []
    assert await count_rows(book.database_url, "users") == 2  # one row per `sub`


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(hs256(exp=int(time.time()) - 3600), id="expired"),
        pytest.param(hs256(iss="https://evil.example.org"), id="wrong-issuer"),
        pytest.param(hs256(aud="https://another-site.example.org"), id="wrong-audience"),
        pytest.param(hs256(secret="x" * 64), id="bad-signature"),
        pytest.param(hs256(sub=None), id="no-sub"),
        pytest.param(hs256(exp=None), id="no-exp"),
        pytest.param("opaque-better-auth-session-token.not-a-jwt", id="better-auth-opaque"),
        pytest.param("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", id="alg-none"),
    ],
)
async def test_invalid_jwt_is_anonymous_on_chat_and_401_on_history(
    book: Settings, token: str
) -> None:
    async with app_at(hs_settings(book)) as at:
        reader = at.client(PHONE)
        answer = await ask(reader, LIDAR, token=token)
        assert answer.status == 200  # answered, never a 401 that signs the reader out
        assert answer.first("session")["token"].startswith("bc_")  # as a new guest
        assert answer.headers["ratelimit-limit"] == str(book.rate_limit_anonymous)
        history = await reader.get("/api/v1/sessions", headers=bearer(token))
        assert history.status_code == 401
        assert history.json()["error"]["code"] == "unauthorized"
        migrate = await reader.post("/api/v1/auth/migrate-sessions", json={}, headers=bearer(token))
        assert migrate.status_code == 401
    assert await count_rows(book.database_url, "users") == 1  # the guest only


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_jwks_reader_is_signed_in_for_each_algorithm(book: Settings, algorithm: str) -> None:
    key = SigningKey.make(algorithm)
    with JwksServer([key]).running() as jwks:
        configured = book.replace(
            auth_jwks_url=jwks.url, auth_jwt_issuer=ISSUER, auth_jwt_audience=AUDIENCE
        )
        async with app_at(configured) as at:
            phone, laptop = at.client(PHONE), at.client(LAPTOP)
            first = await ask(phone, LIDAR, token=key.sign("reader-9"))
            assert first.status == 200 and "token" not in first.first("session")
            listed = await laptop.get("/api/v1/sessions", headers=bearer(key.sign("reader-9")))
            assert listed.status_code == 200
            assert [s["id"] for s in listed.json()["sessions"]] == [
                first.first("session")["session_id"]
            ]
            # An HS256 token is refused when only a JWKS is configured (no alg confusion).
            forged = hs256("reader-9")
            assert (await laptop.get("/api/v1/sessions", headers=bearer(forged))).status_code == 401
    assert jwks.fetches == 1  # the key set is cached


async def test_jwks_keys_are_cached_and_refreshed_on_rotation(
    book: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No waiting out the refetch cooldown (30 s) in a test: the rotation follows at once.
    monkeypatch.setattr("bookchat.chat.idp_tokens.KID_REFRESH_COOLDOWN", 0.0)
    old, new, stranger = (
        SigningKey.make("RS256"),
        SigningKey.make("RS256"),
        SigningKey.make("RS256"),
    )
    server = JwksServer([old])
    with server.running() as jwks:
        configured = book.replace(auth_jwks_url=jwks.url, auth_jwt_audience=AUDIENCE)
        async with app_at(configured) as at:
            reader = at.client(PHONE)
            for _ in range(3):
                listed = await reader.get("/api/v1/sessions", headers=bearer(old.sign()))
                assert listed.status_code == 200
            assert jwks.fetches == 1
            server.keys = [new]  # the provider rotates its key
            assert (
                await reader.get("/api/v1/sessions", headers=bearer(new.sign()))
            ).status_code == 200
            assert jwks.fetches == 2  # an unknown kid refetched the set once
            # A key the provider never published stays refused.
            refused = await reader.get("/api/v1/sessions", headers=bearer(stranger.sign()))
            assert refused.status_code == 401


async def test_jwks_server_down_is_one_log_line_anonymous_chat_and_no_500(book: Settings) -> None:
    key = SigningKey.make("RS256")
    down = book.replace(
        auth_jwks_url=f"http://127.0.0.1:{dead_port()}/jwks", auth_jwt_audience=AUDIENCE
    )
    with LogCapture("bookchat.identity") as logs:
        async with app_at(down) as at:
            reader = at.client(PHONE)
            answers = [await ask(reader, LIDAR, token=key.sign()) for _ in range(3)]
            history = await reader.get("/api/v1/sessions", headers=bearer(key.sign()))
    assert [a.status for a in answers] == [200, 200, 200]
    assert all(a.first("session")["token"].startswith("bc_") for a in answers)  # anonymous
    assert history.status_code == 503  # cannot be verified now: not "you are signed out"
    assert history.json()["error"]["code"] == "service_unavailable"
    warnings = [r for r in logs.records() if r["level"] == "warning"]
    assert len(warnings) == 1, warnings
    assert "JWKS unreachable" in str(warnings[0]["msg"]) and "AUTH_JWKS_URL" in str(
        warnings[0]["msg"]
    )


# --------------------------------------------------------------------------- migrate-sessions


async def _sessions_of(client: object, token: str) -> set[str]:
    response = await client.get("/api/v1/sessions", headers=bearer(token))  # type: ignore[attr-defined]
    assert response.status_code == 200
    return {s["id"] for s in response.json()["sessions"]}


async def test_migrate_sessions_moves_exactly_the_guests_sessions_once(book: Settings) -> None:
    async with app_at(hs_settings(book)) as at:
        phone, stranger = at.client(PHONE), at.client(LAPTOP)
        mine = await ask(phone, LIDAR)
        guest_token = mine.first("session")["token"]
        mine_too = await ask(phone, "What is odometry?", token=guest_token)
        theirs = await ask(stranger, "What is a PID controller?")
        their_token = theirs.first("session")["token"]

        signed_in = hs256("reader-1")
        moved = await phone.post(
            "/api/v1/auth/migrate-sessions",
            json={"anonymous_token": guest_token},
            headers=bearer(signed_in),
        )
        assert moved.status_code == 200 and moved.json() == {"migrated_count": 2}
        assert await _sessions_of(phone, signed_in) == {
            mine.first("session")["session_id"],
            mine_too.first("session")["session_id"],
        }
        again = await phone.post(
            "/api/v1/auth/migrate-sessions",
            json={"anonymous_token": guest_token},
            headers=bearer(signed_in),
        )
        assert again.json() == {"migrated_count": 0}
        # The other guest's session never moved.
        assert await _sessions_of(stranger, their_token) == {theirs.first("session")["session_id"]}
        assert await _sessions_of(phone, guest_token) == set()
        # A moved session is token-only now: no tokenless continuation from the old IP.
        tokenless = await ask(
            phone, "What are its limitations?", session_id=mine.first("session")["session_id"]
        )
        assert tokenless.status == 404


async def test_migrate_sessions_without_a_token_moves_this_ips_tokenless_sessions(
    book: Settings,
) -> None:
    async with app_at(hs_settings(book)) as at:
        phone, stranger = at.client(PHONE), at.client(LAPTOP)
        mine = [
            (await ask(phone, q)).first("session")["session_id"]
            for q in (LIDAR, "What is odometry?")
        ]
        theirs = await ask(stranger, "What is a PID controller?")
        signed_in = hs256("reader-1")
        counts = []
        for body in ({}, {"anonymous_token": "site-own-guest-id-not-a-bookchat-token"}):
            moved = await phone.post(
                "/api/v1/auth/migrate-sessions", json=body, headers=bearer(signed_in)
            )
            assert moved.status_code == 200
            counts.append(moved.json()["migrated_count"])
        assert counts == [2, 0]  # the second call (an unknown token: by IP again) is a no-op
        assert await _sessions_of(phone, signed_in) == set(mine)
        assert await _sessions_of(stranger, theirs.first("session")["token"]) == {
            theirs.first("session")["session_id"]
        }


async def test_migrate_sessions_needs_a_verified_sign_in(book: Settings) -> None:
    async with app_at(hs_settings(book)) as at:
        phone = at.client(PHONE)
        guest_token = (await ask(phone, LIDAR)).first("session")["token"]
        no_bearer = await phone.post("/api/v1/auth/migrate-sessions", json={})
        guest_bearer = await phone.post(
            "/api/v1/auth/migrate-sessions",
            json={"anonymous_token": guest_token},
            headers=bearer(guest_token),  # a bookchat guest token is not a sign-in
        )
    assert no_bearer.status_code == 401 and guest_bearer.status_code == 401
    assert guest_bearer.json()["error"]["code"] == "unauthorized"


async def test_openapi_documents_migrate_sessions_and_no_401_on_chat(book: Settings) -> None:
    async with app_at(book) as at:
        schema = (await at.client().get("/schema/openapi.json")).json()
    chat = schema["paths"]["/api/v1/chat"]["post"]
    assert "401" not in chat["responses"]  # an unverifiable bearer is anonymous there
    migrate = schema["paths"]["/api/v1/auth/migrate-sessions"]["post"]
    assert {"200", "401"} <= set(migrate["responses"])
    body = migrate["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("MigrateSessionsRequest")
    request = schema["components"]["schemas"]["ChatRequest"]["properties"]
    assert "maxLength" not in str(request["source_section"])  # cut, not refused
    assert "word boundary" in request["source_section"]["description"]
    assert "401" in schema["paths"]["/api/v1/sessions"]["get"]["responses"]
