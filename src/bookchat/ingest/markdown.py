"""Load a Docusaurus `docs/` tree into pages made of Markdown blocks.

Each page keeps the original Markdown source of every top-level block (via markdown-it's
`token.map` line ranges), so chunking can cut between blocks without ever rewriting the
inside of a code fence, a table or an admonition.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.container import container_plugin

from bookchat.ingest.routes import GithubSlugger, doc_route, heading_anchor, strip_number_prefix

BlockKind = Literal[
    "heading", "paragraph", "list", "code", "table", "admonition", "blockquote", "html", "hr"
]
# Blocks that chunking must keep whole.
ATOMIC_KINDS: frozenset[str] = frozenset({"code", "table", "admonition"})

DOC_SUFFIXES = (".md", ".mdx")
ADMONITION_KEYWORDS = frozenset(
    {"note", "tip", "info", "warning", "danger", "caution", "important", "success", "secondary"}
)

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*$\r?\n?", re.DOTALL | re.M)
_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_ESM_START = re.compile(
    r"^(?:import\s*[\w{*'\"]|export\s+(?:default|const|let|var|function|"
    r"async|class|\{|\*))"
)
# Either an inline code span (kept verbatim) or an MDX/JSX/HTML construct to drop.
_INLINE_MDX = re.compile(
    r"(?P<code>(?P<ticks>`+)[\s\S]*?(?P=ticks))"
    r"|(?P<comment><!--[\s\S]*?-->|\{/\*[\s\S]*?\*/\})"
    r"|(?P<tag></?[A-Za-z][\w.\-]*(?![\w.\-]*[:@])"
    r"(?:\s+(?:[^<>\"'{}]|\"[^\"]*\"|'[^']*'|\{(?:[^{}]|\{[^{}]*\})*\})*)?\s*/?>)"
)
_ADMONITION_PARAMS = re.compile(r"^\s*([A-Za-z]+)")
_CONTAINER_CLOSE = re.compile(r"^[ \t]*:{3,}[ \t]*$")


class FrontMatterError(ValueError):
    """A page's YAML front matter cannot be parsed (Docusaurus would fail the build too)."""


@dataclass(frozen=True, slots=True)
class FrontMatter:
    """The Docusaurus front matter fields bookchat uses."""

    title: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    sidebar_label: str | None = None
    sidebar_position: float | None = None
    slug: str | None = None
    id: str | None = None
    draft: bool = False
    unlisted: bool = False


@dataclass(frozen=True, slots=True)
class Block:
    """One top-level Markdown block with its original source text."""

    kind: BlockKind
    text: str
    start_line: int  # 0-based line in the file (front matter included)
    end_line: int  # exclusive
    level: int = 0  # heading level (1–6), 0 for other blocks
    heading: str = ""  # heading display text, `{#id}` removed
    anchor: str = ""  # heading anchor as Docusaurus generates it
    parts: tuple[str, ...] = ()  # top-level list items, used only to split an oversized list


@dataclass(frozen=True, slots=True)
class Heading:
    """Every heading of a page (any nesting), in document order."""

    level: int
    text: str
    anchor: str


@dataclass(frozen=True, slots=True)
class DocPage:
    """A parsed Docusaurus doc."""

    source_path: Path
    rel_path: str  # posix, relative to the docs root, with extension
    doc_path: str  # rel_path without extension, e.g. "02-sensors/01-lidar"
    doc_id: str  # Docusaurus id, e.g. "sensors/lidar"
    route: str  # Docusaurus slug, e.g. "/sensors/lidar"
    is_category_index: bool
    front_matter: FrontMatter
    title: str
    blocks: list[Block] = field(default_factory=list)
    headings: list[Heading] = field(default_factory=list)


def _new_parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])

    def is_admonition(params: str, *_: Any) -> bool:
        match = _ADMONITION_PARAMS.match(params)
        return match is not None and match.group(1).lower() in ADMONITION_KEYWORDS

    container_plugin(md, "admonition", validate=is_admonition)
    return md


_PARSER = _new_parser()


