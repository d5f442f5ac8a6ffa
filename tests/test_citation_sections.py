"""Citations point at the exact sub-section of a chunk made of merged small sections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from bookchat.answer.grounding import (
    Citation,
    PromptBuilder,
    citation_for,
    cited_passages,
    pin_citations,
)
from bookchat.answer.pipeline import AnswerDone, AnswerPipeline
from bookchat.devtools.fake_gemini import FakeGemini, Reply
from bookchat.ingest.chunking import chunk_book
from bookchat.llm.offline import OfflineGenerator
from bookchat.search.retriever import Retriever
from bookchat.search.types import ChunkPayload, SearchHit, section_for
from bookchat.settings import SAMPLE_BOOK, Settings

from .chat_helpers import aingest_sample_book, app_client, ask
from .conftest import make_settings
from .rag_fakes import FakeBM25Store

SITE = "https://book.example.org/docs"
PID = f"{SITE}/motion/pid-control"
WINDUP = (
    "When the load disappears, the huge integral makes the wheel overshoot badly. "
    "Anti-windup prevents this: clamp the integral to a limit, or stop integrating "
    "while the output is saturated."
)
MERGED_PAGE = (
    "# Page\n\n## Alpha\n\nShort alpha intro about gears.\n\n"
    "### Alpha one\n\nThe **first** part covers belts and pulleys.\n\n"
    "#### Detail\n\nTiny detail on tensioners.\n\n"
    "### Alpha two\n\nThe second part covers chains.\n\n## Beta\n\nShort beta.\n"
)


def _sample_chunks() -> list[ChunkPayload]:
    return [c for page in chunk_book(SAMPLE_BOOK, site_url=SITE) for c in page.chunks]


def _integral_chunk() -> ChunkPayload:
    return next(c for c in _sample_chunks() if c.url == f"{PID}#integral-term")


def _merged(tmp_path: Path) -> ChunkPayload:
    (tmp_path / "page.md").write_text(MERGED_PAGE, encoding="utf-8")
    (book,) = chunk_book(tmp_path, site_url=SITE)
    return book.chunks[0]


# -- what ingestion records --------------------------------------------------------------


def test_a_merged_chunk_records_every_heading_with_its_offset_and_url(tmp_path: Path) -> None:
    chunk = _merged(tmp_path)
    assert chunk.url == f"{SITE}/page#alpha"  # the chunk still links where its text starts
    assert [(s.heading, s.url) for s in chunk.sections] == [
        ("Alpha", f"{SITE}/page#alpha"),
        ("Alpha one", f"{SITE}/page#alpha-one"),
        ("Detail", f"{SITE}/page#detail"),  # H4s start no chunk but keep their anchor
        ("Alpha two", f"{SITE}/page#alpha-two"),
    ]
    # The bare page H1 leads the chunk; the first section owns it (offset after it).
    assert chunk.text.startswith("# Page\n\n## Alpha")
    assert chunk.text[chunk.sections[0].offset :].startswith("## Alpha\n")
    for section in chunk.sections[1:]:
        assert chunk.text[section.offset :].startswith(("### ", "#### "))
        assert section.heading in chunk.text[section.offset :].split("\n", 1)[0]


def test_every_sample_chunk_starts_with_its_own_section() -> None:
    multi = 0
    for chunk in _sample_chunks():
        assert chunk.sections and chunk.sections[0].url == chunk.url
        assert chunk.sections[0].heading == chunk.section
        multi += len(chunk.sections) > 1
    assert multi >= 3  # the PID page merges its small "Example" sections


# -- section_for ---------------------------------------------------------------------------


def test_section_for_finds_quoted_text_under_its_heading(tmp_path: Path) -> None:
    chunk = _merged(tmp_path)
    # Verbatim, then with Markdown stripped (how the offline answerer quotes), then a
    # paraphrase (how a model writes).
    assert section_for(chunk, "The **first** part covers belts and pulleys.") == (
        "Alpha one",
        f"{SITE}/page#alpha-one",
    )
    assert section_for(chunk, "The first part covers belts and pulleys.")[1].endswith("#alpha-one")
    assert section_for(chunk, "Tensioners get a tiny detail.")[1].endswith("#detail")
    assert section_for(chunk, "Chains are covered second")[1].endswith("#alpha-two")
    # The whole chunk, the bare H1 before the first section and unrelated text: the
    # chunk's own heading.
    assert section_for(chunk, chunk.text) == ("Alpha", chunk.url)
    assert section_for(chunk, "# Page") == ("Alpha", chunk.url)
    assert section_for(chunk, "Quantum chromodynamics") == ("Alpha", chunk.url)


def test_section_for_a_payload_from_an_old_collection_keeps_the_chunk_url(
    tmp_path: Path,
) -> None:
    raw = msgspec.to_builtins(_merged(tmp_path))
    del raw["sections"], raw["payload_hash"]  # written before sections were recorded
    old = msgspec.convert(raw, ChunkPayload)
    assert old.sections == [] and old.payload_hash == ""
    assert section_for(old, "The second part covers chains.") == ("Alpha", old.url)


def test_citation_for_uses_the_text_the_answer_took(tmp_path: Path) -> None:
    hit = SearchHit(id="x", score=0.5, payload=_merged(tmp_path))
    assert citation_for(1, hit).url.endswith("#alpha")
    cited = citation_for(1, hit, "The second part covers chains.")
    assert (cited.section, cited.url) == ("Alpha two", f"{SITE}/page#alpha-two")


# -- pinning the citations of an answer ----------------------------------------------------


def test_cited_passages_are_the_sentences_each_marker_ends() -> None:
    answer = "Intro line.\n\nBelts run on pulleys [1]. Chains are second [1][2]. Also [3, 4]."
    assert cited_passages(answer) == {
        1: ["Belts run on pulleys", "Chains are second"],
        2: ["Chains are second"],
        3: ["Also"],
        4: ["Also"],
    }


def test_pin_citations_links_the_section_most_cited_sentences_sit_under(tmp_path: Path) -> None:
    chunk = _merged(tmp_path)
    base = citation_for(1, SearchHit(id="x", score=0.5, payload=chunk))
    other = Citation(
        n=2, doc_path="b", title="B", section="B", url="https://b#b", module="", chapter="",
        score=0.1,
    )  # fmt: skip
    answer = (
        "The second part covers chains [1]. Chains are covered second [1]. "
        "The first part covers belts and pulleys [1]. Unrelated [2]."
    )
    pinned = pin_citations([base, other], answer, {1: chunk})
    assert (pinned[0].section, pinned[0].url) == ("Alpha two", f"{SITE}/page#alpha-two")
    assert pinned[0].score == base.score and pinned[1] == other  # no payload: unchanged


def test_pin_citations_leaves_single_section_sources_without_reading_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sources under one section each (most answers): citations unchanged, and the
    answer's sentences are never split (that work only serves merged chunks)."""
    chunk = _merged(tmp_path)
    single = msgspec.structs.replace(chunk, sections=chunk.sections[:1])
    base = citation_for(1, SearchHit(id="x", score=0.5, payload=single))

    def unused(answer: str) -> dict[int, list[str]]:
        raise AssertionError("cited_passages ran for single-section sources")

    monkeypatch.setattr("bookchat.answer.grounding.cited_passages", unused)
    answer = "The second part covers chains [1]. Unrelated [2]."
    assert pin_citations([base], answer, {1: single}) == [base]


