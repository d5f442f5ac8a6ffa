"""Finding passages: the vector store (embedded engine, per-process snapshots, a Qdrant
server), the BM25 sparse encoding both share, and the hybrid `Retriever`.

`types` holds the store protocol and records; `factory` is the one module that picks an
implementation.
"""
