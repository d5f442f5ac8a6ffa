"""One frozen settings object, read from the environment (and an optional `.env`)."""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import msgspec
from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SAMPLE_BOOK = Path(__file__).parent / "sample_book" / "docs"


Provider = Literal["gemini", "openai"]
# "local": a sentence-transformers model on disk (bookchat.llm.local), no provider at all.
EmbeddingProvider = Literal["gemini", "openai", "local"]
GEMINI_FALLBACK_MODEL = "gemini-2.5-flash-lite"
GEMINI_EMBEDDING_MODEL = "gemini-embedding-001"
# Where `bookchat fetch-model` puts all-MiniLM-L6-v2 (EMBEDDING_PROVIDER=local's default).
LOCAL_EMBEDDING_MODEL_DIR = "./var/models/all-MiniLM-L6-v2"


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every knob of the service. Field `foo_bar` is read from the variable `FOO_BAR`."""

    database_url: str = "sqlite+aiosqlite:///./var/bookchat.db"
    database_pool_size: int = 10
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_collection: str = "bookchat"
    qdrant_path: str = "./var/qdrant"
    qdrant_prefer_grpc: bool = False
    qdrant_grpc_port: int = 6334
    gemini_api_key: str | None = None
    # Only for tests and the benchmark: point google-genai at a fake Gemini server.
    gemini_base_url: str | None = None
    chat_model: str = "gemini-2.5-flash"
    fallback_model: str | None = GEMINI_FALLBACK_MODEL
    llm_provider: Provider = "gemini"
    # Unset: the same provider as the main model. The Gemini default FALLBACK_MODEL only
    # applies to Gemini: an OpenAI-compatible fallback needs FALLBACK_MODEL set.
    fallback_provider: Provider | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    # An OpenAI-compatible fallback may live elsewhere; unset: OPENAI_API_KEY/BASE_URL.
    fallback_api_key: str | None = None
    fallback_base_url: str | None = None
    embedding_provider: EmbeddingProvider = "gemini"
    embedding_model: str = GEMINI_EMBEDDING_MODEL
    embedding_dim: int = 768
    embedding_cache_ttl: int = 86_400
    first_token_timeout: float = 20.0
    total_timeout: float = 120.0
    book_title: str = "this book"
    site_url: str = "http://localhost:3000"
    # Docusaurus trailingSlash for citation URLs; "auto" reads the book's docusaurus.config.
    trailing_slash: Literal["auto", "true", "false", "keep"] = "auto"
    docs_path: str = str(SAMPLE_BOOK)
    cors_origins: tuple[str, ...] = ()
    redis_url: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    # The book's existing widget never sends a token: let a session created without one be
    # continued from the same client IP (see chat/identity.py and docs/SECURITY.md).
    tokenless_sessions: bool = True
    # Key of the HMAC that binds a tokenless session to its client IP; when unset, one is
    # generated once and kept in the database (table `server_secrets`), shared by replicas.
    session_binding_secret: str | None = None
    # Signed-in readers: a JWT from the site's identity provider, verified with its JWKS
    # (RS256/ES256/EdDSA) or a shared HS256 secret; issuer and audience checked when set.
    auth_jwks_url: str | None = None
    auth_jwt_secret: str | None = None
    auth_jwt_issuer: str | None = None
    auth_jwt_audience: str | None = None
    auth_jwks_cache_seconds: int = 300
    rate_limit_anonymous: int = 10
    rate_limit_token: int = 20
    rate_limit_ip: int = 60
    rate_limit_api_key: int = 100
    rate_limit_window: int = 60
    history_messages: int = 10
    max_body_bytes: int = 131_072
    sse_ping_interval: float = 15.0
    # A client that reads nothing for this long is gone: its answer ends `interrupted`.
    sse_write_timeout: float = 30.0
    # A reader that drops mid-answer may resume within this many seconds (Last-Event-ID);
    # then the answer is stopped and saved `interrupted`. 0: stop at once.
    resume_grace_seconds: float = 10.0
    # Seconds to send the request headers (and an idle keep-alive connection's next ones).
    http_header_timeout: float = 10.0
    # Seconds to send a request body; granian has none of its own.
    http_body_timeout: float = 15.0
    health_timeout: float = 2.0
    # How often a serving process proves it is alive; 3 missed beats and another process
    # marks its unfinished answers `interrupted`.
    stream_heartbeat_interval: float = 10.0
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # granian's event loop. "asyncio" by default, even where uvloop is installed: with
    # uvloop, a SIGTERM right after a worker starts can be lost (the worker is then killed
    # only after 30 s); "uvloop" is cheaper per chat (README, "Measured").
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _check_database_url(self.database_url)
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(
                    f"TRUSTED_PROXIES: {proxy!r} is not an IP address or CIDR network"
                ) from None
        positive = {
            "EMBEDDING_DIM": self.embedding_dim,
            "EMBEDDING_CACHE_TTL": self.embedding_cache_ttl,
            "QDRANT_GRPC_PORT": self.qdrant_grpc_port,
            "PORT": self.port,
            "WORKERS": self.workers,
            "RATE_LIMIT_ANONYMOUS": self.rate_limit_anonymous,
            "RATE_LIMIT_TOKEN": self.rate_limit_token,
            "RATE_LIMIT_IP": self.rate_limit_ip,
            "RATE_LIMIT_API_KEY": self.rate_limit_api_key,
            "RATE_LIMIT_WINDOW": self.rate_limit_window,
            "MAX_BODY_BYTES": self.max_body_bytes,
            "DATABASE_POOL_SIZE": self.database_pool_size,
            "AUTH_JWKS_CACHE_SECONDS": self.auth_jwks_cache_seconds,
        }
        for name, value in positive.items():
            if value <= 0:
                raise SettingsError(f"{name}: must be a positive number, got {value}")
        durations = {
            "STREAM_HEARTBEAT_INTERVAL": self.stream_heartbeat_interval,
            "SSE_WRITE_TIMEOUT": self.sse_write_timeout,
            "HTTP_HEADER_TIMEOUT": self.http_header_timeout,
            "HTTP_BODY_TIMEOUT": self.http_body_timeout,
        }
        for name, seconds in durations.items():
            if seconds <= 0:
                raise SettingsError(f"{name}: must be a positive number, got {seconds}")
        if self.resume_grace_seconds < 0:
            raise SettingsError(
                f"RESUME_GRACE_SECONDS: must be 0 or more, got {self.resume_grace_seconds}"
            )
        if self.port > 65535:
            raise SettingsError(f"PORT: must be at most 65535, got {self.port}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise SettingsError(
                "LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                f"got {self.log_level!r}"
            )
        if self.embedding_provider == "openai" and self.embedding_model == GEMINI_EMBEDDING_MODEL:
            raise SettingsError(
                "EMBEDDING_MODEL: EMBEDDING_PROVIDER=openai needs the name of an "
                "OpenAI-compatible embedding model (e.g. text-embedding-3-small, "
                "nomic-embed-text) and its EMBEDDING_DIM"
            )
        if not self.site_url.startswith(("http://", "https://")):
            raise SettingsError(f"SITE_URL: expected an http(s) URL, got {self.site_url!r}")
        if self.auth_jwks_url and not self.auth_jwks_url.startswith(("http://", "https://")):
            raise SettingsError(
                f"AUTH_JWKS_URL: expected an http(s) URL, got {self.auth_jwks_url!r}"
            )
        if self.session_binding_secret is not None and len(self.session_binding_secret) < 32:
            raise SettingsError("SESSION_BINDING_SECRET: use at least 32 random characters")
        if self.auth_jwt_secret is not None and len(self.auth_jwt_secret) < 32:
            # RFC 7518 §3.2: an HS256 key must be at least 256 bits.
            raise SettingsError("AUTH_JWT_SECRET: an HS256 secret needs at least 32 bytes")

    @property
    def jwt_enabled(self) -> bool:
        """Signed-in readers' JWTs are accepted (a JWKS URL or an HS256 secret is set)."""
        return bool(self.auth_jwks_url or self.auth_jwt_secret)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def provider_configured(self, provider: EmbeddingProvider) -> bool:
        """Gemini needs a key; an OpenAI-compatible server a key or a base URL (local ones);
        a local model only itself (a missing one is a startup error, not BM25 only)."""
        if provider == "gemini":
            return bool(self.gemini_api_key)
        if provider == "local":
            return True
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def local_model_dir(self) -> str:
        """EMBEDDING_PROVIDER=local: the model directory (EMBEDDING_MODEL, or the default)."""
        if self.embedding_model == GEMINI_EMBEDDING_MODEL:
            return LOCAL_EMBEDDING_MODEL_DIR
        return self.embedding_model

    @property
    def llm_offline(self) -> bool:
        """The answer provider is not configured: the extractive answerer answers."""
        return not self.provider_configured(self.llm_provider)

    @property
    def embeddings_offline(self) -> bool:
        """The embedding provider is not configured: BM25-only retrieval and ingestion."""
        return not self.provider_configured(self.embedding_provider)

    @property
    def offline(self) -> bool:
        """Neither answers nor embeddings have a provider: fully offline mode."""
        return self.llm_offline and self.embeddings_offline

    @property
    def main_model(self) -> str:
        """The answer model of LLM_PROVIDER (CHAT_MODEL for Gemini, OPENAI_MODEL otherwise)."""
        return self.chat_model if self.llm_provider == "gemini" else self.openai_model

    @property
    def fallback(self) -> tuple[Provider, str] | None:
        """(provider, model) tried when the main model keeps failing, or None."""
        provider = self.fallback_provider or self.llm_provider
        model = self.fallback_model
        if not model or (provider == "openai" and model == GEMINI_FALLBACK_MODEL):
            return None  # the Gemini default model is no OpenAI-compatible server's
        return provider, model

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        return msgspec.structs.replace(self, **changes)


