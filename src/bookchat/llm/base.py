"""The one small protocol every answer generator satisfies (Gemini and offline).

A generator turns a `GenerationRequest` into a stream of `TokenDelta`s followed by
exactly one `GenerationFinished`, or raises `GenerationError`. Closing the async
iterator early (`aclose()`, or cancellation) must release the provider stream at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Literal, Protocol

import msgspec


class ContextBlock(msgspec.Struct, kw_only=True, frozen=True):
    """One numbered passage the answer may cite as `[n]`."""

    n: int
    title: str
    section: str
    text: str
    score: float = 0.0


class Turn(msgspec.Struct, kw_only=True, frozen=True):
    role: Literal["user", "model"]
    text: str
    # A model turn's cited pages (doc paths): the topic a follow-up continues.
    pages: tuple[str, ...] = ()


def cited_pages(doc_paths: Iterable[object]) -> tuple[str, ...]:
    """An answer's cited doc paths in order, once each (`Turn.pages`)."""
    return tuple(dict.fromkeys(p for p in doc_paths if isinstance(p, str) and p))


class GenerationRequest(msgspec.Struct, kw_only=True, frozen=True):
    """A fully built prompt plus the structured parts it was built from.

    Gemini uses `system_instruction` + `contents`; the offline answerer uses
    `question` + `context` directly.
    """

    system_instruction: str
    contents: list[Turn]
    question: str
    context: list[ContextBlock]
    # The search found the topic only partly (the relevance "grey zone"): a model judges
    # the sources itself; the extractive answerer labels its excerpt as the closest passages.
    closest_only: bool = False
    # The context is the reader's selection (selected-text mode): nothing but the
    # selection's own text is used, no embedding of it either.
    selection: bool = False


class TokenDelta(msgspec.Struct, kw_only=True, frozen=True):
    text: str


class GenerationFinished(msgspec.Struct, kw_only=True, frozen=True):
    finish_reason: str  # "stop", "max_tokens", ...
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


GenerationEvent = TokenDelta | GenerationFinished

ErrorCode = Literal["generation_failed", "generation_timeout", "generation_blocked", "rate_limited"]


class GenerationError(Exception):
    """Generation failed; `code` is the SSE/HTTP error code, `retryable` tells the client."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.retryable = retryable


class AnswerGenerator(Protocol):
    """Streams an answer. `name` is recorded as the message's model."""

    name: str

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]: ...


class Embedder(Protocol):
    """Dense embeddings (`provider`: gemini, openai). Vectors are L2-normalised, `dim` long."""

    provider: str
    model: str
    dim: int

    async def embed_documents(self, texts: list[str], titles: list[str]) -> list[list[float]]: ...

    async def embed_query(self, text: str) -> list[float]: ...
