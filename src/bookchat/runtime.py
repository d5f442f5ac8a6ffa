"""The shared clients of one app instance, built at startup and closed at shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

if TYPE_CHECKING:
    from google import genai

from bookchat.chat.identity import IdentityResolver
from bookchat.chat.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from bookchat.chat.service import ChatService
from bookchat.db.config import create_engine
from bookchat.llm.base import AnswerGenerator, Embedder
from bookchat.rag.answer import AnswerPipeline
from bookchat.rag.grounding import PromptBuilder
from bookchat.rag.retriever import Retriever
from bookchat.rag.types import VectorStore
from bookchat.settings import Settings

logger = logging.getLogger("bookchat.runtime")


def make_store(settings: Settings) -> VectorStore:
    """The writer store (ingestion): the embedded engine, or a Qdrant server (QDRANT_URL)."""
    from bookchat.rag.vectorstore import make_vector_store

    return make_vector_store(
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=settings.qdrant_api_key,
        collection=settings.qdrant_collection,
        embedded_path=Path(settings.qdrant_path),
    )


def make_serving_store(settings: Settings) -> VectorStore:
    """The store the API reads from (embedded: a private snapshot per worker process)."""
    from bookchat.rag.vectorstore import make_serving_store as make

    return make(
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=settings.qdrant_api_key,
        collection=settings.qdrant_collection,
        embedded_path=Path(settings.qdrant_path),
    )


def make_genai(settings: Settings) -> genai.Client | None:
    """One google-genai client per process when a key is configured (None = offline)."""
    if settings.offline:
        return None
    from bookchat.llm.gemini import make_genai_client

    return make_genai_client(settings.gemini_api_key or "", settings.gemini_base_url)


def make_embedder(settings: Settings, client: genai.Client | None = None) -> Embedder | None:
    """Gemini embeddings when a key is configured; None means BM25 only (offline)."""
    client = client or make_genai(settings)
    if client is None:
        return None
    from bookchat.rag.embeddings import GeminiEmbedder

    return GeminiEmbedder(client, model=settings.embedding_model, dim=settings.embedding_dim)


def make_generator(settings: Settings, client: genai.Client | None = None) -> AnswerGenerator:
    """Gemini when a key is configured, else the offline extractive answerer."""
    client = client or make_genai(settings)
    if client is None:
        from bookchat.llm.offline import OfflineGenerator

        return OfflineGenerator()
    from bookchat.llm.gemini import GeminiGenerator

    return GeminiGenerator(
        client,
        settings.chat_model,
        settings.fallback_model,
        first_token_timeout=settings.first_token_timeout,
        total_timeout=settings.total_timeout,
    )


def make_limiter(settings: Settings) -> RateLimiter:
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url)
    return MemoryRateLimiter()


@dataclass
class Runtime:
    """Everything a request needs that outlives it: engine, store, pipeline, limiter."""

    settings: Settings
    engine: AsyncEngine
    store: VectorStore
    identities: IdentityResolver
    limiter: RateLimiter
    chat: ChatService
    genai_client: genai.Client | None = None
    owns_clients: bool = True

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
        store = store or make_serving_store(settings)
        client = make_genai(settings) if (embedder is None or generator is None) else None
        if embedder is None:
            embedder = make_embedder(settings, client)
        pipeline = AnswerPipeline(
            Retriever(store, embedder),
            generator or make_generator(settings, client),
            PromptBuilder(settings.book_title, history_limit=settings.history_messages),
        )
        chat = ChatService(
            pipeline,
            async_sessionmaker(engine, expire_on_commit=False),
            history_messages=settings.history_messages,
        )
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            identities=IdentityResolver(settings),
            limiter=make_limiter(settings),
            chat=chat,
            genai_client=client,
        )

    async def close(self) -> None:
        if not self.owns_clients:
            return
        await self.limiter.close()
        await self.store.close()
        await self.engine.dispose()
        if self.genai_client is not None:
            from bookchat.llm.gemini import close_genai_client

            await close_genai_client(self.genai_client)
