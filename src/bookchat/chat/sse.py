"""The SSE routes' response: Litestar's `Stream`, watching for the reader's exit with plain
asyncio tasks instead of an anyio task group.

Litestar sends a stream's body in a task group (a task for the body, the request's task
waiting for `http.disconnect`, a cancel scope to stop either), and on asyncio each of
those steps goes through anyio's cancel-scope bookkeeping: about a fortieth of a chat's
CPU. The behaviour is the same: the body is a task of its own (the journal cancels it
when its reader fell too far behind), the reader leaving cancels it, and the response
ends quietly either way; an error of the body propagates.

Its events go straight to the server's `send` (`SERVER_SEND`, kept in the scope's state by
`bookchat.app.BookchatApp`): every layer between (the exception middlewares, request ids,
metrics, the `before_send` hooks) acts on the response's start and end only, and a
chat's ~50 events each went through seven coroutines of them. The start and the final
empty body still go through every layer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterable, Iterable
from typing import TYPE_CHECKING, Any

from litestar.enums import MediaType
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.utils.helpers import get_enum_string_value

if TYPE_CHECKING:
    from litestar.app import Litestar
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.connection import Request
    from litestar.datastructures.cookie import Cookie
    from litestar.response.base import ASGIResponse
    from litestar.types import Receive, Scope, Send, TypeEncodersMap

# Key, in the scope's state, of the ASGI server's own `send` (see the module's docstring).
SERVER_SEND = "bookchat.server_send"


class EventStream(Stream):
    """`Stream` whose ASGI response watches for the reader's exit without a task group."""

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        # `Stream.to_asgi_response`, but for the class of the response it makes.
        iterator = self.iterator
        if not isinstance(iterator, Iterable | AsyncIterable) and callable(iterator):
            iterator = iterator()
        return _WatchedStreamingResponse(
            background=self.background or background,
            content_length=0,
            cookies=self.cookies if cookies is None else itertools.chain(self.cookies, cookies),
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response,
            iterator=iterator,
            media_type=get_enum_string_value(media_type or self.media_type or MediaType.JSON),
            status_code=self.status_code or status_code,
        )


class _WatchedStreamingResponse(ASGIStreamingResponse):
    __slots__ = ("_server_send",)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._server_send: Send | None = scope.get("state", {}).get(SERVER_SEND)
        await super().__call__(scope, receive, send)

    async def _stream(self, send: Send) -> None:
        events = self._server_send or send
        encoding = self.encoding
        async for chunk in self.iterator:
            await events(
                {
                    "type": "http.response.body",
                    "body": chunk if isinstance(chunk, bytes) else chunk.encode(encoding),
                    "more_body": True,
                }
            )
        # The end through every layer: the request's metrics time it.
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send_body(self, send: Send, receive: Receive) -> None:
        loop = asyncio.get_running_loop()
        body = loop.create_task(self._stream(send))
        watch = loop.create_task(_until_disconnect(receive))

        def reader_left(watched: asyncio.Task[None]) -> None:
            if not watched.cancelled():
                watched.exception()  # a failed receive ends the body too; retrieved here
            body.cancel()  # a no-op once the body is over

        watch.add_done_callback(reader_left)
        try:
            await body
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this request is being cancelled (and its body with it)
            # The body was cancelled: the reader left, or the journal dropped it.
        finally:
            watch.cancel()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
