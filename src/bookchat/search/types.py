"""Data shared by ingestion, the vector stores and retrieval.

These are the contracts between `rag.chunking` (produces `Chunk`), `rag.vectorstore`
(stores `ChunkRecord`, answers `SearchHit`) and `rag.retriever` (consumes hits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

ContentType = Literal["prose", "code", "table", "lab", "quiz", "assessment"]

# Payload fields that get a keyword index / can be filtered on.
FILTER_FIELDS: tuple[str, ...] = ("module", "chapter", "content_type", "tags", "doc_path")


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


class ChunkRecord(msgspec.Struct, kw_only=True):
    """A chunk ready for the store: deterministic id, payload, optional dense vector."""

    id: str  # UUID string derived from content
    payload: ChunkPayload
    dense: list[float] | None = None


class StoredPoint(msgspec.Struct, kw_only=True, frozen=True):
    """What incremental sync needs to know about a point already in the store."""

    id: str
    doc_path: str
    content_hash: str
    chunk_index: int


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
        self, *, dense_dim: int | None, embedding_model: str | None, recreate: bool = False
    ) -> None:
        """Create the collection if missing; raise CollectionMismatchError if incompatible.

        dense_dim=None means no dense vectors (offline mode: BM25 only).
        """

    async def upsert(self, records: Sequence[ChunkRecord]) -> None: ...

    async def set_payloads(self, payloads: Sequence[tuple[str, ChunkPayload]]) -> None:
        """Replace the payload of existing points without touching their vectors."""

    async def delete(self, ids: Sequence[str]) -> None: ...

    async def stored_points(self) -> list[StoredPoint]:
        """Every point's id, doc_path, content_hash and chunk_index (for incremental sync)."""

    async def search(
        self,
        *,
        query_text: str,
        dense: list[float] | None,
        filters: SearchFilters | None,
        limit: int,
    ) -> list[SearchHit]:
        """Hybrid search (dense + BM25 fused with RRF) when `dense` is given, else BM25."""

    async def count(self) -> int: ...

    async def ping(self) -> None:
        """Raise VectorStoreUnavailableError if the store cannot answer."""

    async def close(self) -> None: ...
