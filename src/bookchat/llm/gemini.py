"""Gemini answer generation over google-genai's async streaming API.

Retries, fallback and deadlines are `bookchat.llm.streaming`'s (shared with the
OpenAI-compatible provider); this module opens Gemini streams, decodes their chunks
and classifies Gemini's errors.

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
import logging
import re
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from bookchat.llm.base import GenerationRequest
from bookchat.llm.streaming import (
    MAX_BACKOFF,
    Route,
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


_decode_chunk = msgspec.json.Decoder(_Chunk).decode

# The list of HTTP responses opened by the stream currently awaiting a chunk.
_OPENED_RESPONSES: contextvars.ContextVar[list[httpx.Response] | None] = contextvars.ContextVar(
    "bookchat_gemini_opened_responses", default=None
)

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


def make_genai_client(api_key: str, base_url: str | None = None) -> genai.Client:
    """A google-genai client on API `v1beta` with no SDK retries (we retry ourselves).

    It brings its own httpx client: pool limits sized for hundreds of concurrent
    streams (httpx's default pool of 100 would queue chats) and the response hook
    that lets `GeminiGenerator` close abandoned streams at once.
    """
    http_client = httpx.AsyncClient(
        # Deadlines are enforced per call by the generator and the embedder.
        timeout=httpx.Timeout(None, connect=10.0),
        transport=provider_transport(),
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


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, genai_errors.APIError):
        return f"HTTP {exc.code} {exc.status or ''}".strip()
    return type(exc).__name__ if exc is not None else "unknown error"


class _GeminiStream:
    """One `streamGenerateContent` call plus the HTTP responses it opened."""

    def __init__(self, client: genai.Client, model: str, body: dict[str, Any]) -> None:
        self.model = model
        self._client = client
        self._body = body
        self._responses: list[httpx.Response] = []
        self._chunks: AsyncIterator[Any] | None = None

    async def next_piece(self, deadline: float) -> StreamPiece:
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
        return _piece_of(_decode_chunk(response.body)) if response.body else StreamPiece()

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


def _piece_of(chunk: _Chunk) -> StreamPiece:
    feedback = chunk.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return StreamPiece(prompt_blocked=True)
    usage = chunk.usage_metadata
    candidate = chunk.candidates[0] if chunk.candidates else None
    finish = candidate.finish_reason if candidate is not None else None
    return StreamPiece(
        text=_text_of(candidate) if candidate is not None else "",
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
        self._client = client
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
        return _GeminiStream(self._client, model, self.build(request))

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


def _text_of(candidate: _Candidate) -> str:
    if candidate.content is None or not candidate.content.parts:
        return ""
    # Thought summaries are not part of the answer.
    return "".join(p.text for p in candidate.content.parts if p.text and not p.thought)
