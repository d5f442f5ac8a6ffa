"""Small, dependency-free text analysis shared by retrieval, grounding and the offline answerer.

- `content_terms()`: lowercase word tokens minus stopwords (including question and
  request words such as *what*, *how*, *explain*), stemmed by the BM25 index's own
  analyser (qdrant-edge's English Snowball), so the lexical signals match what the index
  matches.
- `segments()`: Markdown split into readable units — prose sentences (robust to
  abbreviations, decimals and inline code), list items, table rows, headings and whole
  code blocks — with Markdown syntax stripped from everything but code.

Everything that is called per chunk is memoised, because the same chunks are analysed
again and again by every answer that retrieves them.
"""

from __future__ import annotations

import bisect
import gzip
import html
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from functools import lru_cache
from importlib import resources
from typing import Literal, TypeVar

import msgspec
import qdrant_edge

__all__ = [
    "CHARS_PER_TOKEN",
    "STOPWORDS",
    "Segment",
    "SegmentKind",
    "TermUnion",
    "approx_tokens",
    "comparison_sides",
    "content_terms",
    "content_words",
    "edits1",
    "everyday_spelling",
    "is_side_section",
    "jaccard",
    "light_stem",
    "light_term_set",
    "opens_with",
    "proper_names",
    "prose_sentences",
    "segments",
    "specificity",
    "spell_symbols",
    "split_sentences",
    "stem",
    "strip_markdown",
    "symbol_names",
    "term_set",
    "tokenize",
    "word_count",
]

