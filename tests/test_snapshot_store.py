"""Serving the embedded collection from per-process snapshots while ingestion writes it."""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import IO, Any

import pytest

from bookchat.search.embedded import EmbeddedVectorStore, generation_signature
from bookchat.search.factory import make_serving_store
from bookchat.search.qdrant_server import QdrantServerStore
from bookchat.search.snapshot import (
    ReadOnlyVectorStoreError,
    SnapshotVectorStore,
    remove_stale_copies,
)
from bookchat.search.types import ChunkPayload, ChunkRecord, VectorStoreUnavailableError

COLLECTION = "book"
DIM = 4
MODEL = "test-embedding"
TEXTS = [
    "Humanoid robots walk with a balance controller that tracks the zero moment point.",
    "ROS 2 nodes publish messages on topics; a subscriber callback receives each message.",
    "Lidar sensors measure distance with laser pulses and build a point cloud of the room.",
]
NEW_TEXT = "Quaternions describe the gripper orientation without gimbal lock."
# Generous: a spawned child imports the app's dependencies before it reaches a barrier.
BARRIER_TIMEOUT_S = 60


def _record(n: int, text: str) -> ChunkRecord:
    payload = ChunkPayload(
        doc_path=f"mod/page-{n}",
        url=f"https://book.test/mod/page-{n}#s",
        title=f"Page {n}",
        section="S",
        heading_breadcrumb=[f"Page {n}", "S"],
        module="mod",
        chapter=f"page-{n}",
        content_type="prose",
        tags=["all"],
        chunk_index=0,
        content_hash=f"hash-{n}",
        text=text,
        word_count=len(text.split()),
        ingested_at="2025-01-01T00:00:00Z",
    )
    dense = [0.0] * DIM
    dense[n % DIM] = 1.0
    return ChunkRecord(id=f"00000000-0000-4000-8000-{n:012d}", payload=payload, dense=dense)


async def _ingest(path: Path, texts: list[str], *, first: int = 0) -> EmbeddedVectorStore:
    """A writer store, left open (as a running `bookchat ingest` would hold it)."""
    writer = EmbeddedVectorStore(path, COLLECTION)
    await writer.ensure_collection(dense_dim=DIM, embedding_model=MODEL)
    await writer.upsert([_record(first + n, text) for n, text in enumerate(texts)])
    return writer


async def _chapters(store: Any, query: str) -> list[str]:
    hits = await store.search(query_text=query, dense=None, filters=None, limit=3)
    return [hit.payload.chapter for hit in hits]


def _copies(path: Path) -> list[str]:
    serving = path / ".serving"
    return sorted(p.name for p in serving.iterdir()) if serving.exists() else []


async def test_snapshot_serves_while_the_writer_keeps_the_collection_open(
    tmp_path: Path,
) -> None:
    writer = await _ingest(tmp_path, TEXTS)
    serving = SnapshotVectorStore(tmp_path, COLLECTION, refresh_interval=3600)
    try:
        assert await serving.count() == len(TEXTS)
        assert (await _chapters(serving, "lidar laser"))[0] == "page-2"
        assert len(await serving.stored_points()) == len(TEXTS)
        assert len(await serving.texts()) == len(TEXTS)
        await serving.ping()
        # Ingestion keeps writing while the snapshot is served.
        await writer.upsert([_record(7, NEW_TEXT)])
        assert await writer.count() == len(TEXTS) + 1
    finally:
        await serving.close()
        await writer.close()


async def test_snapshot_sees_new_points_after_the_generation_changes(tmp_path: Path) -> None:
    writer = await _ingest(tmp_path, TEXTS)
    serving = SnapshotVectorStore(tmp_path, COLLECTION, refresh_interval=3600)
    try:
        assert await serving.count() == len(TEXTS)
        assert await serving.refresh() is False  # nothing changed: no copy made
        served = serving.generation
        before = generation_signature(tmp_path, COLLECTION)
        await writer.upsert([_record(7, NEW_TEXT)])
        assert generation_signature(tmp_path, COLLECTION) != before
        # The interval has not passed: requests keep the old copy and do not look.
        assert await serving.count() == len(TEXTS)
        assert serving.generation == served
        assert await serving.refresh() is True
        assert serving.generation != served  # what the retriever's vocabulary watches
        assert await serving.count() == len(TEXTS) + 1
        assert await _chapters(serving, "quaternions gripper") == ["page-7"]
        await writer.delete([_record(7, NEW_TEXT).id])
        assert await serving.refresh() is True
        assert await serving.count() == len(TEXTS)
    finally:
        await serving.close()
        await writer.close()


