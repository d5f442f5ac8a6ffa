"""One suite for both VectorStore implementations (embedded qdrant-edge, Qdrant client)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from bookchat.search.embedded import EmbeddedVectorStore
from bookchat.search.factory import make_vector_store
from bookchat.search.qdrant_server import QdrantServerStore
from bookchat.search.sparse import (
    QUERY_WEIGHT_FLOOR,
    TOPIC_WEIGHT,
    encode_document,
    encode_query,
)
from bookchat.search.types import (
    ChunkPayload,
    ChunkRecord,
    CollectionMismatchError,
    SearchFilters,
    VectorStore,
    VectorStoreUnavailableError,
)

DIM = 4
MODEL = "test-embedding"
COLLECTION = "book"

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


def _payload(n: int, text: str, **fields: object) -> ChunkPayload:
    values: dict[str, object] = {
        "doc_path": f"mod-{n % 2}/page-{n}",
        "url": f"https://book.test/mod-{n % 2}/page-{n}#s",
        "title": f"Page {n}",
        "section": "S",
        "heading_breadcrumb": [f"Page {n}", "S"],
        "module": f"mod-{n % 2}",
        "chapter": f"page-{n}",
        "content_type": "prose",
        "tags": [f"tag-{n}", "all"],
        "chunk_index": 0,
        "content_hash": f"hash-{n}",
        "text": text,
        "word_count": len(text.split()),
        "ingested_at": "2025-01-01T00:00:00Z",
    }
    values.update(fields)
    return ChunkPayload(**values)  # type: ignore[arg-type]


def _unit(axis: int) -> list[float]:
    vector = [0.0] * DIM
    vector[axis] = 1.0
    return vector


TEXTS = [
    "Humanoid robots walk with a balance controller that tracks the zero moment point.",
    "ROS 2 nodes publish messages on topics; a subscriber callback receives each message.",
    "Lidar sensors measure distance with laser pulses and build a point cloud of the room.",
    "Reinforcement learning trains a policy in simulation before it runs on the real robot.",
]


def _records() -> list[ChunkRecord]:
    code = {"content_type": "code"}
    return [
        ChunkRecord(
            id=f"00000000-0000-4000-8000-00000000000{n}",
            payload=_payload(n, text, **(code if n == 1 else {})),
            dense=_unit(n),
        )
        for n, text in enumerate(TEXTS)
    ]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


StoreFactory = Callable[[], VectorStore]


@pytest.fixture(params=["embedded", "server"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Builds stores of one kind that share one backing collection."""
    opened: list[VectorStore] = []
    client = AsyncQdrantClient(location=":memory:")

    def factory() -> VectorStore:
        store: VectorStore
        if request.param == "embedded":
            store = EmbeddedVectorStore(tmp_path / "qdrant", COLLECTION)
        else:
            store = QdrantServerStore(client, COLLECTION)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        if isinstance(store, EmbeddedVectorStore):
            await store.close()
    await client.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> VectorStore:
    store = make_store()
    await store.ensure_collection(dense_dim=DIM, embedding_model=MODEL)
    await store.upsert(_records())
    return store


