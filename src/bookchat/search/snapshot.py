"""Serving the embedded collection from a private copy per process, with hot reload.

qdrant-edge allows one opener per shard, so server processes never open the canonical
shard that `bookchat ingest` writes. Each `SnapshotVectorStore` copies it, under the
shared side of the writer's `flock`, into `<path>/.serving/<pid>-<hex>/`, opens the
copy with `EmbeddedVectorStore` and answers from it. At most every `refresh_interval`
seconds one `os.stat` of the generation marker tells whether ingestion changed the
collection; if so a new copy is built in a worker thread, swapped in, and the old one
is closed and deleted once no search still uses it.

Each copy's owner holds an exclusive `flock` on `<pid>-<hex>.lock` next to it for the
copy's lifetime; the kernel drops it when the process dies, so a copy whose lock can be
taken is stale and is removed (safe against pid reuse in containers).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn

import anyio.to_thread

from bookchat.search.embedded import (
    EmbeddedVectorStore,
    GenerationSignature,
    collection_lock,
    generation_signature,
)
from bookchat.search.types import (
    ChunkPayload,
    ChunkRecord,
    SearchFilters,
    SearchHit,
    StoredPoint,
    VectorStoreUnavailableError,
)

__all__ = [
    "DEFAULT_REFRESH_INTERVAL_S",
    "ReadOnlyVectorStoreError",
    "SnapshotVectorStore",
    "copy_sparse",
    "remove_stale_copies",
]

logger = logging.getLogger("bookchat.search.snapshot")

DEFAULT_REFRESH_INTERVAL_S = 5.0
SERVING_DIR = ".serving"
_LOCK_SUFFIX = ".lock"
_TMP_SUFFIX = ".tmp"
_COPY_BLOCK = 1 << 20


class ReadOnlyVectorStoreError(RuntimeError):
    """A write was sent to the serving store, which only reads private copies."""


@dataclass(eq=False)
class _Copy:
    """One private copy being served; `store` is None while the collection does not exist."""

    signature: GenerationSignature
    store: EmbeddedVectorStore | None = None
    directory: Path | None = None
    owner_lock: IO[bytes] | None = None
    users: int = 0
    retired: bool = False


@dataclass(eq=False)
class _State:
    """Background work the store must finish before it is closed."""

    refresh: asyncio.Task[bool] | None = None
    disposals: set[asyncio.Task[None]] = field(default_factory=set)


def _try_lock(path: Path) -> IO[bytes] | None:
    """The file opened and locked exclusively, or None when another owner holds it."""
    try:
        handle = open(path, "r+b")  # noqa: SIM115 - the open file is the lock, held by the caller
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def remove_stale_copies(serving_dir: Path) -> int:
    """Delete copies whose owner process is gone; returns how many were removed."""
    if not serving_dir.is_dir():
        return 0
    removed = 0
    for entry in serving_dir.iterdir():
        if entry.name.endswith((_LOCK_SUFFIX, _TMP_SUFFIX)):
            handle = _try_lock(entry)
            if handle is None:
                continue  # its owner is alive
            with handle:
                # Directory first, lock file last: a copy directory always has its lock.
                copy_dir = entry.with_name(entry.name.removesuffix(_LOCK_SUFFIX))
                if copy_dir != entry:
                    shutil.rmtree(copy_dir, ignore_errors=True)
                    removed += 1
                entry.unlink(missing_ok=True)
        elif entry.is_dir() and not entry.with_name(entry.name + _LOCK_SUFFIX).exists():
            shutil.rmtree(entry, ignore_errors=True)  # an owner never makes a copy before its lock
            removed += 1
    return removed


def _copy_range(source: int, target: int, start: int, end: int) -> None:
    """Copy bytes [start, end) to the same offsets, in the kernel when it can."""
    offset = start
    try:
        while offset < end:
            copied = os.copy_file_range(source, target, end - offset, offset, offset)
            if copied == 0:
                return
            offset += copied
    except OSError:
        # No copy_file_range here (old kernel, other filesystem): plain reads and writes.
        while offset < end:
            block = os.pread(source, min(_COPY_BLOCK, end - offset), offset)
            if not block:
                return
            offset += os.pwrite(target, block, offset)


def copy_sparse(source: str, target: str) -> str:
    """`shutil.copy2` that keeps holes (a `copytree` copy function).

    qdrant preallocates 32 MiB WAL segments that are almost all hole; a plain copy
    would write every zero, so each copy would cost ~70 MB of disk and time.
    """
    with open(source, "rb") as src, open(target, "wb") as dst:
        fd_in, fd_out = src.fileno(), dst.fileno()
        size = os.fstat(fd_in).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd_in, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole is left
                _copy_range(fd_in, fd_out, offset, size)  # no SEEK_DATA: copy it all
                break
            end = os.lseek(fd_in, start, os.SEEK_HOLE)
            _copy_range(fd_in, fd_out, start, end)
            offset = end
        os.ftruncate(fd_out, size)  # a trailing hole stays a hole
    shutil.copystat(source, target)
    return target


def _claim_copy_dir(serving_dir: Path) -> tuple[Path, IO[bytes]]:
    """A new, empty copy directory and its held owner lock."""
    serving_dir.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    fd, tmp_name = tempfile.mkstemp(prefix=f"{name}.", suffix=_TMP_SUFFIX, dir=serving_dir)
    handle = os.fdopen(fd, "r+b")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # Locked before it gets its real name, so a sweeper can never take a live lock.
    lock_path = serving_dir / f"{name}{_LOCK_SUFFIX}"
    os.replace(tmp_name, lock_path)
    directory = serving_dir / name
    directory.mkdir()
    return directory, handle


def _drop_copy_files(copy: _Copy) -> None:
    """Delete a copy's directory, then its lock file, then release the lock."""
    if copy.directory is not None:
        shutil.rmtree(copy.directory, ignore_errors=True)
        copy.directory.with_name(copy.directory.name + _LOCK_SUFFIX).unlink(missing_ok=True)
    if copy.owner_lock is not None:
        copy.owner_lock.close()


