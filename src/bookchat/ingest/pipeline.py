"""Incremental, idempotent ingestion of a Docusaurus book into the vector store.

Point ids derive from (doc_path, content_hash, occurrence), so an unchanged chunk keeps
its id and is neither re-embedded nor rewritten; a chunk that only moved within its page
gets its payload updated; stale ids are deleted. Pages are written in waves, each wave
embedded completely before any of its pages is touched, so a failure never leaves a page
half-written and a re-run resumes where it stopped.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from bookchat.ingest.chunking import PageChunks, chunk_book
from bookchat.ingest.routes import TrailingSlashChoice
from bookchat.llm.base import Embedder
from bookchat.search.types import ChunkPayload, ChunkRecord, StoredPoint, VectorStore

if TYPE_CHECKING:
    from bookchat.settings import Settings

_ID_NAMESPACE = uuid.UUID("5b0c4b1e-8f2a-4d7e-9a51-2f1d3c6e7a90")
WAVE_CHUNKS = 400  # chunks embedded per wave: 4 batches of 100 in flight


class IngestSummary(msgspec.Struct, kw_only=True):
    """BRIEF §3's summary; `--json` prints exactly these keys."""

    files_seen: int = 0
    files_changed: int = 0
    files_deleted: int = 0
    chunks_added: int = 0
    chunks_updated: int = 0
    chunks_deleted: int = 0
    chunks_unchanged: int = 0
    embedding_calls: int = 0
    seconds: float = 0.0


class IngestError(RuntimeError):
    """Ingestion stopped; the message says what was written and how to resume."""


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
    progress: ProgressCallback | None = None,
    trailing_slash: TrailingSlashChoice = "auto",
) -> IngestSummary:
    """Sync the store with the book at `docs_root`; returns the summary."""
    started = time.perf_counter()
    if not docs_root.is_dir():  # noqa: ASYNC240 (one stat before CPU-bound parsing)
        raise IngestError(f"{docs_root} is not a directory (expected a Docusaurus docs/ tree)")
    pages = chunk_book(docs_root, site_url=site_url.rstrip("/"), trailing_slash=trailing_slash)
    calls_before = getattr(embedder, "embedding_calls", 0)
    if not dry_run:
        await store.ensure_collection(
            dense_dim=embedder.dim if embedder else None,
            embedding_model=embedder.model if embedder else None,
            recreate=recreate,
        )
    stored = [] if (recreate and not dry_run) else await _stored_or_empty(store)
    by_doc: dict[str, list[StoredPoint]] = defaultdict(list)
    for point in stored:
        by_doc[point.doc_path].append(point)

    now = datetime.now(UTC).isoformat(timespec="seconds")
    plans = [plan_page(page, by_doc.get(page.doc_path, []), now) for page in pages]
    current = {page.doc_path for page in pages}
    gone = {doc: points for doc, points in by_doc.items() if doc not in current}

    summary = IngestSummary(files_seen=len(pages), files_deleted=len(gone))
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
            await store.delete([point.id for point in points])
        if progress:
            progress(done, len(plans), "")
    summary.embedding_calls = getattr(embedder, "embedding_calls", 0) - calls_before
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


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
            if records:
                await store.upsert(records)
            if plan.update:
                await store.set_payloads(plan.update)
            if plan.delete:
                await store.delete(plan.delete)
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
    progress: Callable[[int, int, str], None] | None = None,
    trailing_slash: TrailingSlashChoice | None = None,
) -> IngestSummary:
    """Ingest `docs_root` with the configured store and embedder; returns the summary.

    `trailing_slash=None` means the `TRAILING_SLASH` setting.
    """
    from bookchat.llm.factory import make_embedder
    from bookchat.search.factory import store_from_settings

    store = store_from_settings(settings)
    embedder = make_embedder(settings)
    try:
        return await ingest_book(
            docs_root,
            store=store,
            embedder=embedder,
            site_url=site_url,
            recreate=recreate,
            dry_run=dry_run,
            progress=progress,
            trailing_slash=trailing_slash or settings.trailing_slash,
        )
    finally:
        await store.close()
