"""In-test fakes for the answer pipeline: a tiny BM25 store, failing store/embedder, generators."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from bookchat.llm.base import (
    GenerationError,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TokenDelta,
)
from bookchat.search.types import (
    ChunkPayload,
    ChunkRecord,
    SearchFilters,
    SearchHit,
    StoredPoint,
    VectorStoreUnavailableError,
)
from bookchat.text import stem, tokenize


def chunk(
    doc_path: str,
    title: str,
    section: str,
    text: str,
    *,
    chunk_index: int = 0,
    module: str = "",
    content_type: str = "prose",
    tags: Sequence[str] = (),
) -> ChunkPayload:
    """A hand-written chunk payload."""
    slug = section.lower().replace(" ", "-")
    return ChunkPayload(
        doc_path=doc_path,
        url=f"https://book.example/{doc_path}#{slug}",
        title=title,
        section=section,
        heading_breadcrumb=[title, section] if section else [title],
        module=module,
        chapter=doc_path.rsplit("/", 1)[-1],
        content_type=content_type,  # type: ignore[arg-type]
        tags=list(tags),
        chunk_index=chunk_index,
        content_hash=hashlib.sha256(f"{doc_path}|{section}|{text}".encode()).hexdigest(),
        text=text,
        word_count=len(text.split()),
        ingested_at="2025-01-01T00:00:00Z",
    )


def _terms(text: str) -> list[str]:
    return [stem(t) for t in tokenize(text)]


class FakeBM25Store:
    """A BM25 `VectorStore` over a list of payloads; records every search call."""

    def __init__(self, payloads: Sequence[ChunkPayload], *, k1: float = 1.2, b: float = 0.75):
        self.payloads = list(payloads)
        self.calls: list[dict[str, object]] = []
        self.texts_read = 0
        self._docs = [
            Counter(_terms(f"{p.title} {' '.join(p.heading_breadcrumb)} {p.text}"))
            for p in self.payloads
        ]
        self._avg = sum(sum(d.values()) for d in self._docs) / max(1, len(self._docs))
        self.k1, self.b = k1, b

    def _idf(self, term: str) -> float:
        df = sum(1 for d in self._docs if term in d)
        n = len(self._docs)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    @staticmethod
    def _passes(p: ChunkPayload, f: SearchFilters | None) -> bool:
        if f is None:
            return True
        return (
            (not f.modules or p.module in f.modules)
            and (not f.chapters or p.chapter in f.chapters)
            and (not f.content_types or p.content_type in f.content_types)
            and (not f.tags or bool(set(p.tags) & set(f.tags)))
            and (not f.doc_paths or p.doc_path in f.doc_paths)
        )

    async def search(
        self,
        *,
        query_text: str,
        dense: list[float] | None,
        filters: SearchFilters | None,
        limit: int,
        topic: Sequence[str] = (),
    ) -> list[SearchHit]:
        self.calls.append(
            {"query_text": query_text, "dense": dense, "limit": limit, "topic": tuple(topic)}
        )
        q = set(_terms(query_text))
        scored: list[tuple[float, int]] = []
        for i, (p, d) in enumerate(zip(self.payloads, self._docs, strict=True)):
            if not self._passes(p, filters):
                continue
            length = sum(d.values())
            s = 0.0
            for t in q:
                tf = d.get(t, 0)
                if tf:
                    norm = (
                        tf
                        * (self.k1 + 1)
                        / (tf + self.k1 * (1 - self.b + self.b * length / self._avg))
                    )
                    s += self._idf(t) * norm
            if s > 0:
                scored.append((s, i))
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [
            SearchHit(id=f"id-{i}", score=s, payload=self.payloads[i]) for s, i in scored[:limit]
        ]

    async def ensure_collection(
        self,
        *,
        dense_dim: int | None,
        embedding_model: str | None,
        recreate: bool = False,
        embedding_provider: str | None = None,
    ) -> None:
        return None

    async def upsert(self, records: Sequence[ChunkRecord]) -> None:
        raise NotImplementedError

    async def set_payloads(self, payloads: Sequence[tuple[str, ChunkPayload]]) -> None:
        raise NotImplementedError

    async def delete(self, ids: Sequence[str]) -> None:
        raise NotImplementedError

    async def stored_points(self) -> list[StoredPoint]:
        return []

    async def texts(self) -> list[str]:
        self.texts_read += 1
        return [f"{p.title}\n{' '.join(p.heading_breadcrumb)}\n{p.text}" for p in self.payloads]

    async def count(self) -> int:
        return len(self.payloads)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RaisingStore:
    """A store that fails the test on any use."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"vector store touched: {name}")


