"""Engine and session configuration for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast
from uuid import UUID

import aiosqlite
import msgspec
from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
)
from advanced_alchemy.types import GUID, DateTimeUTC
from litestar.types import Message, Scope
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from bookchat.db.models import UUIDv7Base
from bookchat.settings import Settings

# The migrations ship inside the package; the version table is Alembic's usual name (the
# plugin's own default, `alembic_versions`, would not see databases migrated so far).
MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
VERSION_TABLE = "alembic_version"


def ensure_sqlite_directory(database_url: str) -> None:
    """SQLite creates the file but not its folder (a fresh clone has no ./var)."""
    url = make_url(database_url)
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


class DatabaseFileWatch:
    """Notices a SQLite file deleted or replaced under a running server.

    An open SQLite connection keeps writing into a deleted file (its inode lives on), so
    `rm -rf var/` would silently lose every later chat. `check()` is one `os.stat`.
    """

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        name = url.database
        is_file = url.drivername.startswith("sqlite") and name and name != ":memory:"
        self.path = Path(name).absolute() if is_file and name else None
        self._seen: tuple[int, int] | None = None

    def _identity(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def check(self) -> Literal["ok", "missing", "replaced"]:
        """`ok` (the first file seen is remembered), `missing`, or `replaced` (another file)."""
        if self.path is None:
            return "ok"
        identity = self._identity()
        if identity is None:
            return "missing"
        if self._seen is None:
            self._seen = identity
        return "ok" if identity == self._seen else "replaced"

    def accept(self) -> None:
        """Serve from the file now at the path (after reconnecting to it)."""
        self._seen = self._identity() if self.path is not None else None


class InlineCursorConnection(aiosqlite.Connection):
    """aiosqlite with cursors made and closed on the caller's thread.

    SQLAlchemy's adapter makes, uses and closes a cursor for every statement, each a
    round trip to aiosqlite's thread (a queue put, a thread wake-up, a self-pipe write
    back), and under load those hand-offs cost more CPU than the statements. Making and
    closing a sqlite3 cursor does no I/O: only executing, fetching and committing go to
    the thread. Safe because the pool lends a connection to one user at a time and that
    user awaits every call (`check_same_thread=False`, as SQLAlchemy sets for files).
    """

    # The current transaction's writes held back for its commit (`defer_writes`), or None.
    deferred: list[tuple[str, Any, bool]] | None = None

    async def cursor(self) -> aiosqlite.Cursor:  # type: ignore[override]
        return InlineCloseCursor(self, self._conn.cursor())

    def defer_writes(self) -> None:
        """Hold this transaction's INSERTs, UPDATEs and DELETEs until its commit, which
        sends them and the commit to the thread in one trip instead of two (the first
        write, which takes SQLite's write lock, and the commit). For a transaction of
        writes only whose statements' results (row counts) nobody reads: a failing
        statement raises from the commit, and the transaction is rolled back. A read
        while writes are held sends them first, so it sees them, and ends the holding
        (later writes run as usual); so do the commit, a rollback and closing."""
        if self.deferred is None:
            self.deferred = []

    async def flush_deferred(self) -> None:
        """Send the held writes now (in the open transaction, uncommitted)."""
        writes, self.deferred = self.deferred, None
        if writes:
            await self._execute(_run_writes, self._conn, writes, commit=False)

    async def commit(self) -> None:
        writes, self.deferred = self.deferred, None
        if writes:
            await self._execute(_run_writes, self._conn, writes, commit=True)
        else:
            await super().commit()

    async def rollback(self) -> None:
        self.deferred = None  # held writes were never sent: nothing of them to undo
        # The pool resets every connection it takes back with a rollback, after each
        # commit too: with no transaction open there is nothing to send to the thread.
        if self._conn.in_transaction:
            await super().rollback()

    async def close(self) -> None:
        self.deferred = None
        await super().close()


def _run_writes(
    connection: sqlite3.Connection, writes: list[tuple[str, Any, bool]], *, commit: bool
) -> None:
    """On aiosqlite's thread: held writes in order, then the commit (see `defer_writes`).

    A failure rolls the transaction back before it raises, as the statement that failed
    never ran on its own: the caller sees the error from its commit (or flush)."""
    try:
        for sql, parameters, many in writes:
            if many:
                connection.executemany(sql, parameters)
            else:
                connection.execute(sql, parameters)
        if commit:
            connection.commit()
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise


class InlineCloseCursor(aiosqlite.Cursor):
    """An aiosqlite cursor closed without a trip to the connection's thread, whose writes
    after a transaction's first one run on the caller's thread too.

    The first write of a transaction takes SQLite's write lock and may wait for it (busy
    timeout), and the commit writes the WAL: those go to the thread. A later INSERT,
    UPDATE or DELETE of the same transaction holds the lock already and only changes
    cached pages (a few pages per chat, never a cache spill), so it cannot wait: a trip
    to the thread and back would cost more than the statement. A chat's question then
    takes 2 trips instead of 4 and its answer 2 instead of 3; with its writes held for
    the commit (`InlineCursorConnection.defer_writes`, as the chat path does), 1 each.
    """

    _conn: InlineCursorConnection

    async def close(self) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Any = None) -> aiosqlite.Cursor:
        if self._conn.deferred is not None and await self._deferred(sql, parameters, False):
            return self
        if _holds_write_lock(self._cursor, sql):
            self._cursor.execute(sql, () if parameters is None else parameters)
            return self
        return await super().execute(sql, parameters)

    async def executemany(self, sql: str, parameters: Any) -> aiosqlite.Cursor:
        if self._conn.deferred is not None and await self._deferred(sql, parameters, True):
            return self
        if _holds_write_lock(self._cursor, sql):
            self._cursor.executemany(sql, parameters)
            return self
        return await super().executemany(sql, parameters)

    async def _deferred(self, sql: str, parameters: Any, many: bool) -> bool:
        """Whether the statement was held for the commit (`defer_writes`); a read sends
        the held writes first."""
        connection = self._conn
        assert connection.deferred is not None
        if _is_write(sql):
            if not many:
                parameters = () if parameters is None else parameters
            elif not isinstance(parameters, list | tuple):
                parameters = list(parameters)  # an iterator would be read after the call
            connection.deferred.append((sql, parameters, many))
            return True
        await connection.flush_deferred()
        return False


_WRITES = ("INSERT", "UPDATE", "DELETE")


def _holds_write_lock(cursor: sqlite3.Cursor, sql: str) -> bool:
    """Whether `sql` is a write inside a transaction that has written already.

    sqlite3 (legacy transaction control, as SQLAlchemy drives it) opens a transaction
    only right before a write, so an open transaction holds the write lock.
    """
    return cursor.connection.in_transaction and _is_write(sql)


def _is_write(sql: str) -> bool:
    return sql.lstrip()[:6].upper() in _WRITES


def defer_sqlite_writes(connection: Connection | AsyncConnection) -> None:
    """Hold the writes of `connection`'s transaction for its commit, on SQLite (see
    `InlineCursorConnection.defer_writes`); nothing on other databases."""
    sync = connection.sync_connection if isinstance(connection, AsyncConnection) else connection
    driver = sync.connection.driver_connection if sync is not None else None
    if isinstance(driver, InlineCursorConnection):
        driver.defer_writes()


def hold_sqlite_writes(connection: Connection) -> HeldWrites | None:
    """`defer_sqlite_writes`, and what adds a Core write to the held ones directly; None
    on other databases."""
    driver = connection.connection.driver_connection
    if not isinstance(driver, InlineCursorConnection):
        return None
    if not connection.in_transaction():
        connection.begin()  # SQLAlchemy commits only a transaction it began
    driver.defer_writes()
    return HeldWrites(connection.dialect, driver)


class _CompiledWrite(NamedTuple):
    sql: str
    # a row's parameter values in placeholder order (C-level)
    values: Callable[[dict[str, Any]], tuple[Any, ...]]
    # (position, bind processor) of the parameters whose types have one (JSON, GUID, UTC
    # datetimes); the others go to the driver as they are
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]


# One compiled form per (statement, parameter names, dialect); None: not held directly.
_COMPILED_WRITES: dict[tuple[Any, tuple[str, ...], Dialect], _CompiledWrite | None] = {}


class HeldWrites:
    """Core writes added to a SQLite transaction's held writes without SQLAlchemy's
    execution path.

    A held write's result is never read, so what `Connection.execute` adds around the
    statement (its cache key, rebuilt every call, the execution context, a cursor made,
    used and closed through three greenlet switches to aiosqlite's adapter) bought
    nothing: each statement is compiled once, and its parameters go through the same
    bind processors (JSON, GUID, UTC datetimes) SQLAlchemy applies. A statement that
    needs more (a column default computed at execution, RETURNING) is not held here.
    """

    def __init__(self, dialect: Dialect, driver: InlineCursorConnection) -> None:
        self._dialect = dialect
        self._driver = driver

    def add(self, statement: Any, parameters: dict[str, Any] | list[dict[str, Any]]) -> bool:
        """Hold `statement` with `parameters` (one row, or rows of the same keys); False
        when it must go through `Connection.execute`."""
        held = self._driver.deferred
        rows = parameters if isinstance(parameters, list) else [parameters]
        if held is None or not rows:
            return False
        names = tuple(rows[0])
        if len(rows) > 1 and any(
            len(row) != len(names) or row.keys() != rows[0].keys() for row in rows[1:]
        ):
            return False
        compiled = _compiled_write(statement, names, self._dialect)
        if compiled is None:
            return False
        values: list[Any] = []
        for row in rows:
            if not compiled.processed:
                values.append(compiled.values(row))
                continue
            ordered = list(compiled.values(row))
            for position, process in compiled.processed:
                ordered[position] = process(ordered[position])
            values.append(ordered)
        if isinstance(parameters, list):
            held.append((compiled.sql, values, True))
        else:
            held.append((compiled.sql, values[0], False))
        return True


def _compiled_write(
    statement: Any, names: tuple[str, ...], dialect: Dialect
) -> _CompiledWrite | None:
    key = (statement, names, dialect)
    if key in _COMPILED_WRITES:
        return _COMPILED_WRITES[key]
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    order = compiled.positiontup
    simple = (
        order is not None
        and not compiled.insert_prefetch
        and not compiled.update_prefetch
        and not compiled.effective_returning
        and set(order) == set(names)
    )
    write = None
    if simple and order is not None:
        processors = [
            _cheaper(
                compiled.binds[name].type,
                compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect),
                dialect,
            )
            for name in order
        ]
        write = _CompiledWrite(
            sql=compiled.string,
            # itemgetter of one name gives the value, not a 1-tuple
            values=itemgetter(*order) if len(order) > 1 else lambda row: (row[order[0]],),
            processed=tuple(
                (position, process)
                for position, process in enumerate(processors)
                if process is not None
            ),
        )
    _COMPILED_WRITES[key] = write
    return write


_SAMPLE_UUID = UUID("0190f3c4-5e6f-7a8b-9cad-bedf01234567")
_SAMPLE_TIME = datetime(2024, 2, 29, 23, 59, 58, 7, tzinfo=UTC)
_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"  # SQLite's DATETIME storage format


def _cheaper(
    column_type: Any, process: Callable[[Any], Any] | None, dialect: Dialect
) -> Callable[[Any], Any] | None:
    """`process`, a SQLite GUID or DateTimeUTC column's bind processor, for the values a
    chat writes (stdlib UUIDs, UTC datetimes) without the layers between (a
    TypeDecorator's closure, advanced-alchemy's `process_bind_param` and its checks, the
    impl's own processor with a dict per datetime): 19 values a chat. Other values go
    through `process`; used only when it gives what `process` gives on a sample."""
    if process is None or dialect.name != "sqlite":
        return process
    if isinstance(column_type, GUID) and column_type.binary:
        binary = dialect.loaded_dbapi.Binary  # what the BINARY(16) impl wraps the bytes in

        def guid(value: Any) -> Any:
            if value.__class__ is UUID:
                return binary(value.int.to_bytes(16))  # `value.bytes`, without its property
            return process(value)

        return guid if guid(_SAMPLE_UUID) == process(_SAMPLE_UUID) else process
    if isinstance(column_type, DateTimeUTC):

        def utc_datetime(value: Any) -> Any:
            if value.__class__ is datetime and value.tzinfo is UTC:
                return _SQLITE_DATETIME % (
                    value.year, value.month, value.day,
                    value.hour, value.minute, value.second, value.microsecond,
                )  # fmt: skip
            return process(value)

        return utc_datetime if utc_datetime(_SAMPLE_TIME) == process(_SAMPLE_TIME) else process
    return process


def connect_sqlite(database: str, **kwargs: Any) -> InlineCursorConnection:
    """`aiosqlite.connect` for SQLAlchemy's `async_creator_fn`, with `InlineCursorConnection`."""
    kwargs["check_same_thread"] = False
    connection = InlineCursorConnection(lambda: sqlite3.connect(database, **kwargs), 64)
    # As SQLAlchemy does for its own aiosqlite connections: never hold up the exit.
    connection._thread.daemon = True
    return connection


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# JSON columns (citations, related sections) through msgspec rather than the json module,
# whose Python-level encoder a chat ran four times.
_JSON = {"json_serializer": _json_text, "json_deserializer": msgspec.json.decode}


def create_engine(settings: Settings) -> AsyncEngine:
    """An async engine tuned per backend (WAL + busy timeout on SQLite, a pool on PostgreSQL)."""
    url = make_url(settings.database_url)
    if url.drivername.startswith("sqlite"):
        ensure_sqlite_directory(settings.database_url)
        engine = create_async_engine(
            url, connect_args={"timeout": 30, "async_creator_fn": connect_sqlite}, **_JSON
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_timeout=10,
        pool_recycle=1800,
        # Neon and PgBouncer in transaction mode do not keep prepared statements.
        connect_args={"statement_cache_size": 0, "timeout": 5},
        **_JSON,
    )
    ping_idle_connections(engine)
    return engine


# A pooled connection given back longer ago than this is pinged before it is used again.
PING_IDLE_AFTER = 1.0


def ping_idle_connections(engine: AsyncEngine, idle_after: float = PING_IDLE_AFTER) -> None:
    """`pool_pre_ping` for connections that sat idle: a ping on asyncpg is three round
    trips (BEGIN, an empty query, ROLLBACK, so that PgBouncer's transaction mode keeps
    the connection), and pinging every checkout cost 6 of a chat's ~20. A connection
    given back within `idle_after` seconds is taken as it is; a failed ping discards it
    and the pool connects anew, as with `pool_pre_ping`. (A connection that died in
    between fails its statement instead; SQLAlchemy then invalidates the whole pool.)
    """
    sync_engine = engine.sync_engine

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_after:
            return  # just connected, or in use a moment ago
        try:
            sync_engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"ping failed: {type(exc).__name__}") from exc

    event.listen(sync_engine, "checkin", checked_in)
    event.listen(sync_engine, "checkout", checked_out)


# How long a SQLite write waits for another writer's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run during a write; the busy timeout queues writers instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_alembic_config() -> AlembicAsyncConfig:
    """Where the migrations live (inside the package) and the version table they record in,
    for `litestar database …` and `bookchat migrate` alike."""
    return AlembicAsyncConfig(
        script_location=str(MIGRATIONS_DIR),
        version_table_name=VERSION_TABLE,
        # No ini file: env.py configures logging only when one is given (the root alembic.ini).
        script_config="",
        render_as_batch=True,
        user_module_prefix="sa.",
    )


# Session.info switches of advanced-alchemy's commit listeners (see `make_alchemy_config`).
NO_LISTENERS = {"enable_cache_listener": False, "enable_file_object_listener": False}


class RequestSession(AsyncSession):
    """The request's session: a commit with no transaction begun commits nothing, at once,
    and a close with nothing to close closes nothing.

    advanced-alchemy's hook commits every request's session when the response starts;
    SQLAlchemy begins a transaction for that commit only to end it (a greenlet, a
    `SessionTransaction`, its snapshot and close). A new reader's chat writes on a plain
    connection and never begins one, and that empty commit cost about 2 % of it. A
    session with pending objects has begun (adding one begins), so nothing is skipped.
    """

    async def commit(self) -> None:
        if self.sync_session.in_transaction():
            await super().commit()

    async def close(self) -> None:
        """Nothing to close in a session that holds no transaction and no objects (a new
        reader's chat): SQLAlchemy's close would still run in a greenlet of its own to
        make the session's maps anew."""
        sync = self.sync_session
        if sync.in_transaction() or len(sync.identity_map):
            await super().close()


def make_alchemy_config(
    settings: Settings, engine: AsyncEngine | None = None
) -> SQLAlchemyAsyncConfig:
    """advanced-alchemy's config: request-scoped sessions committed on 2xx responses."""
    config = SQLAlchemyAsyncConfig(
        engine_instance=engine or create_engine(settings),
        # advanced-alchemy's cache and file-object listeners serve features bookchat does
        # not use; the cache one still looked its switch up on every commit by building an
        # options copy of the engine (about 4% of a chat's CPU). Off per session, and the
        # file-object ones not registered.
        session_config=AsyncSessionConfig(
            expire_on_commit=False, info=dict(NO_LISTENERS), class_=RequestSession
        ),
        enable_file_object_listener=False,
        metadata=UUIDv7Base.metadata,
        before_send_handler="autocommit",
        create_all=False,
        alembic_config=make_alembic_config(),
        # bookchat.errors maps RepositoryError (envelope; 503 when the database is down).
        set_default_exception_handler=False,
    )
    # Made per config: each config of a process gets its own session scope key.
    autocommit = cast("Callable[[Message, Scope], Awaitable[None]]", config.before_send_handler)

    async def commit_request_session(message: Message, scope: Scope) -> None:
        """The autocommit hook, not run for body messages: it commits and closes the
        request's session at `http.response.start`, and a chat's ~50 stream bodies would
        each look for that session again."""
        if message["type"] != "http.response.body":
            await autocommit(message, scope)

    config.before_send_handler = commit_request_session
    return config
