"""`bookchat bench [--quick] [--corpus PATH]`: CPU per chat against a bare floor, TTFT and
throughput, retrieval latency, ingestion speed. Prints Markdown tables, writes JSON and a PNG.

The headline is CPU per chat: utime + stime of the server's process tree (from /proc)
during the measured phase ÷ chats served. It stays steady on a shared, noisy machine,
where throughput and latency do not. Targets, side by side in one run:

- `floor`: a bare Litestar SSE app (`floor.create_floor_app`) streaming as many events as
  a chat has, no LLM client, no middleware; `floor+genai`: the same app plus one
  google-genai streaming call (public API) to the fake, so the SDK's share shows;
- `bookchat-sqlite` and `bookchat-postgres`: the product app on SQLite and on a fresh
  PostgreSQL database (`--postgres-url`; skipped when unreachable).

Processes: every server is `bookchat serve` (granian, 1 worker) pinned to all CPUs but
the last; the load generator (`python -m bookchat.devtools.bench.load`, raw sockets,
uvloop when installed) and the fake Gemini (a thread of this process) are pinned to the
last CPU, so on two cores or more they never take the server's. A last section compares
1 and 2 workers on the same CPUs.

Figures are printed, never asserted: they depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
from sqlalchemy.engine import make_url

from bookchat.devtools.bench.floor import FLOOR_APP
from bookchat.devtools.bench.load import LoadResult, LoadSpec
from bookchat.devtools.bench.server import (
    RssSampler,
    Server,
    bench_env,
    prepare_data,
    running_server,
)
from bookchat.devtools.fake_gemini import DEFAULT_ANSWER, FakeGemini
from bookchat.devtools.fake_openai import FakeOpenAI

SAMPLE_QUESTIONS = (
    "How does lidar measure distance?",
    "Why does wheel odometry drift over time?",
    "How does a PID controller work?",
    "What problem does SLAM solve for a mobile robot?",
    "How does a differential drive robot turn?",
)
CORPUS_QUERIES = "physical-ai-textbook-queries.json"
# The bench creates (and drops) its own database on this server.
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


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
    # An admin URL: the bench creates and drops its own database there. None: no PostgreSQL.
    postgres_url: str | None = field(
        default_factory=lambda: os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )
    workers_compare: bool = True
    workers_concurrency: int = 100
    headline_concurrency: int = 100
    provider: str = "gemini"  # or "openai": the fake OpenAI-compatible server answers

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
    if completed.returncode != 0 or not completed.stdout:
        raise RuntimeError(
            f"load generator failed ({completed.returncode}): {completed.stderr.decode()[-2000:]}"
        )
    return msgspec.json.decode(completed.stdout, type=LoadResult)


def _ms(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    return round(float(np.percentile(np.asarray(samples), q)) * 1000, 1)


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server and the load side (load generator + fake Gemini) run on."""

    server: set[int] | None
    load: list[int] | None

    @classmethod
    def for_machine(cls) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(server=None, load=None)  # one core: nothing to keep apart
        return cls(server=set(cpus[:-1]), load=[cpus[-1]])

    def describe(self) -> str:
        if self.load is None:
            return "one CPU: server and load generator share it"
        server = sorted(self.server or [])
        return f"server on CPU {server}, load generator + fake on CPU {self.load}"


@dataclass
class Target:
    """One server under load: which app, which route."""

    name: str
    server: Server
    path: str


def _path(target: str, profile: FakeProfile, config: BenchConfig) -> str:
    if target == "floor":
        # A chat's events: session, citations, one token per fake chunk, done.
        events = config.answer_tokens // config.words_per_chunk + 3
        return (
            f"/bench/floor?events={events}&first={profile.first_token_delay}"
            f"&gap={profile.token_delay * config.words_per_chunk}"
        )
    if target == "floor+genai":
        return "/bench/floor-genai"
    return "/api/v1/chat"


