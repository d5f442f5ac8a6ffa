"""OpenAIEmbedder against the fake OpenAI-compatible server through the real `openai` client."""

from __future__ import annotations

import math

import openai
import pytest

from bookchat.devtools.fake_gemini import fake_embedding
from bookchat.devtools.fake_openai import FakeOpenAI, RateLimited, ServerError
from bookchat.llm.embeddings import EmbeddingError
from bookchat.llm.openai import OpenAIEmbedder, make_openai_client

# Fixtures `fake_openai` and `openai_client`.
pytest_plugins = ["tests.openai_fixtures"]

MODEL = "nomic-embed-text"


def make_embedder(client: openai.AsyncOpenAI, dim: int = 768, **options: int) -> OpenAIEmbedder:
    return OpenAIEmbedder(client, MODEL, dim, backoff_base=0.01, **options)


async def test_documents_are_normalised_vectors_in_input_order(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    texts = ["wheel odometry", "lidar scans", "wheel odometry"]

    vectors = await make_embedder(openai_client).embed_documents(texts, ["A", "B", "A"])

    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 768
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0)
    assert vectors[0] == vectors[2] != vectors[1]
    # Each text is embedded with its page title, as floats, by the configured model.
    assert vectors[1] == pytest.approx(fake_embedding("B\n\nlidar scans", 768))
    for record in fake_openai.requests:
        assert record.path == "/v1/embeddings"
        assert record.body["model"] == MODEL
        assert record.body["encoding_format"] == "float"
        assert "dimensions" not in record.body


async def test_pages_share_calls_since_titles_travel_in_the_text(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    texts = [f"chunk {i}" for i in range(30)]
    titles = [f"Page {i % 10}" for i in range(30)]  # ten pages

    vectors = await make_embedder(openai_client).embed_documents(texts, titles)

    assert len(vectors) == 30
    assert fake_openai.embed_requests == 1  # Gemini would need one call per title
    assert fake_openai.requests[0].body["input"][3] == "Page 3\n\nchunk 3"


async def test_250_texts_with_one_title_take_three_calls(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    vectors = await make_embedder(openai_client).embed_documents(
        [f"text number {i}" for i in range(250)], ["Page"] * 250
    )

    assert len(vectors) == 250
    assert fake_openai.embed_requests == 3 and fake_openai.embed_texts == 250


async def test_query_is_the_bare_text_and_repeats_come_from_the_cache(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    embedder = make_embedder(openai_client)

    first = await embedder.embed_query("what is odometry")
    second = await embedder.embed_query("what is odometry")

    assert first == second == pytest.approx(fake_embedding("what is odometry", 768))
    assert fake_openai.embed_requests == 1
    assert fake_openai.requests[0].body["input"] == ["what is odometry"]
    assert (embedder.cache_hits, embedder.cache_misses) == (1, 1)


async def test_429_and_500_are_retried(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_embed(RateLimited(retry_delay=None), ServerError(status=503))
    embedder = make_embedder(openai_client)

    vectors = await embedder.embed_documents(["a text"], ["T"])

    assert len(vectors) == 1
    assert fake_openai.embed_requests == 3 and embedder.embedding_calls == 3


async def test_a_rejected_request_is_not_retried_and_names_the_settings(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    fake_openai.script_embed(ServerError(status=404, message="model not found"))

    with pytest.raises(EmbeddingError, match=r"HTTP 404.*EMBEDDING_MODEL"):
        await make_embedder(openai_client).embed_query("q")
    assert fake_openai.embed_requests == 1


async def test_wrong_dimension_is_an_error_naming_embedding_dim() -> None:
    with FakeOpenAI(embed_dim=384) as fake:
        client = make_openai_client(None, fake.api_base)
        try:
            with pytest.raises(EmbeddingError, match=r"384 dimensions.*EMBEDDING_DIM"):
                await make_embedder(client, dim=768).embed_query("q")
        finally:
            await client.close()
