"""QDRANT_PREFER_GRPC: the server store talks gRPC on QDRANT_GRPC_PORT.

No Qdrant server build is installable on these machines (neither PyPI, Debian nor npm
carries one), so gRPC is NOT exercised against a real Qdrant here: these tests prove
that the settings put qdrant-client on its gRPC transport (an HTTP/2 connection to the
gRPC port, none to the REST port) and that gRPC failures map to the same 503 as REST.
The REST path runs against qdrant-client's in-memory mode in test_vectorstore.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bookchat.search.factory import store_from_settings
from bookchat.search.qdrant_server import QdrantServerStore
from bookchat.search.types import VectorStoreUnavailableError

from .conftest import make_settings

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Listener:
    """A TCP port that records the first bytes of each connection, then hangs up.

    The record is made, and `connected` set, before the hang-up: the client only sees
    its error after that, so a test that waits on `connected` never races the thread.
    """

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.port = int(self._sock.getsockname()[1])
        self.received: list[bytes] = []
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(len(HTTP2_PREFACE)))
                except OSError:
                    self.received.append(b"")
                self.connected.set()

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def grpc_port() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def rest_port() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


async def test_prefer_grpc_uses_the_grpc_port_and_maps_its_failures(
    tmp_path: Path, grpc_port: Listener, rest_port: Listener
) -> None:
    settings = make_settings(
        tmp_path,
        QDRANT_URL=f"http://127.0.0.1:{rest_port.port}",
        QDRANT_PREFER_GRPC="true",
        QDRANT_GRPC_PORT=str(grpc_port.port),
    )
    store = store_from_settings(settings)
    assert isinstance(store, QdrantServerStore)
    try:
        with pytest.raises(VectorStoreUnavailableError, match="gRPC"):
            await store.ping()
        with pytest.raises(VectorStoreUnavailableError):
            await store.search(query_text="robot", dense=None, filters=None, limit=3)
    finally:
        await store.close()

    assert grpc_port.connected.wait(timeout=10)
    assert grpc_port.received[0] == HTTP2_PREFACE  # gRPC runs over HTTP/2
    assert rest_port.received == []


async def test_without_prefer_grpc_the_store_speaks_rest(
    tmp_path: Path, grpc_port: Listener, rest_port: Listener
) -> None:
    settings = make_settings(
        tmp_path,
        QDRANT_URL=f"http://127.0.0.1:{rest_port.port}",
        QDRANT_GRPC_PORT=str(grpc_port.port),
    )
    store = store_from_settings(settings)
    try:
        with pytest.raises(VectorStoreUnavailableError):
            await store.ping()
    finally:
        await store.close()

    assert rest_port.connected.wait(timeout=10)
    assert rest_port.received[0].startswith(b"GET /collections")
    assert grpc_port.received == []