def _scenario(
    target: Target,
    baseline_rss: int,
    profile: FakeProfile,
    concurrency: int,
    bodies: list[bytes],
    config: BenchConfig,
    placement: Placement,
) -> dict[str, Any]:
    server = target.server
    spec = LoadSpec(
        url=server.base_url + _path(target.name, profile, config),
        bodies=bodies,
        concurrency=concurrency,
        duration=config.duration[profile.name],
        warmup=config.warmup,
        max_chats=config.max_chats,
        server_pid=server.process.pid,
        cpus=placement.load,
    )
    idle_rss = server.worker_rss()
    _loop_lag(server)  # resets the worst-lag window
    with RssSampler(server.worker_pids) as sampler:
        result = _run_load(spec)
    lag = _loop_lag(server)
    peak_rss = max(sampler.peak, idle_rss)
    # Growth over the idle server just before, shared out over the streams open at the
    # peak. Python keeps freed memory, so only a run that opens more streams than any
    # before it (scenarios go up in concurrency) grows: read the 500-stream rows.
    per_stream = (peak_rss - idle_rss) / result.peak_open if result.peak_open else 0.0
    errors = sum(result.errors.values())
    served = result.chats + errors
    elapsed = result.elapsed or 1e-9
    return {
        "fake": profile.name,
        "target": target.name,
        "concurrency": concurrency,
        "chats": result.chats,
        "grounded": result.grounded,
        "errors": errors,
        "error_kinds": result.errors,
        "cpu_per_chat_ms": round(result.server_cpu_s / served * 1000, 3) if served else None,
        "server_cpu_util": round(result.server_cpu_s / elapsed, 2),
        "client_cpu_util": round(result.client_cpu_s / elapsed, 2),
        "chats_per_s": round(result.chats / elapsed, 1),
        "events_per_chat": round(result.events / result.chats, 1) if result.chats else None,
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
        "event_loop": result.event_loop,
        "ttft_samples_ms": [round(t * 1000, 2) for t in result.ttft],
    }


def _loop_lag(server: Server) -> dict[str, Any]:
    """The server's worst loop lag since the last read; None when a swamped server is slow."""
    try:
        return dict(httpx.get(server.base_url + "/bench/loop-lag", timeout=60).json())
    except httpx.HTTPError:
        return {"max_lag_ms": None}


def _postgres_database(config: BenchConfig, stack: ExitStack, log: Any) -> str | None:
    """A fresh database for the PostgreSQL run (dropped at exit); None if unreachable."""
    from bookchat.devtools.soak import create_database, drop_database

    admin = config.postgres_url
    if not admin:
        return None
    try:
        url = create_database(admin, prefix="bookchat_bench")
    except (OSError, ConnectionError) as exc:
        log(f"bench: PostgreSQL at {admin} unavailable ({exc}); no PostgreSQL rows")
        return None
    database = make_url(url).database or ""
    stack.callback(drop_database, admin, database)
    return url


def _warm(target: Target, profile: FakeProfile, bodies: list[bytes], config: BenchConfig,
          placement: Placement) -> None:  # fmt: skip
    _run_load(
        LoadSpec(url=target.server.base_url + _path(target.name, profile, config), bodies=bodies,
                 concurrency=10, duration=0.0, warmup=config.warmup, cpus=placement.load)
    )  # fmt: skip


def bench_chat(config: BenchConfig, log: Any) -> dict[str, Any]:
    """Every (fake profile, concurrency, target) scenario, targets side by side.

    Servers (all `bookchat serve` on granian, 1 worker, pinned to the server CPUs): the
    floor app (bare floor and floor + google-genai), bookchat on SQLite, bookchat on
    PostgreSQL. Each scenario runs the targets back to back so they see the same machine.
    """
    from bookchat.db.migrate import run_migrations
    from bookchat.settings import SAMPLE_BOOK

    docs = config.corpus or SAMPLE_BOOK
    bodies = _bodies(_questions(config.corpus), config.distinct_questions)
    placement = Placement.for_machine()
    log(f"bench: {placement.describe()}")
    rows: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    own_cpus = os.sched_getaffinity(0)
    with ExitStack() as stack:
        if placement.load:
            # The fake Gemini is a thread of this process: keep it off the server's CPU.
            os.sched_setaffinity(0, placement.load)
            stack.callback(os.sched_setaffinity, 0, own_cpus)
        fake_class = FakeOpenAI if config.provider == "openai" else FakeGemini
        fake = stack.enter_context(
            fake_class(answer=_answer(config.answer_tokens), words_per_chunk=config.words_per_chunk)
        )
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bookchat-bench-")))
        env = bench_env(tmp, fake.api_url, config.provider)
        log(f"bench: ingesting {docs}")
        prepare_data(env, Path(docs))
        serve = partial(running_server, cpus=placement.server)
        targets = [Target("floor", stack.enter_context(serve(env, app=FLOOR_APP)), "")]
        if config.provider == "gemini":  # google-genai's own share needs the fake Gemini
            targets.append(Target("floor+genai", targets[0].server, ""))
        sqlite = Target("bookchat-sqlite", stack.enter_context(serve(env)), "")
        targets.append(sqlite)
        postgres_url = _postgres_database(config, stack, log)
        if postgres_url is not None:
            # Its own copy of the vector store: the embedded engine locks its directory.
            shutil.copytree(tmp / "qdrant", tmp / "qdrant-pg")
            pg_env = {**env, "DATABASE_URL": postgres_url, "QDRANT_PATH": str(tmp / "qdrant-pg")}
            run_migrations(postgres_url)
            targets.append(Target("bookchat-postgres", stack.enter_context(serve(pg_env)), ""))
        # Warm every route first (lazy imports, pools, caches), so the idle RSS that
        # per-stream figures are measured from is the server's steady state.
        for target in targets:
            _warm(target, INSTANT, bodies, config, placement)
        baseline = {t.name: t.server.worker_rss() for t in targets}
        idle = ", ".join(f"{name} {rss / 2**20:.0f} MB" for name, rss in baseline.items())
        log(f"bench: warm idle RSS {idle}")
        for profile in config.profiles:
            for concurrency in config.concurrencies:
                for target in targets:
                    fake.reset()  # drops the fake's request log (it grows with every call)
                    fake.configure(
                        first_token_delay=profile.first_token_delay,
                        token_delay=profile.token_delay,
                    )
                    row = _scenario(
                        target, baseline[target.name], profile, concurrency, bodies, config,
                        placement,
                    )  # fmt: skip
                    log(
                        f"bench: {profile.name:9} {target.name:17} c={concurrency:<4} "
                        f"cpu/chat {row['cpu_per_chat_ms']} ms  {row['chats_per_s']:>7} chats/s  "
                        f"ttft p50 {row['ttft_p50_ms']} ms  errors {row['errors']}"
                    )
                    rows.append(row)
        if config.workers_compare:
            fake.reset()
            fake.configure(first_token_delay=0.0, token_delay=0.0)
            workers = _compare_workers(env, sqlite, bodies, config, placement, log)
    return {"placement": placement.describe(), "chat": rows, "workers": workers}


