"""GeminiEmbedder against the fake Gemini through the real google-genai client."""

from __future__ import annotations

import math

import pytest
from google import genai

from bookchat.devtools.fake_gemini import FakeGemini, RateLimited, ServerError
from bookchat.llm.embeddings import EmbeddingError, GeminiEmbedder

# Fixtures `fake_gemini` and `genai_client`.
pytest_plugins = ["tests.gemini_fixtures"]

MODEL = "gemini-embedding-001"


def make_embedder(client: genai.Client, **options: int) -> GeminiEmbedder:
    return GeminiEmbedder(client, MODEL, 768, backoff_base=0.01, **options)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_documents_are_normalised_768_dim_vectors_in_input_order(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    texts = ["wheel odometry", "lidar scans", "wheel odometry"]
    vectors = await make_embedder(genai_client).embed_documents(texts, ["A", "B", "A"])

    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 768
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0)
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    requests = fake_gemini.requests
    assert {r.body["requests"][0]["title"] for r in requests} == {"A", "B"}
    for record in requests:
        for entry in record.body["requests"]:
            assert entry["taskType"] == "RETRIEVAL_DOCUMENT"
            assert entry["outputDimensionality"] == 768
            assert entry["model"] == f"models/{MODEL}"


async def test_250_texts_with_one_title_take_three_calls(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    embedder = make_embedder(genai_client)

    vectors = await embedder.embed_documents(
        [f"text number {i}" for i in range(250)], ["Page"] * 250
    )

    assert len(vectors) == 250
    assert fake_gemini.embed_requests == 3
    assert fake_gemini.embed_texts == 250
    assert sorted(len(r.body["requests"]) for r in fake_gemini.requests) == [50, 100, 100]
    assert embedder.embedding_calls == 3


async def test_texts_are_grouped_by_title_within_batches(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    titles = ["Intro", "Sensors", "Intro", "Sensors", "Intro"]

    await make_embedder(genai_client).embed_documents([f"t{i}" for i in range(5)], titles)

    calls = {
        r.body["requests"][0]["title"]: [
            e["content"]["parts"][0]["text"] for e in r.body["requests"]
        ]
        for r in fake_gemini.requests
    }
    assert calls == {"Intro": ["t0", "t2", "t4"], "Sensors": ["t1", "t3"]}


async def test_429_then_success_is_retried(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_embed(RateLimited(), RateLimited())
    embedder = make_embedder(genai_client)

    vectors = await embedder.embed_documents(["a text"], ["T"])

    assert len(vectors) == 1
    assert fake_gemini.embed_requests == 3
    assert embedder.embedding_calls == 3


async def test_500_forever_raises_embedding_error(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.set_model_rule(MODEL, ServerError())
    embedder = make_embedder(genai_client, max_retries=2)

    with pytest.raises(EmbeddingError, match=r"failed after 3 attempts.*HTTP 500 INTERNAL"):
        await embedder.embed_documents(["a", "b"], ["T", "T"])
    assert fake_gemini.embed_requests == 3


async def test_client_error_is_not_retried(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_embed(ServerError(status=400, message="bad dimension"))

    with pytest.raises(EmbeddingError, match="rejected"):
        await make_embedder(genai_client).embed_query("anything")
    assert fake_gemini.embed_requests == 1


async def test_similar_texts_are_closer_than_unrelated_ones(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    embedder = make_embedder(genai_client)
    query = await embedder.embed_query("why does wheel odometry drift")
    similar, unrelated = await embedder.embed_documents(
        [
            "Wheel odometry drifts because small errors accumulate.",
            "Brazil's GDP grew by three percent last year.",
        ],
        ["Odometry", "Economics"],
    )

    assert cosine(query, similar) > cosine(query, unrelated)
    assert fake_gemini.requests[0].body["requests"][0]["taskType"] == "RETRIEVAL_QUERY"


async def test_repeated_query_is_served_from_cache(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    embedder = make_embedder(genai_client)
    first = await embedder.embed_query("what is odometry")
    calls = fake_gemini.embed_requests

    second = await embedder.embed_query("what is odometry")

    assert second == first
    assert fake_gemini.embed_requests == calls == 1
    assert (embedder.cache_hits, embedder.cache_misses) == (1, 1)


async def test_query_cache_evicts_least_recently_used(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    embedder = make_embedder(genai_client, cache_size=2)
    for text in ["a", "b", "a", "c"]:  # "b" is the least recently used when "c" arrives
        await embedder.embed_query(text)

    await embedder.embed_query("a")
    assert fake_gemini.embed_requests == 3
    await embedder.embed_query("b")
    assert fake_gemini.embed_requests == 4


async def test_mismatched_titles_are_rejected(genai_client: genai.Client) -> None:
    with pytest.raises(ValueError, match="titles"):
        await make_embedder(genai_client).embed_documents(["a", "b"], ["T"])
