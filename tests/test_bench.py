"""`bookchat bench` runs end to end on tiny sizes and reports every figure (no timings checked)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bookchat.devtools.bench.cli import INSTANT, BenchConfig, run_bench
from bookchat.devtools.bench.load import LoadSpec, run_load


@pytest.mark.server
def test_bench_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    config = BenchConfig(
        concurrencies=(2,),
        profiles=(INSTANT,),
        duration={"instant": 0.3},
        warmup=0.0,
        max_chats=5,
        distinct_questions=10,
        retrieval_sizes=(50,),
        retrieval_queries=5,
        local_queries=2,
        ingest_pages=3,
        ingest_bytes=20_000,
        ingest_delay_pages=3,
        ingest_delay_bytes=20_000,
        ingest_delays=(0.0, 0.01),
        out_dir=tmp_path,
        postgres_url=os.environ.get("TEST_POSTGRES_URL"),  # PostgreSQL rows when CI has one
    )
    report = run_bench(config, log=lambda line: None)

    written = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(written) >= {"chat", "ratios", "retrieval", "ingestion", "environment"}
    targets = {"floor", "floor+genai", "bookchat-sqlite"}
    if config.postgres_url:
        targets.add("bookchat-postgres")
    assert {row["target"] for row in written["chat"]} == targets
    for row in written["chat"] + written["workers"]:
        assert row["errors"] == 0, row["error_kinds"]
        assert row["chats"] >= 1
        for key in ("ttft_p50_ms", "ttft_p99_ms", "chats_per_s", "rss_per_stream_kb"):
            assert row[key] is not None
        assert row["cpu_per_chat_ms"] is not None
    # Read from the server's /proc in 10 ms ticks: a 5-chat floor row may round to 0.
    assert sum(row["cpu_per_chat_ms"] for row in written["chat"]) > 0
    # The floor streams as many events as a chat has.
    assert len({row["events_per_chat"] for row in written["chat"]}) == 1
    bookchat = next(r for r in written["chat"] if r["target"] == "bookchat-sqlite")
    assert bookchat["grounded"] == bookchat["chats"]  # real answers, not abstentions
    headline = written["cpu_per_chat"]
    assert set(headline["cpu_per_chat_ms"]) == targets
    assert [row["workers"] for row in written["workers"]][:2] == ["1 worker", "2 workers"]
    assert {row["engine"] for row in written["retrieval"]} == {"embedded", "local"}
    assert [row["run"] for row in written["ingestion"]][:2] == [
        "parse+chunk only",
        "offline (BM25 only)",
    ]
    assert report["ttft_plot"] is None or Path(report["ttft_plot"]).is_file()


@pytest.mark.server
def test_bench_chat_runs_with_llm_provider_openai_against_the_fake(tmp_path: Path) -> None:
    config = BenchConfig(
        concurrencies=(2,),
        profiles=(INSTANT,),
        duration={"instant": 0.3},
        warmup=0.0,
        max_chats=5,
        distinct_questions=10,
        sections=("chat",),
        provider="openai",
        out_dir=tmp_path,
        postgres_url=None,
        workers_compare=False,
    )
    report = run_bench(config, log=lambda line: None)

    assert report["config"]["provider"] == "openai"
    # No floor+genai row: that one measures google-genai against the fake Gemini.
    assert {row["target"] for row in report["chat"]} == {"floor", "bookchat-sqlite"}
    for row in report["chat"]:
        assert row["errors"] == 0, row["error_kinds"]
        assert row["chats"] >= 1
    bookchat = next(r for r in report["chat"] if r["target"] == "bookchat-sqlite")
    assert bookchat["grounded"] == bookchat["chats"]  # answered through the fake OpenAI server


async def test_load_generator_counts_connection_failures_as_errors() -> None:
    # Nothing listens on port 9 (discard) here: every chat fails, none is counted as done.
    spec = LoadSpec(
        url="http://127.0.0.1:9/api/v1/chat", bodies=[b"{}"], concurrency=2, duration=0.0,
        warmup=0.0, max_chats=2, timeout=2.0,
    )  # fmt: skip
    result = await run_load(spec)
    assert result.chats == 0
    assert sum(result.errors.values()) == 2
    assert set(result.errors) == {"ConnectionRefusedError"}


@pytest.mark.parametrize("mode", ["cpu", "cprofile"])
def test_the_in_process_driver_reports_a_chats_cost(mode: str, tmp_path: Path) -> None:
    # The driver behind issue 15's instruction counts: the product app as a raw ASGI app,
    # sequential chats against the fake. In a subprocess: it sets the bench environment.
    import subprocess
    import sys

    args = ["--mode", mode, "--chats", "4", "--skip", "1", "--tokens", "3"]
    if mode == "cprofile":
        args += ["--dump", str(tmp_path / "chats.pstats")]
    done = subprocess.run(
        [sys.executable, "-m", "bookchat.devtools.bench.inprocess", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    if mode == "cpu":
        assert "ms (event loop thread), 3 chats" in done.stdout, done.stdout
    else:
        assert done.stdout.startswith("calls per chat ") and "bookchat/" in done.stdout
        assert (tmp_path / "chats.pstats").stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, "-m", "bookchat.devtools.bench.inprocess", "--chats", "2", "--skip", "2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "--skip must be" in bad.stderr