def _compare_workers(
    env: dict[str, str],
    one_worker: Target,
    bodies: list[bytes],
    config: BenchConfig,
    placement: Placement,
    log: Any,
) -> list[dict[str, Any]]:
    """bookchat on SQLite with 1 then 2 workers, same CPUs, instant fake, back to back.

    With the load generator on a CPU of its own, a 2-CPU machine leaves the server one
    CPU, so a second worker can only help as far as one worker leaves that CPU idle:
    the rows carry `server_cpu_util` to show it. A third row lets the two workers use
    every CPU (sharing with the load generator), which is as close to "a core per
    worker" as two cores allow.
    """
    concurrency = config.workers_concurrency
    runs: list[tuple[str, int, set[int] | None]] = [
        ("1 worker", 1, placement.server),
        ("2 workers", 2, placement.server),
    ]
    if placement.server is not None:
        runs.append(("2 workers, all CPUs", 2, None))
    rows = []
    for label, count, cpus in runs:
        if count == 1 and cpus == placement.server:
            target = one_worker
            row = _scenario(target, target.server.worker_rss(), INSTANT, concurrency, bodies,
                            config, placement)  # fmt: skip
        else:
            with running_server(env, workers=count, cpus=cpus) as server:
                target = Target("bookchat-sqlite", server, "")
                _warm(target, INSTANT, bodies, config, placement)
                row = _scenario(target, server.worker_rss(), INSTANT, concurrency, bodies, config,
                                placement)  # fmt: skip
        row["workers"] = label
        log(
            f"bench: workers   {label:20} c={concurrency:<4} {row['chats_per_s']:>7} chats/s  "
            f"server cpu {row['server_cpu_util']}  cpu/chat {row['cpu_per_chat_ms']} ms"
        )
        rows.append(row)
    one = rows[0]["chats_per_s"] or None
    for row in rows:
        row["chats_per_s_vs_1_worker"] = round(row["chats_per_s"] / one, 2) if one else None
    return rows


