"""Helpers for chat API tests: an app on the ingested sample book, SSE collection."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from httpx_sse import aconnect_sse

from bookchat.settings import SAMPLE_BOOK, Settings


@dataclass
class SSEAnswer:
    status: int
    headers: httpx.Headers
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    error_body: dict[str, Any] | None = None

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def first(self, name: str) -> dict[str, Any]:
        return next(data for event, data in self.events if event == name)

    @property
    def text(self) -> str:
        return "".join(data["content"] for name, data in self.events if name == "token")


async def ask(
    client: httpx.AsyncClient,
    message: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> SSEAnswer:
    """POST /api/v1/chat and collect every SSE event (or the error envelope)."""
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    async with aconnect_sse(
        client, "POST", "/api/v1/chat", json={"message": message, **body}, headers=headers
    ) as source:
        response = source.response
        answer = SSEAnswer(status=response.status_code, headers=response.headers)
        if response.status_code != 200:
            await response.aread()
            answer.error_body = response.json()
            return answer
        async for event in source.aiter_sse():
            answer.events.append(
                (event.event, msgspec.json.decode(event.data) if event.data else {})
            )
            answer.ids.append(event.id)
    return answer


def ingest_sample_book(settings: Settings) -> None:
    """Ingest the sample book (from sync code: fixtures outside the event loop)."""
    asyncio.run(aingest_sample_book(settings))


async def aingest_sample_book(settings: Settings) -> None:
    """Ingest the sample book (from async tests)."""
    from bookchat.ingest.pipeline import run_ingest

    await run_ingest(settings, SAMPLE_BOOK, site_url=settings.site_url)


async def app_client(settings: Settings, **runtime_parts: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An AsyncTestClient on create_app(settings), with optional injected runtime parts."""
    from litestar.testing import AsyncTestClient

    from bookchat.app import create_app
    from bookchat.runtime import Runtime

    runtime = Runtime.build(settings, **runtime_parts) if runtime_parts else None
    async with AsyncTestClient(app=create_app(settings, runtime=runtime)) as client:
        yield client


class LogCapture:
    """Collects the JSON log lines of one logger (survives create_app's logging setup)."""

    def __init__(self, name: str) -> None:
        from bookchat.observability import JsonFormatter

        self.logger = logging.getLogger(name)
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())

    def __enter__(self) -> LogCapture:
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]