def _check_database_url(url: str) -> None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingsError(
            f"DATABASE_URL: {url!r} is not a database URL; expected e.g. "
            "sqlite+aiosqlite:///./var/bookchat.db or postgresql+asyncpg://user:pass@host/db"
        ) from None
    if parsed.drivername not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
        raise SettingsError(
            f"DATABASE_URL: driver {parsed.drivername!r} is not supported; "
            "use sqlite+aiosqlite:// or postgresql+asyncpg://"
        )


def normalise_database_url(url: str) -> str:
    """Accept the common `postgres://` / `postgresql://` / `sqlite://` forms too."""
    for prefix, replacement in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(prefix):
            return replacement + url[len(prefix) :]
    return url


_LIST_FIELDS = {"cors_origins", "trusted_proxies", "api_keys"}


def load_settings(environ: dict[str, str] | None = None, env_file: str | None = ".env") -> Settings:
    """Read settings from `environ` (default: os.environ over an optional .env file)."""
    values: dict[str, str] = {}
    if environ is None:
        if env_file and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ)
    else:
        values.update(environ)
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        value = values.get(field.name.upper())
        if value is None:
            continue
        value = value.strip()
        if field.name in _LIST_FIELDS:
            raw[field.name] = [item.strip() for item in value.split(",") if item.strip()]
        elif value == "" and field.default is None:
            raw[field.name] = None
        elif field.name == "database_url":
            raw[field.name] = normalise_database_url(value)
        else:
            raw[field.name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc, raw)) from None


_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false"}


def _describe(exc: msgspec.ValidationError, raw: dict[str, Any]) -> str:
    message = str(exc)
    # msgspec says "Expected `int`, got `str` - at `$.port`": name the variable and show the
    # value it got instead ("PORT: expected an integer, got 'abc'").
    if " - at `$." not in message:
        return message
    text, _, path = message.rpartition(" - at `$.")
    field = path.rstrip("`").split("[")[0]
    wrong_type = re.fullmatch(r"Expected `(\w+)`, got `\w+`", text)
    if wrong_type:
        text = "expected " + _EXPECTED.get(wrong_type.group(1), wrong_type.group(1))
    else:
        text = text[:1].lower() + text[1:].replace("`", "")
    if field in raw:
        text += f", got {raw[field]!r}"
    return f"{field.upper()}: {text}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