def cpu_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CPU per chat of every target and its ratio to the bare floor, per scenario."""
    by_key = {(r["fake"], r["concurrency"], r["target"]): r for r in rows}
    result = []
    for (fake, concurrency, target), row in by_key.items():
        floor = by_key.get((fake, concurrency, "floor"))
        floor_cpu = floor["cpu_per_chat_ms"] if floor else None
        cpu = row["cpu_per_chat_ms"]
        result.append(
            {
                "fake": fake,
                "concurrency": concurrency,
                "target": target,
                "cpu_per_chat_ms": cpu,
                "cpu_vs_floor": round(cpu / floor_cpu, 2) if cpu and floor_cpu else None,
                "ttft_p50_vs_floor": _ratio(row, floor, "ttft_p50_ms"),
                "ttft_p99_vs_floor": _ratio(row, floor, "ttft_p99_ms"),
                "chats_per_s_vs_floor": _ratio(row, floor, "chats_per_s"),
                "errors": row["errors"],
            }
        )
    return result


def headline(summary: list[dict[str, Any]], config: BenchConfig) -> dict[str, Any]:
    """The headline: CPU per chat per target at the instant fake, `headline_concurrency`."""
    wanted = ("instant", config.headline_concurrency)
    if summary and not any((r["fake"], r["concurrency"]) == wanted for r in summary):
        wanted = (summary[0]["fake"], summary[0]["concurrency"])  # e.g. a --concurrency run
    rows = [r for r in summary if (r["fake"], r["concurrency"]) == wanted]
    return {
        "fake": rows[0]["fake"] if rows else None,
        "concurrency": rows[0]["concurrency"] if rows else None,
        "cpu_per_chat_ms": {r["target"]: r["cpu_per_chat_ms"] for r in rows},
        "cpu_vs_floor": {r["target"]: r["cpu_vs_floor"] for r in rows},
    }


def _ratio(row: dict[str, Any], floor: dict[str, Any] | None, key: str) -> float | None:
    if floor is None or not row[key] or not floor[key]:
        return None
    return round(row[key] / floor[key], 2)


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
    "fake", "target", "concurrency", "chats", "errors", "cpu_per_chat_ms", "server_cpu_util",
    "client_cpu_util", "chats_per_s", "events_per_chat", "ttft_p50_ms", "ttft_p95_ms",
    "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms", "peak_rss_mb", "peak_open_streams",
    "rss_per_stream_kb", "max_loop_lag_ms",
]  # fmt: skip
RATIO_COLUMNS = [
    "fake", "concurrency", "target", "cpu_per_chat_ms", "cpu_vs_floor", "ttft_p50_vs_floor",
    "ttft_p99_vs_floor", "chats_per_s_vs_floor", "errors",
]  # fmt: skip
WORKER_COLUMNS = [
    "workers", "concurrency", "chats", "errors", "chats_per_s", "chats_per_s_vs_1_worker",
    "server_cpu_util", "client_cpu_util", "cpu_per_chat_ms", "ttft_p50_ms", "ttft_p99_ms",
]  # fmt: skip


LINESTYLES = {"floor": "--", "floor+genai": ":", "bookchat-sqlite": "-", "bookchat-postgres": "-."}


def plot_ttft(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """ECDFs of TTFT per target (line style) and concurrency (colour), a panel per profile."""
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
                linestyle=LINESTYLES.get(row["target"], "-"),
                color=colors.get(row["concurrency"], "tab:gray"),
                label=f"{row['target']} c={row['concurrency']}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("time to first token (ms, log)")
        ax.set_ylabel("fraction of chats")
        ax.set_title(f"TTFT, fake model: {profile}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "bookchat SQLite (solid), PostgreSQL (dash-dot), floor (dashed), floor+genai (dotted)"
    )
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
        report["placement"] = chat["placement"]
        report["chat"] = chat["chat"]
        report["ratios"] = cpu_summary(chat["chat"])
        report["cpu_per_chat"] = headline(report["ratios"], config)
        report["workers"] = chat["workers"]
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
        head = report["cpu_per_chat"]
        parts += [
            "",
            f"## CPU per chat (server utime+stime ÷ chats, fake {head['fake']}, "
            f"c={head['concurrency']}; {report['placement']})",
            "",
        ]
        parts.append(
            markdown_table(
                [
                    {"target": t, "cpu_per_chat_ms": ms, "x_floor": head["cpu_vs_floor"].get(t)}
                    for t, ms in head["cpu_per_chat_ms"].items()
                ],
                ["target", "cpu_per_chat_ms", "x_floor"],
            )
        )
        parts += ["", "## Every scenario against the bare floor (same run)", ""]
        parts.append(markdown_table(report["ratios"], RATIO_COLUMNS))
        parts += ["", "## Chat scenarios (one raw-socket client process; granian, 1 worker)", ""]
        parts.append(markdown_table(report["chat"], CHAT_COLUMNS))
        if report.get("workers"):
            parts += ["", "## Workers: bookchat on SQLite, instant fake", ""]
            parts.append(markdown_table(report["workers"], WORKER_COLUMNS))
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
    if args.postgres_url is not None:
        config.postgres_url = args.postgres_url or None
    # LLM_PROVIDER=openai bookchat bench: the same as --provider openai.
    config.provider = args.provider or os.environ.get("LLM_PROVIDER") or "gemini"
    run_bench(config)
