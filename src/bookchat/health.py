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
from sqlalchemy import update

from bookchat.db.config import SQLITE_BUSY_TIMEOUT_MS
from bookchat.db.models import ServerProcess
from bookchat.runtime import Runtime

ComponentStatus = Literal["ok", "error", "offline"]
LLMStatus = Literal["ok", "failing", "not_checked", "offline"]


class LLMReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The model's last real outcome in this process (no probe calls the model)."""

    since: datetime  # when `llm` last changed to its current state
    # The latest failure, while `failing` (not nullable: Scalar's validator rejects a
    # nullable field in this all-optional object).
    error: str = ""


class HealthComponents(msgspec.Struct, kw_only=True):
    database: ComponentStatus
    vector_store: ComponentStatus
    llm: LLMStatus


class HealthReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: Literal["healthy", "degraded"]
    components: HealthComponents
    timestamp: datetime
    llm: LLMReport | None = None


class Liveness(msgspec.Struct, kw_only=True):
    status: Literal["ok"] = "ok"


# Probes cut off by the timeout finish in the background (a SQLite write waiting in its
# busy handler cannot be interrupted); held here so they are not garbage-collected.
_abandoned: set[asyncio.Task[object]] = set()


async def _probe(check: Callable[[], Awaitable[object]], limit: float) -> ComponentStatus:
    task: asyncio.Task[object] = asyncio.ensure_future(check())
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:  # the timeout: answer now, do not wait for the cancellation to land
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_abandoned.discard)
        return "error"
    if task.cancelled() or task.exception() is not None:
        return "error"  # any failure: the component is not usable
    return "ok"


async def check_health(runtime: Runtime) -> HealthReport:
    """Probe the database and the vector store concurrently, each under the health timeout."""
    timeout = runtime.settings.health_timeout
    probe_busy_ms = int(timeout * 1000 / 2)

    async def database() -> None:
        # Chats write, so the probe writes too (this process's heartbeat row, rewritten
        # as it is) in a transaction that is rolled back: a database that answers reads
        # but refuses writes (read-only, immutable, locked) is not ready.
        async with runtime.engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            transaction = await connection.begin()
            try:
                if sqlite:
                    # Give up on a locked database before the probe's timeout: a write cut
                    # off in SQLite's busy handler by cancellation can leave aiosqlite's
                    # thread stopped under a queued call, and the task then never ends
                    # (a worker that hangs at shutdown).
                    await connection.exec_driver_sql(f"PRAGMA busy_timeout={probe_busy_ms}")
                await connection.execute(
                    update(ServerProcess)
                    .where(ServerProcess.id == runtime.chat.owner.id)
                    .values(heartbeat_at=ServerProcess.heartbeat_at)
                )
            finally:
                await transaction.rollback()
                if sqlite:
                    await connection.exec_driver_sql(
                        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"
                    )

    lost = await runtime.storage_lost()
    db_status, store_status = await asyncio.gather(
        _probe(database, timeout), _probe(runtime.store.ping, timeout)
    )
    if lost == "database" or runtime.chat.last_write_failed:
        # The last write of a chat or heartbeat failed (e.g. a full disk, which a rolled-
        # back write does not reach): not ready until a write succeeds again.
        db_status = "error"
    elif lost == "index":
        store_status = "error"
    tracked = runtime.llm_health
    llm: LLMStatus = "offline" if runtime.settings.llm_offline else tracked.state
    detail = None
    if llm in ("ok", "failing") and tracked.since is not None:
        detail = LLMReport(since=tracked.since, error=tracked.error or "")
    # The model does not decide readiness: a failing key is not fixed by restarting or by
    # routing traffic elsewhere, and offline mode answers without it.
    healthy = db_status == "ok" and store_status == "ok"
    return HealthReport(
        status="healthy" if healthy else "degraded",
        components=HealthComponents(database=db_status, vector_store=store_status, llm=llm),
        timestamp=datetime.now(UTC),
        llm=detail,
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
        "dependency hangs. `llm` is the model's last real outcome in this worker, never a "
        "probe call: `ok`, `failing` (`llm.since`, `llm.error`), `not_checked` before the "
        "first question, `offline` when LLM_PROVIDER is not configured. It does not affect "
        "`status`.",
        responses={503: ResponseSpec(data_container=HealthReport, description="degraded")},
    )
    async def readiness(self, state: State) -> Response[HealthReport]:
        report = await check_health(state.runtime)
        return Response(report, status_code=200 if report.status == "healthy" else 503)
