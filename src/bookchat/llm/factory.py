"""Which model clients a process gets, from the settings: Gemini, or offline (no key)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bookchat.llm.base import AnswerGenerator, Embedder

if TYPE_CHECKING:
    from google import genai

    from bookchat.settings import Settings

__all__ = ["make_embedder", "make_genai", "make_generator"]


def make_genai(settings: Settings) -> genai.Client | None:
    """One google-genai client per process when a key is configured (None = offline)."""
    if settings.offline:
        return None
    from bookchat.llm.gemini import make_genai_client

    return make_genai_client(settings.gemini_api_key or "", settings.gemini_base_url)


def make_embedder(settings: Settings, client: genai.Client | None = None) -> Embedder | None:
    """Gemini embeddings when a key is configured; None means BM25 only (offline)."""
    client = client or make_genai(settings)
    if client is None:
        return None
    from bookchat.llm.embeddings import GeminiEmbedder

    return GeminiEmbedder(client, model=settings.embedding_model, dim=settings.embedding_dim)


def make_generator(settings: Settings, client: genai.Client | None = None) -> AnswerGenerator:
    """Gemini when a key is configured, else the offline extractive answerer."""
    client = client or make_genai(settings)
    if client is None:
        from bookchat.llm.offline import OfflineGenerator

        return OfflineGenerator()
    from bookchat.llm.gemini import GeminiGenerator

    return GeminiGenerator(
        client,
        settings.chat_model,
        settings.fallback_model,
        first_token_timeout=settings.first_token_timeout,
        total_timeout=settings.total_timeout,
    )
