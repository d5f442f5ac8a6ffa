"""Gemini answer generation: google-genai for configuration and errors, REST for the stream.

Retries, fallback and deadlines are `bookchat.llm.streaming`'s (shared with the
OpenAI-compatible provider); this module opens Gemini streams, decodes their chunks
and classifies Gemini's errors.

Why not `client.aio.models.generate_content_stream`: measured with `just bench`, one
public SDK stream of 50 chunks costs about 10 ms of CPU (pydantic options and models,
a `json.loads` and `json.dumps` of every chunk, nested async generators), against
0.65 ms for the whole bare SSE stream it feeds. So the provider streams the
documented REST endpoint (`models/{model}:streamGenerateContent?alt=sse`) with the
configuration the SDK client is made with (`GeminiRest`: base URL, API version, API
key), decodes the chunks with msgspec, and raises the SDK's own `APIError`s
(`APIError.raise_for_async_response`, `APIError.raise_error_async`). It owns the HTTP
response, so closing the stream closes the socket at once.

The REST calls go through aiohttp (a transport google-genai itself supports), not the
SDK's httpx client: aiohttp parses HTTP in C, where httpx + httpcore + h11 run a dozen
Python generator layers per chunk read; measured, the stream and the query embedding
of one chat cost 0.8-0.9 ms of CPU over aiohttp against 1.9-2.2 ms over httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import urllib.request
import weakref
from collections import deque
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import msgspec
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.genai import version as genai_version

from bookchat.llm.base import GenerationRequest
from bookchat.llm.streaming import (
    MAX_BACKOFF,
    Route,
    StreamDeadline,
    StreamingGenerator,
    StreamPiece,
    provider_transport,
)

logger = logging.getLogger(__name__)

BLOCKED_FINISH_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY", "MODEL_ARMOR"}
)


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool | None = None


class _Content(msgspec.Struct, rename="camel"):
    parts: list[_Part] = msgspec.field(default_factory=list)


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _Usage(msgspec.Struct, rename="camel"):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None


class _Chunk(msgspec.Struct, rename="camel"):
    """One `streamGenerateContent` SSE chunk (the fields bookchat reads)."""

    candidates: list[_Candidate] = msgspec.field(default_factory=list)
    prompt_feedback: _PromptFeedback | None = None
    usage_metadata: _Usage | None = None
    error: dict[str, Any] | None = None  # an error sent inside a 200 stream


_decode_chunk = msgspec.json.Decoder(_Chunk).decode

try:  # google-genai accepts httpx2 clients too; treat its transport errors alike.
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
        aiohttp.ClientError,
        httpx.TransportError,
        httpx2.TransportError,
    )
except ImportError:  # pragma: no cover - httpx2 is optional
    _TRANSPORT_ERRORS = (aiohttp.ClientError, httpx.TransportError)


# The httpx client each `make_genai_client` client owns (google-genai won't close it).
_OWNED_HTTP_CLIENTS: weakref.WeakKeyDictionary[genai.Client, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
API_VERSION = "v1beta"


# Connections to the provider: one per live stream, so room for the bench's 500 and more.
_MAX_CONNECTIONS = 4096
_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:  # building one loads the CA bundle (~60 ms): once per process
        _TLS = httpx.create_ssl_context()
    return _TLS


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY / ALL_PROXY, unless NO_PROXY
    covers its host), as the SDK's httpx client honours it.

    Read once per session: aiohttp's own `trust_env` reads the environment on every request
    and looks for ~/.netrc in a worker thread each time.
    """
    proxies = urllib.request.getproxies()
    parts = urlsplit(url)
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


