"""Which serving process owns which streaming answer, and repairing rows left by dead ones.

Every serving process registers a `ServerProcess` row at startup with a fresh boot id and
refreshes its `heartbeat_at` every few seconds. An answer's row carries its owner's boot
id while it is `streaming`. A process is dead when

- its heartbeat is older than the dead-after window (any host: works across a fleet), or
- it ran under the same kernel boot and PID namespace as the checking process (`host_key`)
  and its pid is gone, a zombie, or now belongs to a process started at another time
  (immediate: a restart after `kill -9` repairs at once).

Only rows of dead owners (or of owners that never registered, once older than the
window) are marked `interrupted`; a live worker's rows are never touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from bookchat.db.models import Message, ServerProcess, utcnow

ORPHANED_CODE = "server_process_exited"


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def current_host_key() -> str:
    """The kernel boot id and PID namespace, or "" where /proc cannot tell (not Linux)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}" if boot else ""


def process_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot; None when it is gone or a zombie."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # Fields after the command name, which is in parentheses and may contain spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessIdentity:
    """This serving process: a new boot id at every start."""

    id: UUID = field(default_factory=uuid7)
    host_key: str = field(default_factory=current_host_key)
    pid: int = field(default_factory=os.getpid)
    pid_started: int | None = None

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        return cls(pid=pid, pid_started=process_start(pid))

    def considers_alive(self, row: ServerProcess, stale_before: datetime) -> bool:
        """Whether the process of `row` may still be streaming (see the module docstring)."""
        if row.id == self.id:
            return True
        if row.heartbeat_at < stale_before:
            return False
        if self.host_key and row.host_key == self.host_key and row.pid_started is not None:
            return process_start(row.pid) == row.pid_started
        return True


async def heartbeat(session: AsyncSession, me: ProcessIdentity) -> None:
    """Register `me`, or refresh its heartbeat (re-registering if a sweep removed it)."""
    now = utcnow()
    result = await session.execute(
        update(ServerProcess).where(ServerProcess.id == me.id).values(heartbeat_at=now)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        session.add(
            ServerProcess(
                id=me.id,
                host_key=me.host_key,
                pid=me.pid,
                pid_started=me.pid_started,
                started_at=now,
                heartbeat_at=now,
            )
        )
    await session.commit()


async def interrupt_orphans(
    session: AsyncSession, me: ProcessIdentity, *, dead_after: float
) -> int:
    """Mark answers left `streaming` by dead processes `interrupted`; returns how many."""
    stale_before = utcnow() - timedelta(seconds=dead_after)
    processes = list(await session.scalars(select(ServerProcess)))
    alive = {p.id for p in processes if me.considers_alive(p, stale_before)} | {me.id}
    dead = {p.id for p in processes} - alive
    orphaned = Message.status == "streaming"
    unknown_owner = or_(Message.owner_id.is_(None), Message.owner_id.not_in(alive))
    condition: ColumnElement[bool] = unknown_owner & (Message.created_at < stale_before)
    if dead:
        condition = or_(Message.owner_id.in_(dead), condition)
    result = await session.execute(
        update(Message)
        .where(orphaned, condition)
        .values(status="interrupted", error_code=ORPHANED_CODE, owner_id=None)
    )
    if dead:
        await session.execute(delete(ServerProcess).where(ServerProcess.id.in_(dead)))
    await session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def release(session: AsyncSession, me: ProcessIdentity) -> int:
    """At shutdown: this process's answers still `streaming` are `interrupted`; unregister."""
    result = await session.execute(
        update(Message)
        .where(Message.status == "streaming", Message.owner_id == me.id)
        .values(status="interrupted", error_code=ORPHANED_CODE, owner_id=None)
    )
    await session.execute(delete(ServerProcess).where(ServerProcess.id == me.id))
    await session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
