"""Helpers for identity tests: clients at chosen IPs, JWTs signed by test keys, a JWKS server."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bookchat.settings import Settings

ISSUER = "https://auth.book.example.org"
AUDIENCE = "https://book.example.org"
HS_SECRET = "test-hs256-secret-of-the-site-identity-provider-0123456789"


@dataclass
class AppAt:
    """One app; `client(ip)` talks to it as a reader at `ip` (the ASGI scope's peer)."""

    app: Litestar
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, ip: str = "198.51.100.10") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 40000))
        client = httpx.AsyncClient(transport=transport, base_url="http://book-api.test")
        self.clients.append(client)
        return client

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


@asynccontextmanager
async def app_at(settings: Settings, **runtime_parts: Any) -> AsyncIterator[AppAt]:
    """create_app(settings) with its lifespan running (AsyncTestClient fixes the peer IP)."""
    from bookchat.app import create_app
    from bookchat.runtime import Runtime

    runtime = Runtime.build(settings, **runtime_parts) if runtime_parts else None
    app = create_app(settings, runtime=runtime)
    at = AppAt(app)
    async with app.lifespan():
        try:
            yield at
        finally:
            for client in at.clients:
                await client.aclose()


async def count_rows(database_url: str, table: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
    finally:
        await engine.dispose()


async def scalar(database_url: str, sql: str, **params: Any) -> Any:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.scalar(text(sql), params)
    finally:
        await engine.dispose()


def claims(sub: str = "reader-1", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(sub: str = "reader-1", *, secret: str = HS_SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(sub, **overrides), secret, algorithm="HS256")


@dataclass
class SigningKey:
    """A private key the test made, its algorithm, and its public JWK."""

    algorithm: str
    private: Any
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def make(cls, algorithm: str) -> SigningKey:
        if algorithm == "RS256":
            return cls(algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if algorithm == "ES256":
            return cls(algorithm, ec.generate_private_key(ec.SECP256R1()))
        if algorithm == "EdDSA":
            return cls(algorithm, ed25519.Ed25519PrivateKey.generate())
        raise ValueError(algorithm)

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.algorithm == "RS256":
            data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        elif self.algorithm == "ES256":
            data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        else:
            data = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
        return {**data, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, sub: str = "reader-1", **overrides: Any) -> str:
        return jwt.encode(
            claims(sub, **overrides),
            self.private,
            algorithm=self.algorithm,
            headers={"kid": self.kid},
        )


class JwksServer:
    """Serves `{"keys": [...]}` on 127.0.0.1 and counts how often it was fetched."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": [k.jwk() for k in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/auth/jwks"

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
            thread.join()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
