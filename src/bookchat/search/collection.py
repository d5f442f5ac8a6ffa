"""The collection layout both stores share, and what it records about how it was built.

Both stores hold one collection with named vectors `dense` (cosine, only when a dense
model is configured) and `sparse` (BM25 from `search.sparse`, IDF modifier), keyword
payload indexes on `FILTER_FIELDS`, and hybrid search fused by the engine with RRF (k=2,
the Qdrant default, so both engines rank alike). The collection's embedding model, dense
dimension and sparse encoding are stored with it and checked by `ensure_collection`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bookchat.search.sparse import SPARSE_MODEL
from bookchat.search.types import (
    FILTER_FIELDS,
    ChunkPayload,
    CollectionMismatchError,
    SearchFilters,
    StoredPoint,
)

DENSE = "dense"
SPARSE = "sparse"
RRF_K = 2
# Each branch of a hybrid query fetches this many candidates per requested hit.
PREFETCH_FACTOR = 4
PREFETCH_MIN = 20
# What incremental sync needs, plus the page title and URL (author insights list pages).
SYNC_FIELDS = ["doc_path", "content_hash", "chunk_index", "payload_hash", "title", "url"]
# What `VectorStore.texts` reads of each chunk.
TEXT_FIELDS = ["title", "heading_breadcrumb", "text"]
SCROLL_PAGE = 1000
UPSERT_BATCH = 256


class CollectionMeta(msgspec.Struct, kw_only=True, frozen=True):
    """What a collection was built with; a difference means it must be rebuilt."""

    embedding_model: str | None
    dense_dim: int | None
    # None with a model: Gemini (collections built before there were providers).
    embedding_provider: str | None = None
    sparse_model: str = SPARSE_MODEL
    format: int = 1

    def normalised(self) -> CollectionMeta:
        if self.embedding_provider is None and self.embedding_model is not None:
            return msgspec.structs.replace(self, embedding_provider="gemini")
        return self

    def describe(self) -> str:
        dense = (
            f"{self.embedding_provider} embedding model {self.embedding_model}"
            if self.embedding_model
            else "embedding model none (BM25 only)"
        )
        return f"{dense}, dense dim {self.dense_dim}, sparse {self.sparse_model}"


def check_compatible(collection: str, found: CollectionMeta | None, wanted: CollectionMeta) -> None:
    wanted = wanted.normalised()
    if found is not None and found.normalised() == wanted:
        return
    built = (
        "without bookchat metadata" if found is None else f"with {found.normalised().describe()}"
    )
    raise CollectionMismatchError(
        f"vector collection {collection!r} was built {built}, but the settings ask for "
        f"{wanted.describe()}. Rebuild it with "
        "`bookchat ingest --recreate` (or restore the previous settings)."
    )


def filter_terms(filters: SearchFilters | None) -> list[tuple[str, list[str]]]:
    """(payload field, allowed values) for every non-empty filter list."""
    if filters is None or filters.is_empty():
        return []
    pairs = zip(
        FILTER_FIELDS,
        (filters.modules, filters.chapters, filters.content_types, filters.tags, filters.doc_paths),
        strict=True,
    )
    return [(field, list(values)) for field, values in pairs if values]


def prefetch_limit(limit: int) -> int:
    return max(limit * PREFETCH_FACTOR, PREFETCH_MIN)


def payload_dict(payload: ChunkPayload) -> dict[str, Any]:
    return msgspec.to_builtins(payload)


def payload_text(payload: dict[str, Any] | None) -> str:
    """A chunk's title, headings and text as one string (`TEXT_FIELDS`)."""
    payload = payload or {}
    crumbs = payload.get("heading_breadcrumb") or []
    return "\n".join(
        [str(payload.get("title", "")), *map(str, crumbs), str(payload.get("text", ""))]
    )


def stored_point(point_id: object, payload: dict[str, Any] | None) -> StoredPoint:
    payload = payload or {}
    return StoredPoint(
        id=str(point_id),
        doc_path=str(payload.get("doc_path", "")),
        content_hash=str(payload.get("content_hash", "")),
        chunk_index=int(payload.get("chunk_index", 0)),
        payload_hash=str(payload.get("payload_hash", "")),
        title=str(payload.get("title", "")),
        url=str(payload.get("url", "")),
    )


# --------------------------------------------------------------------------- embedded
