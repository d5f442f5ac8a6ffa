"""Two granian workers: the embedded store serves both, Redis makes the limit exact."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .servers import prepare_book_env, running_server

pytestmark = [pytest.mark.server, pytest.mark.redis]


@pytest.fixture
def two_workers(tmp_path: Path, redis_url: str) -> Iterator[str]:
    env = prepare_book_env(tmp_path, REDIS_URL=redis_url)
    with running_server(env, workers=2) as base_url:
        yield base_url


async def test_rate_limit_is_exact_across_two_workers_sharing_redis(two_workers: str) -> None:
    async with httpx.AsyncClient(base_url=two_workers, timeout=30) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    "/api/v1/chat",
                    json={"message": "What is lidar?"},
                    headers={"Accept": "application/json"},
                )
                for _ in range(30)
            )
        )
        metrics = (await http.get("/metrics")).text
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
    # Both workers answered from the embedded store (each from its own snapshot).
    assert all(r.json()["grounded"] for r in responses if r.status_code == 200)
    # Metrics add up across worker processes, whichever worker answers the scrape.
    assert 'bookchat_chat_outcomes_total{outcome="complete"} 10.0' in metrics
    assert 'bookchat_rate_limited_total{tier="anonymous"} 20.0' in metrics
