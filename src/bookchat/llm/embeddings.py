"""Dense embeddings: the shared batching/retry/cache core, and Gemini through google-genai.

The OpenAI-compatible embedder (`bookchat.llm.openai`) builds on `BatchEmbedder` too.

google-genai sends one `title` per call (EmbedContentConfig applies it to every text of
`:batchEmbedContents`), so documents are grouped by title and each group is split into
batches of at most `batch_size`; a page's chunks share its title, so this costs about
one call per page. Vectors are L2-normalised here because Gemini only normalises the
full 3072-dimension output.

As for streaming (see `bookchat.llm.gemini`), the documented REST endpoint is called with
the configuration of the google-genai client over aiohttp (`gemini_rest`), errors
are the SDK's `APIError`s, and msgspec decodes the response: the SDK's pydantic models
cost about a millisecond per 768-float vector, on the query path of every chat.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import msgspec
from google import genai
from google.genai import errors as genai_errors

from bookchat.llm.gemini import gemini_rest, is_retryable_error, retry_delay_hint
from bookchat.llm.query_cache import QueryEmbeddingCache
from bookchat.llm.streaming import backoff_delay

logger = logging.getLogger(__name__)

_MAX_BATCH = 100  # the API's limit for :batchEmbedContents


class _Embedding(msgspec.Struct):
    values: list[float] = msgspec.field(default_factory=list)


class _BatchResponse(msgspec.Struct):
    embeddings: list[_Embedding] = msgspec.field(default_factory=list)


_decode_batch = msgspec.json.Decoder(_BatchResponse).decode


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


class EmbeddingError(Exception):
    """Embedding failed for good (after retries, or on a non-retryable error)."""


def l2_normalise(vector: list[float]) -> list[float]:
    """`vector` scaled to unit length (a zero vector is returned unchanged)."""
    norm = math.hypot(*vector)  # in C: a generator over 768+ floats cost more per query
    return [v / norm for v in vector] if norm else list(vector)


class BatchEmbedder:
    """What every provider's embedder shares: batches, concurrency, retries, query cache.

    A provider subclass sends one batch (`_request`) and classifies its errors.
    `embedding_calls` counts HTTP calls made (retries included) for the ingestion
    summary; `cache_hits` / `cache_misses` describe the query cache.
    """

    provider = ""
    max_batch = _MAX_BATCH
    # Gemini takes one title per call (so texts are grouped by title); False: the
    # provider has no title field and `_titled` folds the title into each text.
    title_per_call = True
    # What to check when the provider refuses a request (named in the error).
    rejected_hint = "Check the API key, the embedding model name and the dimension."

    def __init__(
        self,
        model: str,
        dim: int,
        *,
        batch_size: int = _MAX_BATCH,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        max_backoff: float = 20.0,
        request_timeout: float = 60.0,
        cache_size: int = 1024,
        cache: QueryEmbeddingCache | None = None,
    ) -> None:
        if not 1 <= batch_size <= self.max_batch:
            raise ValueError(f"batch_size must be 1..{self.max_batch}, got {batch_size}")
        self.model = model
        self.dim = dim
        self._batch_size = batch_size
        self._concurrency = max(1, concurrency)
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._max_backoff = max_backoff
        self._request_timeout = request_timeout
        self.query_cache = cache or QueryEmbeddingCache(size=cache_size)
        self.embedding_calls = 0

    @property
    def cache_hits(self) -> int:
        return self.query_cache.hits

    @property
    def cache_misses(self) -> int:
        return self.query_cache.misses

    async def embed_documents(self, texts: list[str], titles: list[str]) -> list[list[float]]:
        """Embed chunks for indexing (`RETRIEVAL_DOCUMENT`, with each chunk's page title)."""
        if len(texts) != len(titles):
            raise ValueError(f"got {len(texts)} texts but {len(titles)} titles")
        if not texts:
            return []
        if not self.title_per_call:
            # The title goes into each text, so any texts can share a call.
            texts = [self._titled(text, title) for text, title in zip(texts, titles, strict=True)]
            titles = [""] * len(texts)
        by_title: dict[str, list[int]] = {}
        for index, title in enumerate(titles):
            by_title.setdefault(title, []).append(index)
        batches = [
            (title, indices[start : start + self._batch_size])
            for title, indices in by_title.items()
            for start in range(0, len(indices), self._batch_size)
        ]
        # Created per call: an asyncio.Semaphore binds to the loop that first waits on it.
        semaphore = asyncio.Semaphore(self._concurrency)
        vectors: list[list[float] | None] = [None] * len(texts)

        async def run(title: str, indices: list[int]) -> None:
            async with semaphore:
                batch = await self._embed(
                    [texts[i] for i in indices], "RETRIEVAL_DOCUMENT", title or None
                )
            for i, vector in zip(indices, batch, strict=True):
                vectors[i] = vector

        tasks = [asyncio.ensure_future(run(title, indices)) for title, indices in batches]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # One batch failed for good: stop the others instead of spending quota.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [v for v in vectors if v is not None]

    async def embed_query(self, text: str) -> list[float]:
        """Embed a search query (`RETRIEVAL_QUERY`); repeated queries come from the cache."""
        namespace = f"{self.provider}:{self.model}:{self.dim}:RETRIEVAL_QUERY"
        cached = await self.query_cache.get(namespace, text)
        if cached is not None:
            return cached
        (vector,) = await self._embed([text], "RETRIEVAL_QUERY", None)
        await self.query_cache.put(namespace, text, vector)
        return list(vector)

    @staticmethod
    def _titled(text: str, title: str) -> str:
        return f"{title}\n\n{text}" if title else text

    async def _request(
        self, texts: list[str], task_type: str, title: str | None
    ) -> list[list[float]]:
        """One provider call: the raw vectors of `texts`, in order."""
        raise NotImplementedError

    def _is_retryable(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _retry_hint(self, exc: BaseException | None) -> float | None:
        return None

    def _describe(self, exc: BaseException | None) -> str:
        if isinstance(exc, TimeoutError):
            return "timeout"
        return type(exc).__name__ if exc is not None else "unknown"

    async def _embed(
        self, texts: list[str], task_type: str, title: str | None
    ) -> list[list[float]]:
        last_error: BaseException | None = None
        for attempt in range(self._max_retries + 1):
            if attempt:
                delay = backoff_delay(
                    attempt - 1, self._backoff_base, self._retry_hint(last_error), self._max_backoff
                )
                logger.info(
                    "embedding retry %d/%d in %.2fs after %s",
                    attempt,
                    self._max_retries,
                    delay,
                    self._describe(last_error),
                )
                await asyncio.sleep(delay)
            self.embedding_calls += 1
            try:
                async with asyncio.timeout(self._request_timeout):
                    raw = await self._request(texts, task_type, title)
            except TimeoutError as exc:
                last_error = exc
                continue
            except Exception as exc:
                if not self._is_retryable(exc):
                    raise EmbeddingError(
                        f"Embedding with {self.model} was rejected ({self._describe(exc)}): "
                        f"{getattr(exc, 'message', None) or exc}. {self.rejected_hint}"
                    ) from exc
                last_error = exc
                continue
            return self._vectors(raw, len(texts))
        raise EmbeddingError(
            f"Embedding {len(texts)} text(s) with {self.model} failed after "
            f"{self._max_retries + 1} attempts (last error: {self._describe(last_error)}). "
            f"The {self.provider} embedding service may be overloaded or the quota "
            "exhausted; try again later."
        ) from last_error

    def _vectors(self, raw: list[list[float]], expected: int) -> list[list[float]]:
        if len(raw) != expected:
            raise EmbeddingError(
                f"{self.model} returned {len(raw)} embeddings for {expected} texts"
            )
        vectors = []
        for values in raw:
            if len(values) != self.dim:
                raise EmbeddingError(
                    f"{self.model} returned {len(values)} dimensions, expected {self.dim} "
                    "(set EMBEDDING_DIM to the model's output size)"
                )
            vectors.append(l2_normalise(values))
        return vectors


class GeminiEmbedder(BatchEmbedder):
    """`Embedder` for Gemini (`:batchEmbedContents`, task types, one title per call)."""

    provider = "gemini"
    rejected_hint = "Check GEMINI_API_KEY, the embedding model name and the dimension."

    def __init__(
        self,
        client: genai.Client,
        model: str = "gemini-embedding-001",
        dim: int = 768,
        **options: Any,
    ) -> None:
        super().__init__(model, dim, **options)
        self._rest = gemini_rest(client)

    async def _request(
        self, texts: list[str], task_type: str, title: str | None
    ) -> list[list[float]]:
        model_path = _model_path(self.model)
        request: dict[str, object] = {"taskType": task_type, "outputDimensionality": self.dim}
        if title:
            request["title"] = title
        body: dict[str, object] = {
            "requests": [
                {"model": model_path, "content": {"parts": [{"text": text}]}, **request}
                for text in texts
            ]
        }
        content = await self._rest.post(self.model, "batchEmbedContents", msgspec.json.encode(body))
        return [e.values for e in _decode_batch(content or b"{}").embeddings]

    def _is_retryable(self, exc: BaseException) -> bool:
        return is_retryable_error(exc)

    def _retry_hint(self, exc: BaseException | None) -> float | None:
        return retry_delay_hint(exc)

    def _describe(self, exc: BaseException | None) -> str:
        if isinstance(exc, genai_errors.APIError):
            return f"HTTP {exc.code} {exc.status or ''}".strip()
        return super()._describe(exc)
