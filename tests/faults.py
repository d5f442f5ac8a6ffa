"""A TCP proxy that can be cut: a database or Redis that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from typing import Literal

Mode = Literal["forward", "refuse", "blackhole"]
WHOLE_TOKEN_EVENT = re.compile(rb"event: token\r\ndata: [^\r\n]*\r\n\r\n")


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` from a background thread.

    `cut()` resets every open connection and refuses new ones (the peer went away);
    `blackhole()` accepts connections and never answers (the peer hangs); `restore()`
    forwards again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode: Mode = "forward"
        self.connections = 0  # accepted since start
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_all(self, *, stop_listening: bool) -> None:
        if stop_listening and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()  # RST, like a peer that vanished
        self._writers.clear()

    async def _shutdown(self) -> None:
        """Close everything, then end the handlers still pumping (keep-alive clients),
        so none is destroyed pending when the loop stops."""
        await self._close_all(stop_listening=True)
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def cut(self) -> None:
        """Reset open connections and refuse new ones."""
        self.mode = "refuse"
        self._call(self._close_all(stop_listening=True))

    def blackhole(self) -> None:
        """Reset open connections; accept new ones but never answer."""
        self.mode = "blackhole"
        self._call(self._close_all(stop_listening=False))

    def restore(self) -> None:
        self.mode = "forward"
        if self._server is None:
            self._call(self._listen())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        if self.mode != "forward":
            await reader.read()  # hold the connection open, answer nothing
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(upstream_writer)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    sink.transport.abort()

        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(upstream_writer)


class StreamCutter(TcpProxy):
    """Forwards like `TcpProxy`, but cuts the connection of the first `POST /api/v1/chat`
    once `after_tokens` token events went through to the client: a reader's network that
    fails mid-answer. Later requests pass untouched."""

    def __init__(self, target_host: str, target_port: int, *, after_tokens: int) -> None:
        super().__init__(target_host, target_port)
        self.after_tokens = after_tokens
        self.cut_done = threading.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        chat_request = asyncio.Event()

        async def upstream() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if b"POST /api/v1/chat " in data and not self.cut_done.is_set():
                        chat_request.set()
                    upstream_writer.write(data)
                    await upstream_writer.drain()
            with contextlib.suppress(Exception):
                upstream_writer.transport.abort()

        async def downstream() -> None:
            received = b""
            # drain() returns once the bytes left: the ones before the cut reach the reader.
            writer.transport.set_write_buffer_limits(high=0)
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await upstream_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                    if chat_request.is_set() and not self.cut_done.is_set():
                        received += data  # cut after whole events only (reads split them)
                        if len(WHOLE_TOKEN_EVENT.findall(received)) >= self.after_tokens:
                            self.cut_done.set()
                            break
            with contextlib.suppress(Exception):
                # FIN mid-body, after the bytes sent so far (an RST could make the
                # reader's kernel drop the ones it had not read yet): the response breaks
                # off as on a lost network; the server sees its reader leave.
                writer.close()
                upstream_writer.transport.abort()

        await asyncio.gather(upstream(), downstream())
