"""Query embeddings shared through Redis by every worker, with the local LRU as fallback."""

from __future__ import annotations

import hashlib
import socket
import struct

import openai
import pytest

from bookchat.devtools.fake_openai import FakeOpenAI
from bookchat.llm.openai import OpenAIEmbedder
from bookchat.llm.query_cache import QueryEmbeddingCache, pack_vector, unpack_vector

pytest_plugins = ["tests.openai_fixtures"]

MODEL = "nomic-embed-text"


def embedder(client: openai.AsyncOpenAI, cache: QueryEmbeddingCache) -> OpenAIEmbedder:
    return OpenAIEmbedder(client, MODEL, 768, cache=cache, max_retries=0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_vectors_round_trip_as_little_endian_float32() -> None:
    vector = [0.5, -0.25, 1.0]
    assert pack_vector(vector) == struct.pack("<3f", *vector)
    assert unpack_vector(pack_vector(vector)) == vector


@pytest.mark.redis
async def test_two_workers_embed_the_same_question_once(
    redis_url: str, fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    import redis.asyncio as redis

    first_cache = QueryEmbeddingCache(redis_url=redis_url, ttl=600)
    second_cache = QueryEmbeddingCache(redis_url=redis_url, ttl=600)
    try:
        a = await embedder(openai_client, first_cache).embed_query("what is odometry")
        b = await embedder(openai_client, second_cache).embed_query("what is odometry")
    finally:
        await first_cache.close()
        await second_cache.close()

    assert fake_openai.embed_requests == 1
    assert b == pytest.approx(a, abs=1e-6)  # float32 in Redis
    assert (second_cache.redis_hits, second_cache.misses) == (1, 0)
    digest = hashlib.sha256(b"what is odometry").hexdigest()
    key = f"bookchat:qemb:openai:{MODEL}:768:RETRIEVAL_QUERY:{digest}"
    client = redis.Redis.from_url(redis_url)
    try:
        assert len(await client.get(key)) == 768 * 4
        assert 590 <= await client.ttl(key) <= 600
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_the_key_separates_models_and_dimensions(
    redis_url: str, fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    cache = QueryEmbeddingCache(redis_url=redis_url)
    other = QueryEmbeddingCache(redis_url=redis_url)
    try:
        await embedder(openai_client, cache).embed_query("lidar")
        await OpenAIEmbedder(openai_client, "other-model", 768, cache=other).embed_query("lidar")
    finally:
        await cache.close()
        await other.close()

    assert fake_openai.embed_requests == 2


async def test_redis_down_still_embeds_and_falls_back_to_the_local_lru(
    fake_openai: FakeOpenAI, openai_client: openai.AsyncOpenAI
) -> None:
    cache = QueryEmbeddingCache(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    worker = embedder(openai_client, cache)
    try:
        first = await worker.embed_query("what is odometry")
        second = await worker.embed_query("what is odometry")
    finally:
        await cache.close()

    assert first == second and len(first) == 768
    assert fake_openai.embed_requests == 1
    assert (cache.hits, cache.redis_hits, cache.misses) == (1, 0, 1)
