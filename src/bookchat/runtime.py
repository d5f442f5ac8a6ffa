"""The shared clients of one app instance, built at startup and closed at shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from bookchat.chat.identity import IdentityResolver
from bookchat.db.config import create_engine
from bookchat.llm.base import Embedder
from bookchat.rag.types import VectorStore
from bookchat.settings import Settings

logger = logging.getLogger("bookchat.runtime")


def make_store(settings: Settings) -> VectorStore:
    """The embedded engine by default, a Qdrant server when QDRANT_URL is set."""
    from bookchat.rag.vectorstore import make_vector_store

    return make_vector_store(
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=settings.qdrant_api_key,
        collection=settings.qdrant_collection,
        embedded_path=Path(settings.qdrant_path),
    )


def make_embedder(settings: Settings) -> Embedder | None:
    """Gemini embeddings when a key is configured; None means BM25 only (offline)."""
    if settings.offline:
        return None
    from bookchat.llm.gemini import make_genai_client
    from bookchat.rag.embeddings import GeminiEmbedder

    client = make_genai_client(settings.gemini_api_key or "", settings.gemini_base_url)
    return GeminiEmbedder(client, model=settings.embedding_model, dim=settings.embedding_dim)


@dataclass
class Runtime:
    """Everything a request needs that outlives it: engine, vector store, generators."""

    settings: Settings
    engine: AsyncEngine
    store: VectorStore
    identities: IdentityResolver
    owns_clients: bool = field(default=True)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Create the clients; nothing here does network I/O yet."""
        store = make_store(settings)
        return cls(
            settings=settings,
            engine=create_engine(settings),
            store=store,
            identities=IdentityResolver(settings),
        )

    async def close(self) -> None:
        if not self.owns_clients:
            return
        await self.store.close()
        await self.engine.dispose()
