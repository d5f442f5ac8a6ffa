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
SYNC_FIELDS = ["doc_path", "content_hash", "chunk_index", "payload_hash"]
SCROLL_PAGE = 1000
UPSERT_BATCH = 256


class CollectionMeta(msgspec.Struct, kw_only=True, frozen=True):
    """What a collection was built with; a difference means it must be rebuilt."""

    embedding_model: str | None
    dense_dim: int | None
    sparse_model: str = SPARSE_MODEL
    format: int = 1


def check_compatible(collection: str, found: CollectionMeta | None, wanted: CollectionMeta) -> None:
    if found == wanted:
        return
    if found is None:
        built = "without bookchat metadata"
    else:
        built = (
            f"with embedding model {found.embedding_model or 'none (BM25 only)'}, "
            f"dense dim {found.dense_dim}, sparse {found.sparse_model}"
        )
    raise CollectionMismatchError(
        f"vector collection {collection!r} was built {built}, but the settings ask for "
        f"embedding model {wanted.embedding_model or 'none (BM25 only)'}, dense dim "
        f"{wanted.dense_dim}, sparse {wanted.sparse_model}. Rebuild it with "
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


def stored_point(point_id: object, payload: dict[str, Any] | None) -> StoredPoint:
    payload = payload or {}
    return StoredPoint(
        id=str(point_id),
        doc_path=str(payload.get("doc_path", "")),
        content_hash=str(payload.get("content_hash", "")),
        chunk_index=int(payload.get("chunk_index", 0)),
        payload_hash=str(payload.get("payload_hash", "")),
    )


# --------------------------------------------------------------------------- embedded
