"""Migrations ship inside the package; `bookchat migrate`, `litestar database upgrade` and
the root alembic.ini all drive the same scripts into the same `alembic_version` table."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bookchat.db.models import UUIDv7Base

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Every table the models declare, plus Alembic's own.
TABLES = {*UUIDv7Base.metadata.tables, "alembic_version"}


def _head() -> str:
    from alembic.script import ScriptDirectory

    from bookchat.db.config import MIGRATIONS_DIR

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head() or ""


def _run(args: list[str], cwd: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "QDRANT"))}
    env |= {"DATABASE_URL": database_url, "QDRANT_PATH": str(cwd / "qdrant")}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


async def _aschema(database_url: str) -> tuple[set[str], list[str]]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            versions = (
                await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalars()
            return tables, list(versions)
    finally:
        await engine.dispose()


def _schema(database_url: str) -> tuple[set[str], list[str]]:
    """The tables and the recorded revisions (run outside any event loop, like the CLI)."""
    return asyncio.run(_aschema(database_url))


LITESTAR = [str(BIN / "litestar"), "--app", "bookchat.app:create_app"]
LITESTAR_UPGRADE = [
    str(BIN / "litestar"),
    "--app",
    "bookchat.app:create_app",
    "database",
    "upgrade",
    "--no-prompt",
]


def test_litestar_database_upgrade_migrates_an_empty_database(
    database_url: str, tmp_path: Path
) -> None:
    # From a directory without alembic.ini: the plugin finds the migrations in the package.
    _run(LITESTAR_UPGRADE, tmp_path, database_url)
    assert _schema(database_url) == (TABLES, [_head()])
    # The models and the migrated schema agree, and `bookchat migrate` sees nothing to do.
    from bookchat.db.migrate import migration_commands

    migration_commands(database_url).check()
    # Same version table both ways: `bookchat migrate` after the plugin's upgrade finds the
    # database at head (with the plugin's default `alembic_versions` table it would try to
    # create every table again and fail), and the plugin reads the revision back.
    out = _run([str(BIN / "bookchat"), "migrate"], tmp_path, database_url)
    assert "Running upgrade" not in out.stdout + out.stderr
    assert _schema(database_url) == (TABLES, [_head()])
    current = _run([*LITESTAR, "database", "show-current-revision"], tmp_path, database_url)
    assert _head() in current.stdout + current.stderr


def test_root_alembic_ini_still_works_for_developers(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}"
    _run([str(BIN / "alembic"), "-c", str(ROOT / "alembic.ini"), "upgrade", "head"], ROOT, url)
    assert _schema(url) == (TABLES, [_head()])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # hatchling is the build backend (a dev dependency): an offline build, no isolation.
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("bookchat-*.whl")
    return built


def test_the_wheel_carries_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = ROOT / "src" / "bookchat" / "db" / "migrations"
    expected = {
        "bookchat/" + p.relative_to(ROOT / "src" / "bookchat").as_posix()
        for p in migrations.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {
        "bookchat/db/migrations/env.py",
        "bookchat/db/migrations/script.py.mako",
    } <= expected
    assert any(n.startswith("bookchat/db/migrations/versions/") for n in expected)
    assert expected <= names, sorted(expected - names)


def test_migrations_run_from_the_unpacked_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    # What a pip-installed bookchat (e.g. the container) has: the wheel, no source tree.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    url = f"sqlite+aiosqlite:///{work / 'w.db'}"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bookchat; "
        "assert bookchat.__file__.startswith(sys.argv[1]), bookchat.__file__; "
        "from bookchat.db.migrate import run_migrations; run_migrations(sys.argv[2])"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-c", script, str(site), url], cwd=work, env=env, check=True, timeout=120
    )
    assert _schema(url) == (TABLES, [_head()])
