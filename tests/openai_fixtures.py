"""Fixtures for tests that talk to the fake OpenAI-compatible server through the real
`openai` SDK client (`pytest_plugins = ["tests.openai_fixtures"]`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from bookchat.devtools.fake_openai import FakeOpenAI
from bookchat.llm.openai import make_openai_client


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fresh fake OpenAI-compatible server on 127.0.0.1 (instant answers)."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def openai_client(fake_openai: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    """An `AsyncOpenAI` as production builds it, pointed at the fake."""
    client = make_openai_client("test-key", fake_openai.api_base)
    yield client
    await client.close()
