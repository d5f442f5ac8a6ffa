"""`bookchat bench`'s arguments, kept apart so building the CLI does not import the bench.

The bench pulls in numpy, the fake Gemini and the server harness (about 0.7 s); every
other `bookchat` command would pay for that at startup.
"""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_bench(args: argparse.Namespace) -> None:
    from bookchat.devtools.bench.cli import cmd_bench

    cmd_bench(args)


def register(subparsers: Any) -> None:
    """Add `bench` to bookchat's CLI."""
    bench = subparsers.add_parser(
        "bench",
        help="CPU per chat, TTFT and throughput vs a bare SSE floor; retrieval, ingestion",
    )
    bench.add_argument("--quick", action="store_true", help="short runs (< 3 minutes on 2 cores)")
    bench.add_argument(
        "--corpus", help="a Docusaurus docs/ tree to serve and ingest instead of the sample book"
    )
    bench.add_argument("--only", help="comma-separated sections: chat,retrieval,ingestion")
    bench.add_argument("--concurrency", help="comma-separated concurrencies (default 10,100,500)")
    bench.add_argument("--out", help="output directory (default ./var/bench)")
    bench.add_argument(
        "--words-per-chunk",
        type=int,
        help="words per streamed chunk from the fake Gemini (default 1, the worst case)",
    )
    bench.add_argument(
        "--postgres-url",
        help="PostgreSQL admin URL for the PostgreSQL rows; the bench creates and drops its "
        "own database there (default BENCH_POSTGRES_URL or postgres@127.0.0.1:5432; '' skips)",
    )
    bench.add_argument(
        "--provider",
        choices=("gemini", "openai"),
        help="the fake the server talks to (default: LLM_PROVIDER, else gemini)",
    )
    bench.set_defaults(func=_cmd_bench)
