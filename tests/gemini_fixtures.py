"""Fixtures for tests that talk to the fake Gemini through the real google-genai client.

Import the fixtures you use into the test module (`from tests.gemini_fixtures import
fake_gemini, genai_client`), or register this module as a plugin in conftest.py with
`pytest_plugins = ["tests.gemini_fixtures"]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from google import genai

from bookchat.devtools.fake_gemini import FakeGemini
from bookchat.llm.gemini import close_genai_client, make_genai_client


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    """A fresh fake Gemini on 127.0.0.1 (instant answers unless configured)."""
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
async def genai_client(fake_gemini: FakeGemini) -> AsyncIterator[genai.Client]:
    """A google-genai client as production builds it, pointed at the fake."""
    client = make_genai_client("test-key", fake_gemini.base_url)
    yield client
    await close_genai_client(client)