# Function words, plus question/request words that say nothing about the topic asked;
# contractions typed without their apostrophe ("doesnt", "whats") are function words too.
STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are aren as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn
    doing don down during each either else etc ever every few for from further get gets got
    had hadn has hasn have haven having he her here hers herself him himself his how however
    i if in into is isn it its itself just let lets like may me might mine more most much
    must mustn my myself neither no nor not now of off on once one only or other ought our
    ours ourselves out over own per please quite rather really same shall shan she should
    shouldn so some such than that the their theirs them themselves then there these they
    this those though through thus to too under until up upon us very via was wasn we were
    weren what whatever when whenever where whereas wherever whether which while who whom
    whose why will with within without would wouldn yes yet you your yours yourself
    yourselves s t d ll m re ve
    explain explained explaining explanation describe described describes describing tell
    told summarize summarise summary mean means meant meaning say says said talk talks
    discuss discusses discussed give gives show shows define defined definition detail
    details detailed elaborate briefly simply thing things something
    anything everything kind kinds sort sorts way ways example examples e g ie eg
    use used using uses know want need help work works working happen happens
    book chapter section page passage selection selected
    already even still actually basically maybe perhaps probably somehow anyway although
    stuff lot lots vs versus
    aint arent cant couldnt didnt doesnt dont hadnt hasnt havent isnt mustnt neednt
    shouldnt wasnt werent wont wouldnt im ive youre youve theyre theyve weve thats whats
    hows wheres whos heres theres
    """.split()  # noqa: SIM905 (word lists read better as text)
)

# "H-bridge", "X-ray", "e-stop": a letter hyphenated to a word names one thing, not "h"
# and "bridge", so it is one token (kept with its hyphen: not a word of any dictionary).
_WORD_RE = re.compile(r"\b[a-z]-[a-z]{2,}\b|[a-z0-9]+(?:['’][a-z]+)?")
_TOKEN_CACHE_SIZE = 16384
_T = TypeVar("_T")

# Names spelt with a symbol that every tokenizer drops: "A*", "D* Lite", "RRT*" (search
# algorithms), "C++", "C#". Without a rewrite "What is A*?" has no word left to search
# for ("a" is a stop word), and "D* vs A*" matches any page that says "vs".
# `_EMPHASIS_RE` first unwraps Markdown emphasis ("*admissible*", "*Isaac Sim*"), whose
# closing star would otherwise look like one: an emphasis opener follows no word
# character and precedes a non-space, so the star of "A* adds" opens nothing. An escaped
# star ("**RRT\***" in Markdown source) is always a literal one.
_EMPHASIS_RE = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])")
_STARRED_RE = re.compile(r"(?<!\w)([A-Za-z][A-Za-z0-9]{0,5})(?:\\\*|\*(?![\w*])|-[Ss]tar\b)")
_PLUS_SHARP_RE = re.compile(r"(?<![\w+#])([CcFf])(\+\+|#)(?![\w+#])")
_PLUS_SHARP_WORD = {"++": "plusplus", "#": "sharp"}
# C and C++ pointer types ("char* name", "void*") are the type word, not a starred name.
_POINTER_TYPES = frozenset(
    "auto bool char const double float int long short signed size struct unsigned void".split()  # noqa: SIM905 (word lists read better as text)
)


def _starred(m: re.Match[str]) -> str:
    name = m[1]
    return m[0] if name.lower() in _POINTER_TYPES else f"{name}star"


def spell_symbols(text: str) -> str:
    """`text` with symbol-spelt names as one word each: "A*" → "Astar", "C++" → "Cplusplus".

    For matching only (BM25 documents and queries, the lexical signals), never for display.
    """
    if "*" in text:
        text = _STARRED_RE.sub(_starred, _EMPHASIS_RE.sub(r"\1", text))
    elif "-star" in text or "-Star" in text:
        text = _STARRED_RE.sub(_starred, text)
    if "+" in text or "#" in text:
        text = _PLUS_SHARP_RE.sub(lambda m: m[1] + _PLUS_SHARP_WORD[m[2]], text)
    return text


def symbol_names(text: str) -> frozenset[str]:
    """The words `spell_symbols` makes of `text`'s symbol-spelt names ("D*" → "dstar").

    They are names, not misspellings: "dstar" is one letter from "astar" and is not it.
    """
    if "*" not in text and "+" not in text and "#" not in text:
        return frozenset()
    before = set(tokenize(text.replace("*", " ").replace("+", " ").replace("#", " ")))
    return frozenset(t for t in tokenize(text) if t not in before)


# Sections that restate or quiz the content rather than explain it, or that only name
# the chapters' topics ("What the book covers": it matches many questions, answers none).
_SIDE_SECTION_RE = re.compile(
    r"\b(learning objectives?|objectives|exercises?|quiz|review questions?|assessment|"
    r"references|further reading|prerequisites|key takeaways|scenario|"
    r"what (?:the|this) book covers|how to (?:read|use) this book|about this book)\b"
    # "Questions", "Questions for your report": a list of prompts. Not "Frequently asked
    # questions", whose entries answer them.
    r"|^questions\b",
    re.I,
)


def is_side_section(heading: str) -> bool:
    """True for a section that restates, quizzes or lists rather than explains.

    ("Learning objectives", "Exercises", "Questions for your report", "References", "What
    the book covers": they match many questions and answer none.)
    """
    return _SIDE_SECTION_RE.search(heading) is not None


# ---------------------------------------------------------------------------------------
# Stemming: the BM25 index's own analysis
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _analyser() -> qdrant_edge.Bm25:
    # The same analyser that builds the BM25 index (search/sparse.py): English Snowball
    # stemming, terms hashed to u32 ids. Only the ids are used here, so k/b do not matter.
    return qdrant_edge.Bm25(qdrant_edge.Bm25Config(language="english"))


@lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def stem(word: str) -> str:
    """The index's stem of one lowercase word, as an opaque term ("#<id>").

    The lexical signals (relevance, duplicates, the offline answerer) thus match words
    exactly as the BM25 index does. Words with digits, ≤ 2 letters, or dropped by the
    index's stop-word list are kept as they are.
    """
    if len(word) <= 2 or not word.isalpha():
        return word
    ids = _analyser().embed_query(word).indices
    return f"#{ids[0]}" if len(ids) else word


# ---------------------------------------------------------------------------------------
# Tokens and terms
# ---------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens (letters/digits); possessive 's and other clitics dropped;
    a single letter hyphenated to a word is one token ("H-bridge" → "h-bridge"); a name
    spelt with a symbol is one word ("A*" → "astar", see `spell_symbols`)."""
    out: list[str] = []
    for tok in _WORD_RE.findall(spell_symbols(text).lower()):
        if "'" in tok or "’" in tok:
            word, clitic = re.split(r"['’]", tok, maxsplit=1)
            # "won't", "don't": negated auxiliaries are function words, not "won"/"don".
            tok = "" if clitic == "t" else word
        if tok:
            out.append(tok)
    return out


def content_words(text: str) -> list[str]:
    """Non-stopword tokens as written (unstemmed), deduplicated, in order of appearance.

    Used to expand a search query: the vector store stems with its own analyser, so it
    must receive real words, not our stems.
    """
    seen: set[str] = set()
    out: list[str] = []
    for tok in tokenize(text):
        if tok in STOPWORDS or tok in seen or (len(tok) < 2 and not tok.isdigit()):
            continue
        seen.add(tok)
        out.append(tok)
    return out


def content_terms(text: str) -> list[str]:
    """Stemmed content terms, deduplicated, in order of first appearance."""
    seen: set[str] = set()
    out: list[str] = []
    for tok in content_words(text):
        term = stem(tok)
        if term not in seen:
            seen.add(term)
            out.append(term)
    return out


@lru_cache(maxsize=8192)
def term_set(text: str) -> frozenset[str]:
    """The set of stemmed content terms of `text` (memoised: chunks recur across answers)."""
    return frozenset(content_terms(text))


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """Jaccard overlap of two term sets (0.0 when both are empty)."""
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


class TermUnion(AbstractSet[str]):
    """The union of term sets, read without being built: membership asks each set.

    Relevance asks whether a handful of question terms occur among 20 candidates;
    building the union of their term sets for that cost more than the rest of the
    ranking. Iterating (or `len`) builds it.
    """

    __slots__ = ("_sets",)

    def __init__(self, sets: Iterable[AbstractSet[str]]) -> None:
        self._sets = tuple(sets)

    def __contains__(self, term: object) -> bool:
        return any(term in terms for terms in self._sets)

    def __iter__(self) -> Iterator[str]:
        return iter(frozenset().union(*self._sets))

    def __len__(self) -> int:
        return len(frozenset().union(*self._sets))

    def __bool__(self) -> bool:
        return any(self._sets)

    @classmethod
    def _from_iterable(cls, it: Iterable[_T], /) -> set[_T]:
        # `edits & union` (the set operators of collections.abc.Set) gives a plain set.
        return set(it)


def word_count(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


# One token per 4 characters: the one estimate used for chunk sizes and prompt budgets.
CHARS_PER_TOKEN = 4


def approx_tokens(text: str) -> int:
    """Approximate LLM tokens (≈ 4 characters each); no tokenizer download needed."""
    return -(-len(text) // CHARS_PER_TOKEN)


# ---------------------------------------------------------------------------------------
# Markdown → readable units
# ---------------------------------------------------------------------------------------

SegmentKind = Literal["prose", "bullet", "heading", "table_row", "code"]


class Segment(msgspec.Struct, kw_only=True, frozen=True):
    """One readable unit of a chunk: a sentence, a list item, a table row, a code block."""

    kind: SegmentKind
    text: str  # Markdown stripped, except for code which is kept verbatim
    position: int  # order within the source text


_FENCE_RE = re.compile(r"^\s*(```+|~~~+)")
_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+")
_BULLET_RE = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
_TABLE_SEP_RE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_ADMONITION_RE = re.compile(r"^\s*:::\s*(\w+)?\s*(.*)$")
_IMAGE_RE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK_RE = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_REF_LINK_RE = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][\w.-]*(?:\s[^<>]*)?/?>")
_HEADING_ID_RE = re.compile(r"\s*\{#[\w-]+\}\s*$")
_EMPH_RE = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_RE = re.compile(r"(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\1(?![\w*])")
_STRIKE_RE = re.compile(r"~~(.+?)~~")
# A backslash-escaped punctuation mark is the mark itself ("RRT\*" reads "RRT*"), except
# inside inline code (group 1), where the backslash is literal.
_ESCAPE_RE = re.compile(r"(`[^`]*`)|\\([\\`*_{}\[\]()#+\-.!|<>~])")
_INLINE_CODE_RE = re.compile(r"`+([^`]+?)`+")
# A character reference ("&lt;", "&#8212;"), which the site renders as its character;
# inside inline code it is literal text (CommonMark).
_ENTITY_RE = re.compile(r"(`[^`]*`)|(&(?:#[0-9]{1,7}|#x[0-9a-f]{1,6}|[a-z][a-z0-9]{1,31});)", re.I)
_SPACES_RE = re.compile(r"[ \t]+")

# Words that end with "." without ending a sentence.
_ABBREVIATIONS = frozenset(
    """
    e.g i.e etc vs cf al fig figs eq eqs no nos approx ca dr mr mrs ms prof sr jr st inc ltd
    co corp dept est min max sec vol ch pp ed eds u.s u.k a.k.a resp incl
    """.split()  # noqa: SIM905 (word lists read better as text)
)
# Matches start only at the first mark of a run (the lookbehind): otherwise finditer
# would rescan a run of n dots from each of its n positions (quadratic; 20k dots: 22 s).
_BOUNDARY_RE = re.compile(r"(?<![.!?])[.!?]+[\"'”’)\]]*\s+")
_WORD_WINDOW = 64  # longer than any abbreviation: the last word is looked up in this window


def strip_markdown(text: str) -> str:
    """Inline Markdown/MDX to plain text: emphasis, code ticks, links, images, tags, ids."""
    text = _IMAGE_RE.sub("", text)
    text = _LINK_RE.sub(r"\1", text)
    text = _REF_LINK_RE.sub(r"\1", text)
    text = _HTML_TAG_RE.sub("", text)
    text = _HEADING_ID_RE.sub("", text)
    text = _ESCAPE_RE.sub(lambda m: m[1] or m[2], text) if "\\" in text else text
    if "&" in text:
        text = _ENTITY_RE.sub(lambda m: m[1] or html.unescape(m[2]), text)
    text = _INLINE_CODE_RE.sub(r"\1", text)
    text = _EMPH_RE.sub(r"\2", text)
    text = _ITALIC_RE.sub(r"\2", text)
    text = _STRIKE_RE.sub(r"\1", text)
    return _SPACES_RE.sub(" ", text).strip()


def prose_sentences(paragraph: str) -> list[str]:
    """Split one paragraph of raw Markdown into sentences (before stripping).

    Robust to abbreviations ("e.g.", "Fig."), initials, decimals and dots inside inline
    code; the one sentence splitter of the package (chunking uses it too).
    """
    code_spans = [m.span() for m in re.finditer(r"`[^`]*`", paragraph)]
    span_starts = [a for a, _ in code_spans]
    out: list[str] = []
    start = 0
    for m in _BOUNDARY_RE.finditer(paragraph):
        end = m.end()
        inside = bisect.bisect_right(span_starts, m.start()) - 1  # spans do not overlap
        if inside >= 0 and m.start() < code_spans[inside][1]:
            continue  # a "." inside inline code (e.g. `rclpy.init()`)
        # A bounded window, not paragraph[start:]: sentences that do not end here would
        # make every lookup rescan the whole unfinished sentence (quadratic).
        before = paragraph[max(start, m.start() + 1 - _WORD_WINDOW) : m.start() + 1]
        last_word = before.rsplit(None, 1)[-1].lower().strip("(\"'*_`").rstrip(".")
        if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
            continue  # "e.g.", "Fig.", initials such as "J."
        if m.start() - start < 12 and paragraph[start : m.start()].strip().lstrip("*_(").isdigit():
            continue  # an enumerator: "**3. Safety Measures**:", "2. Install the driver."
        nxt = paragraph[end : end + 1]
        if nxt and nxt.islower():
            continue  # a sentence does not start in lowercase
        out.append(paragraph[start:end].strip())
        start = end
    tail = paragraph[start:].strip()
    if tail:
        out.append(tail)
    return out


def _split_row(line: str) -> list[str]:
    cells = line.strip().strip("|").split("|")
    return [strip_markdown(c.strip()) for c in cells]


def _table_rows(lines: list[str]) -> list[str]:
    """Table rows as sentences: "Security — ROS1: None; ROS2: DDS encryption."."""
    rows = [line for line in lines if not _TABLE_SEP_RE.match(line)]
    if not rows:
        return []
    header = _split_row(rows[0])
    out: list[str] = []
    for line in rows[1:]:
        cells = _split_row(line)
        if not any(cells):
            continue
        first, rest = cells[0], cells[1:]
        pairs = [f"{h}: {c}" if h else c for h, c in zip(header[1:], rest, strict=False) if c]
        sentence = f"{first} — {'; '.join(pairs)}" if pairs else first
        out.append(sentence.rstrip(".") + ".")
    return out


@lru_cache(maxsize=4096)
def segments(text: str) -> tuple[Segment, ...]:
    """Markdown split into readable units (memoised per text).

    Code fences stay whole (kind "code"); list items, table rows and headings are units
    of their own; paragraphs are split into sentences. Admonition markers are dropped
    but their body is kept as prose.
    """
    out: list[Segment] = []
    lines = text.splitlines()
    para: list[str] = []
    table: list[str] = []
    i = 0

    def add(kind: SegmentKind, value: str) -> None:
        value = value.strip()
        if value:
            out.append(Segment(kind=kind, text=value, position=len(out)))

    def flush_para() -> None:
        if para:
            for sent in prose_sentences(" ".join(s.strip() for s in para)):
                add("prose", strip_markdown(sent))
            para.clear()

    def flush_table() -> None:
        if table:
            for row in _table_rows(table):
                add("table_row", row)
            table.clear()

    while i < len(lines):
        line = lines[i]
        fence = _FENCE_RE.match(line)
        if fence:
            flush_para()
            flush_table()
            marker = fence.group(1)
            block = [line]
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker[:3]):
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])
            add("code", "\n".join(block))
            i += 1
            continue
        stripped = line.strip()
        if stripped.startswith("|"):
            flush_para()
            table.append(stripped)
            i += 1
            continue
        flush_table()
        if not stripped:
            flush_para()
        elif _HEADING_RE.match(line):
            flush_para()
            add("heading", strip_markdown(_HEADING_RE.sub("", line)))
        elif (adm := _ADMONITION_RE.match(line)) is not None:
            flush_para()
            label = (adm.group(2) or "").strip()
            if label:
                add("heading", strip_markdown(label))
        elif _BULLET_RE.match(line):
            flush_para()
            item = [_BULLET_RE.sub("", line)]
            # Continuation lines of the same item are indented and not a new bullet.
            while (
                i + 1 < len(lines)
                and lines[i + 1].startswith((" ", "\t"))
                and lines[i + 1].strip()
                and not _BULLET_RE.match(lines[i + 1])
                and not _FENCE_RE.match(lines[i + 1])
            ):
                i += 1
                item.append(lines[i].strip())
            for sent in prose_sentences(" ".join(item)):
                add("bullet", strip_markdown(sent))
        else:
            para.append(stripped.lstrip("> ").strip() if stripped.startswith(">") else stripped)
        i += 1
    flush_para()
    flush_table()
    return tuple(out)


