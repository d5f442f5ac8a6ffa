"""The shared clients of one app instance, built at startup and closed at shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from bookchat.chat.identity import IdentityResolver
from bookchat.db.config import create_engine
from bookchat.rag.types import VectorStore
from bookchat.settings import Settings

logger = logging.getLogger("bookchat.runtime")


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
        from bookchat.rag.vectorstore import make_vector_store

        store = make_vector_store(
            qdrant_url=settings.qdrant_url,
            qdrant_api_key=settings.qdrant_api_key,
            collection=settings.qdrant_collection,
            embedded_path=Path(settings.qdrant_path),
        )
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
