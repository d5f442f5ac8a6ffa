"""Gemini answer generation over google-genai's async streaming API.

Policy (BRIEF §7): 429/5xx are retried with backoff only before the first token, then
the fallback model is tried; one first-token deadline and one total deadline bound
the whole call (retries included); anything after the first token is final, because
the caller has already shown the partial text.

Closing: google-genai wraps the HTTP response in several nested async generators, and
closing the outermost one does not close the inner ones (Python leaves them to the
garbage collector), so the provider keeps streaming to nobody. `make_genai_client`
therefore installs an httpx response hook that hands each response to the stream
that caused it (through a context variable), and `GeminiGenerator` closes that
response itself the moment its consumer stops.

Decoding: the SDK turns every streamed chunk into pydantic models (about 70 µs per
chunk even when idle, several hundred under load), which capped a 2-core server near
100 streamed answers per second. The generator therefore asks the SDK's API client for
the raw stream (`async_request_streamed`: the SDK still builds the URL, authenticates,
and raises its `APIError`s) and decodes the documented REST chunks with msgspec.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import random
import re
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from bookchat.llm.base import (
    ErrorCode,
    GenerationError,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TokenDelta,
)

logger = logging.getLogger(__name__)

BLOCKED_FINISH_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY", "MODEL_ARMOR"}
)
_MAX_BACKOFF = 10.0


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


_decode_chunk = msgspec.json.Decoder(_Chunk).decode

# The list of HTTP responses opened by the stream currently awaiting a chunk.
_OPENED_RESPONSES: contextvars.ContextVar[list[httpx.Response] | None] = contextvars.ContextVar(
    "bookchat_gemini_opened_responses", default=None
)
# Close tasks must outlive a cancelled consumer; asyncio only keeps weak references.
_BACKGROUND: set[asyncio.Task[None]] = set()

try:  # google-genai accepts httpx2 clients too; treat its transport errors alike.
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
        httpx.TransportError,
        httpx2.TransportError,
    )
except ImportError:  # pragma: no cover - httpx2 is optional
    _TRANSPORT_ERRORS = (httpx.TransportError,)


# The httpx client each `make_genai_client` client owns (google-genai won't close it).
_OWNED_HTTP_CLIENTS: weakref.WeakKeyDictionary[genai.Client, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


async def _remember_response(response: httpx.Response) -> None:
    opened = _OPENED_RESPONSES.get()
    if opened is not None:
        opened.append(response)


class _ShardedTransport(httpx.AsyncBaseTransport):
    """Spreads requests over several connection pools.

    httpcore's pool rescans every connection on each request and response close, so
    one pool with 500 live streams spends most of its CPU there (measured: raw
    streaming throughput fell 4x from 100 to 500 concurrent streams). Small pools
    keep that scan short.
    """

    def __init__(self, shards: int, limits: httpx.Limits) -> None:
        # One TLS context for all pools: building one loads the CA bundle (~60 ms).
        tls = httpx.create_ssl_context()
        self._pools = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(shards)]
        self._turn = itertools.count()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pools[next(self._turn) % len(self._pools)]
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def make_genai_client(api_key: str, base_url: str | None = None) -> genai.Client:
    """A google-genai client on API `v1beta` with no SDK retries (we retry ourselves).

    It brings its own httpx client: pool limits sized for hundreds of concurrent
    streams (httpx's default pool of 100 would queue chats) and the response hook
    that lets `GeminiGenerator` close abandoned streams at once.
    """
    http_client = httpx.AsyncClient(
        # Deadlines are enforced per call by the generator and the embedder.
        timeout=httpx.Timeout(None, connect=10.0),
        transport=_ShardedTransport(
            16, httpx.Limits(max_connections=256, max_keepalive_connections=32)
        ),
        event_hooks={"response": [_remember_response]},
    )
    options = types.HttpOptions(
        api_version="v1beta",
        base_url=base_url,
        httpx_async_client=http_client,
    )
    client = genai.Client(api_key=api_key, http_options=options)
    _OWNED_HTTP_CLIENTS[client] = http_client
    return client


async def close_genai_client(client: genai.Client) -> None:
    """Close a client from `make_genai_client`, including its pooled connections."""
    await client.aio.aclose()
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


def backoff_delay(attempt: int, base: float, hint: float | None, cap: float) -> float:
    """Exponential backoff with jitter; the server's hint wins when it gives one."""
    if hint is not None:
        return min(cap, hint) * random.uniform(1.0, 1.1)
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, genai_errors.APIError):
        return f"HTTP {exc.code} {exc.status or ''}".strip()
    return type(exc).__name__ if exc is not None else "unknown error"


class _ProviderStream:
    """One `streamGenerateContent` call plus the HTTP responses it opened."""

    def __init__(self, client: genai.Client, model: str, body: dict[str, Any]) -> None:
        self.model = model
        self._client = client
        self._body = body
        self._responses: list[httpx.Response] = []
        self._chunks: AsyncIterator[Any] | None = None

    async def next_chunk(self, deadline: float) -> _Chunk:
        """The next chunk; TimeoutError past `deadline` (loop time), StopAsyncIteration at end."""
        token = _OPENED_RESPONSES.set(self._responses)
        try:
            async with asyncio.timeout_at(deadline):
                if self._chunks is None:
                    self._chunks = await self._client.aio._api_client.async_request_streamed(
                        "post", f"{_model_path(self.model)}:streamGenerateContent?alt=sse",
                        self._body, None,
                    )  # fmt: skip
                response = await anext(self._chunks)
        finally:
            _OPENED_RESPONSES.reset(token)
        return _decode_chunk(response.body) if response.body else _Chunk()

    async def close(self) -> None:
        """Close the HTTP response first (the provider sees the socket close), then the SDK."""
        for response in self._responses:
            try:
                await response.aclose()
            except Exception:  # closing must never mask the caller's outcome
                logger.debug("closing a Gemini response failed", exc_info=True)
        if self._chunks is not None:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.debug("closing the google-genai stream failed", exc_info=True)

    async def close_shielded(self) -> None:
        """`close()` that completes even when the consumer is being cancelled."""
        task = asyncio.ensure_future(self.close())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        await asyncio.shield(task)