def split_front_matter(source: str) -> tuple[dict[str, Any], str, int]:
    """Return (front matter mapping, body, number of lines the front matter occupied)."""
    match = _FRONT_MATTER.match(source)
    if match is None:
        return {}, source, 0
    try:
        data = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise FrontMatterError(f"invalid YAML front matter: {exc}") from exc
    if not isinstance(data, dict):
        raise FrontMatterError("front matter must be a YAML mapping")
    header = match.group(0)
    return data, source[len(header) :], header.count("\n")


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_front_matter(data: dict[str, Any]) -> FrontMatter:
    """Normalise the raw YAML mapping (tags may be strings or `{label: …}` objects)."""
    raw_tags = data.get("tags") or []
    if isinstance(raw_tags, str):
        raw_tags = [raw_tags]
    tags = tuple(
        str(tag.get("label", "")) if isinstance(tag, dict) else str(tag)
        for tag in raw_tags
        if tag is not None
    )
    position = data.get("sidebar_position")
    return FrontMatter(
        title=_opt_str(data.get("title")),
        description=_opt_str(data.get("description")),
        tags=tuple(t for t in tags if t),
        sidebar_label=_opt_str(data.get("sidebar_label")),
        sidebar_position=float(position) if isinstance(position, int | float) else None,
        slug=_opt_str(data.get("slug")),
        id=_opt_str(data.get("id")),
        draft=data.get("draft") is True,
        unlisted=data.get("unlisted") is True,
    )


def _blank_same_lines(text: str) -> str:
    """Replace removed text with as many newlines, so token line maps stay valid."""
    return "\n" * text.count("\n")