def split_sentences(text: str) -> list[str]:
    """Readable sentences of a Markdown text: prose, list items and table rows.

    Headings and code blocks are left out; use `segments()` to get them too.
    """
    return [s.text for s in segments(text) if s.kind in ("prose", "bullet", "table_row")]


# ---------------------------------------------------------------------------------------
# Specificity: how much a word says about a topic
# ---------------------------------------------------------------------------------------

ZIPF_CEILING = 5.5  # words at least this common ("even", "look", "world") weigh nothing
MAX_SPECIFICITY = ZIPF_CEILING
NUMBER_SPECIFICITY = 1.0  # "2018", "6": specific, but books mention numbers loosely


@lru_cache(maxsize=1)
def _frequencies() -> tuple[dict[str, int], float]:
    """pyspellchecker's English word counts and their total (read once per process)."""
    data = resources.files("spellchecker").joinpath("resources/en.json.gz").read_bytes()
    counts: dict[str, int] = json.loads(gzip.decompress(data))
    return counts, float(sum(counts.values()))


def _zipf(word: str) -> float:
    counts, total = _frequencies()
    count = counts.get(word, 0)
    return math.log10(count * 1e9 / total) if count else -math.inf


def in_english(word: str) -> bool:
    """Whether `word` (lower case) is in the English word list at all."""
    return word in _frequencies()[0]


