"""`bookchat bench [--quick] [--corpus PATH]`: chat TTFT and throughput against the floor,
retrieval latency, ingestion speed. Prints Markdown tables, writes JSON and a PNG.

Processes (2 cores are shared, so each gets its own GIL and the OS schedules them):
- the server: `bookchat serve`, granian, 1 worker, SQLite + embedded vector store in a
  temp dir, `BOOKCHAT_BENCH_FLOOR=1` for the floor route and the loop-lag probe;
- the fake Gemini: a thread of this process, which is otherwise idle while load runs
  (it only samples the server's RSS every 50 ms);
- the load generator: `python -m bookchat.devtools.bench.load`, one subprocess per scenario.

Figures are printed, never asserted: they depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np

from bookchat.devtools.bench.load import LoadResult, LoadSpec
from bookchat.devtools.bench.server import (
    RssSampler,
    Server,
    bench_env,
    prepare_data,
    running_server,
)
from bookchat.devtools.fake_gemini import DEFAULT_ANSWER, FakeGemini

SAMPLE_QUESTIONS = (
    "How does lidar measure distance?",
    "Why does wheel odometry drift over time?",
    "How does a PID controller work?",
    "What problem does SLAM solve for a mobile robot?",
    "How does a differential drive robot turn?",
)
CORPUS_QUERIES = "physical-ai-textbook-queries.json"


@dataclass(frozen=True)
class FakeProfile:
    """How the fake Gemini paces its answers."""

    name: str
    first_token_delay: float
    tokens_per_second: float  # 0: as fast as possible

    @property
    def token_delay(self) -> float:
        return 1 / self.tokens_per_second if self.tokens_per_second else 0.0


INSTANT = FakeProfile("instant", 0.0, 0.0)
REALISTIC = FakeProfile("realistic", 0.3, 30.0)


@dataclass
class BenchConfig:
    """Every knob of one bench run; `full()` and `quick()` are the two presets."""

    concurrencies: tuple[int, ...] = (10, 100, 500)
    profiles: tuple[FakeProfile, ...] = (INSTANT, REALISTIC)
    duration: dict[str, float] = field(default_factory=lambda: {"instant": 10.0, "realistic": 10.0})
    warmup: float = 1.0
    max_chats: int | None = None
    answer_tokens: int = 50
    # Gemini streams several tokens per chunk; 1 is the worst case for the client's parsing.
    words_per_chunk: int = 1
    distinct_questions: int = 2000  # > the retriever's 1024-entry query-embedding LRU
    retrieval_sizes: tuple[int, ...] = (1000, 10000)
    retrieval_queries: int = 200
    local_queries: int = 50
    ingest_pages: int = 90
    ingest_bytes: int = 1_000_000
    # The embedding-delay runs may use a smaller book (quick mode); the offline run never.
    ingest_delay_pages: int = 90
    ingest_delay_bytes: int = 1_000_000
    ingest_delays: tuple[float, ...] = (0.0, 0.2)
    corpus: Path | None = None
    out_dir: Path = Path("var/bench")
    sections: tuple[str, ...] = ("chat", "retrieval", "ingestion")

    @classmethod
    def full(cls) -> BenchConfig:
        return cls()

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            duration={"instant": 2.0, "realistic": 2.5},
            warmup=0.3,
            retrieval_queries=30,
            local_queries=5,
            ingest_delay_pages=30,
            ingest_delay_bytes=333_000,
        )


# --------------------------------------------------------------------------- chat


def _answer(tokens: int) -> str:
    """The fake's answer: DEFAULT_ANSWER's words (with its [1] [2] citations) repeated."""
    words = DEFAULT_ANSWER.split()
    return " ".join(words[i % len(words)] for i in range(tokens))


def _questions(corpus: Path | None) -> list[str]:
    if corpus is not None:
        queries = corpus.parent / CORPUS_QUERIES
        if queries.is_file():
            data = json.loads(queries.read_text())
            return [q["query"] for q in data.get("test_queries", [])][:20] or list(SAMPLE_QUESTIONS)
    return list(SAMPLE_QUESTIONS)


def _bodies(questions: list[str], distinct: int) -> list[bytes]:
    """`distinct` request bodies cycling over `questions`, each text unique.

    The retriever keeps an LRU of query embeddings (1024); repeating five questions
    would answer every chat's embedding from it. Readers rarely repeat a question
    verbatim, so each body differs in its spacing (same terms, new cache key),
    and more bodies than the LRU holds are cycled: every chat embeds its query.
    """
    bodies = []
    for n in range(distinct):
        words = questions[n % len(questions)].split(" ")
        variant = n // len(questions)
        text = words[0]
        for word in words[1:]:
            # The variant's base-3 digits give each gap 1-3 spaces: same words, new text.
            variant, digit = divmod(variant, 3)
            text += " " * (1 + digit) + word
        bodies.append(msgspec.json.encode({"message": text}))
    return bodies


def _run_load(spec: LoadSpec) -> LoadResult:
    completed = subprocess.run(
        [sys.executable, "-m", "bookchat.devtools.bench.load"],
        input=msgspec.json.encode(spec),
        capture_output=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed: {completed.stderr.decode()[-2000:]}")
    return msgspec.json.decode(completed.stdout, type=LoadResult)


def _ms(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    return round(float(np.percentile(np.asarray(samples), q)) * 1000, 1)


def _scenario(
    server: Server,
    baseline_rss: int,
    target: str,
    profile: FakeProfile,
    concurrency: int,
    bodies: list[bytes],
    config: BenchConfig,
) -> dict[str, Any]:
    path = "/api/v1/chat" if target == "bookchat" else "/bench/floor"
    spec = LoadSpec(
        url=server.base_url + path,
        bodies=bodies,
        concurrency=concurrency,
        duration=config.duration[profile.name],
        warmup=config.warmup,
        max_chats=config.max_chats,
    )
    idle_rss = server.worker_rss()
    httpx.get(server.base_url + "/bench/loop-lag", timeout=10)  # reset the worst-lag window
    with RssSampler(server.worker_pid) as sampler:
        result = _run_load(spec)
    lag = httpx.get(server.base_url + "/bench/loop-lag", timeout=10).json()
    peak_rss = max(sampler.peak, idle_rss)
    # Growth over the idle server just before, shared out over the streams open at the
    # peak. Python keeps freed memory, so only a run that opens more streams than any
    # before it (scenarios go up in concurrency) grows: read the 500-stream rows.
    per_stream = (peak_rss - idle_rss) / result.peak_open if result.peak_open else 0.0
    return {
        "fake": profile.name,
        "target": target,
        "concurrency": concurrency,
        "chats": result.chats,
        "grounded": result.grounded,
        "errors": sum(result.errors.values()),
        "error_kinds": result.errors,
        "chats_per_s": round(result.chats / result.elapsed, 1),
        "events_per_s": round(result.events / result.elapsed, 1),
        "ttft_p50_ms": _ms(result.ttft, 50),
        "ttft_p95_ms": _ms(result.ttft, 95),
        "ttft_p99_ms": _ms(result.ttft, 99),
        "latency_p50_ms": _ms(result.latency, 50),
        "latency_p99_ms": _ms(result.latency, 99),
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "warm_idle_rss_mb": round(baseline_rss / 2**20, 1),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "peak_open_streams": result.peak_open,
        "rss_per_stream_kb": round(per_stream / 1024, 1),
        "max_loop_lag_ms": lag["max_lag_ms"],
        "ttft_samples_ms": [round(t * 1000, 2) for t in result.ttft],
    }


def bench_chat(config: BenchConfig, log: Any) -> list[dict[str, Any]]:
    """Every (fake profile, concurrency, target) scenario against one server."""
    from bookchat.settings import SAMPLE_BOOK

    docs = config.corpus or SAMPLE_BOOK
    bodies = _bodies(_questions(config.corpus), config.distinct_questions)
    rows: list[dict[str, Any]] = []
    with (
        FakeGemini(
            answer=_answer(config.answer_tokens), words_per_chunk=config.words_per_chunk
        ) as fake,
        tempfile.TemporaryDirectory(prefix="bookchat-bench-") as tmp,
    ):
        env = bench_env(Path(tmp), fake.base_url)
        log(f"bench: ingesting {docs}")
        prepare_data(env, Path(docs))
        with running_server(env) as server:
            # Warm both routes first (lazy imports, pools, caches), so the idle RSS that
            # per-stream figures are measured from is the server's steady state.
            for path in ("/bench/floor", "/api/v1/chat"):
                _run_load(
                    LoadSpec(url=server.base_url + path, bodies=bodies, concurrency=10,
                             duration=0.0, warmup=config.warmup)
                )  # fmt: skip
            baseline_rss = server.worker_rss()
            log(f"bench: warmed-up idle worker RSS {baseline_rss / 2**20:.1f} MB")
            for profile in config.profiles:
                for concurrency in config.concurrencies:
                    # Floor then bookchat, back to back, so both see the same machine state.
                    for target in ("floor", "bookchat"):
                        # reset() drops the fake's request log (it grows with every call).
                        fake.reset()
                        fake.configure(
                            first_token_delay=profile.first_token_delay,
                            token_delay=profile.token_delay,
                        )
                        row = _scenario(
                            server, baseline_rss, target, profile, concurrency, bodies, config
                        )
                        log(
                            f"bench: {profile.name:9} {target:8} c={concurrency:<4} "
                            f"{row['chats_per_s']:>7} chats/s  ttft p50 {row['ttft_p50_ms']} ms  "
                            f"p99 {row['ttft_p99_ms']} ms  errors {row['errors']}"
                        )
                        rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """bookchat / floor TTFT p50 and p99 per (fake, concurrency)."""
    by_key = {(r["fake"], r["concurrency"], r["target"]): r for r in rows}
    result = []
    for (fake, concurrency, target), row in by_key.items():
        floor = by_key.get((fake, concurrency, "floor"))
        if target != "bookchat" or floor is None:
            continue

        def ratio(
            key: str, row: dict[str, Any] = row, floor: dict[str, Any] = floor
        ) -> float | None:
            if not row[key] or not floor[key]:
                return None
            return round(row[key] / floor[key], 2)

        result.append(
            {
                "fake": fake,
                "concurrency": concurrency,
                "ttft_p50_ratio": ratio("ttft_p50_ms"),
                "ttft_p99_ratio": ratio("ttft_p99_ms"),
                "chats_per_s_ratio": round(row["chats_per_s"] / floor["chats_per_s"], 2)
                if floor["chats_per_s"]
                else None,
            }
        )
    return result


# --------------------------------------------------------------------------- output


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-flavoured Markdown table of `columns` from `rows`."""
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---:" if _numeric(rows, c) else "---" for c in columns) + "|"
    body = [
        "| " + " | ".join("" if r.get(c) is None else str(r[c]) for c in columns) + " |"
        for r in rows
    ]
    return "\n".join([head, rule, *body])


