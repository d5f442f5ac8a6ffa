"""What the model did last time it was really used: health without calling the model.

`/api/v1/health` must not spend a model call (and quota) on every probe, yet "ok" with a
bogus key and no network is a lie. So the generator and the query embedder are wrapped:
each real call records its outcome, and the health report shows the latest one per
process: `ok`, `failing` (since when, and the error), or `not_checked` before any call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from bookchat.llm.base import (
    AnswerGenerator,
    Embedder,
    GenerationError,
    GenerationEvent,
    GenerationRequest,
)

LLMState = Literal["ok", "failing", "not_checked"]
# A blocked answer is the model working as configured (safety filters), not an outage.
_NOT_AN_OUTAGE = {"generation_blocked"}


class LLMHealth:
    """The last real outcome of a model call in this process."""

    def __init__(self) -> None:
        self.state: LLMState = "not_checked"
        self.since: datetime | None = None
        self.error: str | None = None

    def succeeded(self) -> None:
        if self.state != "ok":
            self.state, self.since, self.error = "ok", datetime.now(UTC), None

    def failed(self, error: str) -> None:
        if self.state != "failing":
            self.state, self.since = "failing", datetime.now(UTC)
        self.error = error


class TrackedGenerator:
    """An `AnswerGenerator` that reports each stream's outcome to `LLMHealth`."""

    def __init__(self, inner: AnswerGenerator, health: LLMHealth) -> None:
        self.inner = inner
        self.health = health
        self.name = inner.name

    def __getattr__(self, attribute: str) -> Any:  # anything else the inner one has
        return getattr(self.inner, attribute)

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if getattr(self.inner, "reports_health", False):
            # It reports the same outcomes itself (`StreamingGenerator`): no async
            # generator of ours around its stream, whose every event would pass through it.
            return self.inner.stream(request, health=self.health)  # type: ignore[call-arg]
        return self._tracked(request)

    async def _tracked(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        reported = False
        try:
            async for event in self.inner.stream(request):
                if not reported:  # the first token (or the end) means the model answered
                    self.health.succeeded()
                    reported = True
                yield event
        except Exception as exc:  # cancellation (BaseException) is not the model's fault
            stream_failed(self.health, exc)
            raise


def stream_failed(health: LLMHealth, exc: Exception) -> None:
    """Record a generator's stream that raised `exc` (a cancellation is not recorded)."""
    if isinstance(exc, GenerationError):
        if exc.code in _NOT_AN_OUTAGE:
            health.succeeded()
        else:
            health.failed(f"{exc.code}: {exc.message}")
    else:
        health.failed(type(exc).__name__)


class TrackedEmbedder:
    """An `Embedder` whose calls report to `LLMHealth` (same provider, same key)."""

    def __init__(self, inner: Embedder, health: LLMHealth) -> None:
        self.inner = inner
        self.health = health
        self.model = inner.model
        self.dim = inner.dim

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    async def embed_documents(self, texts: list[str], titles: list[str]) -> list[list[float]]:
        try:
            vectors = await self.inner.embed_documents(texts, titles)
        except Exception as exc:
            self.health.failed(f"embedding: {type(exc).__name__}")
            raise
        self.health.succeeded()
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        try:
            vector = await self.inner.embed_query(text)
        except Exception as exc:
            self.health.failed(f"embedding: {type(exc).__name__}")
            raise
        self.health.succeeded()
        return vector
