"""Load a Docusaurus `docs/` tree into pages made of Markdown blocks.

Each page keeps the original Markdown source of every top-level block (via markdown-it's
`token.map` line ranges), so chunking can cut between blocks without ever rewriting the
inside of a code fence, a table or an admonition.
"""

from __future__ import annotations

import logging
import os
import re
import stat
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

logger = logging.getLogger("bookchat.ingest")

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
_ADMONITION_PARAMS = re.compile(r"^\s*([A-Za-z]+)")
_CONTAINER_CLOSE = re.compile(r"^[ \t]*:{3,}[ \t]*$")


# Limits on what one page may hold (a hostile book must not exhaust memory or disk).
MAX_PAGE_BYTES = 4 * 1024 * 1024
MAX_FRONT_MATTER_BYTES = 64 * 1024
MAX_FIELD_CHARS = {"title": 500, "sidebar_label": 500, "slug": 500, "id": 500}
MAX_DESCRIPTION_CHARS = 5000
MAX_TAGS = 100
MAX_TAG_CHARS = 200

# C0/C1 control characters except tab and newline: NUL breaks PostgreSQL text columns,
# and none of them means anything in Markdown.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class PageError(ValueError):
    """One page cannot be ingested; the message names the reason (the caller adds the file)."""


class FrontMatterError(PageError):
    """A page's YAML front matter is invalid (Docusaurus would fail the build too)."""


class UnsafePageError(PageError):
    """A page that must not be read: outside the docs root, or not a regular file."""


@dataclass(frozen=True, slots=True)
class SkippedPage:
    """A file that was not ingested, and why."""

    rel_path: str  # posix, relative to the docs root
    reason: str
    unsafe: bool  # refused for safety (never read); otherwise its content is invalid


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


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases: `*a` repeated in nested lists is a
    "billion laughs" bomb (360 bytes expanded to a 50 MB title), and front matter never
    needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in front matter", event.start_mark
            )
        return super().compose_node(parent, index)


