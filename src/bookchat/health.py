"""Liveness (`/healthz`, no I/O) and readiness (`/api/v1/health`, probes under a timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from sqlalchemy import text

from bookchat.runtime import Runtime

ComponentStatus = Literal["ok", "error", "offline"]


class HealthComponents(msgspec.Struct, kw_only=True):
    database: ComponentStatus
    vector_store: ComponentStatus
    llm: ComponentStatus


class HealthReport(msgspec.Struct, kw_only=True):
    status: Literal["healthy", "degraded"]
    components: HealthComponents
    timestamp: datetime


class Liveness(msgspec.Struct, kw_only=True):
    status: Literal["ok"] = "ok"


async def _probe(check: Callable[[], Awaitable[object]], limit: float) -> ComponentStatus:
    try:
        await asyncio.wait_for(check(), limit)
    except Exception:  # any failure or the timeout: the component is not usable
        return "error"
    return "ok"


async def check_health(runtime: Runtime) -> HealthReport:
    """Probe the database and the vector store concurrently, each under the health timeout."""

    async def database() -> None:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    timeout = runtime.settings.health_timeout
    lost = await runtime.storage_lost()
    db_status, store_status = await asyncio.gather(
        _probe(database, timeout), _probe(runtime.store.ping, timeout)
    )
    if lost == "database":
        db_status = "error"
    elif lost == "index":
        store_status = "error"
    llm: ComponentStatus = "offline" if runtime.settings.llm_offline else "ok"
    healthy = db_status == "ok" and store_status == "ok"
    return HealthReport(
        status="healthy" if healthy else "degraded",
        components=HealthComponents(database=db_status, vector_store=store_status, llm=llm),
        timestamp=datetime.now(UTC),
    )


class HealthController(Controller):
    tags = ["health"]

    @get("/healthz", summary="Liveness: the process answers (no I/O)", include_in_schema=True)
    async def liveness(self) -> Liveness:
        return Liveness()

    @get(
        "/api/v1/health",
        summary="Readiness: database and vector store probes",
        description="200 `healthy`, or 503 `degraded` within a few seconds even when a "
        "dependency hangs. `llm` is `offline` when LLM_PROVIDER is not configured.",
        responses={503: ResponseSpec(data_container=HealthReport, description="degraded")},
    )
    async def readiness(self, state: State) -> Response[HealthReport]:
        report = await check_health(state.runtime)
        return Response(report, status_code=200 if report.status == "healthy" else 503)
