"""Data shared by ingestion, the vector stores and retrieval.

These are the contracts between `ingest.chunking` (produces `ChunkPayload`), the stores
(keep `ChunkRecord`, answer `SearchHit`) and `search.retriever` (consumes hits), plus
`section_for()`: which heading of a merged chunk a quoted piece of its text sits under.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

from bookchat.text import strip_markdown, term_set

ContentType = Literal["prose", "code", "table", "lab", "quiz", "assessment"]

# Payload fields that get a keyword index / can be filtered on.
FILTER_FIELDS: tuple[str, ...] = ("module", "chapter", "content_type", "tags", "doc_path")


class ChunkSection(msgspec.Struct, kw_only=True, frozen=True):
    """A heading inside a chunk: where its text starts and where it links to."""

    offset: int  # character offset in `ChunkPayload.text` where this section starts
    heading: str  # the heading's display text ("" for a page's title section)
    anchor: str  # Docusaurus heading id ("" links to the page itself)
    url: str  # SITE_URL + route + "#anchor"


class ChunkPayload(msgspec.Struct, kw_only=True):
    """Everything stored with a chunk (BRIEF §3)."""

    doc_path: str  # relative to the docs root, without extension, e.g. "02-ros/01-nodes"
    url: str  # SITE_URL + Docusaurus route + "#anchor"
    title: str  # page title
    section: str  # nearest heading text ("" before the first heading)
    heading_breadcrumb: list[str]  # e.g. ["ROS 2", "Nodes", "Lifecycle"]
    module: str  # top-level folder of the page, numeric prefix stripped ("" at the root)
    chapter: str  # the page's own doc id (last path segment, numeric prefix stripped)
    content_type: ContentType
    tags: list[str]
    chunk_index: int  # position of the chunk within its page
    content_hash: str  # sha256 hex of what is embedded/stored (text, title, breadcrumb, url)
    text: str
    word_count: int
    ingested_at: str  # ISO-8601 UTC
    # The headings inside the chunk in text order, the first one being the chunk's own
    # (`section`/`url`); chunks of small merged sections hold several. Empty in
    # collections ingested before sections were recorded: lookups fall back to `url`.
    sections: list[ChunkSection] = msgspec.field(default_factory=list)
    # sha256 of the whole payload but `ingested_at`: a change to anything that is not
    # embedded (e.g. `sections`) updates the stored payload without re-embedding.
    payload_hash: str = ""


class ChunkRecord(msgspec.Struct, kw_only=True):
    """A chunk ready for the store: deterministic id, payload, optional dense vector."""

    id: str  # UUID string derived from content
    payload: ChunkPayload
    dense: list[float] | None = None


class StoredPoint(msgspec.Struct, kw_only=True, frozen=True):
    """What incremental sync (and the list of the book's pages) needs about a stored point."""

    id: str
    doc_path: str
    content_hash: str
    chunk_index: int
    payload_hash: str = ""  # "" for points written before payload hashes existed
    title: str = ""
    url: str = ""  # the chunk's deep link (page route + "#anchor")


def _normalised(text: str) -> str:
    return " ".join(strip_markdown(text).split()).lower()


def section_for(payload: ChunkPayload, text: str) -> tuple[str, str]:
    """(section heading, URL) of the heading `text` sits under inside the chunk.

    `text` is what an answer used: a quoted sentence (Markdown stripped or not), a
    paraphrase, or the whole chunk. Found verbatim or with Markdown and spacing
    normalised, the text belongs to the last heading that starts at or before it;
    otherwise the section sharing most of its content terms wins, ties going to the
    earlier one. Chunks without recorded sections, and text found nowhere, keep the
    chunk's own `section` and `url`.
    """
    own = (payload.section, payload.url)
    sections = payload.sections
    if len(sections) < 2 or not text.strip():
        return own
    # The first section also owns a bare heading prepended before it (the page's H1).
    bounds = [0, *(s.offset for s in sections[1:]), len(payload.text)]
    spans = [payload.text[a:b] for a, b in itertools.pairwise(bounds)]
    found = payload.text.find(text.strip())
    if found >= 0:
        index = max(i for i, start in enumerate(bounds[:-1]) if start <= found)
        return sections[index].heading, sections[index].url
    wanted = _normalised(text)
    for index, span in enumerate(spans):
        if wanted and wanted in _normalised(span):
            return sections[index].heading, sections[index].url
    terms = term_set(text)
    if not terms:
        return own
    overlap = [len(terms & term_set(span)) for span in spans]
    best = max(range(len(spans)), key=lambda i: (overlap[i], -i))
    if overlap[best] == 0:
        return own
    return sections[best].heading, sections[best].url


class SearchFilters(msgspec.Struct, kw_only=True, frozen=True):
    """Payload filters; each non-empty list means "field matches any of these"."""

    modules: tuple[str, ...] = ()
    chapters: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    doc_paths: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (
            self.modules or self.chapters or self.content_types or self.tags or self.doc_paths
        )


class SearchHit(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    score: float  # engine score: RRF when hybrid, BM25 when sparse only
    payload: ChunkPayload


class CollectionMismatchError(RuntimeError):
    """The existing collection was built with another embedding model or dimension."""


class VectorStoreUnavailableError(RuntimeError):
    """The vector store cannot be reached or failed to answer."""


class VectorStore(Protocol):
    """The one small interface both the embedded engine and a Qdrant server satisfy."""

    async def ensure_collection(
        self,
        *,
        dense_dim: int | None,
        embedding_model: str | None,
        recreate: bool = False,
        embedding_provider: str | None = None,
    ) -> None:
        """Create the collection if missing; raise CollectionMismatchError if incompatible.

        dense_dim=None means no dense vectors (offline mode: BM25 only). The embedding
        provider defaults to Gemini when a model is given (collections built before
        providers existed were all Gemini's).
        """

    async def upsert(self, records: Sequence[ChunkRecord]) -> None: ...

    async def set_payloads(self, payloads: Sequence[tuple[str, ChunkPayload]]) -> None:
        """Replace the payload of existing points without touching their vectors."""

    async def delete(self, ids: Sequence[str]) -> None: ...

    async def stored_points(self) -> list[StoredPoint]:
        """Every point's id, doc_path, content_hash and chunk_index (for incremental sync)."""

    async def texts(self) -> list[str]:
        """Every chunk's title, headings and text (the book's words: `search.spelling`)."""

    async def search(
        self,
        *,
        query_text: str,
        dense: list[float] | None,
        filters: SearchFilters | None,
        limit: int,
        topic: Sequence[str] = (),
    ) -> list[SearchHit]:
        """Hybrid search (dense + BM25 fused with RRF) when `dense` is given, else BM25.

        `topic`: words of `query_text` that weigh more in BM25 (a follow-up's earlier topic).
        """

    # Optional: `search_dense(*, dense, filters, limit) -> list[SearchHit]` with cosine
    # scores, used as a relevance signal (search/relevance.py); every store here has it.
    # Optional: a `generation` attribute that changes whenever the chunks may have changed
    # (the embedded store and its snapshots have it): the retriever reads the book's words
    # again at once; without it, it notices a changed chunk count within five minutes.

    async def count(self) -> int: ...

    async def ping(self) -> None:
        """Raise VectorStoreUnavailableError if the store cannot answer."""

    async def close(self) -> None: ...
