"""`bookchat serve | migrate | ingest | archive | up | eval | bench`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bookchat.settings import Settings, SettingsError, load_settings


def _fail(message: str, code: int = 2) -> None:
    print(f"bookchat: {message}", file=sys.stderr)
    raise SystemExit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _fail(f"configuration error: {exc}")
        raise  # unreachable; keeps type checkers calm


def find_alembic_ini() -> Path:
    """alembic.ini in the working directory, else the one beside the source tree."""
    for candidate in (Path.cwd() / "alembic.ini", Path(__file__).resolve().parents[2] / "alembic.ini"):
        if candidate.is_file():
            return candidate
    _fail("alembic.ini not found: run from the project directory (or the container's /app)")
    raise AssertionError


def run_migrations(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade <revision>` against `database_url`."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(find_alembic_ini()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    command.upgrade(config, revision)


def cmd_migrate(args: argparse.Namespace) -> None:
    settings = _settings()
    try:
        run_migrations(settings.database_url, args.revision)
    except Exception as exc:  # one clear line instead of a driver traceback
        _fail(f"migration failed: {type(exc).__name__}: {exc}", 1)
    print(f"bookchat: database at revision {args.revision}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    for name in ("host", "port", "workers"):
        value = getattr(args, name)
        if value is not None:
            os.environ[name.upper()] = str(value)
    settings = _settings()  # validate in the parent: a bad value is one line, not N tracebacks
    Granian(
        "bookchat.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        workers=settings.workers,
        interface=Interfaces.ASGI,
        log_access=False,
        # Granian stops accepting and drains in-flight requests on SIGTERM/SIGINT.
        workers_kill_timeout=30,
    ).serve()


def cmd_archive(args: argparse.Namespace) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bookchat.db.config import create_engine
    from bookchat.db.services import ChatSessionService

    settings = _settings()

    async def archive() -> int:
        engine = create_engine(settings)
        maker = async_sessionmaker(engine, expire_on_commit=False)
        try:
            async with maker() as session, session.begin():
                return await ChatSessionService(session=session).archive_idle(args.idle_days)
        finally:
            await engine.dispose()

    count = asyncio.run(archive())
    print(f"bookchat: archived {count} session(s) idle for more than {args.idle_days} days")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bookchat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API on granian")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations (alembic upgrade)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)

    archive = sub.add_parser("archive", help="soft-delete sessions idle for N days")
    archive.add_argument("--idle-days", type=int, default=30)
    archive.set_defaults(func=cmd_archive)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Commands that live with their feature (ingest, eval, bench) register themselves here.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
