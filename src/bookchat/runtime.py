"""The shared clients of one app instance, built at startup and closed at shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from bookchat.answer.grounding import PromptBuilder
from bookchat.answer.pipeline import AnswerPipeline
from bookchat.chat.identity import IdentityResolver
from bookchat.chat.journal import StreamJournal
from bookchat.chat.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from bookchat.chat.service import ChatService
from bookchat.db.config import DatabaseFileWatch, create_engine
from bookchat.llm.base import AnswerGenerator, Embedder
from bookchat.llm.factory import ModelClients, make_embedder, make_generator
from bookchat.llm.health import LLMHealth, TrackedEmbedder, TrackedGenerator
from bookchat.search.factory import serving_store_from_settings
from bookchat.search.retriever import Retriever
from bookchat.search.types import VectorStore
from bookchat.settings import Settings
from bookchat.text import specificity

logger = logging.getLogger("bookchat.runtime")


def make_limiter(settings: Settings) -> RateLimiter:
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url)
    return MemoryRateLimiter()


def make_journal(settings: Settings) -> StreamJournal:
    """Resumable streams: in process, mirrored to Redis when `REDIS_URL` is set."""
    return StreamJournal(
        grace_period=settings.resume_grace_seconds,
        write_timeout=settings.sse_write_timeout,
        redis_url=settings.redis_url,
        # Redis keeps a live answer's events at least as long as it may run.
        live_ttl=settings.total_timeout + settings.resume_grace_seconds + 60,
    )


@dataclass
class Runtime:
    """Everything a request needs that outlives it: engine, store, pipeline, limiter."""

    settings: Settings
    engine: AsyncEngine
    store: VectorStore
    identities: IdentityResolver
    limiter: RateLimiter
    chat: ChatService
    journal: StreamJournal = field(default_factory=StreamJournal)
    clients: ModelClients | None = None
    owns_clients: bool = True
    llm_health: LLMHealth = field(default_factory=LLMHealth)
    database_file: DatabaseFileWatch | None = None
    # The embedded store's directory, watched once it exists at startup (None: a server).
    index_dir: Path | None = None
    _started: bool = field(default=False, repr=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        store: VectorStore | None = None,
        embedder: Embedder | None = None,
        generator: AnswerGenerator | None = None,
        engine: AsyncEngine | None = None,
    ) -> Runtime:
        """Create the clients (no network I/O yet); tests may pass their own parts."""
        engine = engine or create_engine(settings)
        store = store or serving_store_from_settings(settings)
        clients = ModelClients(settings)
        if embedder is None:
            embedder = make_embedder(settings, clients)
        # Every real model call records its outcome for /api/v1/health (llm/health.py).
        llm_health = LLMHealth()
        tracked_generator = TrackedGenerator(
            generator or make_generator(settings, clients), llm_health
        )
        tracked_embedder = TrackedEmbedder(embedder, llm_health) if embedder is not None else None
        pipeline = AnswerPipeline(
            Retriever(store, tracked_embedder),
            tracked_generator,
            PromptBuilder(settings.book_title, history_limit=settings.history_messages),
        )
        chat = ChatService(
            pipeline,
            async_sessionmaker(engine, expire_on_commit=False),
            connect=engine.sync_engine.connect,
            history_messages=settings.history_messages,
            heartbeat_interval=settings.stream_heartbeat_interval,
        )
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            identities=IdentityResolver(settings, engine),
            limiter=make_limiter(settings),
            chat=chat,
            journal=make_journal(settings),
            clients=clients,
            llm_health=llm_health,
            database_file=DatabaseFileWatch(settings.database_url),
            index_dir=None if settings.qdrant_url else Path(settings.qdrant_path),
        )

    async def start(self) -> None:
        """At app startup: register this process as the owner of its streams."""
        await self.chat.start()
        # The relevance decision's word-frequency list takes ~0.75 s to read: at startup,
        # not in the first reader's chat.
        await asyncio.to_thread(specificity, "warm")
        if self.database_file is not None:
            self.database_file.check()  # remember the file being served
        if self.index_dir is not None and not self.index_dir.is_dir():
            self.index_dir = None  # nothing ingested yet: retrieval reports that itself

    async def storage_lost(self) -> Literal["database", "index"] | None:
        """Which storage vanished under the running server (`rm -rf var/`), if any.

        A replaced SQLite file (e.g. `bookchat migrate` after the deletion) is taken up:
        the pool reconnects to it, so serving resumes once it is usable.
        """
        if self.database_file is not None:
            state = self.database_file.check()
            if state == "missing":
                return "database"
            if state == "replaced":
                logger.warning("the database file was replaced; reconnecting to the new one")
                await self.engine.dispose()
                self.database_file.accept()
        if self.index_dir is not None and not self.index_dir.is_dir():
            return "index"
        return None

    async def close(self) -> None:
        await self.journal.close()  # answers still running are saved `interrupted`
        await self.chat.stop()
        if not self.owns_clients:
            return
        await self.limiter.close()
        try:
            await self.store.close()
        except Exception as exc:  # e.g. its files were deleted under it: exit anyway
            logger.warning(
                "vector store did not close cleanly", extra={"error": type(exc).__name__}
            )
        await self.engine.dispose()
        if self.clients is not None:
            await self.clients.aclose()
