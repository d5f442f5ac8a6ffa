"""The collection on a Qdrant server (or qdrant-client's local mode), via AsyncQdrantClient.

REST by default; with QDRANT_PREFER_GRPC the client speaks gRPC (QDRANT_GRPC_PORT), whose
failures arrive as `grpc.RpcError`s and are mapped like their REST counterparts.

Only this module imports qdrant-client (and with it grpcio, numpy and protobuf): the
factory imports it when `QDRANT_URL` is set, so the embedded default never loads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import httpx
import msgspec
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from bookchat.search.collection import (
    DENSE,
    SCROLL_PAGE,
    SPARSE,
    SYNC_FIELDS,
    TEXT_FIELDS,
    UPSERT_BATCH,
    CollectionMeta,
    check_compatible,
    filter_terms,
    payload_dict,
    payload_text,
    prefetch_limit,
    stored_point,
)
from bookchat.search.sparse import SparseVector, document_text, encode_document, encode_query
from bookchat.search.types import (
    FILTER_FIELDS,
    ChunkPayload,
    ChunkRecord,
    SearchFilters,
    SearchHit,
    StoredPoint,
    VectorStoreUnavailableError,
)

T = TypeVar("T")

__all__ = ["QdrantServerStore"]

# gRPC statuses that are the caller's problem (like REST 4xx), not an outage.
_GRPC_CALLER_ERRORS = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


@contextlib.contextmanager
def _server_errors(what: str) -> Iterator[None]:
    """Map transport failures of qdrant-client to VectorStoreUnavailableError."""
    try:
        yield
    except (ResponseHandlingException, httpx.HTTPError, OSError, TimeoutError) as exc:
        raise VectorStoreUnavailableError(
            f"Qdrant server unreachable during {what}: {exc}"
        ) from exc
    except UnexpectedResponse as exc:
        if (
            exc.status_code is not None
            and exc.status_code < 500
            and exc.status_code not in (401, 403)
        ):
            raise
        raise VectorStoreUnavailableError(f"Qdrant server failed during {what}: {exc}") from exc
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code in _GRPC_CALLER_ERRORS:
            raise
        raise VectorStoreUnavailableError(
            f"Qdrant server failed during {what} (gRPC {code}): {exc}"
        ) from exc


def _is_missing_collection(exc: Exception) -> bool:
    # Local mode raises ValueError("Collection ... not found"); a server answers 404
    # (REST) or NOT_FOUND (gRPC).
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    if isinstance(exc, grpc.RpcError):
        return bool(exc.code() == grpc.StatusCode.NOT_FOUND)
    return isinstance(exc, ValueError) and "not found" in str(exc)


def _server_sparse(vector: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=vector.indices, values=vector.values)


def _payload_filter(filters: SearchFilters | None) -> models.Filter | None:
    """The server filter for the non-empty filter lists (None when there are none)."""
    terms = filter_terms(filters)
    if not terms:
        return None
    return models.Filter(
        must=[models.FieldCondition(key=f, match=models.MatchAny(any=v)) for f, v in terms]
    )


class QdrantServerStore:
    """The collection on a Qdrant server (or qdrant-client local mode) via AsyncQdrantClient."""

    def __init__(self, client: AsyncQdrantClient, collection: str) -> None:
        self._client = client
        self._collection = collection
        self._has_dense: bool | None = None  # learnt from the collection's metadata

    async def ensure_collection(
        self,
        *,
        dense_dim: int | None,
        embedding_model: str | None,
        recreate: bool = False,
        embedding_provider: str | None = None,
    ) -> None:
        """Create the collection if missing; raise CollectionMismatchError if incompatible."""
        wanted = CollectionMeta(
            embedding_provider=embedding_provider,
            embedding_model=embedding_model,
            dense_dim=dense_dim,
        )
        client, name = self._client, self._collection
        with _server_errors("ensure_collection"):
            if recreate:
                await client.delete_collection(name)
            if await client.collection_exists(name):
                info = await client.get_collection(name)
                raw = info.config.metadata
                found = msgspec.convert(raw, CollectionMeta) if raw else None
                check_compatible(name, found, wanted)
                self._has_dense = dense_dim is not None
                return
            vectors = (
                {DENSE: models.VectorParams(size=dense_dim, distance=models.Distance.COSINE)}
                if dense_dim
                else {}
            )
            await client.create_collection(
                name,
                vectors_config=vectors,
                sparse_vectors_config={
                    SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
                metadata=msgspec.to_builtins(wanted),
            )
            for field in FILTER_FIELDS:
                await client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)
            self._has_dense = dense_dim is not None

    async def upsert(self, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace points: BM25 vector always, dense vector when given."""
        for start in range(0, len(records), UPSERT_BATCH):
            points = []
            for record in records[start : start + UPSERT_BATCH]:
                vector: dict[str, Any] = {
                    SPARSE: _server_sparse(encode_document(document_text(record.payload)))
                }
                if record.dense is not None:
                    vector[DENSE] = record.dense
                points.append(
                    models.PointStruct(
                        id=record.id, vector=vector, payload=payload_dict(record.payload)
                    )
                )
            with _server_errors("upsert"):
                await self._client.upsert(self._collection, points=points, wait=True)

    async def set_payloads(self, payloads: Sequence[tuple[str, ChunkPayload]]) -> None:
        """Replace the payload of existing points without touching their vectors."""
        if not payloads:
            return
        operations: list[models.UpdateOperation] = [
            models.OverwritePayloadOperation(
                overwrite_payload=models.SetPayload(
                    payload=payload_dict(payload), points=[point_id]
                )
            )
            for point_id, payload in payloads
        ]
        with _server_errors("set_payloads"):
            await self._client.batch_update_points(self._collection, operations, wait=True)

    async def delete(self, ids: Sequence[str]) -> None:
        """Delete points by id; unknown ids are ignored."""
        if not ids:
            return
        selector = models.PointIdsList(points=list(ids))
        with _server_errors("delete"):
            await self._client.delete(self._collection, points_selector=selector, wait=True)

    async def stored_points(self) -> list[StoredPoint]:
        """Every point's id, doc_path, content_hash and chunk_index."""
        return await self._scroll("stored_points", SYNC_FIELDS, stored_point)

    async def texts(self) -> list[str]:
        """Every chunk's title, headings and text."""
        return await self._scroll("texts", TEXT_FIELDS, lambda _id, payload: payload_text(payload))

    async def _scroll(
        self, operation: str, fields: list[str], read: Callable[[Any, Any], T]
    ) -> list[T]:
        """`read(id, payload)` of every point, with the payload `fields`."""
        found: list[T] = []
        offset: Any = None
        with _server_errors(operation):
            if not await self._client.collection_exists(self._collection):
                return []
            while True:
                records, offset = await self._client.scroll(
                    self._collection, limit=SCROLL_PAGE, offset=offset, with_payload=fields
                )
                found.extend(read(r.id, r.payload) for r in records)
                if offset is None:
                    return found

    async def search(
        self,
        *,
        query_text: str,
        dense: list[float] | None,
        filters: SearchFilters | None,
        limit: int,
        topic: Sequence[str] = (),
    ) -> list[SearchHit]:
        """Hybrid search (dense + BM25 fused with RRF) when `dense` is given, else BM25."""
        payload_filter = _payload_filter(filters)
        sparse = encode_query(query_text, topic)
        use_dense = dense is not None and self._has_dense is not False
        kwargs: dict[str, Any]
        if use_dense:
            branch = prefetch_limit(limit)
            prefetch = [
                models.Prefetch(query=dense, using=DENSE, limit=branch, filter=payload_filter)
            ]
            if not sparse.is_empty():
                prefetch.append(
                    models.Prefetch(
                        query=_server_sparse(sparse),
                        using=SPARSE,
                        limit=branch,
                        filter=payload_filter,
                    )
                )
            kwargs = {"prefetch": prefetch, "query": models.FusionQuery(fusion=models.Fusion.RRF)}
        elif sparse.is_empty():
            return []
        else:
            kwargs = {
                "query": _server_sparse(sparse),
                "using": SPARSE,
                "query_filter": payload_filter,
            }
        return await self._query(limit=limit, **kwargs)

    async def _query(self, **kwargs: Any) -> list[SearchHit]:
        """`query_points` as hits; a missing collection is no hits."""
        try:
            with _server_errors("search"):
                response = await self._client.query_points(
                    self._collection, with_payload=True, **kwargs
                )
        except (UnexpectedResponse, grpc.RpcError, ValueError) as exc:
            if _is_missing_collection(exc):
                return []
            raise
        return [
            SearchHit(
                id=str(p.id),
                score=float(p.score),
                payload=msgspec.convert(p.payload or {}, ChunkPayload),
            )
            for p in response.points
        ]

    async def search_dense(
        self, *, dense: list[float], filters: SearchFilters | None, limit: int
    ) -> list[SearchHit]:
        """Dense-only search with cosine scores (the relevance signal); [] without dense."""
        if self._has_dense is False:
            return []
        return await self._query(
            query=dense, using=DENSE, query_filter=_payload_filter(filters), limit=limit
        )

    async def count(self) -> int:
        """Number of points in the collection (0 when it does not exist)."""
        try:
            with _server_errors("count"):
                return (await self._client.count(self._collection, exact=True)).count
        except (UnexpectedResponse, grpc.RpcError, ValueError) as exc:
            if _is_missing_collection(exc):
                return 0
            raise

    async def ping(self) -> None:
        """Raise VectorStoreUnavailableError if the server cannot answer."""
        with _server_errors("ping"):
            await self._client.get_collections()

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.close()
