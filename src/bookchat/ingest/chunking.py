"""Heading-aware chunking of Docusaurus pages into `ChunkPayload`s.

Rules (BRIEF §3):
- Sections start at H1–H3 headings; H4+ stay inside their H3 section. Text before the
  first heading is a section of its own (no anchor).
- Code fences, tables and admonitions are atomic: never split. A single atomic block
  larger than `MAX_TOKENS` becomes its own chunk (with its section heading line) and
  is the only kind of chunk allowed to exceed the maximum.
- A section larger than `MAX_TOKENS` is packed block by block towards `TARGET_TOKENS`;
  an oversized paragraph splits at sentences and an oversized list at its items.
  Continuation chunks repeat the section's heading line and start with the last
  sentence(s) of the previous chunk (≤ `OVERLAP_TOKENS`, prose only, same section).
- A section smaller than `MIN_TOKENS` merges forward into the next one while the result
  stays ≤ `MAX_TOKENS` and does not cross an H2 (or H1) boundary: an H2 intro may absorb
  its H3s and an H3 its following sibling H3s. The merged chunk keeps the first section's
  anchor and breadcrumb, so its link lands where its text starts; every heading inside it
  (merged sections and H4+ sub-headings) is recorded in `sections` with its offset and
  URL, so a citation of a later part can link that part's heading (`section_for()`).
  A small section that cannot merge stays a small chunk. A bare heading with no body
  (typically the page's H1 right before the first H2) is prepended to the next chunk,
  which keeps its own anchor; if even that would exceed the maximum, the bare heading
  is dropped.
- The page's title H1 (the first heading, with nothing before it) links to the page
  itself, without an anchor.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from bookchat.ingest.markdown import ATOMIC_KINDS, Block, DocPage, SkippedPage, load_docs
from bookchat.ingest.routes import (
    LinkStyle,
    TrailingSlashChoice,
    link_style,
    page_url,
    strip_number_prefix,
)
from bookchat.search.types import ChunkPayload, ChunkSection, ContentType
from bookchat.text import CHARS_PER_TOKEN, prose_sentences

TARGET_TOKENS = 500
MIN_TOKENS = 200
MAX_TOKENS = 800
OVERLAP_TOKENS = 50

_PAGE_KIND_WORDS: tuple[tuple[ContentType, re.Pattern[str]], ...] = (
    ("assessment", re.compile(r"\bassessments?\b", re.I)),
    ("quiz", re.compile(r"\bquiz(?:zes)?\b", re.I)),
    ("lab", re.compile(r"\blabs?\b", re.I)),
)
_WORD = re.compile(r"\w+")


def _tokens_of_chars(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class PageChunks:
    """All chunks of one published page."""

    doc_path: str
    source_path: Path
    title: str
    chunks: list[ChunkPayload]


@dataclass
class _Section:
    index: int
    heading: Block | None  # None for the text before the first heading
    blocks: list[Block]  # body blocks (heading excluded)
    ancestors: frozenset[int]  # indices of enclosing sections (the page root is 0)
    group: int  # index of the enclosing H1/H2-or-root section: merges never leave it
    breadcrumb: list[str]
    anchor: str

    @property
    def heading_line(self) -> str:
        return self.heading.text.split("\n", 1)[0] if self.heading else ""


# Where a heading starts inside a piece: (index of its part, heading text, anchor).
_Mark = tuple[int, str, str]


@dataclass
class _Piece:
    """A chunk under construction: text parts plus the section that names it."""

    section: _Section
    parts: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    starts_section: bool = True
    tail_section: _Section | None = None  # last section merged into this piece
    marks: list[_Mark] = field(default_factory=list)  # headings inside, in order

    def __post_init__(self) -> None:
        if not self.marks:
            heading = self.section.heading.heading if self.section.heading else ""
            self.marks.append((0, heading, self.section.anchor))

    @property
    def chars(self) -> int:
        return sum(len(p) for p in self.parts) + 2 * max(len(self.parts) - 1, 0)

    @property
    def tokens(self) -> int:
        return _tokens_of_chars(self.chars)

    @property
    def has_content(self) -> bool:
        return any(kind != "heading" for kind in self.kinds)

    def add(self, text: str, kind: str, sub_heading: Block | None = None) -> None:
        if sub_heading is not None and sub_heading.anchor:
            self.marks.append((len(self.parts), sub_heading.heading, sub_heading.anchor))
        self.parts.append(text)
        self.kinds.append(kind)


def _sections(page: DocPage) -> list[_Section]:
    """Cut a page into H1–H3 sections with their breadcrumbs, anchors and ancestry."""
    root = _Section(0, None, [], frozenset(), 0, [page.title], "")
    sections = [root]
    stack: list[_Section] = [root]  # open sections, root first, by increasing level
    first_heading_seen = False
    for block in page.blocks:
        if block.kind == "hr":
            continue
        if block.kind != "heading" or block.level > 3:
            sections[-1].blocks.append(block)
            continue
        is_title = not first_heading_seen and block.level == 1 and not root.blocks
        first_heading_seen = True
        while len(stack) > 1 and stack[-1].heading and stack[-1].heading.level >= block.level:
            stack.pop()
        parent = stack[-1]
        if is_title:
            breadcrumb, anchor = [page.title], ""
        else:
            breadcrumb, anchor = [*parent.breadcrumb, block.heading], block.anchor
        index = len(sections)
        group = index if block.level <= 2 else parent.group
        section = _Section(
            index, block, [], parent.ancestors | {parent.index}, group, breadcrumb, anchor
        )
        sections.append(section)
        stack.append(section)
    return sections


def _split_long(text: str, limit_chars: int) -> list[str]:
    """Split prose at sentence ends, then at spaces, into pieces of at most limit_chars."""
    pieces: list[str] = []
    current = ""
    for sentence in prose_sentences(text):
        while len(sentence) > limit_chars:
            cut = sentence.rfind(" ", 0, limit_chars)
            cut = cut if cut > 0 else limit_chars
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].rstrip())
            sentence = sentence[cut:].lstrip()
        if current and len(current) + 1 + len(sentence) > limit_chars:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return pieces


def _sub_heading(block: Block) -> Block | None:
    """An H4+ heading inside a section: its anchor is recorded, it starts no chunk."""
    return block if block.kind == "heading" else None


def _atoms(blocks: Sequence[Block], limit_chars: int) -> list[tuple[str, str, Block | None]]:
    """(text, kind, sub-heading) units small enough to pack; atomic blocks are never cut."""
    atoms: list[tuple[str, str, Block | None]] = []
    for block in blocks:
        if len(block.text) <= limit_chars or block.kind in ATOMIC_KINDS:
            atoms.append((block.text, block.kind, _sub_heading(block)))
        elif block.kind == "list" and len(block.parts) > 1:
            # Items may hold fences, so an oversized single item stays whole.
            atoms.extend((item, "list", None) for item in block.parts)
        elif block.kind in ("paragraph", "blockquote") and "```" not in block.text:
            atoms.extend((part, block.kind, None) for part in _split_long(block.text, limit_chars))
        else:
            atoms.append((block.text, block.kind, _sub_heading(block)))
    return atoms


def _overlap(text: str, kind: str) -> str:
    """The last sentence(s) of a prose part, at most OVERLAP_TOKENS; "" for anything else."""
    if kind not in ("paragraph", "list", "blockquote") or "```" in text or ":::" in text:
        return ""
    limit = OVERLAP_TOKENS * CHARS_PER_TOKEN
    chosen: list[str] = []
    size = 0
    for sentence in reversed(prose_sentences(text.replace("\n", " "))):
        if size + len(sentence) > limit:
            break
        chosen.insert(0, sentence)
        size += len(sentence) + 1
    if not chosen:
        tail = text.replace("\n", " ")[-limit:]
        chosen = ["…" + tail[tail.find(" ") + 1 :]] if " " in tail else []
    return " ".join(chosen)


def _section_pieces(section: _Section) -> list[_Piece]:
    """One piece for a section that fits; otherwise packed pieces with overlap."""
    head = section.heading_line
    piece = _Piece(section)
    if section.heading:
        piece.add(section.heading.text, "heading")
    whole = piece.chars + sum(len(b.text) + 2 for b in section.blocks)
    if _tokens_of_chars(whole) <= MAX_TOKENS:
        for block in section.blocks:
            piece.add(block.text, block.kind, _sub_heading(block))
        return [piece]

    budget_chars = (MAX_TOKENS - OVERLAP_TOKENS) * CHARS_PER_TOKEN - len(head) - 4
    pieces = [piece]
    for text, kind, sub_heading in _atoms(section.blocks, budget_chars):
        size = _tokens_of_chars(len(text) + 2)
        current = pieces[-1]
        fits_target = current.tokens + size <= TARGET_TOKENS
        fits_max = current.tokens + size <= MAX_TOKENS
        if (
            current.has_content
            and not fits_target
            and (current.tokens >= MIN_TOKENS or not fits_max)
        ):
            overlap = _overlap(current.parts[-1], current.kinds[-1])
            nxt = _Piece(section, starts_section=False)
            if head:
                nxt.add(head, "heading")
            # An oversized atomic block gets its heading line and nothing else.
            if (
                overlap
                and nxt.tokens + _tokens_of_chars(len(overlap) + len(text) + 4) <= MAX_TOKENS
            ):
                nxt.add(overlap, "overlap")
            pieces.append(nxt)
        pieces[-1].add(text, kind, sub_heading)
    # Fold a runt tail back into its predecessor when that stays within the maximum.
    if len(pieces) > 1 and pieces[-1].tokens < MIN_TOKENS:
        last, prev = pieces[-1], pieces[-2]
        body = [
            (i, p, k)
            for i, (p, k) in enumerate(zip(last.parts, last.kinds, strict=True))
            if k not in ("heading", "overlap")
        ]
        if prev.tokens + _tokens_of_chars(sum(len(p) + 2 for _, p, _ in body)) <= MAX_TOKENS:
            # A dropped H4+ heading line still starts its sub-section at the next part.
            pending = [(i, h, a) for i, h, a in last.marks[1:]]
            for i, text, kind in body:
                while pending and pending[0][0] <= i:
                    _, heading, anchor = pending.pop(0)
                    prev.marks.append((len(prev.parts), heading, anchor))
                prev.add(text, kind)
            pieces.pop()
    return pieces


def _merge_small(pieces: list[_Piece]) -> list[_Piece]:
    """Merge pieces under MIN_TOKENS forward inside their H2 group (see module docstring)."""
    merged: list[_Piece] = []
    for piece in pieces:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and piece.starts_section
            and _tokens_of_chars(prev.chars + 2 + piece.chars) <= MAX_TOKENS
        ):
            if not prev.has_content:
                # A bare heading (e.g. the page's H1) becomes context for what follows;
                # the piece's own heading still names (and links) the chunk.
                piece.marks = [(i + len(prev.parts), h, a) for i, h, a in piece.marks]
                piece.parts[:0], piece.kinds[:0] = prev.parts, prev.kinds
                piece.tail_section = piece.section
                merged[-1] = piece
                continue
            if (
                prev.tokens < MIN_TOKENS
                and prev.tail_section is not None
                and prev.tail_section.group == piece.section.group
            ):
                prev.marks.extend((i + len(prev.parts), h, a) for i, h, a in piece.marks)
                for text, kind in zip(piece.parts, piece.kinds, strict=True):
                    prev.add(text, kind)
                prev.tail_section = piece.section
                continue
        piece.tail_section = piece.section
        merged.append(piece)
    return merged


def page_content_kind(page: DocPage) -> ContentType | None:
    """`lab`, `quiz` or `assessment` when tags, sidebar label, title or path say so."""
    fm = page.front_matter
    sources = [
        *fm.tags,
        fm.sidebar_label or "",
        page.title,
        " ".join(strip_number_prefix(p) for p in page.doc_path.split("/")),
    ]
    for source in sources:
        words = source.replace("-", " ").replace("_", " ")
        for kind, pattern in _PAGE_KIND_WORDS:
            if pattern.search(words):
                return kind
    return None


def _content_type(piece: _Piece, page_kind: ContentType | None) -> ContentType:
    total = max(piece.chars, 1)
    for block_kind, content_type in (("code", "code"), ("table", "table")):
        share = sum(
            len(p) for p, k in zip(piece.parts, piece.kinds, strict=True) if k == block_kind
        )
        if share * 2 > total:
            return content_type  # type: ignore[return-value]
    return page_kind or "prose"


def _content_hash(fields: Sequence[object]) -> str:
    encoded = json.dumps(list(fields), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def page_chapter(page: DocPage) -> str:
    """The page's own id segment; a category index page is named after its folder."""
    segments = page.doc_id.split("/")
    if page.is_category_index and not page.front_matter.id and len(segments) > 1:
        return segments[-2]
    return segments[-1]


