"""The data model of BRIEF §8 on advanced-alchemy bases with portable column types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import DefaultBase, UUIDv7Base
from advanced_alchemy.types import GUID, DateTimeUTC, JsonB
from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class User(UUIDv7Base):
    """A reader: anonymous with an opaque bearer token (stored hashed), or signed in at the
    site's identity provider and known by the JWT's `sub` (then without a token)."""

    __tablename__ = "users"

    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    idp_subject: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    tier: Mapped[str] = mapped_column(String(16), default="token")
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)


class ChatSession(UUIDv7Base):
    """A conversation; `status` is `active` or `archived` (soft delete)."""

    __tablename__ = "chat_sessions"
    __table_args__ = (
        Index("ix_chat_sessions_user_activity", "user_id", "last_activity"),
        Index("ix_chat_sessions_client_binding", "client_binding"),
    )

    user_id: Mapped[UUID] = mapped_column(GUID, ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    last_activity: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    # HMAC of the client IP, set only on sessions created without a token: such a session
    # may be continued without one from that IP. NULL = token-only.
    client_binding: Mapped[str | None] = mapped_column(String(64), default=None)

    # Declared so one flush inserts a new user before its session (insert order follows
    # relationships, not foreign keys); never loaded.
    user: Mapped[User] = relationship(lazy="noload")
    messages: Mapped[list[Message]] = relationship(
        back_populates="session", lazy="noload", cascade="all, delete-orphan"
    )


class Message(UUIDv7Base):
    """One user question or assistant answer.

    An answer's row is inserted with its question as `streaming`, owned by the serving
    process (`owner_id`, a `ServerProcess`), and completed when the answer ends; rows a
    dead process left `streaming` are marked `interrupted` (`db/ownership.py`).
    """

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_session_created", "session_id", "created_at"),
        Index("ix_messages_status_owner", "status", "owner_id"),
        Index("ix_messages_role_created", "role", "created_at"),
    )

    session_id: Mapped[UUID] = mapped_column(
        GUID, ForeignKey("chat_sessions.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text, default="")
    retrieval_mode: Mapped[str] = mapped_column(String(32), default="normal")
    selected_text: Mapped[str | None] = mapped_column(Text, default=None)
    source_doc_path: Mapped[str | None] = mapped_column(String(512), default=None)
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JsonB, default=list)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    # complete | streaming | interrupted | failed
    status: Mapped[str] = mapped_column(String(16), default="complete")
    owner_id: Mapped[UUID | None] = mapped_column(GUID, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    model: Mapped[str | None] = mapped_column(String(128), default=None)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    # The generator's finish reason, or "abstained" when the answer was a refusal.
    finish_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    # Refusals only: the closest sections the search found (citation-shaped dicts).
    related: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonB, default=None)
    feedback_rating: Mapped[str | None] = mapped_column(String(8), default=None)
    feedback_comment: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)

    session: Mapped[ChatSession] = relationship(back_populates="messages", lazy="noload")


class ServerProcess(UUIDv7Base):
    """A serving process, registered at startup and kept alive by a heartbeat.

    `id` is the process's boot id (new at every start). `host_key` names the kernel boot
    and PID namespace, so a process with the same key can check `pid` + `pid_started`
    directly; others rely on `heartbeat_at`.
    """

    __tablename__ = "server_processes"

    host_key: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    pid_started: Mapped[int | None] = mapped_column(BigInteger, default=None)
    started_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)


class ServerSecret(DefaultBase):
    """Secrets the server generates for itself, shared by every worker and replica."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
