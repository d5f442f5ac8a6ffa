"""Database migrations: `alembic upgrade` against a URL, from code (the CLI, tests, tools)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["find_alembic_ini", "run_migrations"]


def find_alembic_ini() -> Path:
    """alembic.ini in the working directory, else the one beside the source tree."""
    for candidate in (
        Path.cwd() / "alembic.ini",
        Path(__file__).resolve().parents[3] / "alembic.ini",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "alembic.ini not found: run from the project directory (or the container's /app)"
    )


def run_migrations(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade <revision>` against `database_url`."""
    from alembic import command
    from alembic.config import Config

    # Imported here: advanced-alchemy costs 0.6 s, and the CLI imports this module.
    from bookchat.db.config import ensure_sqlite_directory

    ensure_sqlite_directory(database_url)
    config = Config(str(find_alembic_ini()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    command.upgrade(config, revision)