def _numeric(rows: list[dict[str, Any]], column: str) -> bool:
    return any(isinstance(r.get(column), int | float) for r in rows)


CHAT_COLUMNS = [
    "fake", "target", "concurrency", "chats", "errors", "chats_per_s", "events_per_s",
    "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms",
    "peak_rss_mb", "peak_open_streams", "rss_per_stream_kb", "max_loop_lag_ms",
]  # fmt: skip


def plot_ttft(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """ECDFs of TTFT, bookchat (solid) vs floor (dashed), one panel per fake profile."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    profiles = list(dict.fromkeys(r["fake"] for r in rows))
    fig, axes = plt.subplots(1, len(profiles), figsize=(6.5 * len(profiles), 4.6), squeeze=False)
    colors = {10: "tab:blue", 100: "tab:orange", 500: "tab:red"}
    for ax, profile in zip(axes[0], profiles, strict=True):
        for row in rows:
            samples = np.sort(np.asarray(row["ttft_samples_ms"]))
            if row["fake"] != profile or not samples.size:
                continue
            ax.plot(
                samples,
                np.arange(1, samples.size + 1) / samples.size,
                linestyle="-" if row["target"] == "bookchat" else "--",
                color=colors.get(row["concurrency"], "tab:gray"),
                label=f"{row['target']} c={row['concurrency']}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("time to first token (ms, log)")
        ax.set_ylabel("fraction of chats")
        ax.set_title(f"TTFT, fake Gemini: {profile}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("bookchat (solid) vs bare SSE floor (dashed), same granian server")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _env_info() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
    }


def run_bench(config: BenchConfig, *, log: Any = None) -> dict[str, Any]:
    """Run the selected sections; print tables; write JSON (+ PNG). Returns the JSON data."""
    from bookchat.devtools.bench.retrieval import bench_retrieval

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "environment": _env_info(),
    }
    if "chat" in config.sections:
        chat = bench_chat(config, log)
        report["chat"] = chat
        report["ratios"] = ratios(chat)
    if "retrieval" in config.sections:
        log("bench: retrieval")
        with warnings.catch_warnings():
            # Local mode warns that payload indexes do nothing there; known, not news.
            warnings.filterwarnings("ignore", "Payload indexes", UserWarning)
            report["retrieval"] = asyncio.run(
                bench_retrieval(
                    config.retrieval_sizes,
                    config.retrieval_queries,
                    local_queries=config.local_queries,
                )
            )
    if "ingestion" in config.sections:
        log("bench: ingestion")
        report["ingestion"] = asyncio.run(_ingestion(config))
    report["seconds"] = round(time.perf_counter() - started, 1)

    config.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = config.out_dir / f"{stamp}.json"
    if "chat" in report:
        png = plot_ttft(report["chat"], config.out_dir / f"{stamp}-ttft.png")
        report["ttft_plot"] = str(png) if png else None
    json_path.write_text(json.dumps(report, indent=1))
    print(format_report(report))
    print(
        f"\nJSON: {json_path}"
        + (f"\nTTFT plot: {report['ttft_plot']}" if report.get("ttft_plot") else "")
    )
    return report


async def _ingestion(config: BenchConfig) -> list[dict[str, Any]]:
    from bookchat.devtools.bench.ingestion import bench_ingestion

    if config.corpus is not None:
        return await bench_ingestion(config.corpus, delays=config.ingest_delays)
    offline = await bench_ingestion(
        pages=config.ingest_pages, total_bytes=config.ingest_bytes, delays=()
    )
    delayed = await bench_ingestion(
        pages=config.ingest_delay_pages,
        total_bytes=config.ingest_delay_bytes,
        delays=config.ingest_delays,
    )
    # The offline book's parse+chunk and offline rows, then the embedding-delay rows.
    return offline + [row for row in delayed if row["run"].startswith("embeddings")]


def format_report(report: dict[str, Any]) -> str:
    """Every figure of `report` as Markdown."""
    parts: list[str] = [
        f"# bookchat bench ({report['started_at']}, {report['environment']['cpus']} CPUs)"
    ]
    if "chat" in report:
        parts += ["", "## Chat: bookchat vs bare SSE floor (same granian server, 1 worker)", ""]
        parts.append(markdown_table(report["chat"], CHAT_COLUMNS))
        parts += ["", "## bookchat / floor", ""]
        parts.append(
            markdown_table(
                report["ratios"],
                ["fake", "concurrency", "ttft_p50_ratio", "ttft_p99_ratio", "chats_per_s_ratio"],
            )
        )
    if "retrieval" in report:
        parts += ["", "## Retrieval (hybrid and BM25, sequential queries; loop lag meanwhile)", ""]
        rows = report["retrieval"]
        parts.append(markdown_table(rows, list(rows[0]) if rows else []))
    if "ingestion" in report:
        parts += ["", "## Ingestion (parse + chunk + BM25 + upsert into the embedded store)", ""]
        rows = report["ingestion"]
        parts.append(markdown_table(rows, list(rows[0]) if rows else []))
    parts.append(f"\ntotal bench time: {report['seconds']} s")
    return "\n".join(parts)


# --------------------------------------------------------------------------- CLI


def cmd_bench(args: argparse.Namespace) -> None:
    """Entry point of `bookchat bench`."""
    config = BenchConfig.quick() if args.quick else BenchConfig.full()
    if args.corpus:
        corpus = Path(args.corpus)
        if not corpus.is_dir():
            print(f"bookchat: --corpus {corpus} is not a directory", file=sys.stderr)
            raise SystemExit(2)
        config.corpus = corpus
    if args.only:
        config.sections = tuple(args.only.split(","))
    if args.concurrency:
        config.concurrencies = tuple(int(c) for c in args.concurrency.split(","))
    if args.out:
        config.out_dir = Path(args.out)
    if args.words_per_chunk:
        config.words_per_chunk = args.words_per_chunk
    run_bench(config)
