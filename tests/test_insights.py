"""Author insights on a seeded database: questions per day, content gaps (refusals grouped
by wording), thumbs-down answers, most- and never-cited pages; API key enforced; nothing
that identifies a reader (token, user/session/message id, IP) in any output."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from bookchat.db.config import create_engine
from bookchat.db.models import ChatSession, Message, User
from bookchat.db.services import new_user_with_token
from bookchat.ingest.chunking import chunk_book
from bookchat.insights.report import InsightsError, PageRef, group_refusals, parse_since
from bookchat.settings import SAMPLE_BOOK, Settings

from .chat_helpers import aingest_sample_book, app_client, ask
from .conftest import make_settings

API_KEY = "authors-key-0123456789"
PID = "How does PID control work?"
DRONE = [
    "How do I tune the PID of a quadcopter drone motor ESC firmware?",
    "How to tune PID for a quadcopter drone ESC firmware?",
    "how do i tune the PID of a quadcopter drone motor ESC firmware?",
]
GDP = "What is the GDP of Brazil?"
WORLD_CUP = "Who won the 1998 football World Cup?"
OLD_QUESTION = "An old question from forty days ago about lidar range"
FORWARDED_IP = "203.0.113.77"


@dataclass
class Seeded:
    settings: Settings
    reader_token: str
    secrets: set[str] = field(default_factory=set)  # must never appear in any output


@pytest.fixture
def book_settings(tmp_path: Path, migrated_database_url: str) -> Settings:
    """SQLite and, with TEST_POSTGRES_URL, PostgreSQL (the report's SQL must run on both)."""
    settings = make_settings(
        tmp_path, DATABASE_URL=migrated_database_url, API_KEYS=API_KEY, TRUSTED_PROXIES="0.0.0.0/0"
    )
    asyncio.run(aingest_sample_book(settings))
    return settings


async def _seed(settings: Settings) -> Seeded:
    secrets: set[str] = {"testclient", FORWARDED_IP, API_KEY}
    tokens: list[str] = []
    async for client in app_client(settings):
        headers = {"X-Forwarded-For": FORWARDED_IP}
        first = await ask(client, PID, headers=headers)
        token = first.first("session")["token"]
        tokens.append(token)
        follow = await ask(
            client, PID, token=token, session_id=first.first("session")["session_id"]
        )
        for question in DRONE:
            answer = await ask(client, question, token=token)
            assert answer.first("done")["finish_reason"] == "abstained", question
        for question in (GDP, GDP, WORLD_CUP):
            answer = await ask(client, question)
            assert answer.first("done")["finish_reason"] == "abstained", question
            tokens.append(answer.first("session")["token"])
        disliked = follow.first("done")["message_id"]
        response = await client.post(
            f"/api/v1/messages/{disliked}/feedback",
            json={"rating": "down", "comment": "too vague about the integral term"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200
        liked = first.first("done")["message_id"]
        await client.post(
            f"/api/v1/messages/{liked}/feedback",
            json={"rating": "up", "comment": "great"},
            headers={"Authorization": f"Bearer {token}"},
        )
    # An old conversation, outside the default 30-day window.
    engine = create_engine(settings)
    try:
        async with async_sessionmaker(engine)() as db:
            user, old_token = new_user_with_token()
            tokens.append(old_token)
            chat = ChatSession(user_id=user.id, title="old")
            old = datetime.now(UTC) - timedelta(days=40)
            db.add_all([user, chat])
            await db.flush()
            db.add(Message(session_id=chat.id, role="user", content=OLD_QUESTION, created_at=old))
            await db.commit()
            for model in (User, ChatSession, Message):
                secrets.update(str(i) for i in (await db.scalars(select(model.id))).all())
            secrets.update((await db.scalars(select(User.token_hash))).all())
    finally:
        await engine.dispose()
    secrets.update(tokens)
    return Seeded(settings=settings, reader_token=tokens[0], secrets=secrets)


@pytest.fixture
async def seeded(book_settings: Settings) -> Seeded:
    return await _seed(book_settings)


@pytest.fixture
async def client(seeded: Seeded) -> AsyncIterator[httpx.AsyncClient]:
    async for test_client in app_client(seeded.settings):
        yield test_client


def _assert_no_secrets(output: str, seeded: Seeded) -> None:
    leaked = sorted(s for s in seeded.secrets if s in output or s.replace("-", "") in output)
    assert leaked == []


async def test_insights_report_on_a_seeded_database(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    response = await client.get(
        "/api/v1/admin/insights", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["questions"] == 8  # 2 answered + 3 drone + 2 GDP + 1 World Cup
    assert report["refused"] == 6
    today = datetime.now(UTC).date().isoformat()
    days = report["questions_per_day"]
    assert len(days) == 31 and days[-1] == {"day": today, "questions": 8, "refused": 6}
    assert sum(d["questions"] for d in days) == 8  # the 40-day-old question is outside

    groups = report["refused_groups"]
    assert [(g["count"], g["question"] in DRONE) for g in groups[:1]] == [(3, True)]
    assert sorted(groups[0]["examples"]) == sorted({" ".join(q.split()) for q in DRONE})
    closest = [p["doc_path"] for p in groups[0]["closest_pages"]]
    assert "02-motion/02-pid-control" in closest
    assert all(p["url"].startswith("https://book.example.org/") for p in groups[0]["closest_pages"])
    assert [(g["question"], g["count"]) for g in groups[1:]] == [(GDP, 2), (WORLD_CUP, 1)]

    [down] = report["thumbs_down"]
    assert down["question"] == PID and down["comment"] == "too vague about the integral term"
    assert down["answer"] and {p["doc_path"] for p in down["cited_pages"]} >= {
        "02-motion/02-pid-control"
    }
    assert report["thumbs_down_count"] == 1

    top_page = report["most_cited_pages"][0]
    assert top_page["doc_path"] == "02-motion/02-pid-control" and top_page["count"] == 2
    assert "#" not in top_page["url"]
    assert report["most_cited_sections"][0]["count"] == 2
    assert report["most_cited_sections"][0]["section"]

    book_pages = {page.doc_path for page in chunk_book(SAMPLE_BOOK, site_url="https://x.org")}
    assert report["pages_indexed"] == len(book_pages)
    never = {p["doc_path"] for p in report["never_cited_pages"]}
    cited = {p["doc_path"] for p in report["most_cited_pages"]}
    assert never == book_pages - cited and "02-motion/02-pid-control" not in never

    _assert_no_secrets(response.text, seeded)

    wider = await client.get(
        "/api/v1/admin/insights?since=60d", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert wider.json()["questions"] == 9 and len(wider.json()["questions_per_day"]) == 61


async def test_insights_need_an_api_key(client: httpx.AsyncClient, seeded: Seeded) -> None:
    url = "/api/v1/admin/insights"
    missing = await client.get(url)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    unknown = await client.get(url, headers={"Authorization": "Bearer not-a-key"})
    assert unknown.status_code == 401
    reader = await client.get(url, headers={"Authorization": f"Bearer {seeded.reader_token}"})
    assert reader.status_code == 403 and reader.json()["error"]["code"] == "forbidden"
    assert "questions" not in reader.text
    bad = await client.get(url + "?since=yesterday", headers={"Authorization": f"Bearer {API_KEY}"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_error"
    page = await client.get("/admin/insights")
    assert (
        page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    )
    assert "API key" in page.text


def test_cli_prints_the_report_as_text_json_and_csv(
    book_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded = asyncio.run(_seed(book_settings))
    from bookchat.cli import main

    monkeypatch.setenv("DATABASE_URL", book_settings.database_url)
    monkeypatch.setenv("QDRANT_PATH", book_settings.qdrant_path)
    outputs = {}
    for flag in ("--json", "--csv", None):
        main(["insights", "--since", "30d", *([flag] if flag else [])])
        outputs[flag] = capsys.readouterr().out
    report = json.loads(outputs["--json"])
    assert report["questions"] == 8 and report["refused_groups"][0]["count"] == 3
    rows = list(csv.DictReader(io.StringIO(outputs["--csv"])))
    refused = [r for r in rows if r["kind"] == "refused"]
    assert [(r["text"], r["count"]) for r in refused[1:]] == [(GDP, "2"), (WORLD_CUP, "1")]
    assert [r["comment"] for r in rows if r["kind"] == "thumbs_down"] == [
        "too vague about the integral term"
    ]
    assert {r["kind"] for r in rows} >= {"questions_per_day", "cited_page", "never_cited"}
    assert "Refused questions (content gaps)" in outputs[None] and GDP in outputs[None]
    for output in outputs.values():
        _assert_no_secrets(output, seeded)
    with pytest.raises(SystemExit):
        main(["insights", "--since", "soon"])
    assert "since:" in capsys.readouterr().err


def test_refusals_group_by_wording_not_by_shared_topic_words() -> None:
    lidar = PageRef(doc_path="01-sensors/01-lidar", title="Lidar")
    groups = group_refusals(
        [
            ("Can lidar see through fog?", [lidar]),
            ("can lidar see   through fog", []),
            ("Does lidar see through thick fog?", [lidar]),
            ("Can lidar see through fog?", []),
            ("How much does a lidar cost?", []),
            ("why?", []),
            ("Why?", []),
            ("Why?", []),
        ]
    )
    assert [(g.count, g.question) for g in groups] == [
        (4, "Can lidar see through fog?"),
        (3, "Why?"),
        (1, "How much does a lidar cost?"),
    ]
    assert groups[0].examples[0] == "Can lidar see through fog?"
    assert sorted(groups[0].examples[1:]) == [
        "Does lidar see through thick fog?",
        "can lidar see through fog",
    ]
    assert [(p.doc_path, p.count) for p in groups[0].closest_pages] == [(lidar.doc_path, 2)]


def test_since_accepts_durations_and_dates_only() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert parse_since("30d", now) == now - timedelta(days=30)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("99999d", now) == parse_since("1900-01-01", now)  # clamped
    assert now - parse_since("99999d", now) == timedelta(days=3660)
    for bad in ("soon", "-3d", "2027-01-01", "3x"):
        with pytest.raises(InsightsError):
            parse_since(bad, now)
