"""OpenAI-compatible chat completions (OpenAI, OpenRouter, vLLM, llama.cpp, Ollama, LiteLLM).

Retries, fallback and deadlines are `bookchat.llm.streaming`'s, exactly as for Gemini;
this module opens `POST /chat/completions` streams with the official `openai` SDK's
async client, decodes their chunks and classifies the SDK's errors.

Decoding: as for Gemini, the SDK's streamed pydantic models cost tens of microseconds
per chunk on the answer path, so the generator asks for the raw streaming response
(`with_streaming_response`: the SDK still builds the URL, authenticates and raises its
`APIStatusError`s) and decodes the documented SSE chunks with msgspec. Holding the raw
response also lets `close()` drop the connection the moment the consumer stops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import openai

from bookchat.llm.base import GenerationRequest
from bookchat.llm.embeddings import BatchEmbedder
from bookchat.llm.streaming import StreamDeadline, StreamPiece, provider_transport

logger = logging.getLogger(__name__)

# The SDK's own list of statuses worth another attempt.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_FINISH_REASONS = {"length": "max_tokens", "content_filter": "safety"}


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    """One `chat.completion.chunk` (the fields bookchat reads)."""

    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: dict[str, Any] | None = None  # how OpenRouter and vLLM report mid-stream failures


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class StreamFailed(Exception):
    """The server reported an error inside an already started stream."""


def make_openai_client(api_key: str | None, base_url: str | None = None) -> openai.AsyncOpenAI:
    """An `AsyncOpenAI` with no SDK retries or timeouts (the generator owns both).

    Local servers (Ollama, llama.cpp) ignore the key, but the SDK insists on one.
    """
    client = openai.AsyncOpenAI(
        api_key=api_key or "unused",
        base_url=base_url or None,
        max_retries=0,
        # The SDK accepts httpx clients as well as httpx2 ones; its annotation names only
        # httpx2. One transport stack (and pool sizing) for every provider.
        http_client=httpx.AsyncClient(  # type: ignore[arg-type]
            timeout=httpx.Timeout(None, connect=10.0), transport=provider_transport()
        ),
    )
    # The SDK imports its resources on first use: pay for that at startup, not on the
    # first reader's question.
    _ = client.chat.completions, client.embeddings
    return client


def is_retryable_error(exc: BaseException) -> bool:
    """429, 408/409, 5xx, transport failures and in-stream errors; other 4xx are final."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRYABLE_STATUSES or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError | httpx.TransportError | StreamFailed)


def retry_delay_hint(exc: BaseException | None) -> float | None:
    """The server's `retry-after-ms` / `retry-after` (seconds) header, when it sends one."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
    return None


def describe_error(exc: BaseException | None) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__ if exc is not None else "unknown error"


class _OpenAIStream:
    """One streamed `chat/completions` call."""

    def __init__(self, client: openai.AsyncOpenAI, model: str, body: dict[str, Any]) -> None:
        self.model = model
        self._client = client
        self._body = body
        self._response: Any = None  # openai.AsyncAPIResponse once the headers arrived
        self._lines: AsyncIterator[str] | None = None
        self._deadline = StreamDeadline()

    async def next_piece(self, deadline: float) -> StreamPiece:
        return await self._deadline.wait(deadline, self._next_piece)

    async def _next_piece(self) -> StreamPiece:
        if self._lines is None:
            manager = self._client.chat.completions.with_streaming_response.create(
                model=self.model, stream=True, **self._body
            )
            self._response = await manager.__aenter__()
            self._lines = self._response.iter_lines()
        while True:
            line = await anext(self._lines)
            # SSE: blank separators, `: comments` (keep-alives) and `event:` lines skip.
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                raise StopAsyncIteration
            return _piece_of(_decode_chunk(data))

    async def close(self) -> None:
        self._deadline.cancel()
        if self._response is not None:
            await self._response.close()


def _piece_of(chunk: _Chunk) -> StreamPiece:
    if chunk.error is not None:
        raise StreamFailed(str(chunk.error.get("message") or chunk.error))
    choice = chunk.choices[0] if chunk.choices else None
    raw_finish = choice.finish_reason if choice is not None else None
    finish = _FINISH_REASONS.get(raw_finish, raw_finish) if raw_finish else None
    usage = chunk.usage
    return StreamPiece(
        text=(choice.delta.content or "") if choice is not None and choice.delta else "",
        finish_reason=finish,
        finish_blocked=raw_finish == "content_filter",
        prompt_tokens=(usage.prompt_tokens or 0) if usage else None,
        completion_tokens=(usage.completion_tokens or 0) if usage else None,
    )


class OpenAIProvider:
    """`Provider` for any server speaking OpenAI's streamed `chat/completions`."""

    name = "openai"

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client

    def build(self, request: GenerationRequest) -> dict[str, Any]:
        """The request body, less `model` and `stream`; usage arrives in a last chunk."""
        messages: list[dict[str, str]] = []
        if request.system_instruction:
            messages.append({"role": "system", "content": request.system_instruction})
        messages += [
            {"role": "assistant" if turn.role == "model" else "user", "content": turn.text}
            for turn in request.contents or []
        ]
        if len(messages) == (1 if request.system_instruction else 0):
            messages.append({"role": "user", "content": request.question})
        return {"messages": messages, "stream_options": {"include_usage": True}}

    def open_stream(self, model: str, request: GenerationRequest) -> _OpenAIStream:
        return _OpenAIStream(self._client, model, self.build(request))

    is_retryable = staticmethod(is_retryable_error)
    retry_hint = staticmethod(retry_delay_hint)
    describe = staticmethod(describe_error)

    @staticmethod
    def is_rate_limited(exc: BaseException) -> bool:
        return isinstance(exc, openai.APIStatusError) and exc.status_code == 429


class _EmbeddingItem(msgspec.Struct):
    index: int = 0
    embedding: list[float] = msgspec.field(default_factory=list)


class _EmbeddingsResponse(msgspec.Struct):
    data: list[_EmbeddingItem] = msgspec.field(default_factory=list)


_decode_embeddings = msgspec.json.Decoder(_EmbeddingsResponse).decode


class OpenAIEmbedder(BatchEmbedder):
    """`Embedder` over `POST /embeddings` (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM, ...).

    The API has no task types or titles: a document is embedded as its page title and
    text, a query as itself. No `dimensions` is sent (most local servers reject it):
    EMBEDDING_DIM must be the model's output size, and a mismatch is an error naming it.
    """

    provider = "openai"
    title_per_call = False
    rejected_hint = "Check OPENAI_API_KEY, OPENAI_BASE_URL, EMBEDDING_MODEL and EMBEDDING_DIM."

    def __init__(self, client: openai.AsyncOpenAI, model: str, dim: int, **options: Any) -> None:
        super().__init__(model, dim, **options)
        self._client = client

    async def _request(
        self, texts: list[str], task_type: str, title: str | None
    ) -> list[list[float]]:
        # Raw response + msgspec, as for chat: the SDK's models cost ~1 ms per vector.
        response = await self._client.embeddings.with_raw_response.create(
            model=self.model, input=texts, encoding_format="float"
        )
        items = _decode_embeddings(response.http_response.content).data
        return [item.embedding for item in sorted(items, key=lambda item: item.index)]

    def _is_retryable(self, exc: BaseException) -> bool:
        return is_retryable_error(exc)

    def _retry_hint(self, exc: BaseException | None) -> float | None:
        return retry_delay_hint(exc)

    def _describe(self, exc: BaseException | None) -> str:
        if isinstance(exc, openai.APIStatusError):
            return describe_error(exc)
        return super()._describe(exc)