# Suffixes that make an adjective or adverb of a word without changing what it is about
# ("zigzaggy", "laggy", "cartoonish", "jerkily"). The frequency list lacks many such
# forms or holds them as rare, which would weigh a reader's casual word like a name.
_DERIVING_SUFFIXES = ("ishly", "ish", "ily", "ly", "y", "ness", "like")
# A derived word counts as a little rarer than the word it is made from.
_DERIVED_ZIPF_DISCOUNT = 0.5
_MIN_BASE_ZIPF = 2.0  # the base must itself be a real word, not a fragment


def _derived_zipf(word: str) -> float:
    """The frequency of the word `word` is derived from by a suffix, less a discount."""
    best = -math.inf
    for suffix in _DERIVING_SUFFIXES:
        if not word.endswith(suffix) or len(word) - len(suffix) < 3:
            continue
        stem_ = word[: -len(suffix)]
        doubled = stem_[-1] == stem_[-2] and stem_[-1] not in _VOWELS
        if doubled:
            bases = {stem_, stem_[:-1]}  # "zigzaggy" ← "zigzag", "laggy" ← "lag"
        elif len(stem_) >= 4:
            bases = {stem_, stem_ + "e"}  # "noisy" ← "noise"; not "sony" ← "son"
        else:
            continue
        for base in bases:
            z = _zipf(base)
            if z >= _MIN_BASE_ZIPF:
                best = max(best, z - _DERIVED_ZIPF_DISCOUNT)
    return best


