"""Incremental, idempotent ingestion with the real Gemini client against the fake."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bookchat.devtools.fake_gemini import FakeGemini, RateLimited, ServerError
from bookchat.ingest.pipeline import IngestError, IngestSummary, chunk_id, ingest_book
from bookchat.llm.embeddings import GeminiEmbedder
from bookchat.llm.gemini import make_genai_client
from bookchat.search.embedded import EmbeddedVectorStore
from bookchat.search.types import CollectionMismatchError
from bookchat.settings import SAMPLE_BOOK

SITE = "https://book.example.org"


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeGemini]:
    with FakeGemini() as gemini:
        yield gemini


@pytest.fixture
def fake(module_fake: FakeGemini) -> FakeGemini:
    module_fake.reset()
    return module_fake


@pytest.fixture
def book(tmp_path: Path) -> Path:
    """A writable copy of the sample book."""
    return Path(shutil.copytree(SAMPLE_BOOK, tmp_path / "docs"))


def embedder_for(fake: FakeGemini) -> GeminiEmbedder:
    client = make_genai_client("test-key", fake.base_url)
    return GeminiEmbedder(client, model="gemini-embedding-001", dim=768, max_retries=3)


async def ingest(
    book: Path, store: EmbeddedVectorStore, fake: FakeGemini, **kw: object
) -> IngestSummary:
    return await ingest_book(book, store=store, embedder=embedder_for(fake), site_url=SITE, **kw)  # type: ignore[arg-type]


async def test_second_run_on_an_unchanged_book_changes_and_embeds_nothing(
    book: Path, tmp_path: Path, fake: FakeGemini
) -> None:
    store = EmbeddedVectorStore(tmp_path / "qdrant", "book")
    first = await ingest(book, store, fake)
    assert first.chunks_added > 30 and first.embedding_calls >= 1
    assert fake.embed_texts == first.chunks_added
    fake.reset()
    second = await ingest(book, store, fake)
    assert (second.chunks_added, second.chunks_updated, second.chunks_deleted) == (0, 0, 0)
    assert second.chunks_unchanged == first.chunks_added
    assert second.files_changed == 0 and second.embedding_calls == 0
    assert fake.embed_requests == 0
    assert await store.count() == first.chunks_added
    await store.close()


async def test_editing_a_paragraph_reembeds_only_that_pages_changed_chunks(
    book: Path, tmp_path: Path, fake: FakeGemini
) -> None:
    store = EmbeddedVectorStore(tmp_path / "qdrant", "book")
    first = await ingest(book, store, fake)
    lidar_before = [p for p in await store.stored_points() if p.doc_path == "01-sensors/01-lidar"]
    page = book / "01-sensors" / "01-lidar.md"
    text = page.read_text()
    paragraph = next(
        p
        for p in text.split("\n\n")
        if len(p) > 200 and not p.startswith(("#", "-", "|", ":", "`"))
    )
    page.write_text(text.replace(paragraph, paragraph + " Lidar units also dislike fog."))
    fake.reset()
    second = await ingest(book, store, fake)
    assert second.files_changed == 1
    assert 1 <= second.chunks_added <= 2  # the edited chunk (and its overlap neighbour)
    assert second.chunks_deleted == second.chunks_added
    assert fake.embed_texts == second.chunks_added
    lidar = [p for p in await store.stored_points() if p.doc_path == "01-sensors/01-lidar"]
    assert len(lidar) == len(lidar_before)  # stale versions were deleted, none duplicated
    assert len({p.id for p in lidar} - {p.id for p in lidar_before}) == second.chunks_added
    assert await store.count() == first.chunks_added
    hits = await store.search(query_text="dislike fog", dense=None, filters=None, limit=1)
    assert hits and hits[0].payload.doc_path == "01-sensors/01-lidar"
    await store.close()


async def test_deleting_a_page_removes_its_chunks(
    book: Path, tmp_path: Path, fake: FakeGemini
) -> None:
    store = EmbeddedVectorStore(tmp_path / "qdrant", "book")
    await ingest(book, store, fake)
    before = {p.doc_path for p in await store.stored_points()}
    assert "04-software/01-middleware" in before
    (book / "04-software" / "01-middleware.md").unlink()
    summary = await ingest(book, store, fake)
    after = {p.doc_path for p in await store.stored_points()}
    assert summary.files_deleted == 1 and summary.chunks_deleted > 0
    assert after == before - {"04-software/01-middleware"}
    await store.close()


async def test_rate_limited_twice_then_ok_lets_ingestion_finish(
    book: Path, tmp_path: Path, fake: FakeGemini
) -> None:
    fake.script_embed(RateLimited(retry_delay=0.01), RateLimited(retry_delay=0.01))
    store = EmbeddedVectorStore(tmp_path / "qdrant", "book")
    summary = await ingest(book, store, fake)
    assert await store.count() == summary.chunks_added > 0
    assert summary.embedding_calls >= 3  # two refused calls were retried
    await store.close()


async def test_server_errors_forever_fail_clearly_and_write_nothing_half(
    book: Path, tmp_path: Path, fake: FakeGemini
) -> None:
    store = EmbeddedVectorStore(tmp_path / "qdrant", "book")
    fake.script_embed(*[ServerError(500)] * 50)
    with pytest.raises(IngestError) as failure:
        await ingest(book, store, fake)
    message = str(failure.value)
    assert "embedding failed" in message and "Re-run" in message
    # Every page is either complete or untouched: here the first wave failed, so nothing.
    assert await store.count() == 0
    fake.reset()
    summary = await ingest(book, store, fake)  # a re-run resumes and completes
    assert await store.count() == summary.chunks_added > 0
    await store.close()


async def test_model_or_dimension_mismatch_names_the_fix(
    book: Path, tmp_path: Path, fake: FakeGemini
) -> None:
    store = EmbeddedVectorStore(tmp_path / "qdrant", "book")
    await ingest_book(book, store=store, embedder=None, site_url=SITE)  # BM25-only collection
    with pytest.raises(CollectionMismatchError, match="--recreate"):
        await ingest(book, store, fake)
    summary = await ingest(book, store, fake, recreate=True)
    assert summary.chunks_added == await store.count()
    await store.close()


async def test_dry_run_writes_and_embeds_nothing(
    book: Path, tmp_path: Path, fake: FakeGemini
) -> None:
    store = EmbeddedVectorStore(tmp_path / "qdrant", "book")
    summary = await ingest(book, store, fake, dry_run=True)
    assert summary.chunks_added > 0 and summary.embedding_calls == 0
    assert fake.embed_requests == 0 and await store.count() == 0
    await store.close()


async def test_a_collection_from_before_sections_gets_payload_updates_not_new_vectors(
    book: Path, tmp_path: Path, fake: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bookchat.search.embedded as embedded
    from bookchat.search.collection import payload_dict

    def legacy_payload(payload: object) -> dict[str, object]:
        raw = payload_dict(payload)  # type: ignore[arg-type]
        del raw["sections"], raw["payload_hash"]  # what older versions stored
        return raw

    store = EmbeddedVectorStore(tmp_path / "qdrant", "book")
    with monkeypatch.context() as patch:
        patch.setattr(embedded, "payload_dict", legacy_payload)
        first = await ingest(book, store, fake)
    assert {p.payload_hash for p in await store.stored_points()} == {""}
    hits = await store.search(query_text="integral windup", dense=None, filters=None, limit=20)
    assert hits and all(hit.payload.sections == [] for hit in hits)  # old payloads decode
    fake.reset()
    second = await ingest(book, store, fake)
    assert (second.chunks_added, second.chunks_deleted) == (0, 0)
    assert second.chunks_updated == first.chunks_added and second.embedding_calls == 0
    assert fake.embed_requests == 0 and await store.count() == first.chunks_added
    hits = await store.search(query_text="integral windup", dense=None, filters=None, limit=20)
    merged = next(h.payload for h in hits if h.payload.url.endswith("#integral-term"))
    assert [s.anchor for s in merged.sections] == ["integral-term", "example-1", "integral-windup"]
    third = await ingest(book, store, fake)
    assert third.chunks_unchanged == first.chunks_added and third.chunks_updated == 0
    await store.close()


def test_chunk_ids_derive_from_content() -> None:
    assert chunk_id("a/b", "h1", 0) == chunk_id("a/b", "h1", 0)
    assert len({chunk_id("a/b", "h1", 0), chunk_id("a/b", "h1", 1), chunk_id("a/c", "h1", 0)}) == 3


def test_ingest_cli_json_summary(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "QDRANT_PATH": str(tmp_path / "q"), "GEMINI_API_KEY": ""}
    result = subprocess.run(
        [sys.executable, "-m", "bookchat.cli", "ingest", str(SAMPLE_BOOK), "--json"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == {
        "files_seen", "files_changed", "files_deleted", "chunks_added", "chunks_updated",
        "chunks_deleted", "chunks_unchanged", "embedding_calls", "seconds", "pages_skipped",
    }  # fmt: skip
    assert summary["files_seen"] == 11 and summary["embedding_calls"] == 0
    assert summary["pages_skipped"] == []
