"""Which model clients a process gets, from the settings.

Answers: LLM_PROVIDER (Gemini or an OpenAI-compatible server) with an optional fallback
route of either provider, or the offline answerer when the provider is not configured.
Embeddings: EMBEDDING_PROVIDER likewise, or None (BM25 only). `ModelClients` builds each
provider's HTTP client once per process, plus the query-embedding cache (shared through
Redis when REDIS_URL is set), and closes them together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bookchat.llm.base import AnswerGenerator, Embedder

if TYPE_CHECKING:
    import openai
    from google import genai

    from bookchat.llm.query_cache import QueryEmbeddingCache
    from bookchat.llm.streaming import Route
    from bookchat.settings import Provider, Settings

__all__ = ["ModelClients", "make_embedder", "make_genai", "make_generator"]


def make_genai(settings: Settings) -> genai.Client | None:
    """One google-genai client when a Gemini key is configured (None otherwise)."""
    if not settings.provider_configured("gemini"):
        return None
    from bookchat.llm.gemini import make_genai_client

    return make_genai_client(settings.gemini_api_key or "", settings.gemini_base_url)


class ModelClients:
    """The provider clients of one process, built on first use and closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._genai: genai.Client | None = None
        self._openai: dict[tuple[str | None, str | None], openai.AsyncOpenAI] = {}
        self._query_cache: QueryEmbeddingCache | None = None

    def genai(self) -> genai.Client:
        if self._genai is None:
            self._genai = make_genai(self.settings)
            if self._genai is None:
                raise RuntimeError("Gemini is not configured (GEMINI_API_KEY)")
        return self._genai

    def openai(self, api_key: str | None, base_url: str | None) -> openai.AsyncOpenAI:
        key = (api_key, base_url)
        if key not in self._openai:
            from bookchat.llm.openai import make_openai_client

            self._openai[key] = make_openai_client(api_key, base_url)
        return self._openai[key]

    def query_cache(self) -> QueryEmbeddingCache:
        if self._query_cache is None:
            from bookchat.llm.query_cache import QueryEmbeddingCache

            self._query_cache = QueryEmbeddingCache(
                redis_url=self.settings.redis_url, ttl=self.settings.embedding_cache_ttl
            )
        return self._query_cache

    def route(self, provider: Provider, model: str, *, fallback: bool = False) -> Route:
        """`model` on `provider`; an OpenAI-compatible fallback may use its own server."""
        from bookchat.llm.streaming import Route

        if provider == "gemini":
            from bookchat.llm.gemini import GeminiProvider

            return Route(GeminiProvider(self.genai()), model)
        from bookchat.llm.openai import OpenAIProvider

        settings = self.settings
        api_key, base_url = settings.openai_api_key, settings.openai_base_url
        if fallback:
            api_key = settings.fallback_api_key or api_key
            base_url = settings.fallback_base_url or base_url
        return Route(OpenAIProvider(self.openai(api_key, base_url)), model)

    async def aclose(self) -> None:
        if self._query_cache is not None:
            await self._query_cache.close()
        for client in self._openai.values():
            await client.close()
        self._openai.clear()
        if self._genai is not None:
            from bookchat.llm.gemini import close_genai_client

            await close_genai_client(self._genai)
            self._genai = None


def make_embedder(settings: Settings, clients: ModelClients | None = None) -> Embedder | None:
    """The EMBEDDING_PROVIDER's embedder, or None (BM25 only) when it is not configured."""
    if settings.embeddings_offline:
        return None
    if settings.embedding_provider == "local":
        from bookchat.llm.local import LocalEmbedder

        return LocalEmbedder(settings.local_model_dir)
    clients = clients or ModelClients(settings)
    if settings.embedding_provider == "openai":
        from bookchat.llm.openai import OpenAIEmbedder

        return OpenAIEmbedder(
            clients.openai(settings.openai_api_key, settings.openai_base_url),
            settings.embedding_model,
            settings.embedding_dim,
            cache=clients.query_cache(),
        )
    from bookchat.llm.embeddings import GeminiEmbedder

    return GeminiEmbedder(
        clients.genai(),
        model=settings.embedding_model,
        dim=settings.embedding_dim,
        cache=clients.query_cache(),
    )


def make_generator(settings: Settings, clients: ModelClients | None = None) -> AnswerGenerator:
    """LLM_PROVIDER's model then the fallback route, or the offline extractive answerer."""
    if settings.llm_offline:
        from bookchat.llm.offline import OfflineGenerator

        if settings.embedding_provider == "local" and not settings.embeddings_offline:
            # The local encoder is in memory already (it embeds the queries): the
            # extractive answer uses it to find sentences that answer in other words.
            from bookchat.llm.local import load_encoder

            return OfflineGenerator(encoder=load_encoder(settings.local_model_dir))
        return OfflineGenerator()
    from bookchat.llm.streaming import StreamingGenerator

    clients = clients or ModelClients(settings)
    routes = [clients.route(settings.llm_provider, settings.main_model)]
    fallback = settings.fallback
    if fallback is not None and (
        settings.provider_configured(fallback[0])
        or (fallback[0] == "openai" and (settings.fallback_api_key or settings.fallback_base_url))
    ):
        routes.append(clients.route(*fallback, fallback=True))
    return StreamingGenerator(
        routes,
        first_token_timeout=settings.first_token_timeout,
        total_timeout=settings.total_timeout,
    )
