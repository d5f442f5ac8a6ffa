"""Providers chosen by settings, end to end: OpenAI-compatible answers and embeddings,
Gemini with an OpenAI-compatible fallback, collections that remember their embedding
provider, and query embeddings shared by app instances through Redis."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from bookchat.cli import main as cli_main
from bookchat.db.migrate import run_migrations
from bookchat.db.models import Message
from bookchat.devtools.fake_gemini import FakeGemini, ServerError
from bookchat.devtools.fake_openai import DEFAULT_ANSWER, FakeOpenAI
from bookchat.llm.embeddings import GeminiEmbedder
from bookchat.llm.factory import ModelClients, make_embedder, make_generator
from bookchat.llm.openai import OpenAIEmbedder
from bookchat.llm.streaming import StreamingGenerator
from bookchat.settings import SAMPLE_BOOK, Settings, SettingsError, load_settings

from .chat_helpers import aingest_sample_book, app_client
from .conftest import make_settings

pytest_plugins = ["tests.openai_fixtures", "tests.gemini_fixtures"]

EMBED = {"EMBEDDING_PROVIDER": "openai", "EMBEDDING_MODEL": "nomic-embed-text"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def routes_of(settings: Settings) -> list[tuple[str, str]]:
    generator = make_generator(settings, ModelClients(settings))
    assert isinstance(generator, StreamingGenerator)
    return [(route.provider.name, route.model) for route in generator.routes]


def test_settings_choose_the_answer_routes() -> None:
    gemini = {"GEMINI_API_KEY": "k"}
    openai = {"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}

    assert routes_of(load_settings(gemini)) == [
        ("gemini", "gemini-2.5-flash"),
        ("gemini", "gemini-2.5-flash-lite"),
    ]
    # The Gemini default fallback model does not follow LLM_PROVIDER=openai.
    assert routes_of(load_settings({**openai, "OPENAI_MODEL": "llama3"})) == [("openai", "llama3")]
    assert routes_of(load_settings({**openai, "FALLBACK_MODEL": "qwen"})) == [
        ("openai", "gpt-4o-mini"),
        ("openai", "qwen"),
    ]
    no_model = {**gemini, **openai, "LLM_PROVIDER": "gemini", "FALLBACK_PROVIDER": "openai"}
    assert routes_of(load_settings(no_model)) == [("gemini", "gemini-2.5-flash")]
    mixed = {
        **gemini,
        "FALLBACK_PROVIDER": "openai",
        "FALLBACK_MODEL": "local-llama",
        "FALLBACK_BASE_URL": "http://127.0.0.1:1/v1",
    }
    assert routes_of(load_settings(mixed)) == [
        ("gemini", "gemini-2.5-flash"),
        ("openai", "local-llama"),
    ]


def test_settings_choose_the_embedder_and_reject_a_gemini_model_for_openai() -> None:
    local = load_settings({**EMBED, "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"})
    assert isinstance(make_embedder(local), OpenAIEmbedder)
    assert local.llm_offline and not local.embeddings_offline
    assert isinstance(make_embedder(load_settings({"GEMINI_API_KEY": "k"})), GeminiEmbedder)
    assert make_embedder(load_settings({})) is None
    with pytest.raises(SettingsError, match="EMBEDDING_MODEL"):
        load_settings({"EMBEDDING_PROVIDER": "openai", "OPENAI_API_KEY": "k"})
    with pytest.raises(SettingsError, match="LLM_PROVIDER"):
        load_settings({"LLM_PROVIDER": "anthropic"})


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "GEMINI_API_KEY": "",
        "LOG_LEVEL": "WARNING",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def test_ingest_with_openai_embeddings_then_switching_provider_needs_recreate(
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_openai: FakeOpenAI,
    fake_gemini: FakeGemini,
) -> None:
    for name, value in {**EMBED, "OPENAI_BASE_URL": fake_openai.api_base}.items():
        monkeypatch.setenv(name, value)
    cli_main(["ingest", str(SAMPLE_BOOK), "--json"])
    assert '"embedding_calls":' in capsys.readouterr().out
    assert fake_openai.embed_requests >= 1
    assert {r.body["model"] for r in fake_openai.requests} == {"nomic-embed-text"}

    # Same book, now Gemini embeddings: refused until --recreate.
    monkeypatch.delenv("EMBEDDING_PROVIDER")
    monkeypatch.delenv("EMBEDDING_MODEL")
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    monkeypatch.setenv("GEMINI_BASE_URL", fake_gemini.base_url)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["ingest", str(SAMPLE_BOOK)])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "built with openai embedding model nomic-embed-text" in error
    assert "gemini embedding model gemini-embedding-001" in error
    assert "--recreate" in error
    assert fake_gemini.embed_requests == 0

    cli_main(["ingest", str(SAMPLE_BOOK), "--recreate", "--json"])
    assert fake_gemini.embed_requests >= 1


@pytest.fixture
def openai_book(tmp_path: Path, fake_openai: FakeOpenAI) -> Settings:
    """A migrated database and the sample book ingested with OpenAI-compatible embeddings."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    run_migrations(url)
    return make_settings(tmp_path, DATABASE_URL=url, OPENAI_BASE_URL=fake_openai.api_base, **EMBED)


