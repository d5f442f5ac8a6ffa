"""Retrieval latency: embedded qdrant-edge vs qdrant-client local mode.

Builds N synthetic chunks (Zipf-distributed words from a fixed vocabulary, seeded),
with random unit dense vectors, loads them into each engine through the project's
`VectorStore` implementations, and times hybrid and BM25-only searches one after
another while a ticker coroutine records how late the event loop wakes it up.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import AsyncQdrantClient

from bookchat.search.embedded import EmbeddedVectorStore
from bookchat.search.qdrant_server import QdrantServerStore
from bookchat.search.types import ChunkPayload, ChunkRecord, VectorStore

ENGINES = ("embedded", "local")
_TICK_S = 0.001
_DOMAIN_TEXT = (
    "robot humanoid joint actuator torque sensor lidar camera depth imu kinematics "
    "dynamics balance gait walking controller feedback loop pid trajectory planner motion "
    "policy reinforcement learning reward simulation gazebo isaac physics contact friction "
    "mass inertia node topic service action message publisher subscriber launch parameter "
    "transform frame odometry localization mapping slam navigation obstacle costmap path "
    "grasp manipulator gripper end effector inverse forward vision segmentation detection "
    "language model transformer embedding perception fusion kalman filter estimate noise "
    "latency bandwidth battery power motor encoder servo firmware microcontroller safety "
)
_DOMAIN_WORDS = _DOMAIN_TEXT.split()


def _vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    """Real domain words first (most frequent), then pronounceable made-up words."""
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "st", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    words = list(dict.fromkeys(_DOMAIN_WORDS))
    seen = set(words)
    while len(words) < size:
        syllables = rng.integers(2, 4)
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _zipf_weights(size: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1)
    return weights / weights.sum()


def synthetic_chunks(
    count: int, *, dim: int = 768, seed: int = 0, vocabulary_size: int = 4000
) -> tuple[list[ChunkRecord], list[str]]:
    """`count` chunks of 150–400 Zipf-sampled words with unit dense vectors, and the vocabulary."""
    rng = np.random.default_rng(seed)
    vocabulary = _vocabulary(vocabulary_size, rng)
    weights = _zipf_weights(len(vocabulary))
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    content_types = ("prose", "prose", "prose", "code", "table", "lab")
    records = []
    for n in range(count):
        words = rng.choice(vocabulary, size=int(rng.integers(150, 400)), p=weights)
        text = " ".join(words)
        module, chapter = f"module-{n % 8}", f"chapter-{n % 97}"
        payload = ChunkPayload(
            doc_path=f"{module}/{chapter}",
            url=f"https://book.example/{module}/{chapter}#part-{n}",
            title=chapter.replace("-", " ").title(),
            section=f"Part {n}",
            heading_breadcrumb=[module, chapter, f"Part {n}"],
            module=module,
            chapter=chapter,
            content_type=content_types[n % len(content_types)],  # type: ignore[arg-type]
            tags=[f"tag-{n % 13}"],
            chunk_index=n,
            content_hash=f"{n:064x}",
            text=text,
            word_count=len(words),
            ingested_at="2025-01-01T00:00:00Z",
        )
        records.append(
            ChunkRecord(
                id=f"00000000-0000-4000-8000-{n:012x}", payload=payload, dense=vectors[n].tolist()
            )
        )
    return records, vocabulary


def _percentile_ms(samples: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples), q)) * 1000, 3)


async def _time_queries(
    store: VectorStore, queries: Sequence[tuple[str, list[float]]], *, hybrid: bool, limit: int
) -> tuple[list[float], float]:
    """Sequential search latencies and the worst event-loop lag seen meanwhile (seconds)."""
    worst_lag = 0.0
    running = True

    async def ticker() -> None:
        # A loop that is free wakes this within a fraction of a millisecond of _TICK_S.
        nonlocal worst_lag
        while running:
            started = time.perf_counter()
            await asyncio.sleep(_TICK_S)
            worst_lag = max(worst_lag, time.perf_counter() - started - _TICK_S)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    latencies = []
    for text, dense in queries:
        started = time.perf_counter()
        await store.search(
            query_text=text, dense=dense if hybrid else None, filters=None, limit=limit
        )
        latencies.append(time.perf_counter() - started)
    running = False
    await tick
    return latencies, worst_lag


async def _bench_store(
    engine: str,
    store: VectorStore,
    records: Sequence[ChunkRecord],
    queries: Sequence[tuple[str, list[float]]],
    *,
    dim: int,
    limit: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    await store.ensure_collection(dense_dim=dim, embedding_model="bench-random", recreate=True)
    for start in range(0, len(records), 500):
        await store.upsert(records[start : start + 500])
    load_s = time.perf_counter() - started
    await store.search(query_text=queries[0][0], dense=queries[0][1], filters=None, limit=limit)
    hybrid, hybrid_lag = await _time_queries(store, queries, hybrid=True, limit=limit)
    bm25, bm25_lag = await _time_queries(store, queries, hybrid=False, limit=limit)
    return {
        "engine": engine,
        "chunks": len(records),
        "queries": len(queries),
        "load_s": round(load_s, 2),
        "hybrid_p50_ms": _percentile_ms(hybrid, 50),
        "hybrid_p99_ms": _percentile_ms(hybrid, 99),
        "bm25_p50_ms": _percentile_ms(bm25, 50),
        "bm25_p99_ms": _percentile_ms(bm25, 99),
        "max_loop_lag_ms": round(max(hybrid_lag, bm25_lag) * 1000, 3),
    }


async def bench_retrieval(
    sizes: Sequence[int] = (1000, 5000, 10000),
    queries: int = 200,
    *,
    engines: Sequence[str] = ENGINES,
    local_queries: int | None = 50,
    dim: int = 768,
    limit: int = 5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Hybrid and BM25 query latency (p50/p99 ms) and worst loop lag per engine and size.

    `engines`: "embedded" (qdrant-edge) and/or "local" (qdrant-client in-memory local
    mode). Local mode is ~100× slower, so it runs `local_queries` queries (None: all).
    """
    results: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed + 1)
    for size in sizes:
        records, vocabulary = synthetic_chunks(size, dim=dim, seed=seed)
        weights = _zipf_weights(len(vocabulary))
        query_vectors = rng.standard_normal((queries, dim)).astype(np.float32)
        query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
        query_set = [
            (" ".join(rng.choice(vocabulary, size=int(rng.integers(3, 8)), p=weights)), v.tolist())
            for v in query_vectors
        ]
        for engine in engines:
            if engine == "embedded":
                with tempfile.TemporaryDirectory(prefix="bookchat-bench-") as tmp:
                    store: VectorStore = EmbeddedVectorStore(Path(tmp), "bench")
                    try:
                        results.append(
                            await _bench_store(
                                engine, store, records, query_set, dim=dim, limit=limit
                            )
                        )
                    finally:
                        await store.close()
            elif engine == "local":
                store = QdrantServerStore(AsyncQdrantClient(location=":memory:"), "bench")
                subset = query_set[: local_queries or len(query_set)]
                try:
                    results.append(
                        await _bench_store(engine, store, records, subset, dim=dim, limit=limit)
                    )
                finally:
                    await store.close()
            else:
                raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    return results


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The results as a plain-text table, one row per engine and size."""
    columns = list(results[0]) if results else []
    rows = [columns, *([str(r[c]) for c in columns] for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


if __name__ == "__main__":
    print(format_table(asyncio.run(bench_retrieval(sizes=(1000, 5000, 10000)))))