class SnapshotVectorStore:
    """A read-only `VectorStore` over a private copy of the embedded collection.

    `refresh_interval` bounds how often a request may `os.stat` the generation marker;
    0 checks on every request (tests). Write methods raise `ReadOnlyVectorStoreError`.
    """

    def __init__(
        self,
        path: Path,
        collection: str,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL_S,
    ) -> None:
        self._root = Path(path)
        self._collection = collection
        self._serving_dir = self._root / SERVING_DIR
        self._refresh_interval = refresh_interval
        self._current: _Copy | None = None
        self._state = _State()
        self._next_check = 0.0
        self._swept = False
        self._closed = False

    # ---- copies

    def _build_copy(self, current: GenerationSignature | None, *, force: bool) -> _Copy | None:
        """Copy the canonical collection (worker thread); None when `current` is still it."""
        if not self._swept:
            removed = remove_stale_copies(self._serving_dir)
            if removed:
                logger.info("removed %d stale vector store copies", removed)
            self._swept = True
        source_dir = self._root / self._collection
        meta_file = self._root / f"{self._collection}.meta.json"
        with collection_lock(self._root, self._collection, shared=True):
            signature = generation_signature(self._root, self._collection)
            if not force and signature == current:
                return None
            if not (source_dir / "edge_config.json").exists():
                return _Copy(signature=signature)
            directory, owner_lock = _claim_copy_dir(self._serving_dir)
            copy = _Copy(signature=signature, directory=directory, owner_lock=owner_lock)
            try:
                shutil.copytree(source_dir, directory / self._collection, copy_function=copy_sparse)
                if meta_file.exists():
                    shutil.copy2(meta_file, directory / meta_file.name)
            except BaseException:
                _drop_copy_files(copy)
                raise
        copy.store = EmbeddedVectorStore(directory, self._collection)
        return copy

    async def _dispose(self, copy: _Copy) -> None:
        try:
            if copy.store is not None:
                await copy.store.close()
        finally:
            await anyio.to_thread.run_sync(_drop_copy_files, copy)

    def _retire(self, copy: _Copy) -> None:
        """Delete `copy` as soon as no search uses it."""
        copy.retired = True
        if copy.users == 0:
            task = asyncio.get_running_loop().create_task(self._dispose(copy))
            self._state.disposals.add(task)
            task.add_done_callback(self._state.disposals.discard)

    async def _replace(self, *, force: bool) -> bool:
        """Build a new copy if the generation changed (or `force`) and swap it in."""
        current = self._current
        copy = await anyio.to_thread.run_sync(
            lambda: self._build_copy(current.signature if current else None, force=force)
        )
        if copy is None:
            return False
        if copy.store is not None:
            try:
                await copy.store.count()  # opens the shard in a worker thread, off the loop
            except BaseException:
                await self._dispose(copy)
                raise
        if self._closed:
            await self._dispose(copy)
            return False
        old, self._current = self._current, copy
        self._next_check = time.monotonic() + self._refresh_interval
        if old is not None:
            self._retire(old)
        logger.info(
            "serving vector store copy %s", copy.directory or "(collection not ingested yet)"
        )
        return True

    def _start_refresh(self, *, force: bool) -> asyncio.Task[bool]:
        task = self._state.refresh
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._replace(force=force))
            self._state.refresh = task
        return task

    async def refresh(self) -> bool:
        """Re-copy now if ingestion changed the collection; True when a new copy is served."""
        self._check_open()
        served = self._current
        running = self._state.refresh
        if running is not None and not running.done():
            await asyncio.shield(running)
        await asyncio.shield(self._start_refresh(force=self._current is None))
        return self._current is not served

    def _check_open(self) -> None:
        if self._closed:
            raise VectorStoreUnavailableError("the serving vector store is closed")

    @contextlib.asynccontextmanager
    async def _lease(self) -> AsyncIterator[_Copy]:
        """The copy to answer from, kept alive until the caller is done with it."""
        self._check_open()
        if self._current is None:
            task = self._start_refresh(force=True)
            try:
                # Shielded: a cancelled request must not abort the copy other requests await.
                await asyncio.shield(task)
            except Exception as exc:
                if isinstance(exc, VectorStoreUnavailableError):
                    raise
                raise VectorStoreUnavailableError(
                    f"cannot copy the embedded vector store {self._root}: {exc}"
                ) from exc
        else:
            self._maybe_refresh_in_background()
            running = self._state.refresh
            if self._current.store is None and running is not None and not running.done():
                # Nothing to serve yet but the first ingest is being copied: wait for it.
                with contextlib.suppress(Exception):  # logged by _log_refresh_failure
                    await asyncio.shield(running)
        copy = self._current
        if copy is None:  # closed while the first copy was being made
            raise VectorStoreUnavailableError("the serving vector store is closed")
        copy.users += 1
        try:
            yield copy
        finally:
            copy.users -= 1
            if copy.retired and copy.users == 0:
                self._retire(copy)

    def _maybe_refresh_in_background(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._refresh_interval
        running = self._state.refresh
        if running is not None and not running.done():
            return
        assert self._current is not None
        if generation_signature(self._root, self._collection) != self._current.signature:
            self._start_refresh(force=False).add_done_callback(_log_refresh_failure)

    # ---- VectorStore: reads

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
        async with self._lease() as copy:
            if copy.store is None:
                return []
            return await copy.store.search(
                query_text=query_text, dense=dense, filters=filters, limit=limit, topic=topic
            )

    async def search_dense(
        self, *, dense: list[float], filters: SearchFilters | None, limit: int
    ) -> list[SearchHit]:
        """Dense-only search with cosine scores, on this process's copy."""
        async with self._lease() as copy:
            if copy.store is None:
                return []
            return await copy.store.search_dense(dense=dense, filters=filters, limit=limit)

    async def count(self) -> int:
        """Number of points in the served copy (0 before the first ingest)."""
        async with self._lease() as copy:
            return 0 if copy.store is None else await copy.store.count()

    async def stored_points(self) -> list[StoredPoint]:
        """Every point's id, doc_path, content_hash and chunk_index in the served copy."""
        async with self._lease() as copy:
            return [] if copy.store is None else await copy.store.stored_points()

    @property
    def generation(self) -> GenerationSignature:
        """The served copy's generation: changes when a new copy is served (`VectorStore`)."""
        return None if self._current is None else self._current.signature

    async def texts(self) -> list[str]:
        """Every chunk's title, headings and text in the served copy."""
        async with self._lease() as copy:
            return [] if copy.store is None else await copy.store.texts()

    async def ping(self) -> None:
        """Raise VectorStoreUnavailableError if the copy cannot be made or read."""
        async with self._lease() as copy:
            if copy.store is not None:
                await copy.store.ping()

    # ---- VectorStore: writes (refused)

    def _refuse(self, operation: str) -> NoReturn:
        raise ReadOnlyVectorStoreError(
            f"{operation}: the serving vector store is a read-only copy of {self._root}; "
            "change the collection with `bookchat ingest` (the server picks it up within "
            f"{self._refresh_interval:g} s)"
        )

    async def ensure_collection(
        self,
        *,
        dense_dim: int | None,
        embedding_model: str | None,
        recreate: bool = False,
        embedding_provider: str | None = None,
    ) -> None:
        """Refused: the serving store is read-only."""
        self._refuse("ensure_collection")

    async def upsert(self, records: Sequence[ChunkRecord]) -> None:
        """Refused: the serving store is read-only."""
        self._refuse("upsert")

    async def set_payloads(self, payloads: Sequence[tuple[str, ChunkPayload]]) -> None:
        """Refused: the serving store is read-only."""
        self._refuse("set_payloads")

    async def delete(self, ids: Sequence[str]) -> None:
        """Refused: the serving store is read-only."""
        self._refuse("delete")

    async def close(self) -> None:
        """Finish a refresh in progress, then close and delete every private copy."""
        if self._closed:
            return
        self._closed = True
        refresh = self._state.refresh
        if refresh is not None:
            # The copy thread cannot be interrupted; let it end, then drop what it made.
            with contextlib.suppress(Exception):
                await refresh
        current, self._current = self._current, None
        if current is not None:
            current.users = 0  # searches still running after close fail like a closed shard
            await self._dispose(current)
        if self._state.disposals:
            await asyncio.gather(*self._state.disposals, return_exceptions=True)


def _log_refresh_failure(task: asyncio.Task[bool]) -> None:
    """Keep serving the old copy when a background refresh fails; say why in the log."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning(
            "vector store refresh failed; still serving the previous copy",
            exc_info=task.exception(),
        )
