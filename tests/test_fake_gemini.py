"""The fake Gemini speaks the wire format google-genai expects and reports what it saw."""

from __future__ import annotations

import math

import pytest
from google import genai
from google.genai import errors, types

from bookchat.devtools.fake_gemini import (
    DEFAULT_ANSWER,
    Cut,
    FakeGemini,
    Hang,
    RateLimited,
    Reply,
    ServerError,
    fake_embedding,
)

# Fixtures `fake_gemini` and `genai_client`.
pytest_plugins = ["tests.gemini_fixtures"]

STREAM_CONFIG = types.GenerateContentConfig(
    system_instruction="You are a tutor.", automatic_continuation=False
)


async def _stream_texts(client: genai.Client, model: str = "gemini-test") -> list[str]:
    chunks = await client.aio.models.generate_content_stream(
        model=model, contents="What is odometry?", config=STREAM_CONFIG
    )
    return [chunk.text or "" async for chunk in chunks]


async def test_stream_is_the_default_answer_in_word_tokens(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    chunks = await genai_client.aio.models.generate_content_stream(
        model="gemini-test", contents="What is odometry?", config=STREAM_CONFIG
    )
    received = [chunk async for chunk in chunks]

    assert "".join(c.text or "" for c in received) == DEFAULT_ANSWER
    assert len(received) == len(DEFAULT_ANSWER.split(" "))
    last = received[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in received[:-1])
    assert last.usage_metadata is not None
    assert last.usage_metadata.candidates_token_count == len(received)
    assert last.usage_metadata.prompt_token_count == 7  # words: 3 question + 4 system
    assert last.model_version == "gemini-test"


async def test_request_log_records_model_action_and_body(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    await _stream_texts(genai_client)

    (record,) = fake_gemini.requests
    assert record.method == "POST"
    assert record.path == "/v1beta/models/gemini-test:streamGenerateContent"
    assert (record.model, record.action) == ("gemini-test", "streamGenerateContent")
    assert record.body["contents"][0]["parts"][0]["text"] == "What is odometry?"
    assert record.body["systemInstruction"]["parts"][0]["text"] == "You are a tutor."
    assert fake_gemini.generate_requests == 1
    # The fake records the closure after its last chunk left: the client may be first.
    assert await fake_gemini.until(lambda f: f.stream_closures, within=10)
    assert fake_gemini.stream_closures[0].reason == "completed"


async def test_exact_texts_and_non_streaming_generate(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(Reply(["See [1] ", "and [9]."]))
    assert await _stream_texts(genai_client) == ["See [1] ", "and [9]."]

    fake_gemini.configure(answer="A whole answer.")
    response = await genai_client.aio.models.generate_content(model="m", contents="q")
    assert response.text == "A whole answer."


async def test_words_per_chunk_groups_the_answer(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.configure(words_per_chunk=5)
    texts = await _stream_texts(genai_client)
    assert texts[0] == "Odometry integrates wheel rotations to "
    assert "".join(texts) == DEFAULT_ANSWER and len(texts) == 3


async def test_429_body_is_shaped_like_gemini(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(RateLimited(retry_delay=1.5))

    with pytest.raises(errors.ClientError) as caught:
        await _stream_texts(genai_client)

    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    (detail,) = caught.value.details["error"]["details"]
    assert detail == {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "1.5s",
    }
    # The connection is reused after an error: the next call simply works.
    assert "".join(await _stream_texts(genai_client)) == DEFAULT_ANSWER


async def test_model_rule_wins_over_the_script(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.set_model_rule("broken", ServerError())
    for _ in range(3):
        with pytest.raises(errors.ServerError) as caught:
            await _stream_texts(genai_client, model="broken")
        assert caught.value.status == "INTERNAL"
    assert await _stream_texts(genai_client, model="healthy")


async def test_cut_closes_the_socket_mid_body(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(Cut(after_tokens=2))
    received: list[str] = []

    with pytest.raises(Exception, match="incomplete chunked read"):
        chunks = await genai_client.aio.models.generate_content_stream(
            model="m", contents="q", config=STREAM_CONFIG
        )
        async for chunk in chunks:
            received.append(chunk.text or "")

    assert received == ["Odometry ", "integrates "]
    assert await fake_gemini.until(lambda f: f.stream_closures, within=10)
    assert fake_gemini.stream_closures[0].reason == "cut"


def test_client_close_during_a_hang_is_seen_at_once() -> None:
    import socket

    with FakeGemini() as fake:
        fake.script_generate(Hang())
        with socket.create_connection(("127.0.0.1", fake.port)) as sock:
            body = b'{"contents": []}'
            sock.sendall(
                b"POST /v1beta/models/m:streamGenerateContent?alt=sse HTTP/1.1\r\n"
                b"Host: x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            assert sock.recv(1024).startswith(b"HTTP/1.1 200 OK")
            assert fake.wait_until(lambda f: f.active_streams == 1, timeout=1)
        assert fake.wait_until(lambda f: f.stream_closed_early, timeout=1)
        assert fake.stream_closed_early[0].tokens_sent == 0


async def test_batch_embeddings_have_the_requested_dimension_and_unit_length(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    response = await genai_client.aio.models.embed_content(
        model="gemini-embedding-001",
        contents=["wheel odometry drifts", "a second text"],
        config=types.EmbedContentConfig(
            task_type="RETRIEVAL_DOCUMENT", title="Odometry", output_dimensionality=64
        ),
    )

    assert response.embeddings is not None and len(response.embeddings) == 2
    for embedding in response.embeddings:
        assert embedding.values is not None and len(embedding.values) == 64
        assert math.isclose(sum(v * v for v in embedding.values), 1.0)
    (record,) = fake_gemini.requests
    assert record.action == "batchEmbedContents"
    assert record.body["requests"][0]["title"] == "Odometry"
    assert record.body["requests"][0]["taskType"] == "RETRIEVAL_DOCUMENT"
    assert (fake_gemini.embed_requests, fake_gemini.embed_texts) == (1, 2)


def test_fake_embedding_puts_similar_texts_closer() -> None:
    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    query = fake_embedding("how does wheel odometry drift")
    similar = fake_embedding("Wheel odometry drifts over time as errors accumulate.")
    unrelated = fake_embedding("The GDP of Brazil grew last year.")
    assert cosine(query, similar) > cosine(query, unrelated) + 0.3
    assert fake_embedding("same text") == fake_embedding("same text")


async def test_reset_forgets_scripts_and_counters(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    fake_gemini.script_generate(ServerError())
    fake_gemini.configure(answer="changed")
    fake_gemini.reset()

    assert fake_gemini.generate_requests == 0
    assert "".join(await _stream_texts(genai_client)) == DEFAULT_ANSWER


async def test_models_listing_for_health_checks(
    fake_gemini: FakeGemini, genai_client: genai.Client
) -> None:
    model = await genai_client.aio.models.get(model="gemini-2.5-flash")
    assert model.name == "models/gemini-2.5-flash"
