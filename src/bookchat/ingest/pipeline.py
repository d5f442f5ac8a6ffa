"""Incremental, idempotent ingestion of a Docusaurus book into the vector store.

Point ids derive from (doc_path, content_hash, occurrence), so an unchanged chunk keeps
its id and is neither re-embedded nor rewritten; a chunk that only moved within its page
gets its payload updated; stale ids are deleted. Pages are written in waves, each wave
embedded completely before any of its pages is touched, so a failure never leaves a page
half-written and a re-run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from bookchat.ingest.chunking import PageChunks, chunk_book
from bookchat.ingest.markdown import SkippedPage
from bookchat.ingest.routes import TrailingSlashChoice
from bookchat.llm.base import Embedder
from bookchat.search.types import (
    ChunkPayload,
    ChunkRecord,
    CollectionMismatchError,
    StoredPoint,
    VectorStore,
    VectorStoreUnavailableError,
)

if TYPE_CHECKING:
    from bookchat.settings import Settings

_ID_NAMESPACE = uuid.UUID("5b0c4b1e-8f2a-4d7e-9a51-2f1d3c6e7a90")
WAVE_CHUNKS = 400  # chunks embedded per wave: 4 batches of 100 in flight
# Free space an embedded store needs beyond its new points: qdrant-edge maps 32 MiB WAL
# segments and page files, and a full disk under a mapped write is SIGBUS, not an error.
STORE_HEADROOM_BYTES = 64 * 1024 * 1024
STORE_GROWTH_FACTOR = 4  # WAL copy + segment + optimizer rewrite, with margin
POINT_OVERHEAD_BYTES = 1024  # ids, sparse vector and payload index entries per point


class PageSkip(msgspec.Struct):
    """A page that was not ingested: its path relative to the docs root, and why."""

    path: str
    reason: str


class IngestSummary(msgspec.Struct, kw_only=True):
    """BRIEF §3's summary plus the skipped pages; `--json` prints exactly these keys."""

    files_seen: int = 0
    files_changed: int = 0
    files_deleted: int = 0
    chunks_added: int = 0
    chunks_updated: int = 0
    chunks_deleted: int = 0
    chunks_unchanged: int = 0
    embedding_calls: int = 0
    seconds: float = 0.0
    pages_skipped: list[PageSkip] = msgspec.field(default_factory=list)


class IngestError(RuntimeError):
    """Ingestion stopped; the message says what was written and how to resume."""


class PruneRefusedError(IngestError):
    """The book on disk would delete most (or all) of the indexed pages: likely a wrong
    or empty folder, so nothing is written without `--prune`."""


def check_prune(indexed: int, deleting: int, *, found: int, docs_root: Path) -> None:
    """Refuse to delete all, or more than half, of the indexed pages."""
    if indexed and (deleting == indexed or deleting * 2 > indexed):
        raise PruneRefusedError(
            f"refusing to delete {deleting} of the {indexed} indexed pages: {docs_root} "
            f"has {found} publishable page(s). Wrong folder? Nothing was written; pass "
            "--prune to delete them."
        )


def estimated_store_bytes(pages: Sequence[PageChunks], dense_dim: int | None) -> int:
    """A generous size of the points this book adds to the store."""
    per_point = POINT_OVERHEAD_BYTES + 4 * (dense_dim or 0)
    return sum(
        len(chunk.text.encode("utf-8")) * 2 + per_point  # text in payload + sparse terms
        for page in pages
        for chunk in page.chunks
    )


def check_free_space(store_path: Path, needed_points_bytes: int) -> None:
    """Refuse to start writing an embedded store on a filesystem that cannot hold it."""
    existing = store_path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    needed = STORE_HEADROOM_BYTES + STORE_GROWTH_FACTOR * needed_points_bytes
    if free < needed:
        raise IngestError(
            f"not enough free space for the vector store at {store_path}: "
            f"{free // 2**20} MiB free, {needed // 2**20 + 1} MiB needed. "
            "Nothing was written; free some space and re-run."
        )


def chunk_id(doc_path: str, content_hash: str, occurrence: int) -> str:
    """A stable UUID for a chunk's content at its page (occurrence separates exact repeats)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{doc_path}\x00{content_hash}\x00{occurrence}"))


@dataclass
class PagePlan:
    """What has to happen to one page's points."""

    doc_path: str
    title: str
    add: list[ChunkPayload] = field(default_factory=list)
    add_ids: list[str] = field(default_factory=list)
    update: list[tuple[str, ChunkPayload]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.add or self.update or self.delete)