async def test_ensure_collection_creates_an_empty_collection(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.count() == 0  # missing collection reads as empty
    await store.ensure_collection(dense_dim=DIM, embedding_model=MODEL)
    await store.ensure_collection(dense_dim=DIM, embedding_model=MODEL)
    assert await store.count() == 0
    await store.ping()


@pytest.mark.parametrize(
    ("dense_dim", "model"),
    [(8, MODEL), (DIM, "other-model"), (None, None)],
    ids=["other-dim", "other-model", "bm25-only"],
)
async def test_mismatched_collection_names_the_fix(
    store: VectorStore, dense_dim: int | None, model: str | None
) -> None:
    with pytest.raises(CollectionMismatchError, match=r"bookchat ingest --recreate"):
        await store.ensure_collection(dense_dim=dense_dim, embedding_model=model)
    assert await store.count() == len(TEXTS)


async def test_recreate_drops_points_and_changes_the_schema(store: VectorStore) -> None:
    await store.ensure_collection(dense_dim=None, embedding_model=None, recreate=True)
    assert await store.count() == 0
    await store.upsert([ChunkRecord(id=r.id, payload=r.payload) for r in _records()])
    hits = await store.search(query_text="lidar laser", dense=_unit(0), filters=None, limit=3)
    assert hits[0].payload.chapter == "page-2"  # dense ignored on a BM25-only collection


async def test_stored_points_lists_every_point(store: VectorStore) -> None:
    points = await store.stored_points()
    assert sorted((p.doc_path, p.content_hash, p.chunk_index) for p in points) == sorted(
        (f"mod-{n % 2}/page-{n}", f"hash-{n}", 0) for n in range(len(TEXTS))
    )
    assert {p.id for p in points} == {r.id for r in _records()}


async def test_upsert_same_id_replaces_the_point(store: VectorStore) -> None:
    record = _records()[0]
    changed = ChunkRecord(
        id=record.id, payload=_payload(0, "Quadruped gait.", content_hash="new"), dense=_unit(0)
    )
    await store.upsert([changed])
    assert await store.count() == len(TEXTS)
    hits = await store.search(query_text="quadruped gait", dense=None, filters=None, limit=1)
    assert hits[0].id == record.id and hits[0].payload.content_hash == "new"


async def test_set_payloads_keeps_vectors(store: VectorStore) -> None:
    record = _records()[2]
    new_payload = _payload(2, "Rewritten text.", content_hash="moved", chunk_index=7)
    await store.set_payloads([(record.id, new_payload)])
    # The BM25 vector still reflects the old text and the dense vector is unchanged.
    bm25 = await store.search(query_text="lidar point cloud", dense=None, filters=None, limit=1)
    assert bm25[0].id == record.id and bm25[0].payload == new_payload
    hybrid = await store.search(query_text="zzz", dense=_unit(2), filters=None, limit=1)
    assert hybrid[0].id == record.id
    stored = {p.id: p for p in await store.stored_points()}
    assert stored[record.id].content_hash == "moved" and stored[record.id].chunk_index == 7


async def test_a_write_replaces_payloads_already_read(store: VectorStore) -> None:
    # The embedded store keeps payloads between queries: a write must not leave old ones.
    record = _records()[2]
    before = await store.search(query_text="lidar point cloud", dense=None, filters=None, limit=1)
    assert before[0].payload == record.payload
    rewritten = _payload(2, "Rewritten text.", content_hash="moved")
    await store.set_payloads([(record.id, rewritten)])
    after = await store.search(query_text="lidar point cloud", dense=None, filters=None, limit=1)
    assert after[0].id == record.id and after[0].payload == rewritten
    replaced = _payload(2, "Lidar point cloud again.", content_hash="again")
    await store.upsert([ChunkRecord(id=record.id, payload=replaced, dense=_unit(2))])
    dense = await store.search(query_text="zzz", dense=_unit(2), filters=None, limit=1)
    assert dense[0].payload == replaced


async def test_delete_removes_points(store: VectorStore) -> None:
    ids = [r.id for r in _records()[:2]]
    await store.delete(ids)
    await store.delete(ids)  # deleting again is harmless
    assert await store.count() == len(TEXTS) - 2
    assert not {p.id for p in await store.stored_points()} & set(ids)


async def test_bm25_search_ranks_the_matching_chunk_first(store: VectorStore) -> None:
    # Stemming: "walking humanoids" matches "Humanoid robots walk".
    hits = await store.search(query_text="walking humanoids", dense=None, filters=None, limit=3)
    assert hits[0].payload.chapter == "page-0"
    assert hits[0].score > 0
    assert hits[0].payload == _records()[0].payload  # payload round-trips into ChunkPayload


async def test_bm25_search_without_terms_returns_nothing(store: VectorStore) -> None:
    assert await store.search(query_text="the and of", dense=None, filters=None, limit=5) == []


async def test_hybrid_search_fuses_dense_and_bm25(store: VectorStore) -> None:
    # Dense alone points at page-3; BM25 alone points at page-1; RRF puts both on top.
    hits = await store.search(
        query_text="subscriber callback", dense=_unit(3), filters=None, limit=4
    )
    assert {h.payload.chapter for h in hits[:2]} == {"page-1", "page-3"}
    dense_only = await store.search(query_text="zzz", dense=_unit(3), filters=None, limit=1)
    assert dense_only[0].payload.chapter == "page-3"


@pytest.mark.parametrize(
    ("filters", "chapters"),
    [
        (SearchFilters(modules=("mod-1",)), {"page-1", "page-3"}),
        (SearchFilters(chapters=("page-0", "page-2")), {"page-0", "page-2"}),
        (SearchFilters(content_types=("code",)), {"page-1"}),
        (SearchFilters(tags=("tag-3",)), {"page-3"}),
        (SearchFilters(doc_paths=("mod-0/page-2",)), {"page-2"}),
        (SearchFilters(modules=("mod-0",), tags=("tag-2", "tag-1")), {"page-2"}),
    ],
    ids=["modules", "chapters", "content_types", "tags", "doc_paths", "combined"],
)
@pytest.mark.parametrize("hybrid", [False, True], ids=["bm25", "hybrid"])
async def test_filters_restrict_hits(
    store: VectorStore, filters: SearchFilters, chapters: set[str], hybrid: bool
) -> None:
    query = "robot message laser policy balance"
    dense = [0.5] * DIM if hybrid else None
    hits = await store.search(query_text=query, dense=dense, filters=filters, limit=10)
    assert {h.payload.chapter for h in hits} == chapters


async def test_search_on_a_missing_collection_is_empty(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.search(query_text="robot", dense=None, filters=None, limit=5) == []
    assert await store.stored_points() == []


async def test_embedded_store_persists_across_reopen(tmp_path: Path) -> None:
    first = EmbeddedVectorStore(tmp_path, COLLECTION)
    await first.ensure_collection(dense_dim=DIM, embedding_model=MODEL)
    await first.upsert(_records())
    await first.close()
    second = EmbeddedVectorStore(tmp_path, COLLECTION)
    try:
        assert await second.count() == len(TEXTS)
        hits = await second.search(query_text="lidar", dense=None, filters=None, limit=1)
        assert hits[0].payload.chapter == "page-2"
        with pytest.raises(CollectionMismatchError):
            await second.ensure_collection(dense_dim=8, embedding_model=MODEL)
    finally:
        await second.close()


async def test_embedded_store_refuses_a_second_opener_clearly(tmp_path: Path) -> None:
    owner = EmbeddedVectorStore(tmp_path, COLLECTION)
    await owner.ensure_collection(dense_dim=None, embedding_model=None)
    intruder = EmbeddedVectorStore(tmp_path, COLLECTION)
    try:
        with pytest.raises(VectorStoreUnavailableError, match="another process"):
            await intruder.count()
        with pytest.raises(VectorStoreUnavailableError, match="QDRANT_URL"):
            await intruder.ping()
    finally:
        await owner.close()
    assert await intruder.count() == 0  # free again once the owner closed
    await intruder.close()


async def test_unreachable_server_raises_unavailable() -> None:
    client = AsyncQdrantClient(
        url=f"http://127.0.0.1:{_closed_port()}", timeout=1, check_compatibility=False
    )
    store = QdrantServerStore(client, COLLECTION)
    try:
        with pytest.raises(VectorStoreUnavailableError):
            await store.ping()
        with pytest.raises(VectorStoreUnavailableError):
            await store.ensure_collection(dense_dim=DIM, embedding_model=MODEL)
        with pytest.raises(VectorStoreUnavailableError):
            await store.search(query_text="robot", dense=_unit(0), filters=None, limit=3)
        with pytest.raises(VectorStoreUnavailableError):
            await store.count()
    finally:
        await store.close()


async def test_make_vector_store_picks_the_implementation(tmp_path: Path) -> None:
    embedded = make_vector_store(
        qdrant_url=None, qdrant_api_key=None, collection=COLLECTION, embedded_path=tmp_path
    )
    assert isinstance(embedded, EmbeddedVectorStore)
    server = make_vector_store(
        qdrant_url="http://127.0.0.1:1",
        qdrant_api_key=None,
        collection=COLLECTION,
        embedded_path=tmp_path,
    )
    assert isinstance(server, QdrantServerStore)
    await server.close()


def test_sparse_encoding_stems_documents_and_weighs_query_words_by_specificity() -> None:
    query = encode_query("walking humanoids walk")
    assert len(query.indices) == 2  # walk/walking share a stem
    # A word rare in everyday English weighs more than an everyday one the book may use
    # anywhere ("keep" matched "Keep last N messages" before the balance section).
    mixed = encode_query("keep the IMU level")
    weights = dict(zip(mixed.indices, mixed.values, strict=True))
    keep, imu = encode_query("keep").indices[0], encode_query("IMU").indices[0]
    assert weights[imu] == 1.0 and QUERY_WEIGHT_FLOOR <= weights[keep] < 0.5
    # A follow-up's earlier topic outweighs the follow-up's own words.
    follow = encode_query("what are its main drawbacks? lidar", topic=["lidar"])
    weights = dict(zip(follow.indices, follow.values, strict=True))
    assert weights[encode_query("lidar").indices[0]] == TOPIC_WEIGHT
    assert weights[encode_query("drawbacks").indices[0]] == 1.0
    document = encode_document("Humanoid robots walk; the robot walked.")
    assert set(query.indices) <= set(document.indices)
    weights = dict(zip(document.indices, document.values, strict=True))
    robot = encode_query("robot").indices[0]
    humanoid = encode_query("humanoid").indices[0]
    assert weights[robot] > weights[humanoid]  # term frequency 2 beats 1
    assert encode_query("the of and").is_empty()


async def test_dense_search_returns_the_cosine_of_the_nearest_chunks(store: VectorStore) -> None:
    search_dense = store.search_dense  # type: ignore[attr-defined]
    hits = await search_dense(dense=_unit(2), filters=None, limit=2)
    assert hits[0].payload.text == TEXTS[2] and hits[0].score == pytest.approx(1.0)
    assert hits[1].score == pytest.approx(0.0, abs=1e-6)  # orthogonal unit vectors
    only_code = SearchFilters(content_types=["code"])
    (code,) = await search_dense(dense=_unit(2), filters=only_code, limit=5)
    assert code.payload.text == TEXTS[1]


async def test_texts_lists_every_chunks_title_headings_and_text(store: VectorStore) -> None:
    texts = await store.texts()
    assert len(texts) == len(TEXTS)
    for text in TEXTS:
        assert sum(text in t for t in texts) == 1
    assert sorted(t.split("\n")[:3] for t in texts) == sorted(
        [f"Page {n}", f"Page {n}", "S"] for n in range(len(TEXTS))
    )


async def test_texts_of_a_missing_collection_is_empty(make_store: StoreFactory) -> None:
    assert await make_store().texts() == []


async def test_the_embedded_stores_generation_moves_on_every_write(tmp_path: Path) -> None:
    store = EmbeddedVectorStore(tmp_path / "qdrant", COLLECTION)
    try:
        await store.ensure_collection(dense_dim=DIM, embedding_model=MODEL)
        before = store.generation
        await store.upsert(_records())
        after = store.generation
        assert after != before
        await store.search(query_text="lidar", dense=None, filters=None, limit=3)
        assert store.generation == after  # reads do not move it
    finally:
        await store.close()
