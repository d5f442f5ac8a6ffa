"""Resuming a stream, in process: who may resume which answer, and what a finished answer
whose events are gone gets (the live cases run on granian in test_resume_server.py)."""

from __future__ import annotations

import uuid

import pytest

from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book, ask
from .identity_helpers import app_at

IP_A = "203.0.113.7"
IP_B = "198.51.100.23"


@pytest.fixture
async def book(any_db_settings: Settings) -> Settings:
    """The sample book on SQLite and (with TEST_POSTGRES_URL) PostgreSQL."""
    await aingest_sample_book(any_db_settings)
    return any_db_settings


async def test_session_event_announces_the_assistant_message_that_events_resume(
    book: Settings,
) -> None:
    async with app_at(book) as at:
        reader = at.client(IP_A)
        answer = await ask(reader, "What is lidar?")
        session = answer.first("session")
        assert answer.ids == [str(n) for n in range(1, len(answer.events) + 1)]
        assert session["message_id"] == answer.first("done")["message_id"]
        token = session["token"]
        history = await reader.get(
            f"/api/v1/sessions/{session['session_id']}/messages",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert history.json()["messages"][-1]["id"] == session["message_id"]
        # Read to the end: nothing is kept, the stored message is where the answer lives.
        gone = await reader.get(
            f"/api/v1/messages/{session['message_id']}/events",
            headers={"Authorization": f"Bearer {token}", "Last-Event-ID": "3"},
        )
    assert gone.status_code == 410
    assert gone.json() == {
        "error": {
            "code": "stream_expired",
            "message": "the answer is complete and its events are no longer kept",
        },
        "message_id": session["message_id"],
        "session_id": session["session_id"],
    }


async def test_only_the_owner_may_resume_an_answer_tokenless_from_the_same_ip(
    book: Settings,
) -> None:
    async with app_at(book) as at:
        owner, stranger = at.client(IP_A), at.client(IP_B)
        session = (await ask(owner, "What is lidar?")).first("session")
        path = f"/api/v1/messages/{session['message_id']}/events"
        other_token = (await ask(stranger, "What is odometry?")).first("session")["token"]
        question_id = (
            await owner.get(
                f"/api/v1/sessions/{session['session_id']}/messages",
                headers={"Authorization": f"Bearer {session['token']}"},
            )
        ).json()["messages"][0]["id"]

        by_token = await stranger.get(path, headers={"Authorization": f"Bearer {session['token']}"})
        tokenless_same_ip = await owner.get(path, params={"last_event_id": "2"})
        tokenless_other_ip = await stranger.get(path)
        foreign_token = await owner.get(path, headers={"Authorization": f"Bearer {other_token}"})
        unknown = await owner.get(
            f"/api/v1/messages/{uuid.uuid4()}/events",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        the_question = await owner.get(
            f"/api/v1/messages/{question_id}/events",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        bad_id = await owner.get(path, headers={"Last-Event-ID": "three"})
    # The owner (by token, or tokenless from the session's IP) is told the events are gone.
    assert by_token.status_code == 410
    assert tokenless_same_ip.status_code == 410
    not_found = {"error": {"code": "message_not_found", "message": "no such answer"}}
    for response in (tokenless_other_ip, foreign_token, unknown, the_question):
        assert response.status_code == 404
        assert response.json() == not_found
    assert bad_id.status_code == 400
    assert bad_id.json()["error"]["code"] == "validation_error"


async def test_only_the_owner_may_stop_an_answer_tokenless_from_the_same_ip(
    book: Settings,
) -> None:
    async with app_at(book) as at:
        owner, stranger = at.client(IP_A), at.client(IP_B)
        session = (await ask(owner, "What is lidar?")).first("session")
        path = f"/api/v1/messages/{session['message_id']}/stop"
        other_token = (await ask(stranger, "What is odometry?")).first("session")["token"]
        tokenless_other_ip = await stranger.post(path)
        foreign_token = await owner.post(path, headers={"Authorization": f"Bearer {other_token}"})
        unknown = await owner.post(f"/api/v1/messages/{uuid.uuid4()}/stop")
        tokenless_same_ip = await owner.post(path)
        owners_token = {"Authorization": f"Bearer {session['token']}"}
        by_token = await stranger.post(path, headers=owners_token)
        history = await owner.get(
            f"/api/v1/sessions/{session['session_id']}/messages", headers=owners_token
        )
    not_found = {"error": {"code": "message_not_found", "message": "no such answer"}}
    for response in (tokenless_other_ip, foreign_token, unknown):
        assert response.status_code == 404
        assert response.json() == not_found
    assert tokenless_same_ip.status_code == 204 and by_token.status_code == 204
    # The answer had finished: a stop leaves it as it was.
    assert history.json()["messages"][-1]["status"] == "complete"


async def test_tokenless_resume_is_refused_when_tokenless_sessions_are_off(
    book: Settings,
) -> None:
    async with app_at(book.replace(tokenless_sessions=False)) as at:
        reader = at.client(IP_A)
        session = (await ask(reader, "What is lidar?")).first("session")
        response = await reader.get(f"/api/v1/messages/{session['message_id']}/events")
    assert response.status_code == 404
