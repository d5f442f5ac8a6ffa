"""The answer pipeline end to end on the sample book, with Gemini played by the fake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bookchat.devtools.fake_gemini import FakeGemini, Reply
from bookchat.settings import Settings

from .chat_helpers import aingest_sample_book, app_client, ask
from .conftest import make_settings


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeGemini]:
    with FakeGemini() as gemini:
        yield gemini


@pytest.fixture
async def gemini_client(
    tmp_path: Path, sqlite_url: str, module_fake: FakeGemini
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeGemini]]:
    settings: Settings = make_settings(
        tmp_path,
        DATABASE_URL=sqlite_url,
        GEMINI_API_KEY="test-key",
        GEMINI_BASE_URL=module_fake.base_url,
        FIRST_TOKEN_TIMEOUT="2",
    )
    await aingest_sample_book(settings)  # dense vectors from the fake's embeddings
    module_fake.reset()
    async for client in app_client(settings):
        yield client, module_fake


async def test_out_of_book_question_never_reaches_the_llm(gemini_client) -> None:
    client, fake = gemini_client
    answer = await ask(client, "What is the GDP of Brazil?")
    done = answer.first("done")
    assert done["grounded"] is False and done["finish_reason"] == "abstained"
    assert fake.generate_requests == 0
    assert "does not" in answer.text or "couldn't" in answer.text
    # Hybrid retrieval always returns the nearest sections, but they share no word of the
    # question: no links to them (a miss that shares some does list them, see
    # test_answer_pipeline's related-sections test).
    assert "](https://book.example.org/" not in answer.text and "table of contents" in answer.text


async def test_hybrid_answer_calls_gemini_with_numbered_context(gemini_client) -> None:
    client, fake = gemini_client
    fake.script_generate(Reply(["PID sums three terms [1]."]))
    answer = await ask(client, "How does a PID controller work?")
    assert answer.text == "PID sums three terms [1]."
    request = next(r for r in fake.requests if r.path.endswith(":streamGenerateContent"))
    prompt = str(request.body)
    assert "<context>" in prompt and "[1]" in answer.text
    assert answer.first("done")["citations"][0]["url"].startswith(
        "https://book.example.org/motion/pid-control"
    )


async def test_follow_up_retrieves_the_first_questions_section(gemini_client) -> None:
    client, fake = gemini_client
    first = await ask(client, "What is wheel odometry?")
    token, session_id = first.first("session")["token"], first.first("session")["session_id"]
    second = await ask(client, "What are its limitations?", token=token, session_id=session_id)
    urls = [c["url"] for c in second.first("citations")["citations"]]
    assert "https://book.example.org/sensors/odometry#odometry-limitations" in urls[:3]
    # The model saw the earlier turn as history.
    last = [r for r in fake.requests if r.path.endswith(":streamGenerateContent")][-1]
    assert "What is wheel odometry?" in str(last.body)


async def test_citation_outside_the_retrieved_set_is_dropped(gemini_client) -> None:
    client, fake = gemini_client
    fake.script_generate(Reply(["Lidar measures time of flight [1]", " and more [9]."]))
    answer = await ask(client, "How does lidar measure distance?")
    retrieved = answer.first("citations")["citations"]
    assert len(retrieved) == 5
    assert [c["n"] for c in answer.first("done")["citations"]] == [1]
    assert "[9]" not in answer.text


async def test_generation_timeout_is_an_error_event_after_the_headers(gemini_client) -> None:
    from bookchat.devtools.fake_gemini import Hang

    client, fake = gemini_client
    fake.set_model_rule("gemini-2.5-flash", Hang())
    fake.set_model_rule("gemini-2.5-flash-lite", Hang())
    answer = await ask(client, "How does a PID controller work?")
    assert answer.status == 200
    assert answer.names()[-1] == "error"
    error = answer.events[-1][1]
    assert error["code"] == "generation_timeout" and error["retryable"] is True


# A reader's paraphrase that shares only part of the book's words ("jittery" is not in the
# book): the relevance decision's grey zone, which goes to the model.
GREY_QUESTION = "Why does the D part of my controller make the motor output so jittery?"


async def test_weak_but_relevant_retrieval_reaches_the_model(gemini_client) -> None:
    client, fake = gemini_client
    fake.script_generate(Reply(["The derivative amplifies measurement noise [1]."]))
    answer = await ask(client, GREY_QUESTION)
    done = answer.first("done")
    assert fake.generate_requests == 1
    assert done["grounded"] is True and done["citations"]


async def test_the_models_not_covered_reply_is_an_ungrounded_abstention(gemini_client) -> None:
    client, fake = gemini_client
    before = await client.get("/metrics")
    fake.script_generate(Reply(["The book does not cover this.", " It covers PID terms [1]."]))
    answer = await ask(client, GREY_QUESTION)
    done = answer.first("done")
    assert fake.generate_requests == 1  # the model was asked, and declined
    assert done["grounded"] is False and done["finish_reason"] == "not_covered"
    assert done["citations"] == []
    after = await client.get("/metrics")
    assert _abstained(after.text) == _abstained(before.text) + 1


def _abstained(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('bookchat_chat_outcomes_total{outcome="abstained"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
