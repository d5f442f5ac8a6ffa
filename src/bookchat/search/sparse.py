"""BM25 sparse vectors, shared by the embedded engine and a Qdrant server.

The encoder is `qdrant_edge.Bm25` (Rust, in-process, no model download): English
tokenizer, stop words and Snowball stemming, terms hashed to u32 indices.

- Documents get BM25 term-frequency weights `tf·(k+1) / (tf + k·(1 − b + b·len/avg_len))`.
- Queries weigh each unique term by how specific its word is (`text.specificity`, rarity
  in general English): `QUERY_WEIGHT_FLOOR` for everyday words ("keep", "find",
  "combine") up to 1.0 from `QUERY_FULL_WEIGHT_SPECIFICITY` on ("IMU", "balance",
  "gimbal"). Readers ask in everyday words the book happens to use somewhere else ("keep"
  matched "Keep last N messages" before the balance section); the book's IDF alone
  cannot tell a rare everyday word from the question's subject.
- Both are read through `text.spell_symbols` first: "A*", "RRT*" and "C++" are words
  ("astar", "rrtstar", "cplusplus") the analyser keeps, not a stop word and a symbol.
- The IDF factor is not in the vectors: the collection's sparse vector is created with
  the IDF modifier, so the engine computes IDF from the live collection at query time.

Both vector stores call these functions, so a collection's sparse vectors mean the
same thing whichever engine holds them. `SPARSE_MODEL` names the encoding and is stored
with the collection so a change of encoder is caught like a change of dense model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import msgspec
import qdrant_edge

from bookchat.search.types import ChunkPayload
from bookchat.text import specificity, spell_symbols

# Mean chunk length in BM25 tokens (stop words removed) for ~500-token chunks.
BM25_AVG_LEN = 256.0
BM25_K = 1.2
BM25_B = 0.75

# A follow-up's topic words (from the earlier question) weigh this much: "What are its
# main drawbacks?" after a lidar question is about the lidar, whatever else says "drawbacks".
TOPIC_WEIGHT = 2.0
# Query term weights (query side only: changing them needs no re-ingest). Set on the
# sample book's calibration reader questions by their recall@1 and MRR (its answered@5 is
# the same from a floor of 0.2 to 0.5), then checked on the held-out sets and an unseen book.
QUERY_WEIGHT_FLOOR = 0.2
QUERY_FULL_WEIGHT_SPECIFICITY = 2.0
_QUERY_WORD_RE = re.compile(r"[^\s\"'“”‘’()\[\]{},;:!?]+")

# Changing the encoder or its parameters changes this name and forces `--recreate`.
# "+crumbs": documents are indexed with their heading breadcrumb (document_text).
# "+symbols": names spelt with symbols are rewritten first (`text.spell_symbols`).
SPARSE_MODEL = f"qdrant-edge-bm25-en/k{BM25_K}-b{BM25_B}-avg{BM25_AVG_LEN:g}+crumbs+symbols"


class SparseVector(msgspec.Struct, frozen=True):
    """Engine-neutral sparse vector: sorted unique u32 term ids and their weights."""

    indices: list[int]
    values: list[float]

    def is_empty(self) -> bool:
        """True when the text had no indexable terms (e.g. only stop words)."""
        return not self.indices


@lru_cache(maxsize=1)
def _encoder() -> qdrant_edge.Bm25:
    # One encoder per process: construction builds the stemmer and stop-word tables.
    config = qdrant_edge.Bm25Config(k=BM25_K, b=BM25_B, avg_len=BM25_AVG_LEN, language="english")
    return qdrant_edge.Bm25(config)


def document_text(payload: ChunkPayload) -> str:
    """What BM25 indexes for a chunk: its breadcrumb (page title, headings) and text.

    Headings name the topic even when the body does not repeat it ("Lidar Range Sensing"
    over a section that says "the sensor").
    """
    return " › ".join(payload.heading_breadcrumb or [payload.title]) + "\n" + payload.text


def encode_document(text: str) -> SparseVector:
    """BM25 term-frequency vector for a stored chunk (IDF is applied by the engine)."""
    vector = _encoder().embed_document(spell_symbols(text))
    return SparseVector(indices=list(vector.indices), values=list(vector.values))


@lru_cache(maxsize=4096)
def _word_weights(word: str) -> tuple[tuple[int, float], ...]:
    """The term ids of one query word and the weight its specificity gives them."""
    weight = QUERY_WEIGHT_FLOOR + (1.0 - QUERY_WEIGHT_FLOOR) * min(
        1.0, specificity(word.strip(".-")) / QUERY_FULL_WEIGHT_SPECIFICITY
    )
    return tuple((i, weight) for i in _encoder().embed_query(word).indices)


def encode_query(text: str, topic: Sequence[str] = ()) -> SparseVector:
    """Query vector: each unique stemmed, non-stop-word term, weighted by specificity;
    the terms of `topic` (words of `text`, a follow-up's earlier topic) weigh
    `TOPIC_WEIGHT`."""
    spelled = spell_symbols(text)
    vector = _encoder().embed_query(spelled)
    weights: dict[int, float] = {}
    for word in _QUERY_WORD_RE.findall(spelled.lower()):
        for index, weight in _word_weights(word):
            if weight > weights.get(index, 0.0):
                weights[index] = weight
    for word in topic:
        for index, _ in _word_weights(spell_symbols(word).lower()):
            weights[index] = TOPIC_WEIGHT
    indices = list(vector.indices)
    return SparseVector(indices=indices, values=[weights.get(i, 1.0) for i in indices])
