"""BM25 sparse vectors, shared by the embedded engine and a Qdrant server.

The encoder is `qdrant_edge.Bm25` (Rust, in-process, no model download): English
tokenizer, stop words and Snowball stemming, terms hashed to u32 indices.

- Documents get BM25 term-frequency weights `tf·(k+1) / (tf + k·(1 − b + b·len/avg_len))`.
- Queries get weight 1.0 per unique term.
- Both are read through `text.spell_symbols` first: "A*", "RRT*" and "C++" are words
  ("astar", "rrtstar", "cplusplus") the analyser keeps, not a stop word and a symbol.
- The IDF factor is not in the vectors: the collection's sparse vector is created with
  the IDF modifier, so the engine computes IDF from the live collection at query time.

Both vector stores call these functions, so a collection's sparse vectors mean the
same thing whichever engine holds them. `SPARSE_MODEL` names the encoding and is stored
with the collection so a change of encoder is caught like a change of dense model.
"""

from __future__ import annotations

from functools import lru_cache

import msgspec
import qdrant_edge

from bookchat.search.types import ChunkPayload
from bookchat.text import spell_symbols

# Mean chunk length in BM25 tokens (stop words removed) for ~500-token chunks.
BM25_AVG_LEN = 256.0
BM25_K = 1.2
BM25_B = 0.75

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


def encode_query(text: str) -> SparseVector:
    """Query vector: weight 1.0 for each unique stemmed, non-stop-word term."""
    vector = _encoder().embed_query(spell_symbols(text))
    return SparseVector(indices=list(vector.indices), values=list(vector.values))