# British spellings the (American) word list lacks, as (ending, replacement):
# "millimetres" → "millimeters", "colour" → "color", "localisation" → "localization",
# "analysed" → "analyzed", "modelling" → "modeling", "catalogue" → "catalog".
_BRITISH_ENDINGS = re.compile(
    r"(?P<tre>(?<=[a-z])tre(?=s?$))"
    r"|(?P<our>(?<=[a-z]{2})our(?=(?:s|ed|ing|ite|ites|able)?$))"
    r"|(?P<is>(?<=[a-z]{3})is(?=(?:e|es|ed|ing|ation|ations|er|ers)$))"
    r"|(?P<ys>(?<=[a-z]{3})ys(?=(?:e|es|ed|ing)$))"
    r"|(?P<ll>(?<=[aeiou][a-z])ll(?=(?:ed|ing|er|ers)$))"
    r"|(?P<ogue>ogue(?=s?$))"
)
_AMERICAN = {"tre": "ter", "our": "or", "is": "iz", "ys": "yz", "ll": "l", "ogue": "og"}


def american_spelling(word: str) -> str | None:
    """The American spelling of a British one the English word list lacks
    ("millimetres" → "millimeters"), if the list holds it."""
    m = _BRITISH_ENDINGS.search(word)
    if m is None or m.lastgroup is None or in_english(word):
        return None
    american = word[: m.start()] + _AMERICAN[m.lastgroup] + word[m.end() :]
    return american if in_english(american) else None