def _clean_inline_mdx(segment: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("code") is not None:
            return match.group(0)
        return _blank_same_lines(match.group(0))

    return _INLINE_MDX.sub(replace, segment)


def clean_mdx(body: str) -> str:
    """Drop MDX `import`/`export` statements, JSX/HTML tags and comments outside code fences.

    Text children of tags are kept; code fences are passed through untouched; the number
    of lines never changes, so line numbers still refer to the original file.
    """
    lines = body.split("\n")
    out: list[str] = []
    pending: list[str] = []  # prose lines waiting for tag cleanup (tags may span lines)
    fence: str | None = None
    esm_depth: int | None = None  # brace depth while inside a multi-line import/export

    def flush() -> None:
        if pending:
            out.extend(_clean_inline_mdx("\n".join(pending)).split("\n"))
            pending.clear()

    for line in lines:
        if fence is not None:
            out.append(line)
            stripped = line.strip()
            if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                fence = None
            continue
        if esm_depth is not None:
            esm_depth += line.count("{") - line.count("}")
            out.append("")
            if esm_depth <= 0 and not line.rstrip().endswith((",", "{", "(")):
                esm_depth = None
            continue
        opening = _FENCE_OPEN.match(line)
        if opening:
            flush()
            fence = opening.group(1)
            out.append(line)
            continue
        if _ESM_START.match(line):
            flush()
            out.append("")
            depth = line.count("{") - line.count("}")
            if depth > 0 or line.rstrip().endswith((",", "{", "(")):
                esm_depth = depth
            continue
        pending.append(line)
    flush()
    return "\n".join(out)


def _inline_text(token: Token) -> str:
    """Plain text of an inline token, like mdast-util-to-string (HTML dropped, code kept)."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "image":
            parts.append(_inline_text(child))
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
    return "".join(parts)


def _closing_index(tokens: list[Token], start: int) -> int:
    """Index of the token closing the block opened at `start` (same level, nesting -1)."""
    level = tokens[start].level
    index = start + 1
    while not (tokens[index].nesting == -1 and tokens[index].level == level):
        index += 1
    return index


_BLOCK_KINDS: dict[str, BlockKind] = {
    "paragraph_open": "paragraph",
    "bullet_list_open": "list",
    "ordered_list_open": "list",
    "table_open": "table",
    "container_admonition_open": "admonition",
    "blockquote_open": "blockquote",
    "fence": "code",
    "code_block": "code",
    "html_block": "html",
    "hr": "hr",
}


def parse_blocks(body: str, *, line_offset: int = 0) -> tuple[list[Block], list[Heading]]:
    """Parse cleaned Markdown into top-level blocks and the page's heading anchors."""
    tokens = _PARSER.parse(body)
    lines = body.split("\n")
    slugger = GithubSlugger()
    blocks: list[Block] = []
    headings: list[Heading] = []

    def source(start: int, end: int) -> str:
        return "\n".join(lines[start:end]).strip("\n")

    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.type == "heading_open":
            level = int(token.tag[1])
            text, anchor = heading_anchor(_inline_text(tokens[index + 1]), slugger)
            headings.append(Heading(level=level, text=text.strip(), anchor=anchor))
            if token.level == 0 and token.map:
                start, end = token.map
                raw = source(start, end)
                # The explicit id is navigation metadata, not content: keep it out of chunks.
                raw_line, _, rest = raw.partition("\n")
                raw_line = heading_anchor_strip(raw_line)
                blocks.append(
                    Block(
                        kind="heading",
                        text=(raw_line + ("\n" + rest if rest else "")).strip(),
                        start_line=start + line_offset,
                        end_line=end + line_offset,
                        level=level,
                        heading=text.strip(),
                        anchor=anchor,
                    )
                )
            index += 3
            continue
        kind = _BLOCK_KINDS.get(token.type)
        if token.level != 0 or kind is None or token.map is None:
            index += 1
            continue
        start, end = token.map
        close = index if token.nesting == 0 else _closing_index(tokens, index)
        if kind == "admonition" and end < len(lines) and _CONTAINER_CLOSE.match(lines[end]):
            end += 1  # the container plugin's map stops before the closing `:::` line
        parts: tuple[str, ...] = ()
        if kind == "list":
            parts = tuple(
                source(*t.map)
                for t in tokens[index:close]
                if t.type == "list_item_open" and t.level == 1 and t.map
            )
        text = source(start, end)
        if text.strip():
            blocks.append(
                Block(
                    kind=kind,
                    text=text,
                    start_line=start + line_offset,
                    end_line=end + line_offset,
                    parts=parts,
                )
            )
        # Headings nested in lists, quotes or admonitions still get anchors in Docusaurus.
        for inner in range(index + 1, close):
            if tokens[inner].type == "heading_open":
                text, anchor = heading_anchor(_inline_text(tokens[inner + 1]), slugger)
                headings.append(Heading(int(tokens[inner].tag[1]), text.strip(), anchor))
        index = close + 1
    return blocks, headings


def heading_anchor_strip(line: str) -> str:
    """Remove a trailing `{#id}` from a raw ATX heading line."""
    stripped = line.rstrip()
    match = re.search(r"\s*\{#[^{}]*\}\s*#*$", stripped)
    return stripped[: match.start()] if match else stripped


def load_page(path: Path, docs_root: Path) -> DocPage:
    """Parse one `.md`/`.mdx` file of a docs tree (drafts are parsed too; callers skip them)."""
    rel_path = path.relative_to(docs_root).as_posix()
    raw = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    try:
        data, body, fm_lines = split_front_matter(raw)
    except FrontMatterError as exc:
        raise FrontMatterError(f"{rel_path}: {exc}") from exc
    front_matter = parse_front_matter(data)
    blocks, headings = parse_blocks(clean_mdx(body), line_offset=fm_lines)
    route = doc_route(
        rel_path, front_matter_id=front_matter.id, front_matter_slug=front_matter.slug
    )
    first_h1 = next((b.heading for b in blocks if b.kind == "heading" and b.level == 1), None)
    base_id = front_matter.id or strip_number_prefix(path.stem)
    title = front_matter.title or first_h1 or base_id
    return DocPage(
        source_path=path,
        rel_path=rel_path,
        doc_path=rel_path.rsplit(".", 1)[0],
        doc_id=route.doc_id,
        route=route.route,
        is_category_index=route.is_category_index,
        front_matter=front_matter,
        title=title,
        blocks=blocks,
        headings=headings,
    )


def iter_doc_files(docs_root: Path) -> Iterator[Path]:
    """Every `.md`/`.mdx` file Docusaurus would consider, sorted; `_`/`.` names excluded."""
    for path in sorted(docs_root.rglob("*")):
        rel_parts = path.relative_to(docs_root).parts
        if any(part.startswith(("_", ".")) for part in rel_parts):
            continue
        if path.is_file() and path.suffix in DOC_SUFFIXES:
            yield path


def load_docs(docs_root: Path) -> list[DocPage]:
    """Load every published page of a docs tree: `draft: true` pages and partials skipped."""
    pages = (load_page(path, docs_root) for path in iter_doc_files(docs_root))
    return [page for page in pages if not page.front_matter.draft]