def plan_page(page: PageChunks, stored: Sequence[StoredPoint], now: str) -> PagePlan:
    """Diff a page's new chunks against what the store holds for it."""
    plan = PagePlan(doc_path=page.doc_path, title=page.title)
    by_id = {point.id: point for point in stored}
    seen: dict[str, int] = defaultdict(int)
    keep: set[str] = set()
    for chunk in page.chunks:
        occurrence = seen[chunk.content_hash]
        seen[chunk.content_hash] += 1
        point_id = chunk_id(page.doc_path, chunk.content_hash, occurrence)
        keep.add(point_id)
        payload = msgspec.structs.replace(chunk, ingested_at=now)
        old = by_id.get(point_id)
        if old is None:
            plan.add.append(payload)
            plan.add_ids.append(point_id)
        elif old.chunk_index != chunk.chunk_index or old.payload_hash != chunk.payload_hash:
            # Moved, or stored with other non-embedded fields (e.g. before `sections`).
            plan.update.append((point_id, payload))
        else:
            plan.unchanged += 1
    plan.delete = [point.id for point in stored if point.id not in keep]
    return plan


ProgressCallback = Callable[[int, int, str], None]  # (pages done, pages total, doc_path)


async def ingest_book(
    docs_root: Path,
    *,
    store: VectorStore,
    embedder: Embedder | None,
    site_url: str,
    recreate: bool = False,
    dry_run: bool = False,
    prune: bool = False,
    free_space_path: Path | None = None,
    progress: ProgressCallback | None = None,
    trailing_slash: TrailingSlashChoice = "auto",
) -> IngestSummary:
    """Sync the store with the book at `docs_root`; returns the summary.

    Pages that cannot be ingested are skipped and listed in `pages_skipped`; a page
    skipped because its content is invalid keeps what the store holds for it, one refused
    as unsafe (outside the docs root, not a regular file) loses it. Without `prune`, a
    run that would delete all or more than half of the indexed pages is refused before
    anything is written (PruneRefusedError). With `free_space_path` (an embedded store),
    the free space of its filesystem is checked first.
    """
    started = time.perf_counter()
    if not docs_root.is_dir():  # noqa: ASYNC240 (one stat before CPU-bound parsing)
        raise IngestError(f"{docs_root} is not a directory (expected a Docusaurus docs/ tree)")
    skipped: list[SkippedPage] = []
    pages = chunk_book(
        docs_root, site_url=site_url.rstrip("/"), trailing_slash=trailing_slash, skipped=skipped
    )
    calls_before = getattr(embedder, "embedding_calls", 0)
    dense_dim = embedder.dim if embedder else None
    if not dry_run and free_space_path is not None:
        check_free_space(free_space_path, estimated_store_bytes(pages, dense_dim))
    if not dry_run and not recreate:
        await _store_write(
            "preparing",
            store.ensure_collection(
                dense_dim=dense_dim,
                embedding_model=embedder.model if embedder else None,
                embedding_provider=embedder.provider if embedder else None,
            ),
        )
    stored = await _stored_or_empty(store)
    by_doc: dict[str, list[StoredPoint]] = defaultdict(list)
    for point in stored:
        by_doc[point.doc_path].append(point)

    current = {page.doc_path for page in pages}
    # An invalid page keeps its indexed chunks (a typo must not unpublish it); with
    # --recreate nothing is kept, so those count as deleted too.
    kept = set() if recreate else {_doc_path(s.rel_path) for s in skipped if not s.unsafe}
    gone = {doc: pts for doc, pts in by_doc.items() if doc not in current and doc not in kept}
    if not prune:
        check_prune(len(by_doc), len(gone), found=len(pages), docs_root=docs_root)

    if recreate and not dry_run:
        await _store_write(
            "recreating",
            store.ensure_collection(
                dense_dim=dense_dim,
                embedding_model=embedder.model if embedder else None,
                embedding_provider=embedder.provider if embedder else None,
                recreate=True,
            ),
        )
        by_doc, gone = defaultdict(list), {}
    now = datetime.now(UTC).isoformat(timespec="seconds")
    plans = [plan_page(page, by_doc.get(page.doc_path, []), now) for page in pages]

    summary = IngestSummary(
        files_seen=len(pages),
        files_deleted=len(gone),
        pages_skipped=[PageSkip(s.rel_path, s.reason) for s in skipped],
    )
    for plan in plans:
        summary.chunks_added += len(plan.add)
        summary.chunks_updated += len(plan.update)
        summary.chunks_deleted += len(plan.delete)
        summary.chunks_unchanged += plan.unchanged
        summary.files_changed += plan.changed
    summary.chunks_deleted += sum(len(points) for points in gone.values())

    if not dry_run:
        done = await _write_waves(plans, store, embedder, progress)
        for points in gone.values():
            await _store_write(
                f"deleting removed pages ({done} page(s) were written completely)",
                store.delete([point.id for point in points]),
            )
        if progress:
            progress(done, len(plans), "")
    summary.embedding_calls = getattr(embedder, "embedding_calls", 0) - calls_before
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _doc_path(rel_path: str) -> str:
    return rel_path.rsplit(".", 1)[0]


