"""Ingestion speed: parse + chunk + BM25 + upsert into the embedded store, chunks/s.

Embeddings are faked by `SleepingEmbedder` (random unit vectors after a fixed sleep per
batch of 100 texts, batches in flight together as the Gemini embedder sends them), so
the figure isolates bookchat's own work at 0 ms and shows the effect of a realistic
200 ms embedding round trip. The offline run (no embedder, BM25 only) is BRIEF §13's
"1 MB, 90-page book in < 30 s".
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bookchat.devtools.bench.retrieval import _DOMAIN_WORDS
from bookchat.ingest.chunking import chunk_book
from bookchat.ingest.pipeline import ingest_book
from bookchat.search.embedded import EmbeddedVectorStore

BATCH = 100  # texts per embedding call, as the Gemini embedder batches them


class SleepingEmbedder:
    """An `Embedder` that sleeps `delay` seconds per batch and returns random unit vectors."""

    def __init__(self, delay: float, dim: int = 768, seed: int = 0) -> None:
        self.delay = delay
        self.dim = dim
        self.provider = "bench"
        self.model = "bench-sleeping"
        self.embedding_calls = 0
        self._rng = np.random.default_rng(seed)

    def _vectors(self, count: int) -> list[list[float]]:
        vectors = self._rng.standard_normal((count, self.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors.tolist()

    async def _batch(self, count: int) -> list[list[float]]:
        self.embedding_calls += 1
        await asyncio.sleep(self.delay)
        return self._vectors(count)

    async def embed_documents(self, texts: list[str], titles: list[str]) -> list[list[float]]:
        sizes = [min(BATCH, len(texts) - start) for start in range(0, len(texts), BATCH)]
        batches = await asyncio.gather(*(self._batch(size) for size in sizes))
        return [vector for batch in batches for vector in batch]

    async def embed_query(self, text: str) -> list[float]:
        return (await self._batch(1))[0]


def synthetic_book(
    root: Path, *, pages: int = 90, total_bytes: int = 1_000_000, seed: int = 0
) -> Path:
    """Write a Docusaurus docs/ tree of `pages` pages, ~`total_bytes` of Markdown; returns it.

    Each page has front matter, H2/H3 sections, prose paragraphs, a list, a code block
    and a table, so the parser and chunker see the same shapes as in a real book.
    """
    rng = np.random.default_rng(seed)
    words = np.array(_DOMAIN_WORDS + ["the", "a", "of", "and", "to", "in", "is", "with"] * 4)
    per_page = total_bytes // pages
    docs = root / "docs"

    def sentence() -> str:
        text = " ".join(rng.choice(words, size=int(rng.integers(8, 20))))
        return text[0].upper() + text[1:] + "."

    for n in range(pages):
        module = docs / f"{n // 10 + 1:02d}-module-{n // 10 + 1}"
        module.mkdir(parents=True, exist_ok=True)
        lines = [
            f"---\ntitle: Chapter {n + 1}\nsidebar_position: {n % 10 + 1}\n---\n",
            f"# Chapter {n + 1}\n",
        ]
        size = 0
        section = 0
        while size < per_page:
            section += 1
            block = [f"## Section {section}\n"]
            for _ in range(3):
                block.append(" ".join(sentence() for _ in range(5)) + "\n")
            block.append(f"### Details {section}\n")
            block.append("\n".join(f"- {sentence()}" for _ in range(4)) + "\n")
            block.append(
                "```python\n"
                + "\n".join(f"x{i} = {i} * gain  # {sentence()}" for i in range(4))
                + "\n```\n"
            )
            block.append(
                "| name | value |\n|---|---|\n"
                + "\n".join(f"| {w} | {i} |" for i, w in enumerate(rng.choice(words, 3)))
                + "\n"
            )
            text = "\n".join(block)
            size += len(text)
            lines.append(text)
        (module / f"{n % 10 + 1:02d}-chapter.md").write_text("\n".join(lines))
    return docs


async def _ingest_once(docs: Path, embedder: SleepingEmbedder | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bookchat-bench-ingest-") as tmp:
        store = EmbeddedVectorStore(Path(tmp), "bench")
        try:
            summary = await ingest_book(
                docs, store=store, embedder=embedder, site_url="https://book.example", recreate=True
            )
        finally:
            await store.close()
    chunks = summary.chunks_added
    return {
        "chunks": chunks,
        "pages": summary.files_seen,
        "seconds": round(summary.seconds, 3),
        "chunks_per_s": round(chunks / summary.seconds, 1) if summary.seconds else 0.0,
        "embedding_calls": summary.embedding_calls,
    }


def _book_bytes(docs: Path) -> int:
    return sum(p.stat().st_size for p in docs.rglob("*") if p.suffix in (".md", ".mdx"))


async def bench_ingestion(
    docs: Path | None = None,
    *,
    pages: int = 90,
    total_bytes: int = 1_000_000,
    delays: tuple[float, ...] = (0.0, 0.2),
) -> list[dict[str, Any]]:
    """Rows: parse+chunk only, offline ingestion, and ingestion with each embedding delay."""
    with tempfile.TemporaryDirectory(prefix="bookchat-bench-book-") as tmp:
        book = docs or synthetic_book(Path(tmp), pages=pages, total_bytes=total_bytes)
        size = _book_bytes(book)
        started = time.perf_counter()
        chunked = chunk_book(book, site_url="https://book.example")
        parse_s = time.perf_counter() - started
        chunks = sum(len(page.chunks) for page in chunked)
        rows: list[dict[str, Any]] = [
            {
                "run": "parse+chunk only",
                "book_kb": round(size / 1024),
                "pages": len(chunked),
                "chunks": chunks,
                "seconds": round(parse_s, 3),
                "chunks_per_s": round(chunks / parse_s, 1) if parse_s else 0.0,
                "embedding_calls": 0,
            }
        ]
        offline = await _ingest_once(book, None)
        rows.append({"run": "offline (BM25 only)", "book_kb": round(size / 1024), **offline})
        for delay in delays:
            result = await _ingest_once(book, SleepingEmbedder(delay))
            rows.append(
                {
                    "run": f"embeddings {delay * 1000:.0f} ms/batch",
                    "book_kb": round(size / 1024),
                    **result,
                }
            )
    return rows