async def test_zero_interval_refreshes_in_the_background_on_the_next_request(
    tmp_path: Path,
) -> None:
    writer = await _ingest(tmp_path, TEXTS)
    serving = SnapshotVectorStore(tmp_path, COLLECTION, refresh_interval=0)
    try:
        assert await serving.count() == len(TEXTS)
        await writer.upsert([_record(7, NEW_TEXT)])
        # This request is answered from the old copy and starts the new one.
        assert await serving.count() == len(TEXTS)
        assert serving._state.refresh is not None
        await serving._state.refresh
        assert await serving.count() == len(TEXTS) + 1
    finally:
        await serving.close()
        await writer.close()


async def test_old_copy_is_deleted_only_after_its_last_search(tmp_path: Path) -> None:
    writer = await _ingest(tmp_path, TEXTS)
    serving = SnapshotVectorStore(tmp_path, COLLECTION, refresh_interval=3600)
    try:
        async with serving._lease() as old:
            assert old.directory is not None and old.directory.exists()
            await writer.upsert([_record(7, NEW_TEXT)])
            assert await serving.refresh() is True
            assert old.store is not None
            assert await old.store.count() == len(TEXTS)  # still usable mid-search
            assert old.directory.exists()
        await asyncio.gather(*serving._state.disposals)
        assert not old.directory.exists()
        assert len(_copies(tmp_path)) == 2  # the new copy and its lock file
    finally:
        await serving.close()
        await writer.close()


async def test_write_methods_are_refused_with_the_fix(tmp_path: Path) -> None:
    serving = SnapshotVectorStore(tmp_path, COLLECTION)
    record = _record(0, TEXTS[0])
    try:
        with pytest.raises(ReadOnlyVectorStoreError, match="bookchat ingest"):
            await serving.upsert([record])
        with pytest.raises(ReadOnlyVectorStoreError, match="read-only"):
            await serving.delete([record.id])
        with pytest.raises(ReadOnlyVectorStoreError, match="read-only"):
            await serving.set_payloads([(record.id, record.payload)])
        with pytest.raises(ReadOnlyVectorStoreError, match="read-only"):
            await serving.ensure_collection(dense_dim=DIM, embedding_model=MODEL)
    finally:
        await serving.close()


async def test_missing_collection_is_empty_until_ingestion_creates_it(tmp_path: Path) -> None:
    serving = SnapshotVectorStore(tmp_path, COLLECTION, refresh_interval=3600)
    try:
        assert await serving.count() == 0
        assert await _chapters(serving, "lidar") == []
        assert await serving.stored_points() == []
        assert await serving.texts() == []
        await serving.ping()
        assert _copies(tmp_path) == []  # nothing to copy yet
        writer = await _ingest(tmp_path, TEXTS)
        try:
            assert await serving.refresh() is True
            assert await serving.count() == len(TEXTS)
        finally:
            await writer.close()
    finally:
        await serving.close()


async def test_first_ingest_is_served_by_the_request_that_notices_it(tmp_path: Path) -> None:
    serving = SnapshotVectorStore(tmp_path, COLLECTION, refresh_interval=0)
    try:
        assert await serving.count() == 0
        writer = await _ingest(tmp_path, TEXTS)
        try:
            # An empty copy has nothing worth serving: this request waits for the new one.
            assert await serving.count() == len(TEXTS)
        finally:
            await writer.close()
    finally:
        await serving.close()


async def test_recreate_is_picked_up(tmp_path: Path) -> None:
    writer = await _ingest(tmp_path, TEXTS)
    serving = SnapshotVectorStore(tmp_path, COLLECTION, refresh_interval=3600)
    try:
        assert await serving.count() == len(TEXTS)
        await writer.ensure_collection(dense_dim=None, embedding_model=None, recreate=True)
        assert await serving.refresh() is True
        assert await serving.count() == 0
        # An unchanged collection does not publish a generation, so readers keep their copy.
        await writer.ensure_collection(dense_dim=None, embedding_model=None)
        assert await serving.refresh() is False
    finally:
        await serving.close()
        await writer.close()


async def test_close_removes_the_private_copies(tmp_path: Path) -> None:
    writer = await _ingest(tmp_path, TEXTS)
    await writer.close()
    serving = SnapshotVectorStore(tmp_path, COLLECTION)
    assert await serving.count() == len(TEXTS)
    assert len(_copies(tmp_path)) == 2  # <pid>-<hex>/ and <pid>-<hex>.lock
    await serving.close()
    assert _copies(tmp_path) == []
    with pytest.raises(VectorStoreUnavailableError, match="closed"):
        await serving.count()
    # The canonical collection is untouched.
    reopened = EmbeddedVectorStore(tmp_path, COLLECTION)
    assert await reopened.count() == len(TEXTS)
    await reopened.close()


