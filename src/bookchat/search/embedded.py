"""The embedded store: Qdrant's engine (qdrant-edge) in this process.

Embedded engine and several processes: qdrant-edge takes an exclusive, non-blocking
lock on the shard's WAL, so a second opener fails at once; there is no read-only mode.
Never disable the WAL: without it there is no lock and a second opener breaks the first
one's files. So `EmbeddedVectorStore` is the one writer (`bookchat ingest`), and the
server reads private copies (`search.snapshot.SnapshotVectorStore`, built by
`search.factory.make_serving_store`). The writer holds an advisory `flock` on
`<collection>.lock` exclusively while it changes the shard's files and bumps
`<collection>.generation` after each flushed change; a snapshot copies the shard under
the same lock, shared, and re-copies when the generation changes. A second writer still
fails with `VectorStoreUnavailableError` naming the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec
import qdrant_edge as edge

from bookchat.search.collection import (
    DENSE,
    RRF_K,
    SCROLL_PAGE,
    SPARSE,
    SYNC_FIELDS,
    TEXT_FIELDS,
    CollectionMeta,
    check_compatible,
    filter_terms,
    payload_dict,
    payload_text,
    prefetch_limit,
    stored_point,
)
from bookchat.search.sparse import document_text, encode_document, encode_query
from bookchat.search.types import (
    FILTER_FIELDS,
    ChunkPayload,
    ChunkRecord,
    SearchFilters,
    SearchHit,
    StoredPoint,
    VectorStoreUnavailableError,
)

__all__ = ["EmbeddedVectorStore", "collection_lock", "generation_signature"]

# Queries measured cheaper than this run inline: a thread hop would cost more than it saves.
INLINE_QUERY_BUDGET_S = 0.0005
# Payloads kept by point id (a few MB): the candidates of a book's questions recur.
PAYLOAD_CACHE_SIZE = 4096
# The engine's search pool: by default a thread per CPU, each woken (and spinning before
# it sleeps again) for every query. One query at a time on a small shard gains nothing
# from them: a query cost 370-470 us of CPU with the default pool, 140-180 us with one.
SEARCH_THREADS = 1

T = TypeVar("T")

# What `os.stat` says about the generation marker; None when there is none yet.
GenerationSignature = tuple[int, int, int] | None


@contextlib.contextmanager
def collection_lock(root: Path, collection: str, *, shared: bool) -> Iterator[None]:
    """Hold the advisory lock on `root/<collection>.lock`: exclusive to write, shared to copy.

    `flock` locks belong to the open file, so two holders in one process exclude each
    other just as two processes do; the kernel drops the lock if its holder dies.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{collection}.lock", "a+b") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def generation_signature(root: Path, collection: str) -> GenerationSignature:
    """Inode, mtime (ns) and size of `root/<collection>.generation`: one `os.stat`."""
    try:
        info = os.stat(root / f"{collection}.generation")
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _publish_generation(root: Path, collection: str) -> None:
    """Replace the generation marker so snapshot readers see that the shard changed."""
    marker = root / f"{collection}.generation"
    previous = generation_signature(root, collection)
    tmp = marker.with_suffix(".generation.tmp")
    tmp.write_text(uuid.uuid4().hex + "\n")
    # A strictly later mtime: two changes within one clock tick must still differ.
    mtime_ns = max(time.time_ns(), previous[1] + 1 if previous else 0)
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    tmp.replace(marker)


