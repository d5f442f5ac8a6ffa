"""Alembic environment: async engine, batch mode so SQLite and PostgreSQL migrate alike.

Run three ways, all the same: `bookchat migrate` and `litestar database upgrade` (through
advanced-alchemy's AlembicCommands, whose config carries an `engine`), and plain `alembic`
with the root alembic.ini (a URL from `sqlalchemy.url` or DATABASE_URL).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from advanced_alchemy.types import GUID
from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bookchat.db import models
from bookchat.settings import load_settings

config = context.config
if config.config_file_name and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = models.UUIDv7Base.metadata


def _database_url() -> str:
    # `bookchat migrate` passes the URL explicitly; plain `alembic` reads DATABASE_URL.
    # (advanced-alchemy's config carries `db_url`, for `litestar database upgrade --sql`.)
    return (
        getattr(config, "db_url", None)
        or config.get_main_option("sqlalchemy.url")
        or load_settings().database_url
    )


def _compare_type(
    context: object,
    inspected_column: object,
    metadata_column: object,
    inspected_type: object,
    metadata_type: object,
) -> bool | None:
    # SQLite reflects advanced-alchemy's GUID as NUMERIC(16): not a real change.
    if isinstance(metadata_type, GUID):
        return False
    return None  # default comparison for everything else


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=getattr(config, "version_table_name", "alembic_version"),
        compare_type=_compare_type,
        # ALTER on SQLite needs table rebuilds; batch mode is a no-op wrapper on PostgreSQL.
        render_as_batch=True,
        user_module_prefix="sa.",
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    # advanced-alchemy's command config brings the app's engine; plain alembic brings a URL.
    engine: AsyncEngine = getattr(config, "engine", None) or create_async_engine(
        _database_url(), poolclass=pool.NullPool
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
    # Also for a borrowed engine: its pooled connections belong to this event loop.
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