def _fake_copy(serving_dir: Path, name: str, *, owner_alive: bool) -> IO[bytes] | None:
    """A copy directory and its lock file; the returned open file holds the lock."""
    (serving_dir / name).mkdir(parents=True)
    lock = serving_dir / f"{name}.lock"
    lock.touch()
    if not owner_alive:
        return None
    held = lock.open("r+b")
    fcntl.flock(held, fcntl.LOCK_EX)
    return held


async def test_stale_copies_of_dead_owners_are_removed_live_ones_kept(tmp_path: Path) -> None:
    serving_dir = tmp_path / ".serving"
    _fake_copy(serving_dir, "111-dead", owner_alive=False)
    live = _fake_copy(serving_dir, "333-live", owner_alive=True)
    assert live is not None
    with live:
        (serving_dir / "222-orphan").mkdir()  # a copy without a lock file is never live
        assert remove_stale_copies(serving_dir) == 2
        assert _copies(tmp_path) == ["333-live", "333-live.lock"]
        # A new serving store sweeps at startup too, and keeps the live copy.
        _fake_copy(serving_dir, "444-dead", owner_alive=False)
        serving = SnapshotVectorStore(tmp_path, COLLECTION)
        assert await serving.count() == 0
        await serving.close()
        assert _copies(tmp_path) == ["333-live", "333-live.lock"]


def test_make_serving_store_picks_snapshots_or_the_server(tmp_path: Path) -> None:
    embedded = make_serving_store(
        qdrant_url=None, qdrant_api_key=None, collection=COLLECTION, embedded_path=tmp_path
    )
    assert isinstance(embedded, SnapshotVectorStore)
    server = make_serving_store(
        qdrant_url="http://127.0.0.1:6333",
        qdrant_api_key=None,
        collection=COLLECTION,
        embedded_path=tmp_path,
    )
    assert isinstance(server, QdrantServerStore)


# ---- two server processes


def _serve_in_child(
    path: str, ready: Barrier, ingested: Barrier, results: Queue[dict[str, Any]]
) -> None:
    """One "worker process": serve, wait for the other and the writer, then reload."""

    async def run() -> dict[str, Any]:
        store = SnapshotVectorStore(Path(path), COLLECTION, refresh_interval=3600)
        try:
            before = await store.count()
            first = await _chapters(store, "lidar laser")
            ready.wait(BARRIER_TIMEOUT_S)  # both children serve and the writer is open
            ingested.wait(BARRIER_TIMEOUT_S)  # the writer has upserted a new point
            refreshed = await store.refresh()
            return {
                "pid": os.getpid(),
                "before": before,
                "first": first,
                "refreshed": refreshed,
                "after": await store.count(),
                "new": await _chapters(store, "quaternions gripper"),
            }
        finally:
            await store.close()

    try:
        results.put(asyncio.run(run()))
    except BaseException as exc:
        results.put({"error": repr(exc)})
        # Break the barriers so the parent fails now instead of at its timeout.
        ready.abort()
        ingested.abort()
        raise


async def test_two_processes_serve_the_same_collection_while_ingestion_writes(
    tmp_path: Path,
) -> None:
    writer = await _ingest(tmp_path, TEXTS)
    context = multiprocessing.get_context("spawn")
    ready, ingested = context.Barrier(3), context.Barrier(3)
    results: Queue[dict[str, Any]] = context.Queue()
    children = [
        context.Process(target=_serve_in_child, args=(str(tmp_path), ready, ingested, results))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    try:
        await asyncio.to_thread(ready.wait, BARRIER_TIMEOUT_S)
        assert len(_copies(tmp_path)) == 4  # one copy (+ lock) per child, at the same time
        await writer.upsert([_record(7, NEW_TEXT)])
        await asyncio.to_thread(ingested.wait, BARRIER_TIMEOUT_S)
        reports = [await asyncio.to_thread(results.get, True, BARRIER_TIMEOUT_S) for _ in children]
    finally:
        for child in children:
            await asyncio.to_thread(child.join, BARRIER_TIMEOUT_S)
        await writer.close()
    assert all("error" not in report for report in reports), reports
    assert len({report["pid"] for report in reports}) == 2
    for report in reports:
        assert report["before"] == len(TEXTS)
        assert report["first"][0] == "page-2"
        assert report["refreshed"] is True
        assert report["after"] == len(TEXTS) + 1
        assert report["new"] == ["page-7"]
    assert [child.exitcode for child in children] == [0, 0]
    assert _copies(tmp_path) == []
