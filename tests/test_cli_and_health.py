"""First impressions (issue 16): the CLI's help, version and checks, `bookchat up`'s output,
granian's log lines, settings errors with their value, and an honest `llm` in health."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from bookchat import __version__
from bookchat.cli import build_parser
from bookchat.devtools.fake_gemini import FakeGemini, ServerError
from bookchat.settings import Settings, SettingsError, load_settings

from .chat_helpers import LogCapture, aingest_sample_book, app_client, ask
from .conftest import make_settings

BOOKCHAT = str(Path(sys.executable).parent / "bookchat")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BOOKCHAT, *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bookchat {__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_has_help_and_no_help_shows_raw_backticks() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"serve", "migrate", "archive", "ingest", "up", "eval", "bench", "soak"} <= set(commands)
    for name in ("serve", "migrate", "archive", "ingest", "up"):
        for action in commands[name]._actions:
            if action.dest != "help":
                assert action.help, f"bookchat {name} {action.option_strings or action.dest}"
    for text in [parser.format_help(), *(p.format_help() for p in commands.values())]:
        assert "`" not in text, text


def test_top_level_help_lists_every_command_including_soak() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for name in ("serve", "migrate", "archive", "ingest", "up", "eval", "bench", "soak"):
        assert f"\n    {name} " in result.stdout, name


@pytest.mark.parametrize("value", ["-5", "abc"])
def test_archive_rejects_a_negative_or_non_numeric_idle_days(value: str) -> None:
    result = _run("archive", "--idle-days", value)
    assert result.returncode == 2
    assert "--idle-days" in result.stderr and value in result.stderr
    assert "archived" not in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "abc", "PORT: expected an integer, got 'abc'"),
        ("HEALTH_TIMEOUT", "fast", "HEALTH_TIMEOUT: expected a number, got 'fast'"),
    ],
)
def test_settings_errors_show_the_offending_value(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({name: value})
    assert str(error.value) == message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_prints_the_ingest_table_then_one_line_with_the_urls_and_granian_logs_json(
    tmp_path: Path,
) -> None:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GEMINI", "DATABASE"))},
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'up.db'}",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "PORT": str(port),
    }
    process = subprocess.Popen(
        [BOOKCHAT, "up"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = []
        err_head: list[str] = []
        for line in process.stdout:  # blocks until `up` prints; the ready line ends it
            lines.append(line.rstrip("\n"))
            if "demo page" in line:
                break
        assert process.stderr is not None
        for line in process.stderr:  # until granian reports its worker started
            err_head.append(line)
            if "Started worker" in line:
                break
    finally:
        process.send_signal(signal.SIGTERM)
        out, err_tail = process.communicate(timeout=30)
    err = "".join(err_head) + err_tail
    lines += out.splitlines()
    assert lines[0].startswith("ingested ") and "sample_book" in lines[0]
    table = dict(line.split(None, 1) for line in lines[1:] if line.startswith("  "))
    assert int(table["files_seen"]) >= 5 and int(table["chunks_added"]) > 0
    ready = [line for line in lines if "demo page" in line]
    base = f"http://127.0.0.1:{port}"
    assert ready == [f"bookchat: demo page {base}/ · API docs {base}/docs · Ctrl-C stops"]
    assert not any("IngestSummary(" in line for line in lines)
    # stderr: progress lines, then every server line is JSON, granian's own included.
    assert "ingest: 1/" in err
    server_lines = err.splitlines()[
        err.splitlines().index("bookchat: database at revision head") + 1 :
    ]
    logs = [json.loads(line) for line in server_lines if not line.startswith("ingest: ")]
    granian = [entry for entry in logs if entry["logger"].startswith("_granian")]
    assert any("Listening at" in entry["msg"] for entry in granian), logs
    assert any("shutdown completed" in entry["msg"] for entry in granian), logs


async def test_health_llm_reflects_the_last_real_outcome(tmp_path: Path) -> None:
    with FakeGemini(answer="A lidar times a laser pulse [1].") as fake:
        settings = make_settings(
            tmp_path, GEMINI_API_KEY="bogus-key", GEMINI_BASE_URL=fake.base_url
        )
        from bookchat.db.migrate import run_migrations

        await _in_thread(run_migrations, settings.database_url)
        await aingest_sample_book(settings)
        async for client in app_client(settings):
            before = (await client.get("/api/v1/health")).json()
            assert before["components"]["llm"] == "not_checked"
            assert "llm" not in before

            for model in (settings.chat_model, settings.fallback_model):
                fake.set_model_rule(
                    str(model), ServerError(status=400, message="API key not valid")
                )
            failed = await ask(client, "How does a lidar measure distance?")
            assert failed.events[-1][0] == "error"
            report = (await client.get("/api/v1/health")).json()
            assert report["components"]["llm"] == "failing"
            assert report["llm"]["since"] and "generation_failed" in report["llm"]["error"]
            assert report["status"] == "healthy"  # the model does not decide readiness
            # Probing health again calls nothing: the state stays as the last real call left it.
            again = (await client.get("/api/v1/health")).json()
            assert again["llm"] == report["llm"]

            for model in (settings.chat_model, settings.fallback_model):
                fake.set_model_rule(str(model), None)
            answered = await ask(client, "How does a lidar measure distance?")
            assert answered.events[-1][0] == "done"
            recovered = (await client.get("/api/v1/health")).json()
            assert recovered["components"]["llm"] == "ok"
            assert (
                "error" not in recovered["llm"]
                and recovered["llm"]["since"] > report["llm"]["since"]
            )


async def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, *args)


async def _unmatched_404s(client: AsyncTestClient) -> dict[str, float]:
    counts = {}
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("bookchat_requests_total{") and 'status_code="404"' in line:
            labels, value = line.rsplit(" ", 1)
            path = labels.split('path="', 1)[1].split('"', 1)[0]
            counts[path] = counts.get(path, 0.0) + float(value)
    return counts


async def test_unknown_routes_are_in_the_access_log_and_the_request_metrics(
    client: AsyncTestClient,
) -> None:
    before = await _unmatched_404s(client)  # counters are per process, shared by tests
    access = logging.getLogger("bookchat.access")
    level = access.level
    access.setLevel(logging.INFO)  # the test settings log at WARNING
    with LogCapture("bookchat.access") as logs:
        for path in ("/no-such-page", "/api/v1/no-such-endpoint", "/wp-login.php"):
            response = await client.get(path)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
    access.setLevel(level)
    lines = [r for r in logs.records() if r.get("status") == 404]
    assert [r["path"] for r in lines] == [
        "/no-such-page",
        "/api/v1/no-such-endpoint",
        "/wp-login.php",
    ]
    assert all(r.get("request_id") for r in lines)
    after = await _unmatched_404s(client)
    grown = {path: after[path] - before.get(path, 0.0) for path in after}
    # A fixed series per prefix, not one per probed URL (a scanner cannot grow the metrics).
    assert {path: n for path, n in grown.items() if n} == {
        "/{unmatched}": 2.0,
        "/api/v1/{unmatched}": 1.0,
    }


async def test_the_demo_page_and_the_docs_have_a_favicon(client: AsyncTestClient) -> None:
    icon = await client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.content.startswith(b"<svg")
    page = (await client.get("/")).text
    assert '<link rel="icon" href="/favicon.ico"' in page
    docs = (await client.get("/docs", follow_redirects=True)).text
    assert "href='/favicon.ico'" in docs


async def test_the_word_frequency_list_is_read_at_startup_not_in_the_first_chat(
    settings: Settings,
) -> None:
    from litestar.testing import AsyncTestClient

    from bookchat import text
    from bookchat.app import create_app

    text._frequencies.cache_clear()
    text.specificity.cache_clear()
    async with AsyncTestClient(app=create_app(settings)):
        assert text._frequencies.cache_info().currsize == 1


class _RecordingGranian:
    """Stands in for granian.Granian: records its options, serves nothing."""

    options: dict[str, object] = {}

    def __init__(self, target: str, **options: object) -> None:
        type(self).options = options

    def serve(self) -> None:
        return None


def test_the_server_runs_asyncio_unless_event_loop_says_uvloop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # With uvloop installed, granian would pick it ("auto"), and a SIGTERM right after a
    # worker started could be lost for 30 s: the loop is chosen, not picked up.
    import granian
    from granian.constants import Loops

    from bookchat import cli

    monkeypatch.setattr(granian, "Granian", _RecordingGranian)
    cli._run_granian(load_settings({}), "127.0.0.1", "app:create")
    assert _RecordingGranian.options["loop"] is Loops.asyncio
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    cli._run_granian(load_settings({"EVENT_LOOP": "uvloop"}), "127.0.0.1", "app:create")
    assert _RecordingGranian.options["loop"] is Loops.uvloop
    # Asked for but not installed: one line, before anything starts.
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit) as exited:
        cli._run_granian(load_settings({"EVENT_LOOP": "uvloop"}), "127.0.0.1", "app:create")
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "bookchat: EVENT_LOOP=uvloop: uvloop is not installed (pip install uvloop)\n"
    )
    with pytest.raises(SettingsError, match="EVENT_LOOP"):
        load_settings({"EVENT_LOOP": "trio"})