class GeminiGenerator:
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
        max_backoff: float = _MAX_BACKOFF,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
    ) -> None:
        self.name = model
        self._client = client
        self._models = [model] + ([fallback_model] if fallback_model else [])
        self._first_token_timeout = first_token_timeout
        self._total_timeout = total_timeout
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._max_backoff = max_backoff
        self._temperature = temperature
        self._max_output_tokens = max_output_tokens

    def _build(self, request: GenerationRequest) -> dict[str, Any]:
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

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Yield `TokenDelta`s then one `GenerationFinished`, or raise `GenerationError`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_deadline = started + self._total_timeout
        first_deadline = min(started + self._first_token_timeout, total_deadline)
        provider, first_chunk = await self._open(self._build(request), first_deadline)
        try:
            async for event in self._relay(provider, first_chunk, total_deadline):
                yield event
        finally:
            await provider.close_shielded()

    async def _open(self, body: dict[str, Any], deadline: float) -> tuple[_ProviderStream, _Chunk]:
        """Start a stream that delivered its first chunk, retrying and falling back."""
        loop = asyncio.get_running_loop()
        last_error: BaseException | None = None
        for model in self._models:
            for attempt in range(self._max_retries + 1):
                provider = _ProviderStream(self._client, model, body)
                try:
                    return provider, await provider.next_chunk(deadline)
                except TimeoutError:
                    await provider.close_shielded()
                    raise GenerationError(
                        "generation_timeout",
                        "The model did not start answering in time.",
                        retryable=True,
                    ) from None
                except StopAsyncIteration:
                    await provider.close_shielded()
                    raise GenerationError(
                        "generation_failed", "The model returned an empty answer.", retryable=True
                    ) from None
                except asyncio.CancelledError:
                    await provider.close_shielded()
                    raise
                except Exception as exc:
                    await provider.close_shielded()
                    if not is_retryable_error(exc):
                        raise GenerationError(
                            "generation_failed",
                            f"The model request was rejected ({_describe(exc)}).",
                        ) from exc
                    last_error = exc
                if attempt == self._max_retries:
                    break
                delay = backoff_delay(
                    attempt, self._backoff_base, retry_delay_hint(last_error), self._max_backoff
                )
                if loop.time() + delay >= deadline:
                    break  # sleeping would pass the deadline: try the fallback now
                logger.info(
                    "gemini %s failed with %s; retry %d in %.2fs",
                    model,
                    _describe(last_error),
                    attempt + 1,
                    delay,
                )
                await asyncio.sleep(delay)
            logger.warning("gemini %s exhausted retries (%s)", model, _describe(last_error))
        assert last_error is not None
        code: ErrorCode = (
            "rate_limited"
            if isinstance(last_error, genai_errors.APIError) and last_error.code == 429
            else "generation_failed"
        )
        message = (
            "The model is rate limited; try again shortly."
            if code == "rate_limited"
            else f"The model is unavailable ({_describe(last_error)})."
        )
        raise GenerationError(code, message, retryable=True) from last_error

    async def _relay(
        self,
        provider: _ProviderStream,
        chunk: _Chunk,
        deadline: float,
    ) -> AsyncIterator[GenerationEvent]:
        finish: str | None = None
        usage: _Usage | None = None
        while True:
            feedback = chunk.prompt_feedback
            if feedback is not None and feedback.block_reason is not None:
                raise GenerationError(
                    "generation_blocked",
                    "The question was blocked by the model's safety filters.",
                )
            if chunk.usage_metadata is not None:
                usage = chunk.usage_metadata
            candidate = chunk.candidates[0] if chunk.candidates else None
            if candidate is not None:
                text = _text_of(candidate)
                if text:
                    yield TokenDelta(text=text)
                if candidate.finish_reason is not None:
                    finish = candidate.finish_reason
            try:
                chunk = await provider.next_chunk(deadline)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise GenerationError(
                    "generation_timeout", "The answer took too long.", retryable=True
                ) from None
            except Exception as exc:
                raise GenerationError(
                    "generation_failed",
                    f"The answer stream broke off ({_describe(exc)}).",
                    retryable=True,
                ) from exc
        if finish is None:
            raise GenerationError(
                "generation_failed", "The answer stream ended unexpectedly.", retryable=True
            )
        if finish in BLOCKED_FINISH_REASONS:
            raise GenerationError(
                "generation_blocked", "The answer was blocked by the model's safety filters."
            )
        yield GenerationFinished(
            finish_reason=finish.lower(),
            model=provider.model,
            prompt_tokens=(usage.prompt_token_count or 0) if usage else 0,
            completion_tokens=(usage.candidates_token_count or 0) if usage else 0,
        )


def _model_path(model: str) -> str:
    """`models/<name>` as the REST API wants it (tuned models keep their own prefix)."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def _text_of(candidate: _Candidate) -> str:
    if candidate.content is None or not candidate.content.parts:
        return ""
    # Thought summaries are not part of the answer.
    return "".join(p.text for p in candidate.content.parts if p.text and not p.thought)
