"""Database migrations, shipped inside the package (`bookchat/db/migrations`).

`bookchat migrate`, `litestar --app bookchat.app:create_app database upgrade` (the
advanced-alchemy plugin's CLI) and plain `alembic upgrade head` (the root alembic.ini, for
developers) all run the same scripts, through the same env.py, into the same
`alembic_version` table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advanced_alchemy.alembic.commands import AlembicCommands

__all__ = ["migration_commands", "run_migrations"]


def migration_commands(database_url: str) -> AlembicCommands:
    """advanced-alchemy's Alembic commands against `database_url`: the code path behind
    `litestar database …`, with a throwaway engine (no pool to outlive the command)."""
    # Imported here: advanced-alchemy costs 0.6 s, and the CLI imports this module.
    from advanced_alchemy.alembic.commands import AlembicCommands
    from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from bookchat.db.config import ensure_sqlite_directory, make_alembic_config

    ensure_sqlite_directory(database_url)
    config = SQLAlchemyAsyncConfig(
        engine_instance=create_async_engine(database_url, poolclass=NullPool),
        alembic_config=make_alembic_config(),
    )
    return AlembicCommands(config)


def run_migrations(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade <revision>` against `database_url`."""
    migration_commands(database_url).upgrade(revision)