def _chunk_sections(
    piece: _Piece, site_url: str, route: str, style: LinkStyle | None
) -> list[ChunkSection]:
    """The piece's headings with their character offsets in the joined chunk text."""
    starts = [0]
    for part in piece.parts[:-1]:
        starts.append(starts[-1] + len(part) + 2)  # parts are joined with "\n\n"
    return [
        ChunkSection(
            offset=starts[index],
            heading=heading,
            anchor=anchor,
            url=page_url(site_url, route, anchor, style),
        )
        for index, heading, anchor in piece.marks
    ]


def payload_hash(payload: ChunkPayload) -> str:
    """sha256 of everything stored with a chunk except when it was ingested."""
    bare = msgspec.structs.replace(payload, ingested_at="", payload_hash="")
    return hashlib.sha256(msgspec.json.encode(bare)).hexdigest()


def chunk_page(
    page: DocPage, *, site_url: str, style: LinkStyle | None = None
) -> list[ChunkPayload]:
    """Chunk one parsed page into payloads (ingested_at left empty for ingestion to set)."""
    pieces = [p for s in _sections(page) for p in _section_pieces(s) if p.parts]
    pieces = [p for p in _merge_small(pieces) if p.has_content]
    page_kind = page_content_kind(page)
    top = page.doc_path.split("/")
    module = strip_number_prefix(top[0]) if len(top) > 1 else ""
    chapter = page_chapter(page)
    tags = list(page.front_matter.tags)
    chunks: list[ChunkPayload] = []
    for index, piece in enumerate(pieces):
        section = piece.section
        text = "\n\n".join(piece.parts)
        url = page_url(site_url, page.route, section.anchor, style)
        content_type = _content_type(piece, page_kind)
        section_name = section.heading.heading if section.heading else ""
        breadcrumb = list(section.breadcrumb)
        payload = ChunkPayload(
            doc_path=page.doc_path,
            url=url,
            title=page.title,
            section=section_name,
            heading_breadcrumb=breadcrumb,
            module=module,
            chapter=chapter,
            content_type=content_type,
            tags=tags,
            chunk_index=index,
            content_hash=_content_hash(
                [
                    page.doc_path,
                    url,
                    page.title,
                    section_name,
                    breadcrumb,
                    module,
                    chapter,
                    content_type,
                    tags,
                    text,
                ]
            ),
            text=text,
            word_count=len(_WORD.findall(text)),
            ingested_at="",
            sections=_chunk_sections(piece, site_url, page.route, style),
        )
        chunks.append(msgspec.structs.replace(payload, payload_hash=payload_hash(payload)))
    return chunks


def chunk_book(
    docs_root: Path,
    *,
    site_url: str,
    trailing_slash: TrailingSlashChoice = "auto",
    skipped: list[SkippedPage] | None = None,
) -> list[PageChunks]:
    """Parse and chunk every published page of a Docusaurus docs tree (drafts/partials skipped).

    `trailing_slash="auto"` follows the `docusaurus.config.*` above `docs_root`, if any.
    With `skipped`, a page that cannot be read, parsed or chunked is appended to it and
    the rest of the book goes on (see `load_docs`); without it, the first bad page raises.
    """
    style = link_style(docs_root, trailing_slash)
    books: list[PageChunks] = []
    for page in load_docs(docs_root, skipped):
        try:
            chunks = chunk_page(page, site_url=site_url, style=style)
        except Exception as exc:
            if skipped is None:
                raise
            reason = f"cannot be chunked: {type(exc).__name__}: {exc}"
            skipped.append(SkippedPage(page.rel_path, reason, unsafe=False))
            continue
        books.append(
            PageChunks(
                doc_path=page.doc_path,
                source_path=page.source_path,
                title=page.title,
                chunks=chunks,
            )
        )
    return books