class GeminiRest:
    """Gemini's REST API as a `make_genai_client` client is configured to reach it.

    One aiohttp session per event loop (a session belongs to the loop it was made on;
    tests run one client on several loops), made on the first call in that loop.
    """

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.base_url = base_url  # ends with "/<api version>/"
        self.headers = headers
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        _tls_context()  # at startup, not in the first reader's chat

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for old in [old for old in self._sessions if old.is_closed()]:
                del self._sessions[old]
            session = self._sessions[loop] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, ssl=_tls_context()),
                # Deadlines are enforced per call by the generator and the embedder.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
                cookie_jar=aiohttp.DummyCookieJar(),  # an API: no cookies to keep
                proxy=env_proxy(self.base_url),
            )
        return session

    async def open(self, model: str, method: str, body: bytes) -> aiohttp.ClientResponse:
        """POST `models/{model}:{method}`, body unread; a non-200 answer raises `APIError`."""
        try:
            response = await self._session().post(
                f"{self.base_url}{_model_path(model)}:{method}", data=body, headers=self.headers
            )
        except aiohttp.ServerTimeoutError as exc:
            # A connect timeout is a transport failure (retried), not a missed deadline.
            raise aiohttp.ClientConnectionError(f"connect timeout: {exc}") from exc
        if response.status != 200:
            try:
                await genai_errors.APIError.raise_for_async_response(response)
            finally:
                response.close()
        return response

    async def post(self, model: str, method: str, body: bytes) -> bytes:
        """POST `models/{model}:{method}` and read the whole answer."""
        response = await self.open(model, method, body)
        try:
            return await response.read()
        finally:
            response.release()

    async def close(self) -> None:
        """Close the sessions: this loop's at once, another running loop's on that loop
        (a session of a closed loop goes with it)."""
        sessions, self._sessions = self._sessions, {}
        current = asyncio.get_running_loop()
        for loop, session in sessions.items():
            if loop is current:
                await session.close()
            elif loop.is_running():
                with contextlib.suppress(RuntimeError):  # that loop closed meanwhile
                    asyncio.run_coroutine_threadsafe(session.close(), loop)


_REST: weakref.WeakKeyDictionary[genai.Client, GeminiRest] = weakref.WeakKeyDictionary()


def gemini_rest(client: genai.Client) -> GeminiRest:
    """The REST side of a client made by `make_genai_client`."""
    try:
        return _REST[client]
    except KeyError:
        raise ValueError("the google-genai client was not made by make_genai_client") from None


def make_genai_client(api_key: str, base_url: str | None = None) -> genai.Client:
    """A google-genai client on API `v1beta` with no SDK retries (we retry ourselves).

    It brings its own httpx client, with pool limits sized for hundreds of concurrent
    streams (httpx's default pool of 100 would queue chats); `gemini_rest(client)`
    reaches the REST API with that client's configuration, over aiohttp.
    """
    http_client = httpx.AsyncClient(
        # Deadlines are enforced per call by the generator and the embedder.
        timeout=httpx.Timeout(None, connect=10.0),
        transport=provider_transport(),
    )
    options = types.HttpOptions(
        api_version=API_VERSION,
        base_url=base_url,
        httpx_async_client=http_client,
    )
    client = genai.Client(api_key=api_key, http_options=options)
    _OWNED_HTTP_CLIENTS[client] = http_client
    root = (base_url or DEFAULT_BASE_URL).rstrip("/")
    _REST[client] = GeminiRest(
        base_url=f"{root}/{API_VERSION}/",
        headers={
            "Content-Type": "application/json",
            "x-goog-api-key": api_key,
            "x-goog-api-client": f"google-genai-sdk/{genai_version.__version__} bookchat",
        },
    )
    return client


async def close_genai_client(client: genai.Client) -> None:
    """Close a client from `make_genai_client`, including its pooled connections."""
    await client.aio.aclose()
    rest = _REST.get(client)
    if rest is not None:
        await rest.close()
    http_client = _OWNED_HTTP_CLIENTS.pop(client, None)
    if http_client is not None:
        await http_client.aclose()


