"""Which store a process gets: a Qdrant server, the embedded engine, or per-process snapshots.

The one place that knows all three implementations, so none of them imports another.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bookchat.search.embedded import EmbeddedVectorStore
from bookchat.search.snapshot import SnapshotVectorStore
from bookchat.search.types import VectorStore

if TYPE_CHECKING:
    from bookchat.settings import Settings

__all__ = [
    "make_serving_store",
    "make_vector_store",
    "serving_store_from_settings",
    "store_from_settings",
]


def make_vector_store(
    *,
    qdrant_url: str | None,
    qdrant_api_key: str | None,
    collection: str,
    embedded_path: Path,
    prefer_grpc: bool = False,
    grpc_port: int = 6334,
) -> VectorStore:
    """A Qdrant server store when `qdrant_url` is set (REST, or gRPC), else the embedded one."""
    if qdrant_url:
        # Imported here: qdrant-client (grpcio, numpy, protobuf) only for a server.
        from qdrant_client import AsyncQdrantClient

        from bookchat.search.qdrant_server import QdrantServerStore

        # No version check at construction: it is a blocking request in __init__.
        client = AsyncQdrantClient(
            url=qdrant_url,
            api_key=qdrant_api_key,
            timeout=10,
            check_compatibility=False,
            prefer_grpc=prefer_grpc,
            grpc_port=grpc_port,
        )
        return QdrantServerStore(client, collection)
    return EmbeddedVectorStore(embedded_path, collection)


def make_serving_store(
    *,
    qdrant_url: str | None,
    qdrant_api_key: str | None,
    collection: str,
    embedded_path: Path,
    prefer_grpc: bool = False,
    grpc_port: int = 6334,
) -> VectorStore:
    """The store the API reads from: a Qdrant server store, or per-process snapshots.

    Every server process (granian worker) gets its own `SnapshotVectorStore` copy of
    the embedded collection, so any number of workers and a running `bookchat ingest`
    coexist; the copies follow new ingests within a few seconds.
    """
    if qdrant_url:
        return make_vector_store(
            qdrant_url=qdrant_url,
            qdrant_api_key=qdrant_api_key,
            collection=collection,
            embedded_path=embedded_path,
            prefer_grpc=prefer_grpc,
            grpc_port=grpc_port,
        )
    return SnapshotVectorStore(embedded_path, collection)


def store_from_settings(settings: Settings) -> VectorStore:
    """The writer store (ingestion): the embedded engine, or a Qdrant server (QDRANT_URL)."""
    return make_vector_store(
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=settings.qdrant_api_key,
        collection=settings.qdrant_collection,
        embedded_path=Path(settings.qdrant_path),
        prefer_grpc=settings.qdrant_prefer_grpc,
        grpc_port=settings.qdrant_grpc_port,
    )


def serving_store_from_settings(settings: Settings) -> VectorStore:
    """The store the API reads from (embedded: a private snapshot per worker process)."""
    return make_serving_store(
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=settings.qdrant_api_key,
        collection=settings.qdrant_collection,
        embedded_path=Path(settings.qdrant_path),
        prefer_grpc=settings.qdrant_prefer_grpc,
        grpc_port=settings.qdrant_grpc_port,
    )