async def _store_write(stage: str, write: Awaitable[None]) -> None:
    """Await one store write; a failure (disk full, permissions) becomes one IngestError."""
    try:
        await write
    except (IngestError, CollectionMismatchError, VectorStoreUnavailableError):
        raise
    except Exception as exc:
        raise IngestError(
            f"writing the vector store failed while {stage}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}. Every page is either fully written or untouched; "
            "fix the cause (free space?) and re-run `bookchat ingest` to resume."
        ) from exc


async def _stored_or_empty(store: VectorStore) -> list[StoredPoint]:
    try:
        return await store.stored_points()
    except Exception:
        # A dry run against a store that was never created has nothing stored.
        return []


async def _write_waves(
    plans: list[PagePlan],
    store: VectorStore,
    embedder: Embedder | None,
    progress: ProgressCallback | None,
) -> int:
    """Embed then write pages wave by wave; returns how many pages were completed."""
    done = 0
    wave: list[PagePlan] = []
    wave_chunks = 0
    total = len(plans)

    async def flush() -> None:
        nonlocal done, wave, wave_chunks
        try:
            vectors = await _embed(wave, embedder)
        except Exception as exc:
            untouched = total - done
            raise IngestError(
                f"embedding failed ({exc}); {done} page(s) were written completely, "
                f"{untouched} page(s) were not touched. Re-run `bookchat ingest` to resume."
            ) from exc
        for plan in wave:
            records = [
                ChunkRecord(id=point_id, payload=payload, dense=vectors.get(point_id))
                for point_id, payload in zip(plan.add_ids, plan.add, strict=True)
            ]
            # New content first, stale content last: a page is never left with less.
            stage = f"writing {plan.doc_path} ({done} page(s) were written completely)"
            if records:
                await _store_write(stage, store.upsert(records))
            if plan.update:
                await _store_write(stage, store.set_payloads(plan.update))
            if plan.delete:
                await _store_write(stage, store.delete(plan.delete))
            done += 1
            if progress:
                progress(done, total, plan.doc_path)
        wave, wave_chunks = [], 0

    for plan in plans:
        wave.append(plan)
        wave_chunks += len(plan.add)
        if wave_chunks >= WAVE_CHUNKS:
            await flush()
    if wave:
        await flush()
    return done


async def _embed(wave: list[PagePlan], embedder: Embedder | None) -> dict[str, list[float]]:
    if embedder is None:
        return {}
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    for plan in wave:
        for point_id, payload in zip(plan.add_ids, plan.add, strict=True):
            ids.append(point_id)
            texts.append(payload.text)
            titles.append(payload.title)
    if not texts:
        return {}
    vectors = await embedder.embed_documents(texts, titles)
    return dict(zip(ids, vectors, strict=True))


async def run_ingest(
    settings: Settings,
    docs_root: Path,
    *,
    site_url: str,
    recreate: bool = False,
    dry_run: bool = False,
    prune: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    trailing_slash: TrailingSlashChoice | None = None,
) -> IngestSummary:
    """Ingest `docs_root` with the configured store and embedder; returns the summary.

    `trailing_slash=None` means the `TRAILING_SLASH` setting.
    """
    from bookchat.llm.factory import ModelClients, make_embedder
    from bookchat.search.factory import store_from_settings

    store = store_from_settings(settings)
    clients = ModelClients(settings)
    embedder = make_embedder(settings, clients)
    try:
        summary = await ingest_book(
            docs_root,
            store=store,
            embedder=embedder,
            site_url=site_url,
            recreate=recreate,
            dry_run=dry_run,
            prune=prune,
            # Only an embedded store writes to this machine's disk.
            free_space_path=None if settings.qdrant_url else Path(settings.qdrant_path),
            progress=progress,
            trailing_slash=trailing_slash or settings.trailing_slash,
        )
    except BaseException:
        with contextlib.suppress(Exception):  # the first failure is the one to report
            await store.close()
        raise
    finally:
        await clients.aclose()
    await _store_write("closing the store", store.close())
    return summary
