"""Who is asking: the bearer token's user (or an API key's), and the client IP."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from litestar import Request
from sqlalchemy.ext.asyncio import AsyncSession

from bookchat.db.models import User, utcnow
from bookchat.db.services import UserService, hash_token
from bookchat.errors import ApiError
from bookchat.settings import Settings

Tier = Literal["anonymous", "token", "api_key"]


@dataclass(frozen=True)
class Identity:
    user: User | None
    tier: Tier
    client_ip: str
    # Stable, non-secret key for rate limiting: the token's hash, never the token.
    subject: str


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


@dataclass
class IdentityResolver:
    settings: Settings

    @cached_property
    def proxies(self) -> TrustedProxies:
        return TrustedProxies(self.settings.trusted_proxies)

    @cached_property
    def api_key_hashes(self) -> frozenset[str]:
        return frozenset(hash_token(key) for key in self.settings.api_keys)

    async def resolve(self, request: Request[Any, Any, Any], db: AsyncSession) -> Identity:
        """Anonymous without a token; 401 for a token we do not know."""
        client_ip = self.proxies.client_ip(request)
        header = request.headers.get("authorization")
        if not header:
            return Identity(
                user=None, tier="anonymous", client_ip=client_ip, subject=f"ip:{client_ip}"
            )
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            raise ApiError(401, "unauthorized", "expected 'Authorization: Bearer <token>'")
        token_hash = hash_token(token)
        users = UserService(session=db)
        user = await users.get_one_or_none(token_hash=token_hash)
        if user is None and any(hmac.compare_digest(token_hash, h) for h in self.api_key_hashes):
            # A configured API key gets a user row of its own on first use.
            user = await users.create(User(token_hash=token_hash, tier="api_key"))
        if user is None:
            raise ApiError(401, "unauthorized", "unknown or revoked token")
        user.last_seen_at = utcnow()
        tier: Tier = "api_key" if user.tier == "api_key" else "token"
        return Identity(
            user=user, tier=tier, client_ip=client_ip, subject=f"user:{token_hash[:32]}"
        )
