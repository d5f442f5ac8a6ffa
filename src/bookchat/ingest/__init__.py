"""How a book gets in: a Docusaurus `docs/` tree → pages → chunks → the vector store.

`markdown` reads pages (front matter, MDX clean-up, blocks), `routes` computes Docusaurus
URLs and heading anchors, `chunking` cuts pages into heading-aware chunks, and `pipeline`
embeds and writes them incrementally (`ingest_book`, `run_ingest`).
"""