@lru_cache(maxsize=16384)
def specificity(word: str) -> float:
    """How much a word says about a topic: 0 for everyday words, high for jargon and names.

    A word made from an everyday one by a suffix ("zigzaggy", "laggy") weighs as that
    word, a little more: it is a reader's description, not a name.
    """
    word = word.lower().strip("'’")
    if word.isdigit():
        return NUMBER_SPECIFICITY
    zipf = max(_zipf(word), _derived_zipf(word)) if word.isalpha() else _zipf(word)
    return max(0.0, min(MAX_SPECIFICITY, ZIPF_CEILING - zipf))


_VOWELS = frozenset("aeiou")


@lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def light_stem(word: str) -> str:
    """Inflection-only stemming: plurals, -ing, -ed and a final -e ("tuning" = "tune").

    Snowball conflates derivations ("transformer" and "transforms", "predictive" and
    "predict"), which is right for ranking but wrong for deciding whether the book talks
    about the question's exact subject; the relevance decision uses both.
    """
    w = word
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif w.endswith("sses") or (len(w) > 4 and w.endswith(("ches", "shes", "xes", "zes"))):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in _VOWELS and w[-1] not in "lsz":
        w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


@lru_cache(maxsize=8192)
def light_term_set(text: str) -> frozenset[str]:
    """Light stems (`light_stem`) of the content words of `text` (memoised per chunk)."""
    return frozenset(light_stem(w) for w in content_words(text))


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def edits1(word: str) -> set[str]:
    """Every string one edit (delete, transpose, replace, insert) away from `word`.

    Norvig's construction, written here because pyspellchecker's `SpellChecker` loads a
    second copy of the same dictionary (2 s) for what is a set of string edits.
    """
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    deletes = [a + b[1:] for a, b in splits if b]
    transposes = [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]
    replaces = [a + c + b[1:] for a, b in splits if b for c in _LETTERS]
    inserts = [a + c + b for a, b in splits for c in _LETTERS]
    return set(deletes + transposes + replaces + inserts)


@lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def everyday_spelling(word: str, *, min_zipf: float = 3.0) -> str | None:
    """The common English word `word` is one typo away from ("shoud" → "should"), if any."""
    if not word.isalpha() or len(word) < 4:
        return None
    best: tuple[float, str] | None = None
    for candidate in edits1(word):
        z = _zipf(candidate)
        if z >= min_zipf and (best is None or z > best[0]):
            best = (z, candidate)
    return best[1] if best else None


_PARTICLE_ZIPF = 6.0


@lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def everyday_compound(word: str, *, min_zipf: float = 3.0) -> tuple[str, str] | None:
    """The two common English words `word` is written from ("onboard" → on + board), if any.

    Closed compounds are often missing from word-frequency lists, which would make them
    look like names.
    """
    if not word.isalpha() or len(word) < 6:
        return None
    for cut in range(2, len(word) - 2):
        head, tail = word[:cut], word[cut:]
        # A two-letter head only when it is a particle as common as "on", "up", "in".
        if _zipf(head) >= (min_zipf if cut > 2 else _PARTICLE_ZIPF) and _zipf(tail) >= min_zipf:
            return head, tail
    return None


# "the difference between a topic and a service", "RRT vs A*", "how is RRT different from
# A*?", "A* compared with Dijkstra": the two things a question compares.
_COMPARISON_RES = (
    re.compile(r"\bdifferences?\s+between\s+(?P<x>.+?)\s+and\s+(?P<y>[^?!.]+)", re.I),
    re.compile(
        r"(?P<x>[^,;:?!]+?)\s+(?:vs\.?|versus|compared\s+(?:to|with)|different\s+from)"
        r"\s+(?P<y>[^,;:?!]+)",
        re.I,
    ),
)
_COMPARISON_HINT_RE = re.compile(r"differen|\bvs\b|versus|compared", re.I)
_ARTICLES = frozenset({"a", "an", "the"})
_DASHES = frozenset({"—", "–", "-", "|"})