async def assistant_models(settings: Settings) -> list[str | None]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(Message.model).where(Message.role == "assistant")
            )
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


async def ask_json(client: httpx.AsyncClient, message: str) -> dict[str, object]:
    response = await client.post(
        "/api/v1/chat", json={"message": message}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_fully_self_hosted_answers_come_from_the_openai_compatible_server(
    openai_book: Settings, fake_openai: FakeOpenAI
) -> None:
    settings = openai_book.replace(llm_provider="openai", openai_model="local-llama")
    await aingest_sample_book(settings)
    fake_openai.reset()

    async for client in app_client(settings):
        body = await ask_json(client, "How does wheel odometry drift?")

    assert body["answer"] == DEFAULT_ANSWER
    assert [r.action for r in fake_openai.requests] == ["embeddings", "chat.completions"]
    assert await assistant_models(settings) == ["local-llama"]


async def test_gemini_failing_the_openai_compatible_fallback_answers_and_is_recorded(
    openai_book: Settings, fake_openai: FakeOpenAI, fake_gemini: FakeGemini
) -> None:
    await aingest_sample_book(openai_book)
    fake_gemini.set_model_rule("gemini-2.5-flash", ServerError(status=503))
    settings = openai_book.replace(
        gemini_api_key="test-key",
        gemini_base_url=fake_gemini.base_url,
        fallback_provider="openai",
        fallback_model="local-llama",
    )

    async for client in app_client(settings):
        body = await ask_json(client, "How does wheel odometry drift?")

    assert body["answer"] == DEFAULT_ANSWER
    assert fake_gemini.generate_requests == 4  # the main model, retried
    assert [r.model for r in fake_openai.requests if r.action == "chat.completions"] == [
        "local-llama"
    ]
    assert await assistant_models(settings) == ["local-llama"]


@pytest.mark.redis
async def test_two_app_instances_embed_the_same_question_once(
    openai_book: Settings, fake_openai: FakeOpenAI, redis_url: str
) -> None:
    await aingest_sample_book(openai_book)
    settings = openai_book.replace(redis_url=redis_url)
    fake_openai.reset()

    async for first in app_client(settings):
        async for second in app_client(settings):
            one = await ask_json(first, "How does wheel odometry drift?")
            two = await ask_json(second, "How does wheel odometry drift?")

    assert one["citations"] == two["citations"] and one["grounded"]
    assert fake_openai.embed_requests == 1


async def test_redis_down_still_answers_from_the_local_cache(
    openai_book: Settings, fake_openai: FakeOpenAI
) -> None:
    await aingest_sample_book(openai_book)
    settings = openai_book.replace(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    fake_openai.reset()

    async for client in app_client(settings):
        first = await ask_json(client, "How does wheel odometry drift?")
        again = await ask_json(client, "How does wheel odometry drift?")

    assert first["grounded"] and again["citations"] == first["citations"]
    assert fake_openai.embed_requests == 1