async def test_offline_answer_cites_the_merged_later_sections_anchor() -> None:
    chunks = _sample_chunks()
    pipeline = AnswerPipeline(
        Retriever(FakeBM25Store(chunks), None), OfflineGenerator(), PromptBuilder("Robots")
    )
    question = "How does anti-windup stop the integral from growing when the output saturates?"
    events = [e async for e in pipeline.run(question)]
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.grounded
    integral = _integral_chunk()
    # The chunk opens with "## Integral term"; the quoted sentences sit under its H3.
    assert integral.section == "Integral term" and "### Integral windup" in integral.text
    (cited,) = [c for c in done.citations if c.doc_path == integral.doc_path]
    assert (cited.section, cited.url) == ("Integral windup", f"{PID}#integral-windup")
    quoted = cited_passages(done.text)[cited.n]
    assert any(q.rstrip(".") in WINDUP for q in quoted), done.text


# -- a model's answer through the HTTP API --------------------------------------------------


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
        SITE_URL=SITE,
    )
    await aingest_sample_book(settings)
    module_fake.reset()
    async for client in app_client(settings):
        yield client, module_fake


async def test_model_answer_citation_carries_the_later_sections_anchor(gemini_client) -> None:
    client, fake = gemini_client
    # The model paraphrases the windup passage and cites every source it was given.
    reply = (
        "When the output saturates the integral keeps growing, so anti-windup clamps the "
        "integral or stops integrating while saturated [1][2][3][4][5]."
    )
    question = "What is integral windup and how is it prevented?"
    fake.script_generate(Reply([reply]), Reply([reply]))
    streamed = await ask(client, question)
    first = {c["url"] for c in streamed.first("citations")["citations"]}
    assert f"{PID}#integral-term" in first  # sources are listed by the chunk's own link
    done = streamed.first("done")["citations"]
    urls = {c["url"] for c in done}
    assert f"{PID}#integral-windup" in urls and f"{PID}#integral-term" not in urls
    assert {"section": "Integral windup", "url": f"{PID}#integral-windup"}.items() <= next(
        c for c in done if c["url"].endswith("#integral-windup")
    ).items()

    response = await client.post(
        "/api/v1/chat", json={"message": question}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["citations"] == done


async def test_offline_answer_over_http_cites_the_later_sections_anchor(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path, DATABASE_URL=sqlite_url, SITE_URL=SITE)
    await aingest_sample_book(settings)
    question = "How does anti-windup stop the integral from growing when the output saturates?"
    async for client in app_client(settings):
        streamed = await ask(client, question)
        response = await client.post(
            "/api/v1/chat", json={"message": question}, headers={"Accept": "application/json"}
        )
    done = streamed.first("done")
    assert done["grounded"] is True
    assert f"{PID}#integral-term" in {c["url"] for c in streamed.first("citations")["citations"]}
    assert f"{PID}#integral-windup" in {c["url"] for c in done["citations"]}
    assert response.json()["citations"] == done["citations"]