def split_front_matter(source: str) -> tuple[dict[str, Any], str, int]:
    """Return (front matter mapping, body, number of lines the front matter occupied)."""
    match = _FRONT_MATTER.match(source)
    if match is None:
        if source.startswith("---\n") and "\n---" not in source[4:]:
            raise FrontMatterError("front matter opened with `---` is never closed")
        return {}, source, 0
    raw = match.group(1)
    if len(raw.encode("utf-8")) > MAX_FRONT_MATTER_BYTES:
        raise FrontMatterError(f"front matter is over {MAX_FRONT_MATTER_BYTES // 1024} KiB")
    try:
        data = yaml.load(raw, Loader=_NoAliasLoader) or {}  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise FrontMatterError(f"invalid YAML front matter: {_one_line(str(exc))}") from exc
    if not isinstance(data, dict):
        raise FrontMatterError(f"front matter must be a YAML mapping, not a {type(data).__name__}")
    header = match.group(0)
    return data, source[len(header) :], header.count("\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def strip_control_chars(text: str) -> str:
    """Drop C0/C1 control characters (NUL included), keeping tab and newline."""
    return _CONTROL_CHARS.sub("", text)


def _scalar_text(value: Any, name: str, limit: int) -> str:
    if isinstance(value, dict | list):
        raise FrontMatterError(f"front matter `{name}` must be text, not a {type(value).__name__}")
    text = strip_control_chars(str(value))
    if len(text) > limit:
        raise FrontMatterError(f"front matter `{name}` is {len(text)} characters (at most {limit})")
    return text


def _opt_str(data: dict[str, Any], name: str, limit: int | None = None) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    return _scalar_text(value, name, limit or MAX_FIELD_CHARS[name])


def _tags(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise FrontMatterError(f"front matter `tags` must be a list, not a {type(raw).__name__}")
    if len(raw) > MAX_TAGS:
        raise FrontMatterError(f"front matter has {len(raw)} tags (at most {MAX_TAGS})")
    tags = []
    for tag in raw:
        if isinstance(tag, dict):
            tag = tag.get("label", "")
        if tag is not None:
            tags.append(_scalar_text(tag, "tags", MAX_TAG_CHARS))
    return tuple(t for t in tags if t)


def parse_front_matter(data: dict[str, Any]) -> FrontMatter:
    """Validate and normalise the raw YAML mapping (tags: strings or `{label: …}` objects).

    Text fields are length-capped and stripped of control characters; a field of the
    wrong shape (`tags: 5`, a list as title) is a FrontMatterError, as in Docusaurus.
    """
    position = data.get("sidebar_position")
    return FrontMatter(
        title=_opt_str(data, "title"),
        description=_opt_str(data, "description", MAX_DESCRIPTION_CHARS),
        tags=_tags(data.get("tags")),
        sidebar_label=_opt_str(data, "sidebar_label"),
        sidebar_position=float(position) if isinstance(position, int | float) else None,
        slug=_opt_str(data, "slug"),
        id=_opt_str(data, "id"),
        draft=data.get("draft") is True,
        unlisted=data.get("unlisted") is True,
    )


def _blank_same_lines(text: str) -> str:
    """Replace removed text with as many newlines, so token line maps stay valid."""
    return "\n" * text.count("\n")


# The inline MDX cleanup is a hand-written scanner, not a regex: the one-pattern version
# (`<tag` + attributes) backtracked cubically (`"<a" + " " * 4000` took 118 s), and
# markdown-it has no tokenizer for MDX's JSX (`{…}` attribute expressions, tags spanning
# lines). It recognises exactly what that pattern did — inline code spans (kept, with
# CommonMark's equal-length backtick runs), `<!-- -->` and `{/* */}` comments, and tags
# `</?Name attrs /?>` whose attributes may hold quoted strings and `{…}` expressions
# nested two deep — but only moves forward and remembers every failed attempt, so a
# segment costs time linear in its length, whatever it holds.
_INLINE_START = re.compile(r"[`<]|\{/\*")
_BACKTICKS = re.compile(r"`+")
_TAG_NAME = re.compile(r"</?[A-Za-z][\w.\-]*")
_ATTR_PLAIN = re.compile(r"[^<>\"'{}]*")
_BRACE_PLAIN = re.compile(r"[^{}]*")


def _skip(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """End of `pattern` (a possibly empty run) matched at `pos`."""
    match = pattern.match(text, pos)
    return pos if match is None else match.end()


class _InlineScanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self._tag_ends: dict[int, int] = {}  # attribute-scan position → tag end, -1: none
        self._closers: dict[str, tuple[int, int]] = {}  # closer → (searched from, found at)
        self._code_ends: dict[int, int] | None = None

    def code_span_end(self, start: int) -> int:
        """End of the code span opened by the backtick run at `start`, -1 when unclosed."""
        if self._code_ends is None:
            ends: dict[int, int] = {}
            next_run_end: dict[int, int] = {}  # run length → end of the next run that long
            runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(self.text)]
            for run_start, run_end in reversed(runs):
                length = run_end - run_start
                ends[run_start] = next_run_end.get(length, -1)
                next_run_end[length] = run_end
            self._code_ends = ends
        return self._code_ends.get(start, -1)

    def closer_end(self, closer: str, pos: int) -> int:
        """End of the first `closer` at or after `pos` (positions only grow), -1 when none."""
        cached = self._closers.get(closer)
        if cached is not None and pos >= cached[0] and (cached[1] < 0 or cached[1] >= pos):
            found = cached[1]
        else:
            found = self.text.find(closer, pos)
            self._closers[closer] = (pos, found)
        return found + len(closer) if found >= 0 else -1

    def tag_end(self, start: int) -> int:
        """End of the JSX/HTML tag starting at `start` (a `<`), -1 when it is not one."""
        text = self.text
        name = _TAG_NAME.match(text, start)
        if name is None or name.end() >= len(text):
            return -1
        pos = name.end()
        char = text[pos]
        if char == ">":
            return pos + 1
        if char == "/":
            return pos + 2 if text.startswith(">", pos + 1) else -1
        if not char.isspace():  # includes `:`/`@`: `<https://…>` and `<a@b.org>` stay
            return -1
        return self._attributes_end(pos)

    def _attributes_end(self, pos: int) -> int:
        text = self.text
        visited: list[int] = []
        end = -1
        while True:
            stop = _skip(_ATTR_PLAIN, text, pos)
            known = self._tag_ends.get(stop)
            if known is not None:
                end = known
                break
            visited.append(stop)
            if stop >= len(text) or text[stop] in "<}":
                break
            char = text[stop]
            if char == ">":
                end = stop + 1
                break
            if char in "\"'":
                close = text.find(char, stop + 1)
                if close < 0:
                    break
                pos = close + 1
            else:
                pos = self._expression_end(stop)
                if pos < 0:
                    break
        for stop in visited:
            self._tag_ends[stop] = end
        return end

    def _expression_end(self, pos: int) -> int:
        """End of a `{…}` attribute expression at `pos` (one nested `{…}` level allowed)."""
        text = self.text
        pos += 1
        while True:
            stop = _skip(_BRACE_PLAIN, text, pos)
            if stop >= len(text):
                return -1
            if text[stop] == "}":
                return stop + 1
            inner = _skip(_BRACE_PLAIN, text, stop + 1)
            if inner >= len(text) or text[inner] != "}":
                return -1
            pos = inner + 1


def _clean_inline_mdx(segment: str) -> str:
    scanner = _InlineScanner(segment)
    out: list[str] = []
    copied = 0
    pos = 0
    while (found := _INLINE_START.search(segment, pos)) is not None:
        start = found.start()
        if segment[start] == "`":
            end = scanner.code_span_end(start)
            pos = end if end >= 0 else _skip(_BACKTICKS, segment, start)
            continue  # code spans are kept verbatim; an unclosed run is literal text
        if segment.startswith("<!--", start):
            end = scanner.closer_end("-->", start + 4)
        elif segment[start] == "<":
            end = scanner.tag_end(start)
        else:
            end = scanner.closer_end("*/}", start + 3)
        if end < 0:
            pos = start + 1
            continue
        out.append(segment[copied:start])
        out.append(_blank_same_lines(segment[start:end]))
        copied = pos = end
    out.append(segment[copied:])
    return "".join(out)


# `import Shared from './_shared.md';`: an MDX partial (Docusaurus renders it where
# `<Shared />` stands; files named `_…` are not pages of their own). No two adjacent
# runs of optional space: a line of spaces must not make the match quadratic.
_PARTIAL_IMPORT = re.compile(
    r"""^import\s+([A-Z][\w$]*)\s+from\s+(['"])(\.{1,2}/[^'"]+\.mdx?)\2\s*(?:;\s*)?$"""
)
# `<Shared />` (props allowed) alone on its line.
_PARTIAL_USE = re.compile(r"^\s*<([A-Z][\w$]*)(?:\s[^<>]*)?/>\s*$")
MAX_PARTIAL_DEPTH = 5


def inline_partials(body: str, path: Path, docs_root: Path) -> str:
    """Put each imported MDX partial's text where the page renders it (`<Shared />`).

    Only Markdown partials imported by a relative path are inlined (`./_shared.md`,
    `../_common/_note.mdx`), recursively up to `MAX_PARTIAL_DEPTH` levels; each is read
    like a page (a regular file inside the docs root, size-capped), its front matter
    dropped, and read once per page however often it is used. A partial that imports
    itself, or that cannot be parsed, is a PageError naming it; one outside the docs root
    is not read (a warning names it), and it, a missing one and components from elsewhere
    (React, `@site/…`) are left to `clean_mdx`, which drops their tags, as before. The page
    with its partials stays under `MAX_PAGE_BYTES`.
    """
    return _Partials(docs_root).inline(body, path, ())


class _Partials:
    """One page's partials: each file read and inlined once, whatever its number of uses
    (a partial used thousands of times costs one read, and the page's size cap bounds
    the copies)."""

    def __init__(self, docs_root: Path) -> None:
        self.docs_root = docs_root
        self.root = docs_root.resolve()
        self.texts: dict[Path, str | None] = {}  # None: left as it is (missing, outside)

    def inline(self, body: str, path: Path, seen: tuple[Path, ...]) -> str:
        lines = body.split("\n")
        imports: dict[str, str] = {}
        for line, fenced in _with_fences(lines):  # MDX hoists imports: a use may come first
            if not fenced and (match := _PARTIAL_IMPORT.match(line)):
                imports[match.group(1)] = match.group(3)
        if not imports:
            return body
        here = (*seen, path.resolve())
        out: list[str] = []
        size = 0
        for line, fenced in _with_fences(lines):
            if not fenced and (use := _PARTIAL_USE.match(line)) and use.group(1) in imports:
                text = self._text(imports[use.group(1)], path, here)
                line = line if text is None else text
            size += len(line.encode("utf-8")) + 1
            if size > MAX_PAGE_BYTES:
                raise PageError(f"over {MAX_PAGE_BYTES} bytes with its partials inlined")
            out.append(line)
        return "\n".join(out)

    def _text(self, target: str, path: Path, seen: tuple[Path, ...]) -> str | None:
        partial = (path.parent / target).resolve()
        if partial in seen:
            raise PageError(f"partial {target} imports itself (through {len(seen)} file(s))")
        if partial in self.texts:
            return self.texts[partial]
        if len(seen) > MAX_PARTIAL_DEPTH:
            raise PageError(f"partials nested more than {MAX_PARTIAL_DEPTH} levels deep")
        text: str | None = None
        if not partial.is_relative_to(self.root):
            # Not read, but not a reason to drop the page (and its indexed chunks).
            logger.warning(
                "partial outside the docs root not read",
                extra={"page": str(path), "partial": target},
            )
        elif partial.is_file():
            try:
                _, body, _ = split_front_matter(read_page_text(partial, self.docs_root))
            except PageError as exc:
                raise type(exc)(f"imported partial {target}: {exc}") from exc
            text = self.inline(body, partial, seen)
        self.texts[partial] = text
        return text


def _with_fences(lines: list[str]) -> Iterator[tuple[str, bool]]:
    """Each line and whether it belongs to a code fence (never read as MDX)."""
    fence: str | None = None
    for line in lines:
        if fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                fence = None
            yield line, True
        elif opening := _FENCE_OPEN.match(line):
            fence = opening.group(1)
            yield line, True
        else:
            yield line, False


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
    # No leading `\s*` in the pattern: searched, it would rescan every run of spaces
    # from each of its positions (quadratic); rstrip does that part in one pass.
    match = _HEADING_ID_SUFFIX.search(stripped)
    return stripped[: match.start()].rstrip() if match else stripped


_HEADING_ID_SUFFIX = re.compile(r"\{#[^{}]*\}\s*#*$")


def read_page_text(path: Path, docs_root: Path) -> str:
    """A page's text, refusing anything that is not a regular file inside `docs_root`.

    The real path (symlinks resolved) must lie inside the real docs root: a book must not
    be able to pull `/proc/self/environ` or `/etc/passwd` into the index. The file is
    opened without blocking (a FIFO cannot hang ingestion) and checked with fstat, so the
    check is on the file actually read. Text is UTF-8 (a BOM is dropped); CR/CRLF become
    LF and control characters are stripped.
    """
    root = docs_root.resolve()
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # dangling or looping symlink
        raise UnsafePageError(f"cannot resolve its real path ({exc.__class__.__name__})") from exc
    if not real.is_relative_to(root):
        raise UnsafePageError(f"its real path {real} is outside the docs root")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise UnsafePageError(f"cannot be opened: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePageError("not a regular file")
        if info.st_size > MAX_PAGE_BYTES:
            raise UnsafePageError(f"{info.st_size} bytes (pages are at most {MAX_PAGE_BYTES})")
        data = handle.read(MAX_PAGE_BYTES + 1)
    if len(data) > MAX_PAGE_BYTES:
        raise UnsafePageError(f"over {MAX_PAGE_BYTES} bytes (it grew while being read)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PageError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from exc
    return strip_control_chars(text.replace("\r\n", "\n").replace("\r", "\n"))


def load_page(path: Path, docs_root: Path) -> DocPage:
    """Parse one `.md`/`.mdx` file of a docs tree (drafts are parsed too; callers skip them).

    Every failure is a PageError whose message starts with the file's path.
    """
    rel_path = path.relative_to(docs_root).as_posix()
    try:
        return _parse_page(path, rel_path, read_page_text(path, docs_root), docs_root)
    except UnsafePageError as exc:
        raise UnsafePageError(f"{rel_path}: {exc}") from exc
    except PageError as exc:
        raise type(exc)(f"{rel_path}: {exc}") from exc
    except ValueError as exc:  # Docusaurus rules, e.g. an id with a slash
        message = str(exc).removeprefix(f"{rel_path}: ")
        raise PageError(f"{rel_path}: {message}") from exc


def _parse_page(path: Path, rel_path: str, raw: str, docs_root: Path) -> DocPage:
    data, body, fm_lines = split_front_matter(raw)
    front_matter = parse_front_matter(data)
    # Block line numbers count the partials' lines where they are inlined.
    body = inline_partials(body, path, docs_root)
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


def scan_doc_files(docs_root: Path) -> tuple[list[Path], list[SkippedPage]]:
    """The `.md`/`.mdx` files Docusaurus would consider (sorted; `_`/`.` names excluded),
    and the candidates refused without being read: symlinks whose target is outside the
    docs root, and special files (FIFOs, sockets, devices)."""
    root = docs_root.resolve()
    files: list[Path] = []
    refused: list[SkippedPage] = []
    # Path.rglob does not descend into symlinked folders, so every candidate's parent
    # folders are real folders inside the tree; only the candidate itself may be a link.
    for path in sorted(docs_root.rglob("*")):
        rel_parts = path.relative_to(docs_root).parts
        if any(part.startswith(("_", ".")) for part in rel_parts):
            continue
        rel_path = "/".join(rel_parts)
        try:
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                real = path.resolve(strict=True)
                if not real.is_relative_to(root):
                    if path.suffix in DOC_SUFFIXES or real.is_dir():
                        reason = f"symlink to {real}, outside the docs root"
                        refused.append(SkippedPage(rel_path, reason, unsafe=True))
                    continue
                mode = real.stat().st_mode
        except (OSError, RuntimeError):
            if path.suffix in DOC_SUFFIXES:
                refused.append(SkippedPage(rel_path, "broken symlink", unsafe=True))
            continue
        if path.suffix not in DOC_SUFFIXES or stat.S_ISDIR(mode):
            continue
        if stat.S_ISREG(mode):
            files.append(path)
        else:
            reason = "not a regular file (FIFO, socket or device)"
            refused.append(SkippedPage(rel_path, reason, unsafe=True))
    return files, refused


def iter_doc_files(docs_root: Path) -> Iterator[Path]:
    """Every `.md`/`.mdx` file Docusaurus would consider and bookchat may read, sorted."""
    yield from scan_doc_files(docs_root)[0]


def load_docs(docs_root: Path, skipped: list[SkippedPage] | None = None) -> list[DocPage]:
    """Load every published page of a docs tree: `draft: true` pages and partials skipped.

    Files that must not be read are never read. With a `skipped` list, those and every
    page that fails to parse are appended to it and the rest is loaded; without one, a
    page that fails to parse raises its PageError (refused files are still not read).
    """
    files, refused = scan_doc_files(docs_root)
    if skipped is not None:
        skipped.extend(refused)
    pages: list[DocPage] = []
    for path in files:
        try:
            page = load_page(path, docs_root)
        except PageError as exc:
            if skipped is None:
                raise
            rel_path = path.relative_to(docs_root).as_posix()
            reason = str(exc).removeprefix(f"{rel_path}: ")
            skipped.append(SkippedPage(rel_path, reason, isinstance(exc, UnsafePageError)))
            continue
        if not page.front_matter.draft:
            pages.append(page)
    return pages
