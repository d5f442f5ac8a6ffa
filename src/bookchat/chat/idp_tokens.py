"""Signed-in readers: verify the JWT the book site's identity provider issued (PyJWT).

Keys come from the provider's JWKS (`AUTH_JWKS_URL`: RS256, ES256, EdDSA; PyJWKClient
caches the set for `AUTH_JWKS_CACHE_SECONDS` and refetches once when a token names an
unknown `kid`, i.e. after a key rotation) or a shared HS256 secret (`AUTH_JWT_SECRET`, as
Supabase and Better-Auth's JWT plugin issue). `exp` and `sub` are required; `iss` and
`aud` are checked when configured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anyio.to_thread
import jwt
from jwt import PyJWKClient

from bookchat.settings import Settings

logger = logging.getLogger("bookchat.identity")

JWKS_ALGORITHMS = ("RS256", "ES256", "EdDSA")
JWKS_TIMEOUT = 3.0  # seconds; PyJWKClient's default (30 s) would hold a request that long
# After a failed JWKS fetch, skip fetching for this long: a hanging provider must not
# make every signed-in request wait JWKS_TIMEOUT (PyJWKClient fetches under one lock).
OUTAGE_BACKOFF = 30.0
LEEWAY = 30  # seconds of clock skew allowed on exp/nbf/iat
# An unknown `kid` refetches the key set at most this often (PyJWKClient's cooldown): a
# rotation is picked up, a flood of made-up kids cannot hammer the provider.
KID_REFRESH_COOLDOWN = 30.0


class InvalidIdpToken(Exception):
    """The bearer is not a valid JWT of the configured provider (the reason, no secrets)."""


class IdpUnavailable(Exception):
    """The provider's JWKS could not be fetched, so the JWT cannot be checked right now."""


@dataclass(frozen=True)
class IdpClaims:
    subject: str


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: a JWS compact serialisation (bookchat tokens have no dot)."""
    return token.count(".") == 2 and token.startswith("eyJ")


class IdpTokenVerifier:
    """Verifies a provider JWT; one per process (it holds the JWKS cache)."""

    def __init__(self, settings: Settings) -> None:
        self.jwks_url = settings.auth_jwks_url
        self.secret = settings.auth_jwt_secret
        self.issuer = settings.auth_jwt_issuer
        self.audience = settings.auth_jwt_audience
        self.jwks = (
            PyJWKClient(
                settings.auth_jwks_url,
                cache_jwk_set=True,
                lifespan=settings.auth_jwks_cache_seconds,
                timeout=JWKS_TIMEOUT,
                cooldown_duration=KID_REFRESH_COOLDOWN,
            )
            if settings.auth_jwks_url
            else None
        )
        self._jwks_down_until = 0.0

    async def verify(self, token: str) -> IdpClaims:
        """The verified claims; raises InvalidIdpToken or IdpUnavailable."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidIdpToken("not a JWT") from exc
        algorithm = header.get("alg")
        key: jwt.PyJWK | str
        if algorithm == "HS256" and self.secret:
            key = self.secret
        elif algorithm in JWKS_ALGORITHMS and self.jwks is not None:
            key = await self._signing_key(token)
        else:
            raise InvalidIdpToken(f"algorithm {algorithm!r} is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                # A JWKS key verifies only its own algorithm; the secret only HS256.
                algorithms=["HS256"] if isinstance(key, str) else list(JWKS_ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise InvalidIdpToken(type(exc).__name__) from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise InvalidIdpToken("sub must be a string of 1-255 characters")
        return IdpClaims(subject=subject)

    async def _signing_key(self, token: str) -> jwt.PyJWK:
        assert self.jwks is not None
        if time.monotonic() < self._jwks_down_until and not self._has_cached_keys():
            raise IdpUnavailable("the identity provider's JWKS is unreachable")
        try:
            # PyJWKClient fetches with urllib (blocking): off the event loop.
            return await anyio.to_thread.run_sync(self.jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            self._jwks_down_until = time.monotonic() + OUTAGE_BACKOFF
            logger.warning(
                "identity provider JWKS unreachable at AUTH_JWKS_URL %s: signed-in readers "
                "are treated as anonymous on chat until it answers (next try in %d s)",
                self.jwks_url,
                OUTAGE_BACKOFF,
                extra={"error": type(exc).__name__},
            )
            raise IdpUnavailable("the identity provider's JWKS is unreachable") from exc
        except jwt.PyJWTError as exc:  # unknown kid after a refresh, unusable key set
            raise InvalidIdpToken(type(exc).__name__) from exc

    def _has_cached_keys(self) -> bool:
        cache = self.jwks.jwk_set_cache if self.jwks is not None else None
        return cache is not None and cache.get() is not None