def retry_delay_hint(exc: BaseException | None) -> float | None:
    """The server's `RetryInfo.retryDelay` in seconds, when the error carries one."""
    details = getattr(exc, "details", None)
    if not isinstance(details, dict):
        return None
    error = details.get("error", details)
    for detail in (error.get("details") or []) if isinstance(error, dict) else []:
        if not isinstance(detail, dict) or not str(detail.get("@type", "")).endswith("RetryInfo"):
            continue
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)s\s*", str(detail.get("retryDelay", "")))
        if match:
            return float(match.group(1))
    return None


def is_retryable_error(exc: BaseException) -> bool:
    """429, 5xx and transport failures are worth another attempt; 4xx are not."""
    if isinstance(exc, genai_errors.APIError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, _TRANSPORT_ERRORS)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, genai_errors.APIError):
        return f"HTTP {exc.code} {exc.status or ''}".strip()
    return type(exc).__name__ if exc is not None else "unknown error"


class _GeminiStream:
    """One `streamGenerateContent?alt=sse` call: its HTTP response and decoded chunks."""

    def __init__(self, rest: GeminiRest, model: str, body: bytes) -> None:
        self.model = model
        self._rest = rest
        self._body = body
        self._response: aiohttp.ClientResponse | None = None
        self._pending = b""
        self._chunks: deque[_Chunk] = deque()
        self._ended = False
        self._deadline = StreamDeadline()

    def _open(self) -> Awaitable[aiohttp.ClientResponse]:
        return self._rest.open(self.model, "streamGenerateContent?alt=sse", self._body)

    async def next_piece(self, deadline: float) -> StreamPiece:
        """The next chunk; TimeoutError past `deadline` (loop time), StopAsyncIteration at end.

        One socket read often holds several chunks. `readany` takes what aiohttp has read
        ahead without suspending and waits only for more, under the deadline (one loop
        timer for the stream, `StreamDeadline`). A `read_nowait` first found nothing
        nearly always: `readany` drains the buffer, and the task does not suspend between
        two calls unless its reader holds it back.
        """
        while not self._chunks:
            if self._ended:
                raise StopAsyncIteration
            response = self._response
            if response is None:
                response = self._response = await self._deadline.wait(deadline, self._open)
            data = await self._deadline.wait(deadline, response.content.readany)
            if not data:
                self._ended = True
                data = b"\n\n"  # a last event without its blank line still counts
            await self._feed(data)
        return _piece_of(self._chunks.popleft())

    def buffered_piece(self) -> StreamPiece | None:
        """The next chunk when a read brought it already, else None (see `next_piece`)."""
        chunks = self._chunks
        return _piece_of(chunks.popleft()) if chunks else None

    async def _feed(self, data: bytes) -> None:
        # SSE: events end at a blank line. Gemini sends CRLFs: split on those as they come
        # (rewriting every read to LFs cost a copy); the format allows LFs too.
        buffer = self._pending + data if self._pending else data
        if buffer.find(b"\n\n") < 0:
            *events, self._pending = buffer.split(b"\r\n\r\n")
        else:
            *events, self._pending = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            # `find`, not `in`: a bytes `in` first tries its operand as an int and formats
            # the TypeError it catches, once per chunk.
            if event.startswith(b"data: ") and event.find(b"\n") < 0:
                payload = event[6:]  # what Gemini sends: one `data:` line per event
            else:
                lines = event.replace(b"\r\n", b"\n").split(b"\n")
                payload = b"\n".join(
                    line[5:].lstrip() for line in lines if line.startswith(b"data:")
                )
                if not payload and event.lstrip().startswith(b"{"):
                    payload = event  # an error sent as bare JSON instead of an event
            if not payload.strip():
                continue
            chunk = _decode_chunk(payload)
            if chunk.error is not None:
                await genai_errors.APIError.raise_error_async(
                    chunk.error.get("code", 500), {"error": chunk.error}, self._response
                )
            self._chunks.append(chunk)

    async def close(self) -> None:
        """Close the HTTP response: the provider sees the socket close and stops (a
        stream read to its end gives its connection back to the pool instead)."""
        self.close_now()

    def close_now(self) -> None:
        """`close()` without waiting: aiohttp releases and closes a response at once."""
        self._deadline.cancel()
        if self._response is not None:
            try:
                if self._ended:
                    self._response.release()
                else:
                    self._response.close()
            except Exception:  # closing must never mask the caller's outcome
                logger.debug("closing a Gemini response failed", exc_info=True)


