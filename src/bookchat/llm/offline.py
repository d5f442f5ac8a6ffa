"""The offline answerer: an extractive excerpt of the retrieved sources, with citations.

Used when no Gemini key is configured (the quick start). It never invents text: it picks
the 2–5 sentences of the context that best cover the question's terms, keeps them in
book order, strips Markdown, cites each with `[n]`, and labels the answer as an excerpt.

Scoring a sentence: the weighted fraction of question terms it contains (terms rare
among the context's sentences weigh more), a bonus when its block's title/section
matches the question and for definition-like sentences of "what is …" questions,
scaled by the block's rank and by a length/kind factor. Code is left out unless the
question asks about code, or a chosen sentence introduces it ("Reject measurements that
don't match model predictions:"): such a line is shown with its code block or not at all,
since technical books often answer a question with one such line and the code under it.
A drawback question ("what's the downside?", "is there a catch?") is also answered by a
line labelled as one ("Limitation: …", "Cons: …") outside any section so titled.
When the question asks for code, code that such a line announces is scored with the line
(the line's words and the code's) and shown with it, never alone.
Near-duplicate sentences (term Jaccard ≥ 0.6) are skipped. The answer leads with the best
source's best sentence that shares a word with the question (the page title every chunk
carries does not count); a definition question ("What is A*?") leads with the sentence of
the top two sources that opens with its subject ("A* adds a heuristic …"). A sentence that
runs into a formula line is shown with it, and with the "where …" line naming its symbols.

With the local sentence encoder (`EMBEDDING_PROVIDER=local`) a sentence's cosine with
the question adds to its score (`SEM_WEIGHT` × the excess over `SEM_FLOOR`), so a
sentence that answers in other words than the question's can be found. Both numbers were set on
the sample book's calibration reader questions, where every floor from 0.2 to 0.4 and
every weight from 0.5 to 2 scores the same (0.941, against 0.912 without the encoder),
and checked unchanged on the held-out part and the unseen textbook. A selection is never
encoded: selected-text mode uses nothing but its own text.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

import msgspec

from bookchat.llm.base import (
    ContextBlock,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TokenDelta,
)
from bookchat.text import (
    Segment,
    approx_tokens,
    comparison_sides,
    is_side_section,
    jaccard,
    opens_with,
    segments,
    term_set,
    tokenize,
)

__all__ = ["CLOSEST_LABEL", "OFFLINE_LABEL", "OfflineGenerator"]

OFFLINE_LABEL = "From the book (extractive excerpt, no AI model configured):"
CLOSEST_LABEL = (
    "The book may not answer this exactly; these are its closest passages "
    "(extractive excerpt, no AI model configured):"
)

_CODE_WORDS = frozenset(
    """
    code command commands snippet script run install implement implementation write syntax
    launch function class api program cli terminal python cpp yaml xml config configure
    configuration file setting settings
    """.split()  # noqa: SIM905 (word lists read better as text)
)
_DEFINITION_Q_RE = re.compile(r"^\s*(what\s+(is|are|'s)|define|who\s+(is|are)|what\s+does)\b", re.I)
_DEFINITION_S_RE = re.compile(r"\b(is|are|refers? to|means|describes?|stands for)\b", re.I)
# The thing a definition question asks about: "What is A*?" → "A*", "what does a PID
# controller do?" → "PID controller". A sentence opening with it defines it ("A* adds a
# heuristic …"); one that merely mentions it ("Weighted A* makes A* greedier") does not.
_DEFINED_RE = re.compile(
    r"^\s*(?:what|who)\s*(?:is|are|'s|’s)\s+(?:an?\s+|the\s+)?(?P<a>[^?,;:]+?)\s*\??\s*$"
    r"|^\s*define\s+(?:an?\s+|the\s+)?(?P<b>[^?,;:]+?)\s*[?.]?\s*$"
    r"|^\s*what\s+does\s+(?:an?\s+|the\s+)?(?P<c>[^?,;:]+?)\s+(?:do|mean|stand\s+for)\s*\??\s*$",
    re.I,
)
_MECHANISM_Q_RE = re.compile(r"^\s*how\s+(does|do|is|are|can)\b(?!\s+(i|we|you)\b)", re.I)
# Sentences that give a mechanism: a cause, a means, or a formula.
_MECHANISM_S_RE = re.compile(r"\b(because|by\s+\w+ing|so that|therefore|until)\b|\s=\s", re.I)
# Sections that explain how something works ("Time-of-flight principle", "How SLAM works").
_MECHANISM_SECTION_RE = re.compile(
    r"\b(principles?|mechanisms?|how\b.*\bworks?|operation|theory of operation)\b", re.I
)
# "Why …?", and a symptom told first: "… after a few laps it is somewhere else. Why?"
_WHY_Q_RE = re.compile(r"^\s*(why|how\s+come)\b|(?:^|[.,;:!?]\s*)why\W*$", re.I)
_REASON_S_RE = re.compile(r"\b(because|since|so that|therefore|which is why|due to)\b", re.I)
# "How far / fast / many …?" asks for a quantity: the sentence that states one answers.
# Only as the question's own interrogative (at its start or a clause's, "by how much"),
# not inside another question ("how does a scanner tell how far away a wall is?").
_QUANTITY_Q_RE = re.compile(
    r"(?:^|[,;?]\s*|\b(?:and|but|by)\s+)how\s+(far|fast|long|much|many|often|big|heavy"
    r"|accurate|precise|high|wide|quickly|large|small|close|low|tall|strong)\b",
    re.I,
)
# A figure's number: digits, or a number in words ("plan for about two hours").
_NUMBER = (
    r"(?:\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen"
    r"|twenty|thirty|forty|fifty|sixty|ninety|hundreds?|thousands?|a\s+few|several))"
)
_LENGTH = rf"{_NUMBER}\s?(?:mm|cm|m|km|metres?|meters?|centimetres?|millimetres?)\b"
_SPEED = rf"{_NUMBER}\s?(?:m/s|km/h|rad/s|°/s|mph|hz|khz|fps)\b"
_TIME = rf"{_NUMBER}\s?(?:ns|µs|us|ms|s|seconds?|minutes?|min|h|hours?)\b"
_RATE = rf"{_NUMBER}\s?(?:hz|khz|mhz|fps)\b|\btimes\s+(?:per|a)\b"
# The dimension each "how …" asks for, as books name it ("how far" → the range), and the
# units a figure of it is given in.
_QUANTITY_ASKS: dict[str, tuple[str, str | None]] = {
    "far": ("range distance", _LENGTH), "close": ("distance", _LENGTH),
    "high": ("height", _LENGTH), "tall": ("height", _LENGTH), "wide": ("width", _LENGTH),
    "long": ("duration length time", f"{_TIME}|{_LENGTH}"),
    "fast": ("speed rate", _SPEED), "quickly": ("speed rate", f"{_SPEED}|{_TIME}"),
    "often": ("rate frequency", _RATE), "heavy": ("weight mass", rf"{_NUMBER}\s?(?:g|kg|t)\b"),
    "much": ("amount cost", None), "many": ("number count", None), "big": ("size", None),
    "large": ("size", None), "small": ("size", None), "low": ("minimum", None),
    "accurate": ("accuracy", None), "precise": ("precision", None),
    "strong": ("strength force", None),
}  # fmt: skip
_QUANTITY_UNITS = {
    ask: re.compile(units, re.I) for ask, (_, units) in _QUANTITY_ASKS.items() if units
}
# "How do I …?", also after the reader's context: "for a two-joint leg, how do I …?",
# "my joint readings are jittery. how do i clean them up?"
_HOW_TO_RE = re.compile(
    r"(?:^|[,;:.!?]\s*)(?:how\s+(?:do|can|should|would)\s+(?:i|we|you)|how\s+to)\b", re.I
)
_MAX_CODE_LINES = 15
_PIECE_RE = re.compile(r"\s*\S+")
# Caveat sections answer "what are its limits?" and "why does it go wrong?", not "what is
# it?" or "how does it work?".
_CAVEATS = (
    r"limitations?|limits|drawbacks?|disadvantages?|pitfalls?|trade-?offs?|weakness(?:es)?|"
    r"failure modes?|caveats?"
)
_CAVEAT_SECTION_RE = re.compile(rf"\b(?:{_CAVEATS})\b", re.I)
# A negated question ("why can't my lidar see the glass door?") asks what a thing cannot
# do, which its limitations section says. Readers often drop the apostrophe ("cant").
# "…, is that normal?" asks whether a behaviour is a known failure: the same section.
_CAVEAT_QUESTION_RE = re.compile(
    r"\b(limit\w*|drawback\w*|disadvantage\w*|pitfall\w*|trade-?offs?|weak\w*|fail\w*|"
    r"problem\w*|downside\w*|wrong|issue\w*|caveat\w*|drift\w*|error\w*"
    r"|can['’]?t|cannot|doesn['’]?t|don['’]?t|won['’]t|isn['’]?t|never|normal"
    r"|(?:the|a|any)\s+catch)\b",
    re.I,
)
# A sentence or list item labelled as a drawback ("**Limitation**: Computationally
# expensive …", "- **Cons**: Sensitive to lighting"): what "what's the downside?" asks for,
# wherever the book puts it, not only under a section so titled.
_CAVEAT_LABEL_RE = re.compile(rf"^\s*(?:main\s+|key\s+)?(?:{_CAVEATS}|cons|downsides?)\s*:", re.I)
# A reader reporting trouble with their own robot ("my robot keeps getting stuck on the
# little bump in every doorway", "our controller gets sluggish with a heavy box"): its
# limitations and trade-offs sections are where the book says what goes wrong.
_SYMPTOM_Q_RE = re.compile(
    r"^\s*(?:my|our)\b|\bkeeps?\s+(?:getting\s+)?\w+ing\b|\b(?:gets|getting)\s+\w+(?:ish|y)\b",
    re.I,
)
# "Can a lidar see through glass?" asks what a thing can and cannot do: its limitations
# answer as much as its features ("How can I …" and "can I …" ask how to, not whether).
_CAPABILITY_Q_RE = re.compile(r"^\s*(?:can|could|will|does|do)\s+(?!i\b|we\b|you\b|there\b)", re.I)
_END_PUNCT = (".", "!", "?", ":", "…")
# A sentence cut before the formula or code it introduces.
_DANGLING_RE = re.compile(
    r"\b(is|are|was|be|as|by|of|to|the|an?|follows|below|gives|becomes)\s*[.:]?$|=\s*[.:]?$",
    re.I,
)


# The best source's best sentence (never an exercise prompt or an unasked-for caveat)
# leads the answer when it scores at least this share of the best sentence overall.
_LEAD_SHARE = 0.15
# A sentence from another chunk than the best sentence's joins only this close to it.
_OTHER_BLOCK_SHARE = 0.6
# A sentence that opens by pointing back ("This", "These errors", "It") or announces
# "prevents this:" needs the sentence before it to make sense.
_BACK_REFERENCE_RE = re.compile(
    r"^(?:this|these|that|those|it|they|such)\b|^[^.]{0,60}\b(?:this|these)\s*:", re.I
)
_FORMULA_MAX_CHARS = 80
# The line after a formula that names its symbols: part of the formula's sentence.
_WHERE_RE = re.compile(r"^where\s")
# What a code block shown after its intro line counts for in the answer's word budget.
_CODE_WORDS_BUDGET = 20
# Semantic scoring (with a local sentence encoder): a unit's cosine with the question
# above SEM_FLOOR adds SEM_WEIGHT × the excess to its score.
SEM_FLOOR = 0.3
SEM_WEIGHT = 1.0
_VECTOR_CACHE_SIZE = 10_000  # 15 MB of float32 vectors of 384 dimensions


class SentenceEncoder(Protocol):
    """Encodes texts to unit-length vectors (the local model's encoder)."""

    def encode(self, texts: list[str]) -> list[list[float]]: ...


def _formula_after(segs: Sequence[Segment], idx: int) -> tuple[str, int] | None:
    """The short formula line right after segment `idx` ("d = c · t / 2"), with the
    "where …" line naming its symbols when one follows, and the position of the last line
    read; None if there is no formula.

    An indented formula reads as its own prose segment; fenced code is never a formula.
    """
    if idx + 1 < len(segs) and segs[idx + 1].kind == "prose":
        text = segs[idx + 1].text.strip()
        if "=" in text and len(text) <= _FORMULA_MAX_CHARS:
            after = segs[idx + 2] if idx + 2 < len(segs) else None
            if after is not None and after.kind == "prose" and _WHERE_RE.match(after.text):
                # "d = c · t / 2, where c ≈ 3 × 10⁸ m/s is the speed of light."
                return f"{text}, {after.text}", idx + 2
            return text, idx + 1
    return None


def _previous_prose(segs: Sequence[Segment], idx: int) -> Segment | None:
    if (
        idx > 0
        and segs[idx - 1].kind == "prose"
        and not _BACK_REFERENCE_RE.match(segs[idx - 1].text)
    ):
        return segs[idx - 1]
    return None


class _Unit(msgspec.Struct, frozen=True):
    """A segment as the answer may show it, with the terms it is scored on."""

    segment: Segment
    terms: frozenset[str]  # its own words: context added for reading is not scored
    bullets: tuple[Segment, ...] = ()
    # The code block an intro line announces ("Reject measurements that … predictions:").
    code: Segment | None = None
    heading: str = ""  # the heading it sits under inside the chunk ("": the chunk's first)
    # A sentence shown with the one just before it ("This is why…"): the sentence alone,
    # for an answer that already shows the one before.
    alone: Segment | None = None
    # The lines it reads on with: a formula and the "where …" line that names its symbols.
    through: int = -1  # the last segment position shown with it (-1: its own only)
    words: int = 0  # the sentence's own words, without those lines (0: count the text)


@lru_cache(maxsize=4096)
def _readable_units(text: str) -> tuple[_Unit, ...]:
    """The candidate units of a chunk (memoised: the same chunks recur across answers).

    Headings are dropped; a sentence cut before a formula keeps a short formula line; one
    that points back ("prevents this:") is read with the sentence before it, or dropped;
    an intro line ending in ":" carries the list or the code block it introduces.
    """
    segs = segments(text)
    units: list[_Unit] = []
    heading = ""
    read_to = -1  # the last segment a unit has shown with its own (a formula's lines)
    for idx, seg in enumerate(segs):
        if idx <= read_to:
            continue
        if seg.kind == "heading":
            # Small sections are merged into one chunk: a unit answers under its own heading.
            heading = seg.text
            continue
        following = segs[idx + 1] if idx + 1 < len(segs) else None
        # "…as follows:" before a list or a code block is complete with it, and so is a
        # sentence that runs into a list without its colon ("Then set" + the gains; one
        # that runs into code is a formula's, below).
        introduces = (
            seg.kind == "prose"
            and following is not None
            and (
                (seg.text.endswith(":") and following.kind in ("bullet", "code"))
                or (not seg.text.endswith(_END_PUNCT) and following.kind == "bullet")
            )
        )
        terms = term_set(seg.text)
        dangling = _DANGLING_RE.search(seg.text) is not None
        own_words, through = 0, -1
        if (
            seg.kind == "prose"
            and not introduces
            and (dangling or not seg.text.endswith(_END_PUNCT))
        ):
            # "the distance is" or "… expands the node with the lowest" introduces a
            # formula: keep a short one with it. Cut before one it cannot show, it goes.
            formula = _formula_after(segs, idx)
            if formula is not None:
                own_words = len(seg.text.split())
                seg = msgspec.structs.replace(seg, text=f"{seg.text} {formula[0]}")
                through = read_to = formula[1]
            elif dangling:
                continue
        if seg.kind == "prose" and _BACK_REFERENCE_RE.match(seg.text):
            # "Anti-windup prevents this:" / "This is why…": read with what precedes.
            before = _previous_prose(segs, idx)
            if before is None:
                continue
            alone: Segment | None = seg
            seg = msgspec.structs.replace(seg, text=f"{before.text} {seg.text}")
        else:
            alone = None
        bullets: tuple[Segment, ...] = ()
        # An intro line reads well only with the list or the code it introduces: in
        # technical books a section is often one such line and the code that answers.
        code = following if introduces and following and following.kind == "code" else None
        if code is None and seg.kind == "prose" and (seg.text.endswith(":") or introduces):
            bullets = tuple([s for s in segs[idx + 1 : idx + 6] if s.kind == "bullet"][:4])
        units.append(
            _Unit(
                segment=seg,
                terms=terms,
                bullets=bullets,
                code=code,
                heading=heading,
                alone=alone,
                through=through,
                words=own_words,
            )
        )
    return tuple(units)


class _Candidate:
    __slots__ = (
        "alone", "block", "bullets", "code", "defines", "heading", "matched", "penalised", "rank",
        "score", "segment", "terms", "unit", "words",
    )  # fmt: skip

    def __init__(self, block: ContextBlock, rank: int, unit: _Unit):
        self.block = block
        self.rank = rank
        self.unit = unit
        self.segment = unit.segment
        self.terms = unit.terms
        self.bullets = unit.bullets
        self.code = unit.code
        self.alone = unit.alone
        self.heading = unit.heading or block.section
        # A formula shown with its sentence counts like a code block: not word for word.
        self.words = unit.words or len(unit.segment.text.split())
        self.score = 0.0
        self.penalised = False  # an exercise prompt or an unasked-for caveat
        self.matched = False  # shares a question word, gives the reason asked, or is close
        self.defines = False  # opens with the subject of a definition question

    def parts(self) -> set[tuple[int, int]]:
        """(block n, segment position) of every sentence this candidate shows."""
        positions = [s.position for s in (self.segment, *self.bullets)]
        positions += range(self.segment.position + 1, self.unit.through + 1)
        if self.code is not None:
            positions.append(self.code.position)
        if self.alone is not None:
            positions.append(self.segment.position - 1)  # the sentence read with it
        return {(self.block.n, p) for p in positions}


def _code_only_match(question: str, context: Sequence[ContextBlock]) -> bool:
    """Whether the best source is code alone under a heading named after the question:
    "how is a RAG chatbot evaluated?" is answered by the "Evaluation Metrics" code."""
    if not context:
        return False
    units = _readable_units(context[0].text)
    return (
        bool(units)
        and all(u.segment.kind == "code" for u in units)
        and not term_set(question).isdisjoint(term_set(f"{context[0].section} {units[0].heading}"))
    )


def _defined_subject(question: str) -> tuple[str, ...]:
    """The words of what a definition question asks about ("What is a PID controller?" →
    ("pid", "controller")), or () for any other question or a subject of over 4 words."""
    m = _DEFINED_RE.match(question)
    if m is None:
        return ()
    words = tuple(tokenize(m["a"] or m["b"] or m["c"]))
    return words if 0 < len(words) <= 4 else ()


def _unit_text(unit: _Unit) -> str:
    """What the encoder reads of a unit: its heading, the sentence and its list items."""
    items = " ".join(b.text for b in unit.bullets)
    return f"{unit.heading}: {unit.segment.text} {items}".strip(" :")


def _code_block(text: str) -> str:
    lines = text.splitlines()
    if len(lines) > _MAX_CODE_LINES + 2:
        # Keep the fence valid: first lines, an ellipsis, the closing fence.
        lines = [*lines[: _MAX_CODE_LINES + 1], "# …", lines[-1]]
    return "\n".join(lines)


def _sentence(text: str) -> str:
    # A list item quoted alone may end as the list's punctuation left it ("…and scan;").
    text = text.strip().rstrip(";,").rstrip()
    return text if text.endswith(_END_PUNCT) else text + "."


class OfflineGenerator:
    """Extractive `AnswerGenerator` for offline mode (`name = "offline-extractive"`)."""

    name = "offline-extractive"

    def __init__(
        self,
        *,
        min_sentences: int = 2,
        max_sentences: int = 5,
        min_words: int = 60,
        max_words: int = 120,
        label: str = OFFLINE_LABEL,
        encoder: SentenceEncoder | None = None,
    ) -> None:
        """Answers are 2–5 sentences and about `min_words`–`max_words` words.

        `encoder`: a local sentence encoder (`EMBEDDING_PROVIDER=local`); sentences close
        in meaning to the question then score even when they share no word with it.
        """
        self.encoder = encoder
        self._vectors: OrderedDict[str, Any] = OrderedDict()
        self.min_sentences = min_sentences
        self.max_sentences = max_sentences
        self.min_words = min_words
        self.max_words = max_words
        self.label = label

    # -- selection --------------------------------------------------------------------

    def _candidates(
        self,
        question: str,
        context: Sequence[ContextBlock],
        *,
        wants_code: bool,
        similarity: Mapping[str, float] | None = None,
    ) -> tuple[list[_Candidate], frozenset[str]]:
        defined = _defined_subject(question)
        # A definition question's words are its subject's: "what does ICR stand for?" is
        # not about standing.
        q_terms = term_set(" ".join(defined)) if defined else term_set(question)
        definitional = _DEFINITION_Q_RE.match(question) is not None
        mechanism = _MECHANISM_Q_RE.match(question) is not None
        why = _WHY_Q_RE.search(question) is not None
        asks = _QUANTITY_Q_RE.search(question)
        figure: re.Pattern[str] | None = None  # a figure in the units asked for
        if asks is not None:
            ask = asks[1].lower()
            q_terms = q_terms | term_set(_QUANTITY_ASKS[ask][0])
            figure = _QUANTITY_UNITS.get(ask)
        pool: list[_Candidate] = []
        for rank, block in enumerate(context):
            units = _readable_units(block.text)
            # Code that an intro line announces is shown, and scored, with that line
            # ("Smooth noisy sensor signals with low-pass filter:" and the filter).
            announced = {u.code.position for u in units if u.code is not None}
            for unit in units:
                if unit.segment.kind == "code" and (
                    not wants_code or unit.segment.position in announced
                ):
                    continue
                pool.append(_Candidate(block, rank, unit))
        if not q_terms:
            return pool, q_terms

        # Sentence frequency of each question term: frequent terms say less.
        weights = {
            t: (1.0 + math.log((len(pool) + 1) / (1 + sum(1 for c in pool if t in c.terms))))
            for t in q_terms
        }
        total = sum(weights.values())
        header_match: dict[tuple[str, str], float] = {}
        asks_drawbacks = _CAVEAT_QUESTION_RE.search(question) is not None
        asks_caveats = (
            asks_drawbacks
            or _CAPABILITY_Q_RE.match(question) is not None
            or why  # "why is my odometry worse on carpet?": its limitations say why
            or _SYMPTOM_Q_RE.search(question) is not None
        )
        for cand in pool:
            where = (cand.block.title, cand.heading)
            header = header_match.get(where)
            if header is None:
                header = header_match[where] = len(q_terms & term_set(" ".join(where))) / len(
                    q_terms
                )
            terms = cand.terms
            if cand.bullets:
                terms = terms.union(*(term_set(b.text) for b in cand.bullets))
            if wants_code and cand.code is not None:
                terms = terms | term_set(cand.code.text)
            matched = q_terms & terms
            gives_reason = why and _REASON_S_RE.search(cand.segment.text) is not None
            # "what's the downside of using it?" is answered by "Limitation: …".
            names_caveat = asks_drawbacks and _CAVEAT_LABEL_RE.match(cand.segment.text) is not None
            close = 0.0
            if similarity is not None:
                close = max(0.0, similarity.get(_unit_text(cand.unit), 0.0) - SEM_FLOOR)
            if (
                not matched
                and not gives_reason
                and not names_caveat
                and not close
                and (header == 0 or cand.segment.kind == "code")
            ):
                continue
            # Squared-ish coverage: one sentence with all the terms beats three with one each.
            score = (sum(weights[t] for t in matched) / total) ** 1.5
            score += SEM_WEIGHT * close
            # A section titled after the question ("Limitations of PID") answers it even
            # in sentences that do not repeat the question's words.
            score += 0.25 * header
            if definitional and _DEFINITION_S_RE.search(cand.segment.text):
                score += 0.2
            if (
                defined
                and cand.rank <= 1
                and cand.words >= len(defined) + 3
                and opens_with(cand.segment.text, defined)
            ):
                cand.defines = True
                score += 0.3  # "A* adds a heuristic …" is what "What is A*?" asks for
            if gives_reason:
                score += 0.3  # "why …?" is answered by the sentence that gives the reason
            if names_caveat:
                score += 0.3
            if figure is not None and figure.search(cand.segment.text):
                score += 0.2  # "how far can a lidar see?" is answered by "reach 12–30 m"
            if mechanism and matched and _MECHANISM_S_RE.search(cand.segment.text):
                score += 0.2  # "how does X work?" is answered by the how, not the what
            words = cand.words
            length = 0.3 if words < 4 else 0.7 if words < 8 else 1.0 if words <= 45 else 0.75
            kind = {"prose": 1.0, "bullet": 0.85, "table_row": 0.85, "code": 0.8}.get(
                cand.segment.kind, 1.0
            )
            text = cand.segment.text
            if text.endswith(":") and not cand.bullets and cand.code is None:
                continue  # "Example launch file:" announces something we do not show
            if cand.bullets:
                # A whole list is long and a precise sentence usually better, except when the
                # question asks for the limitations and the list is the section's answer.
                caveat_list = asks_caveats and _CAVEAT_SECTION_RE.search(cand.heading)
                if caveat_list and header > 0:
                    # "What are the limitations of X?" is answered by X's limitations list.
                    score, length = 1.0 + 0.25 * header, 1.0
                kind *= 1.0 if caveat_list else 0.7
            elif cand.code is not None:
                kind *= 0.8  # as code is: a prose sentence that says it is better
            if text.endswith("?") or is_side_section(cand.heading):
                kind *= 0.4  # exercise prompts and objectives do not answer anything
                cand.penalised = True
            if not asks_caveats and _CAVEAT_SECTION_RE.search(cand.heading):
                kind *= 0.3
                cand.penalised = True
            # A section titled after the question matches; the page's title alone, which
            # every chunk of the page carries, does not.
            cand.matched = (
                bool(matched) or gives_reason or names_caveat or close > 0
                or (
                    header > 0
                    and cand.heading != cand.block.title
                    and not q_terms.isdisjoint(term_set(cand.heading))
                )
            )  # fmt: skip
            # The search ranked the blocks; a later block needs a much better sentence.
            cand.score = score * length * kind / (1.0 + 0.2 * cand.rank)
        return pool, q_terms

    def select(
        self,
        question: str,
        context: Sequence[ContextBlock],
        similarity: Mapping[str, float] | None = None,
    ) -> list[_Candidate]:
        """The sentences the answer is made of, in book order."""
        wants_code = (
            not _CODE_WORDS.isdisjoint(tokenize(question))
            or _HOW_TO_RE.search(question) is not None
            or _code_only_match(question, context)
        )
        pool, _ = self._candidates(question, context, wants_code=wants_code, similarity=similarity)
        scored = sorted((c for c in pool if c.score > 0), key=lambda c: -c.score)
        if any(not c.segment.text.endswith("?") for c in scored):
            # A question (an exercise prompt) answers nothing; chosen as a later sentence,
            # book order could still put it first.
            scored = [c for c in scored if not c.segment.text.endswith("?")]
        if not scored and not wants_code:
            # The matching passage may be code only (e.g. a launch file): show it.
            pool, _ = self._candidates(question, context, wants_code=True, similarity=similarity)
            scored = sorted((c for c in pool if c.score > 0), key=lambda c: -c.score)
        if not scored:
            # No overlap at all (e.g. "explain more"): the opening of the best source.
            opening = [
                c for c in pool
                if c.rank == 0 and c.segment.kind != "code" and not c.segment.text.endswith(":")
            ]  # fmt: skip
            return opening[: self.min_sentences] or [c for c in pool if c.rank == 0][:1]
        # The search ranked the sources: the answer leads with the best source's best
        # sentence, so a stray word match elsewhere cannot take the answer off its page.
        # A sentence that matches only through its page's title ("Once the robot knows
        # where it is …" for "how is RRT different from A*?") does not lead. A definition
        # question's answer leads with the sentence that opens with its subject.
        lead = next((c for c in scored if c.defines and not c.penalised), None) or next(
            (c for c in scored if c.rank == 0 and not c.penalised and c.matched), None
        )
        if (
            lead is not None
            and lead is not scored[0]
            and (lead.defines or lead.score >= scored[0].score * _LEAD_SHARE)
        ):
            scored.remove(lead)
            scored.insert(0, lead)
        floor = scored[0].score * 0.4
        # Relative to the best sentence anywhere: a promoted lead must not lower the bar
        # for sentences from other chunks.
        other_floor = max(c.score for c in scored) * _OTHER_BLOCK_SHARE
        chosen: list[_Candidate] = []
        used: set[tuple[int, int]] = set()  # (block n, segment position) already in the answer
        words = 0
        for cand in scored:
            if cand.score < floor or len(chosen) >= self.max_sentences:
                break
            if chosen and cand.block is not scored[0].block and cand.score < other_floor:
                continue  # a weaker sentence from another chunk would be an off-topic tail
            parts = cand.parts()
            if parts & used or any(jaccard(cand.terms, c.terms) >= 0.6 for c in chosen):
                continue
            size = cand.words + sum(len(b.text.split()) for b in cand.bullets)
            size += _CODE_WORDS_BUDGET if cand.code is not None else 0
            if chosen and words + size > self.max_words:
                continue
            chosen.append(cand)
            used |= parts
            words += size
            if len(chosen) >= self.min_sentences and words >= self.min_words:
                break
        if len(chosen) < self.min_sentences or words < self.min_words:
            # Too little: continue the best sentence with what follows it in its section.
            best = chosen[0]
            by_pos = {
                c.segment.position: c
                for c in pool
                if c.block is best.block and not c.bullets and c.code is None
            }
            pos = max(best.unit.through, *(s.position for s in (best.segment, *best.bullets))) + 1
            while words < self.min_words and len(chosen) < self.max_sentences:
                nxt = by_pos.get(pos)
                if nxt is None or (best.block.n, pos) in used:
                    break  # a heading, code or the end of the chunk: the section is over
                if nxt.segment.text.endswith("?"):
                    break  # an exercise prompt: what follows asks, it does not answer
                if nxt.alone is not None:
                    # It repeats the sentence before it, which the answer already shows.
                    unit = msgspec.structs.replace(nxt.unit, segment=nxt.alone, alone=None)
                    nxt = _Candidate(nxt.block, nxt.rank, unit)
                if words + nxt.words > self.max_words:
                    break
                chosen.append(nxt)
                used.add((best.block.n, pos))
                words += nxt.words
                pos += 1
        if _MECHANISM_Q_RE.match(question):
            self._add_mechanism(chosen, scored, pool, used)
        sides = comparison_sides(question)
        if sides is not None:
            self._add_sides(chosen, sides, scored, used)
        # Book order within a source, sources in the search's order; a definition's
        # source first ("What is A*?" ranks the short "Weighted A*" section above it).
        first = chosen[0].block if chosen and chosen[0].defines else None
        chosen.sort(key=lambda c: (c.block is not first, c.rank, c.segment.position))
        return chosen

    def _add_mechanism(
        self,
        chosen: list[_Candidate],
        scored: list[_Candidate],
        pool: Sequence[_Candidate],
        used: set[tuple[int, int]],
    ) -> None:
        """A "how does X work?" answer includes the sentence of the section that explains
        the principle ("Time-of-flight principle"), when the search retrieved one.

        Sentences that share a word with the question come first; then the answer's own
        page: a reader who asks "how does a laser scanner figure out how far away a wall
        is?" shares no word with "the distance is d = c · t / 2", but the page the answer
        quotes explains it in its principle section.
        """
        if not chosen or any(_MECHANISM_SECTION_RE.search(c.heading) for c in chosen):
            return
        page = chosen[0].block.title
        same_page = (
            c for c in pool if c.score <= 0 and c.block.title == page and c.segment.kind == "prose"
        )
        for cand in itertools.chain(scored, same_page):  # best first, then the same page
            if (
                _MECHANISM_SECTION_RE.search(cand.heading)
                and _MECHANISM_S_RE.search(cand.segment.text)
                and not cand.parts() & used
            ):
                if len(chosen) >= self.max_sentences:
                    chosen.pop()
                chosen.append(cand)
                used |= cand.parts()
                return

    def _add_sides(
        self,
        chosen: list[_Candidate],
        sides: tuple[tuple[str, ...], tuple[str, ...]],
        scored: list[_Candidate],
        used: set[tuple[int, int]],
    ) -> None:
        """A comparison's answer says what each thing is: for each side not yet introduced,
        the best sentence that opens with it ("Topics enable …", "Services provide …").
        The search puts such passages among the sources (`Retriever._with_sides`). A table
        row that names both ("Communication — ROS1: …; ROS2: …") compares them already."""
        words = [set(side) for side in sides]
        if any(
            c.segment.kind == "table_row" and all(w <= set(tokenize(c.segment.text)) for w in words)
            for c in chosen
        ):
            return
        added: list[_Candidate] = []
        for side in sides:
            if any(opens_with(c.segment.text, side) for c in chosen):
                continue
            for cand in scored:
                if (
                    not cand.penalised
                    and cand.segment.kind in ("prose", "bullet")
                    and opens_with(cand.segment.text, side)
                    and not cand.parts() & used
                ):
                    if len(chosen) >= self.max_sentences:
                        # Make room with the weakest sentence that is neither the lead nor
                        # the other side's.
                        spare = [c for c in chosen[1:] if c not in added]
                        if not spare:
                            return
                        chosen.remove(min(spare, key=lambda c: c.score))
                    chosen.append(cand)
                    added.append(cand)
                    used |= cand.parts()
                    break

    async def _similarity(self, question: str, context: Sequence[ContextBlock]) -> dict[str, float]:
        """Cosine of the question with each candidate unit of `context` (unit text → cos).

        Unit vectors are memoised (the same chunks recur across answers): a cold answer
        encodes its sources' 50–100 sentences (about 25 ms of CPU each on one core), a
        warm one only the question.
        """
        import numpy as np

        assert self.encoder is not None
        texts = list(
            dict.fromkeys(
                _unit_text(u)
                for block in context
                for u in _readable_units(block.text)
                if u.segment.kind != "code"  # code is matched by its words, when asked for
            )
        )
        missing = [t for t in texts if t not in self._vectors]
        encoded = await asyncio.to_thread(self.encoder.encode, [question, *missing])
        for text, vector in zip(missing, encoded[1:], strict=True):
            self._vectors[text] = np.asarray(vector, dtype=np.float32)
        for text in texts:
            self._vectors.move_to_end(text)
        while len(self._vectors) > _VECTOR_CACHE_SIZE:
            self._vectors.popitem(last=False)
        q = np.asarray(encoded[0], dtype=np.float32)
        matrix = np.stack([self._vectors[t] for t in texts])
        return dict(zip(texts, (matrix @ q).tolist(), strict=True))

    # -- rendering --------------------------------------------------------------------

    def compose(
        self,
        question: str,
        context: Sequence[ContextBlock],
        *,
        closest_only: bool = False,
        similarity: Mapping[str, float] | None = None,
    ) -> str:
        """The full answer text for `question` over `context` (no streaming)."""
        label = CLOSEST_LABEL if closest_only else self.label
        if not context:
            return f"{label}\n\nThe retrieved sources are empty."
        chosen = self.select(question, context, similarity)
        paragraphs: list[str] = []
        current: list[str] = []
        last_rank = -1
        for cand in chosen:
            if cand.rank != last_rank and current:
                paragraphs.append(" ".join(current))
                current = []
            last_rank = cand.rank
            cite = f"[{cand.block.n}]"
            seg = cand.segment
            if seg.kind == "code":
                if current:
                    paragraphs.append(" ".join(current))
                    current = []
                paragraphs.append(f"Code from {cite}:\n" + _code_block(seg.text))
                continue
            text = seg.text
            if cand.bullets:
                items = "; ".join(b.text.rstrip(".;") for b in cand.bullets)
                text = f"{text} {items}"
            current.append(f"{_sentence(text)[:-1]} {cite}{_sentence(text)[-1]}")
            if cand.code is not None:
                paragraphs.append(" ".join(current))
                paragraphs.append(_code_block(cand.code.text))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        return "\n\n".join([label, *paragraphs])

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the extractive answer word by word, then `GenerationFinished`."""
        similarity = None
        if self.encoder is not None and request.context and not request.selection:
            similarity = await self._similarity(request.question, request.context)
        answer = self.compose(
            request.question,
            request.context,
            closest_only=request.closest_only,
            similarity=similarity,
        )
        pieces = _PIECE_RE.findall(answer)
        for piece in pieces:
            yield TokenDelta(text=piece)
        prompt_tokens = approx_tokens(request.system_instruction) + sum(
            approx_tokens(t.text) for t in request.contents
        )
        yield GenerationFinished(
            finish_reason="stop",
            model=self.name,
            prompt_tokens=prompt_tokens,
            completion_tokens=approx_tokens(answer),
        )