def _engine_config(dense_dim: int | None) -> edge.EdgeConfig:
    """The shard's vectors (dense when `dense_dim`, BM25 always) and its search pool."""
    vectors = (
        {DENSE: edge.EdgeVectorParams(size=dense_dim, distance=edge.Distance.Cosine)}
        if dense_dim
        else None
    )
    return edge.EdgeConfig(
        vectors=vectors,
        sparse_vectors={SPARSE: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
        max_search_threads=SEARCH_THREADS,
    )


def _payload_filter(filters: SearchFilters | None) -> edge.Filter | None:
    """The engine filter for the non-empty filter lists (None when there are none)."""
    terms = filter_terms(filters)
    if not terms:
        return None
    return edge.Filter(
        must=[edge.FieldCondition(field, match=edge.MatchAny(values)) for field, values in terms]
    )


class _PayloadCache:
    """Chunk payloads by point id, so that a query asks the engine for ids and scores only.

    Reading 20 payloads back from the engine (JSON in its blob store, then Python dicts,
    then `ChunkPayload`s) cost three times the search itself, for the same chunks query
    after query. Every write empties the cache, before and after it changes the shard;
    a read that overlapped a write (its epoch moved) keeps what it read to itself.
    """

    def __init__(self, size: int = PAYLOAD_CACHE_SIZE) -> None:
        self._size = size
        self._entries: dict[str, ChunkPayload] = {}
        self._epoch = 0
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()

    @property
    def epoch(self) -> int:
        """Moves on every write (and reopen) of the shard."""
        return self._epoch

    def hits(self, shard: edge.EdgeShard, points: Sequence[Any]) -> list[SearchHit]:
        """`points` (scored, without payload) as hits, payloads from the cache or the shard."""
        epoch = self._epoch
        entries = self._entries
        ids = [str(p.id) for p in points]
        missing = [p.id for p, point_id in zip(points, ids, strict=True) if point_id not in entries]
        fetched: dict[str, ChunkPayload] = {}
        if missing:
            try:
                records = shard.retrieve(missing, with_payload=True, with_vector=False)
            except Exception as exc:
                message = f"embedded vector store read failed: {exc}"
                raise VectorStoreUnavailableError(message) from exc
            fetched = {str(r.id): msgspec.convert(r.payload, ChunkPayload) for r in records}
            with self._lock:
                if self._epoch == epoch:
                    if len(entries) + len(fetched) > self._size:
                        entries.clear()
                    entries.update(fetched)
        hits = []
        for p, point_id in zip(points, ids, strict=True):
            payload = fetched.get(point_id) or entries.get(point_id)
            if payload is not None:  # None: deleted by a write since the query
                hits.append(SearchHit(id=point_id, score=float(p.score), payload=payload))
        return hits


def _hits(
    shard: edge.EdgeShard, request: edge.QueryRequest, payloads: _PayloadCache
) -> list[SearchHit]:
    """Run a query (ids and scores) on the shard; an engine failure is
    VectorStoreUnavailableError."""
    try:
        points = shard.query(request)
    except Exception as exc:
        raise VectorStoreUnavailableError(f"embedded vector store query failed: {exc}") from exc
    return payloads.hits(shard, points)


class EmbeddedVectorStore:
    """The collection as a qdrant-edge shard in this process, under `path/<collection>/`.

    Reads that measure under `INLINE_QUERY_BUDGET_S` run on the event loop; slower
    ones and every write run in a worker thread. The shard is internally synchronised
    (concurrent queries and updates from threads are safe); `_lock` only serialises
    writes with opening, recreating and closing the shard. Everything that changes the
    shard's files (open, create, write, close) also holds `collection_lock`
    exclusively, and each write is flushed and published as a new generation, so a
    snapshot copy taken under the shared lock is always a complete, flushed state.
    """

    def __init__(self, path: Path, collection: str) -> None:
        self._root = Path(path)
        self._collection = collection
        self._shard_dir = self._root / collection
        self._meta_file = self._root / f"{collection}.meta.json"
        self._shard: edge.EdgeShard | None = None
        self._meta: CollectionMeta | None = None
        self._lock = threading.Lock()
        self._query_cost_s: float | None = None  # moving average of measured query time
        self._payloads = _PayloadCache()

    # ---- opening

    def _exists(self) -> bool:
        return (self._shard_dir / "edge_config.json").exists()

    def _read_meta(self) -> CollectionMeta | None:
        try:
            return msgspec.json.decode(self._meta_file.read_bytes(), type=CollectionMeta)
        except FileNotFoundError:
            return None

    def _write_meta(self, meta: CollectionMeta) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        tmp = self._meta_file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(meta))
        tmp.replace(self._meta_file)  # atomic: a crash never leaves half a meta file

    def _load_locked(self) -> edge.EdgeShard | None:
        """Open the existing shard (caller holds `_lock`); None when there is none."""
        if self._shard is not None:
            return self._shard
        if not self._exists():
            return None
        meta = self._read_meta()
        # The collection's own vectors (checked against the shard) with this process's
        # search pool; without a meta file the shard's stored config is used as it is.
        config = _engine_config(meta.dense_dim) if meta is not None else None
        try:
            self._shard = edge.EdgeShard.load(str(self._shard_dir), config)
        except Exception as exc:
            raise self._open_error(exc) from exc
        self._meta = meta
        return self._shard

    def _open_error(self, exc: Exception) -> VectorStoreUnavailableError:
        if "WouldBlock" in str(exc):
            return VectorStoreUnavailableError(
                f"the embedded vector store {self._shard_dir} is open in another process "
                "(qdrant-edge allows one writer per shard): is another `bookchat ingest` "
                "running? Run one ingest at a time, serve through `make_serving_store` "
                "(private snapshots), or set QDRANT_URL to share a Qdrant server "
                "between processes."
            )
        return VectorStoreUnavailableError(
            f"cannot open embedded vector store {self._shard_dir}: {exc}"
        )

    def _exclusive(self) -> contextlib.AbstractContextManager[None]:
        return collection_lock(self._root, self._collection, shared=False)

    def _shard_for_read(self) -> edge.EdgeShard | None:
        if self._shard is not None:
            return self._shard
        # Opening replays the WAL, which writes: keep snapshot copies out meanwhile.
        with self._lock, self._exclusive():
            return self._load_locked()

    def _publish_locked(self) -> None:
        """Flush and bump the generation (caller holds both locks)."""
        if self._shard is not None:
            self._shard.flush()
        _publish_generation(self._root, self._collection)

    async def _write(self, fn: Callable[[], T], *, publish: bool) -> T:
        """Run `fn` in a thread under both locks; `publish`: flush and bump the generation."""

        def locked() -> T:
            with self._lock, self._exclusive():
                self._payloads.invalidate()
                try:
                    result = fn()
                    if publish:
                        self._publish_locked()
                finally:
                    self._payloads.invalidate()
                return result

        return await anyio.to_thread.run_sync(locked)

    async def _read(self, fn: Callable[[], T]) -> T:
        """Run a read inline when it has measured sub-budget, else in a thread."""

        def timed() -> T:
            start = time.perf_counter()
            try:
                return fn()
            finally:
                elapsed = time.perf_counter() - start
                previous = self._query_cost_s
                self._query_cost_s = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed

        cost = self._query_cost_s
        if cost is not None and cost < INLINE_QUERY_BUDGET_S and self._shard is not None:
            # Yield once so a caller looping over searches cannot starve other tasks.
            await anyio.lowlevel.checkpoint()
            return timed()
        return await anyio.to_thread.run_sync(timed)

    # ---- VectorStore

    async def ensure_collection(
        self,
        *,
        dense_dim: int | None,
        embedding_model: str | None,
        recreate: bool = False,
        embedding_provider: str | None = None,
    ) -> None:
        """Create the shard if missing; raise CollectionMismatchError if incompatible."""
        wanted = CollectionMeta(
            embedding_provider=embedding_provider,
            embedding_model=embedding_model,
            dense_dim=dense_dim,
        )

        def ensure() -> None:
            if recreate:
                self._close_locked()
                shutil.rmtree(self._shard_dir, ignore_errors=True)
                self._meta_file.unlink(missing_ok=True)
            if self._exists():
                check_compatible(self._collection, self._read_meta(), wanted)
                self._load_locked()
                return
            # Meta first: a crash before the shard exists leaves nothing that looks built.
            self._write_meta(wanted)
            try:
                shard = edge.EdgeShard.create(str(self._shard_dir), _engine_config(dense_dim))
            except Exception as exc:
                raise self._open_error(exc) from exc
            for field in FILTER_FIELDS:
                shard.update(
                    edge.UpdateOperation.create_field_index(field, edge.PayloadSchemaType.Keyword)
                )
            self._shard, self._meta = shard, wanted
            self._publish_locked()

        # Publishes only when it creates: an unchanged collection must not make readers re-copy.
        await self._write(ensure, publish=False)

    def _require_shard(self) -> edge.EdgeShard:
        shard = self._load_locked()
        if shard is None:
            raise VectorStoreUnavailableError(
                f"vector collection {self._collection!r} does not exist yet: run `bookchat ingest`"
            )
        return shard

    async def upsert(self, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace points: BM25 vector always, dense vector when given."""
        if not records:
            return

        def upsert() -> None:
            shard = self._require_shard()
            points = []
            for record in records:
                sparse = encode_document(document_text(record.payload))
                vector: dict[str, Any] = {SPARSE: edge.SparseVector(sparse.indices, sparse.values)}
                if record.dense is not None:
                    vector[DENSE] = record.dense
                points.append(edge.Point(record.id, vector, payload_dict(record.payload)))
            shard.update(edge.UpdateOperation.upsert_points(points))

        await self._write(upsert, publish=True)

    async def set_payloads(self, payloads: Sequence[tuple[str, ChunkPayload]]) -> None:
        """Replace the payload of existing points without touching their vectors."""
        if not payloads:
            return

        def overwrite() -> None:
            shard = self._require_shard()
            for point_id, payload in payloads:
                shard.update(
                    edge.UpdateOperation.overwrite_payload([point_id], payload_dict(payload))
                )

        await self._write(overwrite, publish=True)

    async def delete(self, ids: Sequence[str]) -> None:
        """Delete points by id; unknown ids are ignored."""
        if not ids:
            return
        await self._write(
            lambda: self._require_shard().update(edge.UpdateOperation.delete_points(list(ids))),
            publish=True,
        )

    @property
    def generation(self) -> int:
        """Changes whenever this store's chunks may have changed (`VectorStore`)."""
        return self._payloads.epoch

    async def stored_points(self) -> list[StoredPoint]:
        """Every point's id, doc_path, content_hash and chunk_index."""
        return await self._scroll(SYNC_FIELDS, lambda r: stored_point(r.id, r.payload))

    async def texts(self) -> list[str]:
        """Every chunk's title, headings and text."""
        return await self._scroll(TEXT_FIELDS, lambda r: payload_text(r.payload))

    async def _scroll(self, fields: list[str], read: Callable[[Any], T]) -> list[T]:
        """`read` of every point, with the payload `fields` (in a worker thread)."""

        def scroll() -> list[T]:
            shard = self._shard_for_read()
            if shard is None:
                return []
            found: list[T] = []
            offset: Any = None
            selector = edge.PayloadSelector.Include(fields)
            while True:
                request = edge.ScrollRequest(
                    offset=offset, limit=SCROLL_PAGE, with_payload=selector
                )
                records, offset = shard.scroll(request)
                found.extend(read(r) for r in records)
                if offset is None:
                    return found

        return await anyio.to_thread.run_sync(scroll)

    def _query_request(
        self,
        query_text: str,
        dense: list[float] | None,
        filters: SearchFilters | None,
        limit: int,
        topic: Sequence[str] = (),
    ) -> edge.QueryRequest | None:
        payload_filter = _payload_filter(filters)
        sparse = encode_query(query_text, topic)
        # A BM25-only collection (built offline) cannot answer a dense query.
        if self._meta is not None and self._meta.dense_dim is None:
            dense = None
        if dense is None:
            if sparse.is_empty():
                return None
            return edge.QueryRequest(
                limit=limit,
                query=edge.Query.Nearest(
                    edge.SparseVector(sparse.indices, sparse.values), using=SPARSE
                ),
                filter=payload_filter,
                with_payload=False,
            )
        branch = prefetch_limit(limit)
        prefetches = [
            edge.Prefetch(
                limit=branch, query=edge.Query.Nearest(dense, using=DENSE), filter=payload_filter
            )
        ]
        if not sparse.is_empty():
            sparse_query = edge.Query.Nearest(
                edge.SparseVector(sparse.indices, sparse.values), using=SPARSE
            )
            prefetches.append(
                edge.Prefetch(limit=branch, query=sparse_query, filter=payload_filter)
            )
        # The stub types Fusion.Rrf as not a Fusion; the engine takes it (see tests).
        fusion: Any = edge.Fusion.Rrf(k=RRF_K)
        return edge.QueryRequest(
            limit=limit, prefetches=prefetches, query=fusion, with_payload=False
        )

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

        def query() -> list[SearchHit]:
            shard = self._shard_for_read()
            if shard is None:
                return []
            request = self._query_request(query_text, dense, filters, limit, topic)
            return [] if request is None else _hits(shard, request, self._payloads)

        return await self._read(query)

    async def search_dense(
        self, *, dense: list[float], filters: SearchFilters | None, limit: int
    ) -> list[SearchHit]:
        """Dense-only nearest neighbours with their cosine similarity as `score`.

        The fused hybrid score is rank-based; this is the relevance signal (one extra
        in-process query, well under a millisecond). Empty for a BM25-only collection.
        """

        def query() -> list[SearchHit]:
            shard = self._shard_for_read()
            if shard is None or (self._meta is not None and self._meta.dense_dim is None):
                return []
            request = edge.QueryRequest(
                limit=limit,
                query=edge.Query.Nearest(dense, using=DENSE),
                filter=_payload_filter(filters),
                with_payload=False,
            )
            return _hits(shard, request, self._payloads)

        return await self._read(query)

    async def count(self) -> int:
        """Number of points in the collection (0 when it does not exist)."""

        def count() -> int:
            shard = self._shard_for_read()
            return 0 if shard is None else shard.count(edge.CountRequest(exact=True))

        return await self._read(count)

    async def ping(self) -> None:
        """Raise VectorStoreUnavailableError if the shard cannot be opened or read."""

        def ping() -> None:
            shard = self._shard_for_read()
            if shard is not None:
                try:
                    shard.count(edge.CountRequest(exact=False))
                except Exception as exc:
                    raise VectorStoreUnavailableError(
                        f"embedded vector store failed: {exc}"
                    ) from exc

        await anyio.to_thread.run_sync(ping)

    def _close_locked(self) -> None:
        if self._shard is not None:
            shard, self._shard, self._meta = self._shard, None, None
            shard.flush()
            shard.close()

    async def close(self) -> None:
        """Flush to disk and release the shard (and its lock on the directory)."""
        await self._write(self._close_locked, publish=False)


# --------------------------------------------------------------------------- server