def _piece_of(chunk: _Chunk) -> StreamPiece:
    feedback = chunk.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return StreamPiece(prompt_blocked=True)
    usage = chunk.usage_metadata
    candidate = chunk.candidates[0] if chunk.candidates else None
    finish = candidate.finish_reason if candidate is not None else None
    text = ""
    if candidate is not None and (content := candidate.content) is not None and content.parts:
        parts = content.parts
        if len(parts) == 1:  # what a streamed chunk nearly always holds: no generator
            part = parts[0]
            text = part.text if part.text and not part.thought else ""
        else:  # thought summaries are not part of the answer
            text = "".join(p.text for p in parts if p.text and not p.thought)
    return StreamPiece(
        text=text,
        finish_reason=finish.lower() if finish is not None else None,
        finish_blocked=finish in BLOCKED_FINISH_REASONS,
        prompt_tokens=(usage.prompt_token_count or 0) if usage else None,
        completion_tokens=(usage.candidates_token_count or 0) if usage else None,
    )


class GeminiProvider:
    """`Provider` for the Gemini Developer API (streamGenerateContent, v1beta)."""

    name = "gemini"

    def __init__(
        self,
        client: genai.Client,
        *,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
    ) -> None:
        self._rest = gemini_rest(client)
        self._temperature = temperature
        self._max_output_tokens = max_output_tokens

    def build(self, request: GenerationRequest) -> dict[str, Any]:
        """The REST request body of `streamGenerateContent` (Gemini API, v1beta)."""
        contents = [
            {"role": turn.role, "parts": [{"text": turn.text}]} for turn in request.contents or []
        ]
        if not contents:
            contents = [{"role": "user", "parts": [{"text": request.question}]}]
        body: dict[str, Any] = {"contents": contents}
        if request.system_instruction:
            body["systemInstruction"] = {"parts": [{"text": request.system_instruction}]}
        generation: dict[str, Any] = {}
        if self._temperature is not None:
            generation["temperature"] = self._temperature
        if self._max_output_tokens is not None:
            generation["maxOutputTokens"] = self._max_output_tokens
        if generation:
            body["generationConfig"] = generation
        return body

    def open_stream(self, model: str, request: GenerationRequest) -> _GeminiStream:
        return _GeminiStream(self._rest, model, msgspec.json.encode(self.build(request)))

    is_retryable = staticmethod(is_retryable_error)
    retry_hint = staticmethod(retry_delay_hint)
    describe = staticmethod(_describe)

    @staticmethod
    def is_rate_limited(exc: BaseException) -> bool:
        return isinstance(exc, genai_errors.APIError) and exc.code == 429


class GeminiGenerator(StreamingGenerator):
    """`AnswerGenerator` backed by Gemini streaming, with retries, fallback and deadlines."""

    def __init__(
        self,
        client: genai.Client,
        model: str,
        fallback_model: str | None = None,
        *,
        first_token_timeout: float,
        total_timeout: float,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        max_backoff: float = MAX_BACKOFF,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
    ) -> None:
        provider = GeminiProvider(
            client, temperature=temperature, max_output_tokens=max_output_tokens
        )
        routes = [Route(provider, model)]
        if fallback_model:
            routes.append(Route(provider, fallback_model))
        super().__init__(
            routes,
            first_token_timeout=first_token_timeout,
            total_timeout=total_timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            max_backoff=max_backoff,
        )


def _model_path(model: str) -> str:
    """`models/<name>` as the REST API wants it (tuned models keep their own prefix)."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
