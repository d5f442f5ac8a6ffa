"""Offline answers on the shared real-world corpus (skipped when ../shared is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bookchat.answer.grounding import PromptBuilder
from bookchat.answer.pipeline import AnswerDone, AnswerPipeline
from bookchat.ingest.pipeline import ingest_book
from bookchat.llm.offline import OfflineGenerator
from bookchat.search.embedded import EmbeddedVectorStore
from bookchat.search.retriever import Retriever

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
BOOK = CORPUS / "physical-ai-textbook"
QUERIES = CORPUS / "physical-ai-textbook-queries.json"


@pytest.mark.skipif(not QUERIES.is_file(), reason="shared corpus not present")
async def test_offline_answers_cite_the_expected_chapter(tmp_path: Path) -> None:
    store = EmbeddedVectorStore(tmp_path / "qdrant", "corpus")
    await ingest_book(BOOK, store=store, embedder=None, site_url="https://corpus.example.org")
    pipeline = AnswerPipeline(Retriever(store, None), OfflineGenerator(), PromptBuilder("the book"))
    queries = json.loads(QUERIES.read_text())["test_queries"]
    hits = 0
    for query in queries:
        prefix = f"{query['expected_chapter']:02d}-"
        prepared = await pipeline.prepare(query["query"])
        events = [e async for e in prepared.stream()]
        done = next(e for e in events if isinstance(e, AnswerDone))
        if any(c.doc_path.startswith(prefix) for c in done.citations):
            hits += 1
    await store.close()
    assert hits >= 14, f"{hits}/{len(queries)} answers cite the expected chapter"
