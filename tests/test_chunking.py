"""Heading-aware chunking: atomic blocks stay whole, sizes, merging, overlap, payload fields."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

import bookchat
from bookchat.ingest.chunking import (
    MAX_TOKENS,
    MIN_TOKENS,
    PageChunks,
    chunk_book,
)
from bookchat.ingest.markdown import ATOMIC_KINDS, DocPage, load_docs, parse_blocks
from bookchat.text import approx_tokens

SAMPLE_DOCS = Path(bookchat.__file__).parent / "sample_book" / "docs"
CORPUS = Path(__file__).parents[2] / "shared/corpus/physical-ai-textbook"
SITE = "https://book.example.org/docs"


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def chunk_one(tmp_path: Path, text: str, rel: str = "page.md") -> PageChunks:
    write(tmp_path, rel, text)
    (book,) = chunk_book(tmp_path, site_url=SITE)
    return book


def paragraph(n_sentences: int, word: str = "wheel") -> str:
    return " ".join(
        f"The {word} sentence number {i} talks about robots." for i in range(n_sentences)
    )


def assert_atomic_blocks_whole_and_sizes_bounded(
    pages: list[DocPage], books: list[PageChunks]
) -> None:
    by_path = {book.doc_path: book for book in books}
    for page in pages:
        chunks = by_path[page.doc_path].chunks
        atomic = {b.text for b in page.blocks if b.kind in ATOMIC_KINDS}
        for text in atomic:
            assert any(text in c.text for c in chunks), f"{page.doc_path}: block lost or split"
        for chunk in chunks:
            blocks, _ = parse_blocks(chunk.text)
            # A cut fence, table or admonition would re-parse into a block the page never had.
            for block in blocks:
                if block.kind in ATOMIC_KINDS:
                    assert block.text in atomic, f"{page.doc_path}: split {block.kind}"
            if approx_tokens(chunk.text) > MAX_TOKENS:
                body = [b for b in blocks if b.kind != "heading"]
                assert len(body) == 1 and body[0].kind in ATOMIC_KINDS, chunk.url


def test_approx_tokens_is_a_quarter_of_the_characters() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("abcd") == 1
    assert approx_tokens("abcde") == 2
    assert approx_tokens("x" * 2000) == 500


def test_sample_book_never_splits_atomic_blocks_or_exceeds_max() -> None:
    books = chunk_book(SAMPLE_DOCS, site_url=SITE)
    assert_atomic_blocks_whole_and_sizes_bounded(load_docs(SAMPLE_DOCS), books)
    assert len(books) == 11
    assert all(book.chunks for book in books)


def test_shared_corpus_never_splits_atomic_blocks_or_exceeds_max() -> None:
    if not CORPUS.is_dir():
        pytest.skip("shared corpus not present")
    started = time.perf_counter()
    books = chunk_book(CORPUS, site_url=SITE)
    elapsed = time.perf_counter() - started
    assert_atomic_blocks_whole_and_sizes_bounded(load_docs(CORPUS), books)
    assert sum(len(b.chunks) for b in books) > 100
    assert elapsed < 5


def test_sample_book_payload_fields() -> None:
    books = {b.doc_path: b for b in chunk_book(SAMPLE_DOCS, site_url=SITE)}
    assert "03-navigation/03-multi-robot-coordination" not in books  # draft
    lidar = books["01-sensors/01-lidar"].chunks
    assert [c.chunk_index for c in lidar] == list(range(len(lidar)))
    assert {(c.module, c.chapter, c.title) for c in lidar} == {
        ("sensors", "lidar", "Lidar Range Sensing")
    }
    assert lidar[0].url == f"{SITE}/sensors/lidar"  # the page's H1 links to the page itself
    assert lidar[0].heading_breadcrumb == ["Lidar Range Sensing"]
    limits = next(c for c in lidar if c.section == "Limitations of lidar")
    assert limits.url == f"{SITE}/sensors/lidar#limitations-of-lidar"
    assert limits.heading_breadcrumb == ["Lidar Range Sensing", "Limitations of lidar"]
    assert limits.text.startswith("## Limitations of lidar")
    assert all(c.ingested_at == "" and c.word_count > 0 for c in lidar)
    assert lidar[0].tags == ["sensors", "lidar"]
    odometry = books["01-sensors/02-imu-and-odometry"].chunks
    assert any(c.url.endswith("/sensors/odometry#odometry-limitations") for c in odometry)
    assert {c.chapter for c in books["01-sensors/index"].chunks} == {"sensors"}
    assert {(c.module, c.chapter) for c in books["index"].chunks} == {("", "index")}


def test_sample_book_content_types() -> None:
    books = {b.doc_path: b for b in chunk_book(SAMPLE_DOCS, site_url=SITE)}
    types = {path: {c.content_type for c in b.chunks} for path, b in books.items()}
    assert types["05-practice/02-quiz"] == {"quiz"}
    assert "lab" in types["05-practice/01-line-follower-lab"]
    assert "code" in types["02-motion/02-pid-control"]
    assert "table" in types["01-sensors/index"]
    assert types["03-navigation/01-localization-and-slam"] == {"prose"}


def test_oversized_code_fence_is_one_whole_chunk(tmp_path: Path) -> None:
    code = "```python\n" + "\n".join(f"x_{i} = {i}  # a comment line" for i in range(600)) + "\n```"
    book = chunk_one(tmp_path, f"## Big listing\n\n{paragraph(3)}\n\n{code}\n\nAfter text.\n")
    fence_chunks = [c for c in book.chunks if "```python" in c.text]
    assert len(fence_chunks) == 1
    (chunk,) = fence_chunks
    assert code in chunk.text and approx_tokens(chunk.text) > MAX_TOKENS
    assert chunk.text.startswith("## Big listing") and chunk.content_type == "code"
    assert all(approx_tokens(c.text) <= MAX_TOKENS for c in book.chunks if c is not chunk)


def test_long_section_splits_with_heading_and_overlap(tmp_path: Path) -> None:
    paragraphs = "\n\n".join(paragraph(4, word=f"w{i}") for i in range(40))
    book = chunk_one(tmp_path, f"# Page\n\n## Long section\n\n{paragraphs}\n")
    chunks = book.chunks
    assert len(chunks) > 3
    for previous, chunk in itertools.pairwise(chunks):
        assert MIN_TOKENS <= approx_tokens(previous.text) <= MAX_TOKENS
        assert chunk.text.startswith("## Long section\n\n")
        overlap = chunk.text.split("\n\n")[1]
        assert previous.text.endswith(overlap)  # the previous chunk's last sentence(s)
        assert approx_tokens(overlap) <= 60
        assert chunk.url == f"{SITE}/page#long-section"


def test_oversized_paragraph_splits_at_sentences(tmp_path: Path) -> None:
    book = chunk_one(tmp_path, f"## One paragraph\n\n{paragraph(150)}\n")
    assert len(book.chunks) > 1
    assert all(approx_tokens(c.text) <= MAX_TOKENS for c in book.chunks)
    assert all(c.text.split("\n\n")[-1].endswith("robots.") for c in book.chunks)


def test_h4_stays_inside_its_h3_section(tmp_path: Path) -> None:
    book = chunk_one(tmp_path, "## Parent\n\n### Child\n\nChild text.\n\n#### Detail\n\nDeep.\n")
    (chunk,) = book.chunks
    assert "#### Detail" in chunk.text and "#detail" not in chunk.url


def test_small_sections_merge_inside_an_h2_but_not_across(tmp_path: Path) -> None:
    text = (
        "# Page\n\n## Alpha\n\nShort alpha intro.\n\n### Alpha one\n\nTiny.\n\n"
        "### Alpha two\n\nTiny too.\n\n## Beta\n\nShort beta.\n"
    )
    chunks = chunk_one(tmp_path, text).chunks
    assert [c.url.rsplit("#", 1)[-1] for c in chunks] == ["alpha", "beta"]
    assert "### Alpha two" in chunks[0].text and "Beta" not in chunks[0].text
    assert chunks[0].text.startswith("# Page\n\n## Alpha")  # the bare H1 leads the first chunk
    assert chunks[0].heading_breadcrumb == ["Page", "Alpha"]


def test_sections_at_or_above_min_stay_separate(tmp_path: Path) -> None:
    text = f"## A\n\n### A1\n\n{paragraph(20)}\n\n### A2\n\n{paragraph(20)}\n"
    chunks = chunk_one(tmp_path, text).chunks
    # The bare "## A" heading leads A1's chunk, which keeps A1's own anchor.
    assert [c.section for c in chunks] == ["A1", "A2"]
    assert chunks[0].text.startswith("## A\n\n### A1")
    assert [c.heading_breadcrumb for c in chunks] == [["page", "A", "A1"], ["page", "A", "A2"]]


def test_text_before_first_heading_has_no_anchor(tmp_path: Path) -> None:
    book = chunk_one(
        tmp_path,
        "---\ntitle: Front\n---\n\nLead text.\n\n## Later\n\nMore.\n",
        rel="01-mod/02-doc.md",
    )
    first = book.chunks[0]
    assert first.url == f"{SITE}/mod/doc" and first.section == ""
    assert first.heading_breadcrumb == ["Front"]
    assert (first.module, first.chapter, book.doc_path) == ("mod", "doc", "01-mod/02-doc")


@pytest.mark.parametrize(
    ("rel", "front_matter", "expected"),
    [
        ("01-unit/03-lab-motors.md", "", "lab"),
        ("x.md", "tags: [Quiz]", "quiz"),
        ("x.md", "sidebar_label: Final assessment", "assessment"),
        ("x.md", "title: 'Lab 2: sensors'", "lab"),
        ("assessments/x.md", "", "assessment"),
        ("x.md", "title: Collaboration", "prose"),  # "lab" inside a word does not count
    ],
)
def test_page_kind_content_types(
    tmp_path: Path, rel: str, front_matter: str, expected: str
) -> None:
    book = chunk_one(tmp_path, f"---\n{front_matter}\n---\n\n## S\n\n{paragraph(3)}\n", rel=rel)
    assert {c.content_type for c in book.chunks} == {expected}


def test_mostly_code_or_table_chunks_are_typed_so(tmp_path: Path) -> None:
    table = "| a | b |\n|---|---|\n" + "\n".join(f"| {i} | {i * i} |" for i in range(60))
    code = "```bash\n" + "\n".join(f"echo {i}" for i in range(80)) + "\n```"
    text = f"## Table\n\nOne line.\n\n{table}\n\n## Code\n\nOne line.\n\n{code}\n"
    chunks = chunk_one(tmp_path, text, rel="lab.md").chunks
    assert [c.content_type for c in chunks] == ["table", "code"]


def test_content_hash_is_stable_and_tracks_edits(tmp_path: Path) -> None:
    text = f"## One\n\n{paragraph(12)}\n\n## Two\n\n{paragraph(12, 'lidar')}\n"
    first = chunk_one(tmp_path, text).chunks
    again = chunk_book(tmp_path, site_url=SITE)[0].chunks
    assert [c.content_hash for c in first] == [c.content_hash for c in again]
    write(tmp_path, "page.md", text.replace("lidar sentence number 3", "lidar sentence 3"))
    edited = chunk_book(tmp_path, site_url=SITE)[0].chunks
    assert first[0].content_hash == edited[0].content_hash
    assert first[1].content_hash != edited[1].content_hash
    moved = chunk_book(tmp_path, site_url="https://elsewhere.org")[0].chunks
    assert first[0].content_hash != moved[0].content_hash  # the URL is part of the payload


def test_a_90_page_megabyte_book_chunks_in_under_five_seconds(tmp_path: Path) -> None:
    sources = [
        p.read_text(encoding="utf-8").split("---\n", 2)[-1]
        for p in sorted(SAMPLE_DOCS.rglob("*.md*"))
        if not p.name.startswith("_") and "draft: true" not in p.read_text()
    ]
    size = 0
    for i in range(90):
        picked = (sources[(i + k) % len(sources)] for k in range(3))
        page = f"# Page {i}\n\n" + "\n\n".join(picked)
        write(tmp_path, f"{i // 10:02d}-part/{i:02d}-page.mdx", page)
        size += len(page.encode())
    assert 900_000 < size < 1_300_000
    started = time.perf_counter()
    books = chunk_book(tmp_path, site_url=SITE)
    elapsed = time.perf_counter() - started
    assert len(books) == 90
    assert elapsed < 5, f"chunking took {elapsed:.2f}s"