def _run(tokens: Sequence[str], *, last: bool) -> tuple[str, ...]:
    """The up to two content tokens next to the comparison word: the end of the phrase
    before it (`last`), or the start of the one after it, past an article. () when a
    function word stands there ("sensors that look at the robot itself and …")."""
    seq = list(reversed(tokens)) if last else list(tokens)
    if not last and seq and seq[0] in _ARTICLES:
        seq = seq[1:]
    run: list[str] = []
    for tok in seq:
        if tok in STOPWORDS or (len(tok) < 2 and not tok.isdigit()):
            break
        run.append(tok)
        if len(run) == 2:
            break
    return tuple(reversed(run)) if last else tuple(run)


def comparison_sides(question: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The words naming the two things `question` compares, or None.

    "what's the difference between a topic and a service?" → (("topic",), ("service",));
    "When should I use a service vs a topic in ROS2?" → (("service",), ("topic",)): the
    words nearest the comparison, without articles, question words or what follows a
    preposition.
    """
    if _COMPARISON_HINT_RE.search(question) is None:
        return None  # the patterns scan from every position: 25 µs on a plain question
    for pattern in _COMPARISON_RES:
        m = pattern.search(question)
        if m is None:
            continue
        x, y = _run(tokenize(m["x"]), last=True), _run(tokenize(m["y"]), last=False)
        if x and y and x != y:
            return x, y
    return None


def opens_with(text: str, subject: Sequence[str]) -> bool:
    """Whether `text` opens with the words `subject` (tokens; after an article, compared by
    `light_stem`): "A* adds …" opens with ("astar",), "Services provide …" with
    ("service",); "Weighted A* makes A* greedier" does not open with ("astar",), and
    neither does a question, a label ("Topic: /imu/data") or a table row."""
    if not subject or text.rstrip().endswith("?"):
        return False  # a question ("Topic or service?") says nothing about it
    words = tokenize(text[: 24 * (len(subject) + 1)])[: len(subject) + 1]
    if words and words[0] in _ARTICLES:
        words = words[1:]
    if len(words) < len(subject):
        return False
    if not all(light_stem(w) == light_stem(s) for w, s in zip(words, subject, strict=False)):
        return False
    # A label or a table row ("Topic: /imu/data …", "A* — Complete?: Yes") names it
    # without saying anything about it.
    head = text.split()[: len(subject) + 2]
    return not any(w.endswith(":") or w in _DASHES for w in head)


# A capitalised word inside a sentence, after a word, not after a full stop: "Gazebo",
# "Windows", "Raspberry", "PX4".
_PROPER_NAME_RE = re.compile(r"(?<=[\w,;:)] )[A-Z][A-Za-z0-9*+#-]*")
_WORDS_RE = re.compile(r"[A-Za-z][\w'’*+#-]*")


def proper_names(text: str) -> list[str]:
    """The capitalised words inside `text`'s sentences ("How do I install ROS 2 on
    Windows?" → ["ROS", "Windows"]), but "I". A sentence's first word is not one, and a
    text in Title Case or capitals ("How Do I Stop It Wobbling?") has none."""
    names = [name for name in _PROPER_NAME_RE.findall(text) if name != "I"]
    if names and len(names) * 2 > len(_WORDS_RE.findall(text)) - 1:
        return []
    return names