class UnavailableStore(FakeBM25Store):
    """A store whose search fails like a store that is down."""

    def __init__(self) -> None:
        super().__init__([])

    async def search(self, **kwargs: object) -> list[SearchHit]:
        raise VectorStoreUnavailableError("connection refused")


class RaisingEmbedder:
    """An embedder that fails the test on any use."""

    provider = "fake"
    model = "raising"
    dim = 8

    async def embed_documents(self, texts: list[str], titles: list[str]) -> list[list[float]]:
        raise AssertionError("embedder touched")

    async def embed_query(self, text: str) -> list[float]:
        raise AssertionError("embedder touched")


class CountingEmbedder:
    """Returns a fixed vector and counts calls."""

    provider = "fake"
    model = "counting"
    dim = 4

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def embed_documents(self, texts: list[str], titles: list[str]) -> list[list[float]]:
        return [[0.5, 0.5, 0.5, 0.5] for _ in texts]

    async def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return [0.5, 0.5, 0.5, 0.5]


class ScriptedGenerator:
    """Streams the given pieces (then optionally fails) and records every request."""

    name = "scripted"

    def __init__(self, pieces: Sequence[str], *, fail_after: int | None = None) -> None:
        self.pieces = list(pieces)
        self.fail_after = fail_after
        self.requests: list[GenerationRequest] = []
        self.closed = False

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.requests.append(request)
        try:
            for i, piece in enumerate(self.pieces):
                if self.fail_after is not None and i == self.fail_after:
                    raise GenerationError("generation_failed", "stream cut", retryable=True)
                yield TokenDelta(text=piece)
            yield GenerationFinished(
                finish_reason="stop", model=self.name, prompt_tokens=42, completion_tokens=7
            )
        finally:
            self.closed = True


class RaisingGenerator:
    """A generator that fails the test if it is ever asked to stream."""

    name = "raising"

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        raise AssertionError("generator called")


# A small book about robots: each section is one chunk.
SAMPLE_CHUNKS: list[ChunkPayload] = [
    chunk(
        "intro/embodied-ai", "Embodied AI", "What is embodied AI",
        "Embodied AI refers to artificial intelligence systems that have a physical body "
        "and interact with the real world through sensors and actuators. Unlike chatbots, "
        "an embodied agent must act under uncertainty, in real time.",
        module="intro",
    ),
    chunk(
        "ros/nodes", "ROS 2 Nodes", "Nodes",
        "A node is a process that performs one computation, such as reading a camera or "
        "planning a path. Nodes communicate over topics, services and actions. Keeping "
        "nodes small makes them easy to test and reuse.",
        module="ros",
    ),
    chunk(
        "ros/nodes", "ROS 2 Nodes", "Lifecycle",
        "Managed nodes have a lifecycle with the states unconfigured, inactive, active and "
        "finalized. A launch system drives the transitions, e.g. configure and activate.",
        module="ros", chunk_index=1,
    ),
    chunk(
        "control/pid", "PID Control", "PID controllers",
        "A PID controller computes a command from the error between a setpoint and a "
        "measurement: a proportional term, an integral term and a derivative term. Tuning "
        "the three gains trades speed of response against overshoot.",
        module="control",
    ),
    chunk(
        "control/pid", "PID Control", "Limitations of PID",
        "PID control has limitations: integral windup when actuators saturate, noise "
        "amplification by the derivative term, and poor performance on strongly nonlinear "
        "plants. Gain scheduling or model predictive control address these limitations.",
        module="control", chunk_index=1,
    ),
    chunk(
        "sim/digital-twin", "Simulation", "Digital twins",
        "A digital twin is a virtual replica of a physical robot that mirrors its state in "
        "real time. Domain randomization varies textures, masses and friction in simulation "
        "so that policies transfer from simulation to the real robot.",
        module="sim",
    ),
    chunk(
        "sensors/lidar", "Sensors", "LiDAR",
        "LiDAR measures distance by timing laser pulses. A spinning LiDAR produces a point "
        "cloud of the surroundings, used for mapping and obstacle detection.",
        module="sensors",
    ),
]  # fmt: skip
