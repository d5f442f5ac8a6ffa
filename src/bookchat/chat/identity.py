"""Who is asking: the bearer's user (a bookchat token, an API key or a signed-in reader's
JWT) or an anonymous reader, and the client IP.

Tokenless continuation (BRIEF §9, issue 13): the book's deployed widget never sends a
credential, only `session_id`. A session created without a token stores
`HMAC-SHA256(key, client IP)` (`chat_sessions.client_binding`, never the IP itself), and an
anonymous request from the same IP may continue it while it is active. The key is
SESSION_BINDING_SECRET, or one generated on first use and kept in the database table
`server_secrets` (so every worker and replica shares it). TOKENLESS_SESSIONS=false turns
it off.

"The client IP", for the binding and for the per-IP rate limits, is an IPv4 address or an
IPv6 /64 (`client_network`): an IPv6 host picks new addresses inside its /64 all the time
(privacy extensions, RFC 8981), so per address a reader would lose their tokenless
session on the next rotation, and anyone could dodge the anonymous limit by counting up
through 2^64 addresses.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any, Literal
from uuid import UUID

from litestar import Request
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from uuid_utils.compat import uuid7

from bookchat.chat.idp_tokens import (
    IdpTokenVerifier,
    IdpUnavailable,
    InvalidIdpToken,
    looks_like_jwt,
)
from bookchat.db.models import ServerSecret, User, utcnow
from bookchat.db.services import UserService, hash_token
from bookchat.errors import ApiError
from bookchat.settings import Settings

logger = logging.getLogger("bookchat.identity")

BINDING_SECRET_NAME = "session_binding_v1"

Tier = Literal["anonymous", "token", "api_key"]


# `last_seen_at` is kept to this resolution (one write per user per hour at most).
LAST_SEEN_RESOLUTION = timedelta(hours=1)


@dataclass(frozen=True)
class Identity:
    user: User | None
    tier: Tier
    client_ip: str
    # Stable, non-secret key for rate limiting: the token's hash, never the token.
    subject: str
    # A verified JWT of the site's identity provider (only then may sessions migrate).
    signed_in: bool = False
    # Anonymous requests with tokenless sessions on: HMAC of the client IP.
    client_binding: str | None = None


IPV6_PREFIX = 64  # one subscriber's network: its hosts choose addresses inside it


@functools.lru_cache(maxsize=4096)  # parsed for every chat, twice; readers keep their address
def client_network(client_ip: str) -> str:
    """What an anonymous reader is known by: its IPv4 address, or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip  # "unknown" (no peer address): as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class TrustedProxies:
    """Parses `TRUSTED_PROXIES` once; answers the client IP for a request."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client_ip(self, request: Request[Any, Any, Any]) -> str:
        """The peer address, or the right-most untrusted `X-Forwarded-For` hop behind proxies."""
        peer = request.client.host if request.client else "unknown"
        if not self.networks or not self._trusted(peer):
            return peer
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # garbage in the header: fall back to what we can see
        return hops[0] if hops else peer


def _insert_ignoring_conflict(db: AsyncSession, model: type[Any], **values: Any) -> Any:
    """INSERT … ON CONFLICT DO NOTHING, in the dialect of `db` (SQLite or PostgreSQL)."""
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    return insert(model).values(**values).on_conflict_do_nothing()


@dataclass
class IdentityResolver:
    settings: Settings
    engine: AsyncEngine | None = None  # for the generated binding key (own connection)
    _binding_key: bytes | None = None

    @cached_property
    def proxies(self) -> TrustedProxies:
        return TrustedProxies(self.settings.trusted_proxies)

    @cached_property
    def api_key_hashes(self) -> frozenset[str]:
        return frozenset(hash_token(key) for key in self.settings.api_keys)

    @cached_property
    def idp(self) -> IdpTokenVerifier | None:
        return IdpTokenVerifier(self.settings) if self.settings.jwt_enabled else None

    async def resolve(
        self, request: Request[Any, Any, Any], db: AsyncSession, *, require_user: bool = False
    ) -> Identity:
        """The caller. With `require_user` (history endpoints) a missing, unknown or invalid
        bearer is a 401; without it (chat) such a caller is anonymous, so a site's own
        sign-in token we cannot verify never logs the reader out of the site."""
        client_ip = self.proxies.client_ip(request)
        header = request.headers.get("authorization")
        if not header:
            if require_user:
                raise ApiError(401, "unauthorized", "a bearer token is required for this endpoint")
            return await self.anonymous(client_ip)
        try:
            return await self._from_bearer(header, client_ip, db)
        except ApiError:
            if require_user:
                raise
            return await self.anonymous(client_ip)

    async def anonymous(self, client_ip: str) -> Identity:
        binding = await self.binding(client_ip) if self.settings.tokenless_sessions else None
        return Identity(
            user=None,
            tier="anonymous",
            client_ip=client_ip,
            subject=f"ip:{client_network(client_ip)}",
            client_binding=binding,
        )

    async def binding(self, client_ip: str) -> str:
        """HMAC-SHA256 of the client IP (an IPv6 one's /64) under the server's binding key."""
        key = self._binding_key or await self._load_binding_key()
        network = client_network(client_ip)
        return hmac.digest(key, f"ip:{network}".encode(), "sha256").hex()  # one call into C

    async def _load_binding_key(self) -> bytes:
        if self.settings.session_binding_secret:
            self._binding_key = self.settings.session_binding_secret.encode()
            return self._binding_key
        assert self.engine is not None, "IdentityResolver needs the engine for its key"
        # Insert-if-absent then read: concurrent first requests (any worker, any replica)
        # all end up with the one key that won.
        async with AsyncSession(self.engine) as db:
            await db.execute(
                _insert_ignoring_conflict(
                    db,
                    ServerSecret,
                    name=BINDING_SECRET_NAME,
                    value=secrets.token_urlsafe(48),
                    created_at=utcnow(),
                )
            )
            await db.commit()
            value = await db.scalar(
                select(ServerSecret.value).where(ServerSecret.name == BINDING_SECRET_NAME)
            )
        assert value is not None
        self._binding_key = value.encode()
        return self._binding_key

    async def _from_bearer(self, header: str, client_ip: str, db: AsyncSession) -> Identity:
        """A bookchat token, an API key or a provider JWT; ApiError(401) for anything else."""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 4096:
            raise ApiError(401, "unauthorized", "expected 'Authorization: Bearer <token>'")
        if self.idp is not None and looks_like_jwt(token):
            return await self._from_jwt(token, client_ip, db)
        if len(token) > 512:
            raise ApiError(401, "unauthorized", "expected 'Authorization: Bearer <token>'")
        token_hash = hash_token(token)
        users = UserService(session=db)
        user = await users.get_one_or_none(token_hash=token_hash)
        if user is None and any(hmac.compare_digest(token_hash, h) for h in self.api_key_hashes):
            # A configured API key gets a user row of its own on first use.
            user = await users.create(User(token_hash=token_hash, tier="api_key"))
        if user is None:
            raise ApiError(401, "unauthorized", "unknown or revoked token")
        now = utcnow()
        if now - user.last_seen_at >= LAST_SEEN_RESOLUTION:
            # Throttled: refreshing it on every request made every GET a write.
            user.last_seen_at = now
        tier: Tier = "api_key" if user.tier == "api_key" else "token"
        return Identity(
            user=user, tier=tier, client_ip=client_ip, subject=f"user:{token_hash[:32]}"
        )

    async def _from_jwt(self, token: str, client_ip: str, db: AsyncSession) -> Identity:
        assert self.idp is not None
        try:
            claims = await self.idp.verify(token)
        except InvalidIdpToken as exc:
            logger.info("sign-in token rejected", extra={"reason": str(exc)})
            raise ApiError(401, "unauthorized", "invalid or expired sign-in token") from exc
        except IdpUnavailable as exc:
            raise IdentityUnavailable(str(exc)) from exc
        user = await self._idp_user(claims.subject, db)
        user.last_seen_at = utcnow()
        return Identity(
            user=user,
            tier="token",
            client_ip=client_ip,
            subject=f"user:{user.id.hex}",
            signed_in=True,
        )

    async def _idp_user(self, subject: str, db: AsyncSession) -> User:
        """The user keyed by the JWT's `sub`, created on first sign-in (race-safe)."""
        users = UserService(session=db)
        user = await users.get_one_or_none(idp_subject=subject)
        if user is not None:
            return user
        new_id: UUID = uuid7()
        await db.execute(
            _insert_ignoring_conflict(
                db,
                User,
                id=new_id,
                idp_subject=subject,
                token_hash=None,
                tier="token",
                created_at=utcnow(),
                last_seen_at=utcnow(),
            )
        )
        user = await users.get_one_or_none(idp_subject=subject)
        assert user is not None
        return user


class IdentityUnavailable(ApiError):
    """The identity provider cannot be asked right now: anonymous on chat, 503 elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "service_unavailable", message)
