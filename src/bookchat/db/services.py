"""Repositories and services for users, chat sessions and messages.

Every read of user data is scoped by its owner: a foreign id is simply "not found".
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import ColumnElement, func, select, update
from uuid_utils.compat import uuid7

from bookchat.db.models import ChatSession, Message, User

TOKEN_PREFIX = "bc_"


def hash_token(token: str) -> str:
    """Tokens are random (256 bits), so a plain SHA-256 is enough; no salt or KDF needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def session_title(message: str, limit: int = 100) -> str:
    """The first message, cut at a word boundary to at most `limit` characters."""
    text = " ".join(message.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,.;:-") + "…"


class UserService(SQLAlchemyAsyncRepositoryService[User]):
    class Repo(SQLAlchemyAsyncRepository[User]):
        model_type = User

    repository_type = Repo


def new_user_with_token(tier: str = "token") -> tuple[User, str]:
    """A new (unsaved) user and its token; the token is shown once and stored only hashed."""
    token = new_token()
    return User(id=uuid7(), token_hash=hash_token(token), tier=tier), token


class ChatSessionService(SQLAlchemyAsyncRepositoryService[ChatSession]):
    class Repo(SQLAlchemyAsyncRepository[ChatSession]):
        model_type = ChatSession

    repository_type = Repo

    async def get_owned(self, session_id: UUID, user_id: UUID) -> ChatSession | None:
        """The active session if it belongs to `user_id`, else None."""
        return await self.get_one_or_none(id=session_id, user_id=user_id, status="active")

    async def get_bound(self, session_id: UUID, client_binding: str) -> ChatSession | None:
        """The active session if it was created tokenless from the client of `client_binding`."""
        return await self.get_one_or_none(
            id=session_id, client_binding=client_binding, status="active"
        )

    async def list_for_user(
        self, user_id: UUID, *, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Active sessions, newest activity first, with their message counts, and the total."""
        # Correlated: counts only the listed sessions' messages through their index (a
        # grouped subquery aggregated the whole `messages` table on every call).
        count = (
            select(func.count(Message.id))
            .where(Message.session_id == ChatSession.id)
            .correlate(ChatSession)
            .scalar_subquery()
        )
        owned = (ChatSession.user_id == user_id) & (ChatSession.status == "active")
        rows = await self.repository.session.execute(
            select(ChatSession, count)
            .where(owned)
            .order_by(ChatSession.last_activity.desc(), ChatSession.id.desc())
            .limit(limit)
            .offset(offset)
        )
        total = await self.repository.session.scalar(select(func.count()).where(owned))
        sessions = [
            {
                "id": chat.id,
                "title": chat.title,
                "message_count": int(count),
                "last_activity": chat.last_activity,
                "created_at": chat.created_at,
            }
            for chat, count in rows.all()
        ]
        return sessions, int(total or 0)

    async def migrate_guest_sessions(
        self, to_user_id: UUID, *, guest_token_hash: str | None, client_binding: str | None
    ) -> int:
        """Move a guest's sessions to a signed-in user; returns how many moved.

        The guest is the anonymous token holder of `guest_token_hash` (all its sessions),
        or else the tokenless sessions bound to `client_binding` (active ones). Only
        anonymous guests' sessions ever move (never an API key's or a signed-in user's).
        Moved sessions become token-only (their binding is cleared). A second call moves
        nothing: the sessions are no longer the guest's.
        """
        guests = select(User.id).where(
            User.idp_subject.is_(None), User.tier == "token", User.id != to_user_id
        )
        which: ColumnElement[bool]
        if guest_token_hash is not None:
            which = ChatSession.user_id.in_(guests.where(User.token_hash == guest_token_hash))
        elif client_binding is not None:
            which = (
                (ChatSession.client_binding == client_binding)
                & (ChatSession.status == "active")
                & ChatSession.user_id.in_(guests)
            )
        else:
            return 0
        result = await self.repository.session.execute(
            update(ChatSession)
            .where(which)
            .values(user_id=to_user_id, client_binding=None)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)

    async def archive_idle(self, idle_days: int, *, now: datetime | None = None) -> int:
        """Soft-delete active sessions with no activity for `idle_days`; returns how many."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=idle_days)
        result = await self.repository.session.execute(
            update(ChatSession)
            .where(ChatSession.status == "active", ChatSession.last_activity < cutoff)
            .values(status="archived")
        )
        return int(result.rowcount or 0)


class MessageService(SQLAlchemyAsyncRepositoryService[Message]):
    class Repo(SQLAlchemyAsyncRepository[Message]):
        model_type = Message

    repository_type = Repo

    async def list_for_session(self, session_id: UUID) -> list[Message]:
        """Messages in chronological order (UUIDv7 ids break timestamp ties)."""
        rows = await self.repository.session.scalars(
            select(Message)
            .where(Message.session_id == session_id)
            .order_by(Message.created_at, Message.id)
        )
        return list(rows)

    async def recent_history(self, session_id: UUID, limit: int) -> list[Message]:
        """The last `limit` usable messages, oldest first (prompt history): no failed
        answers, and none still streaming (a concurrent question's)."""
        rows = await self.repository.session.scalars(
            select(Message)
            .where(
                Message.session_id == session_id,
                Message.status.not_in(("failed", "streaming")),
            )
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(limit)
        )
        return list(reversed(list(rows)))

    async def get_owned(self, message_id: UUID, user_id: UUID) -> Message | None:
        """The message if its session belongs to `user_id` and is active, else None."""
        return await self.repository.session.scalar(
            select(Message)
            .join(ChatSession, ChatSession.id == Message.session_id)
            .where(
                Message.id == message_id,
                ChatSession.user_id == user_id,
                ChatSession.status == "active",
            )
        )

    async def get_bound(self, message_id: UUID, client_binding: str) -> Message | None:
        """The message if its active session was created tokenless from that client."""
        return await self.repository.session.scalar(
            select(Message)
            .join(ChatSession, ChatSession.id == Message.session_id)
            .where(
                Message.id == message_id,
                ChatSession.client_binding == client_binding,
                ChatSession.status == "active",
            )
        )
