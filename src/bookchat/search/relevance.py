"""Did the search find what the question is about? Evidence of absence, not of overlap.

The first gate asked "how many of the question's words are in the hits?" and refused most
questions readers type: they say "shove", "tip over" and "wobbles" where the book says
"push recovery", "support polygon" and "oscillation". A question is out of the book when
it is about something the book does not contain, so this module looks for *that*: the
question's **specific** words (rare in everyday English: "PX4", "quadcopter",
"cycloidal", "Roomba") that the book never uses. Everyday words the book lacks are what
paraphrases are made of and weigh almost nothing.

- **Specificity** of a word: `max(0, ZIPF_CEILING - zipf(word))`, where `zipf` is the
  word's frequency in general English (log10 per billion words) from the word-frequency
  list that `pyspellchecker` ships (160k words from subtitles and books; read once per
  process, no download). Words missing from that list — product names, part numbers,
  jargon — weigh the most (`MAX_SPECIFICITY`); numbers weigh `NUMBER_SPECIFICITY`. A
  word made from a listed one by a suffix ("zigzaggy", "laggy", "cartoonish") weighs
  as that word, a little more (`text.specificity`): a reader's description, not a name.
  Words the book uses count by their stem (the same stems as the lexical signals).
- **Missing share**: the specificity of question words found in none of the search's
  candidate chunks (the 20 best BM25/hybrid candidates: a rare word the book uses ranks
  its chunks high, so "not among the candidates" means "not in the book"), over the
  specificity of all question words. Follow-up expansion words count half.
- **Found**: the specificity of question words found in the returned hits.

- **Best-hit share**: the largest specificity share of the question that one returned hit
  holds. Low means the words found are scattered over unrelated passages.

- **Named things**: a question word nearly absent from general English (specificity ≥
  `NAMED_THING_SPECIFICITY`, zipf ≤ 1.5: "Ubuntu", "PX4", "H-bridge") that the book never
  uses is the question's subject, and the book lacks it. Readers misspell, so a rare word
  one edit from a word of the book counts as found, and one one edit from an everyday word
  ("shoud") is not taken for a name, nor is a closed compound of two everyday words
  ("onboard": the frequency list lacks many of them), nor a British spelling of a listed
  word ("millimetres": the list is American), nor a clipped word of the book ("bot" of
  "robot", "sim" of "simulator": the head or the tail of a longer word it uses). A word
  the book writes hyphenated ("wifi" for "Wi-Fi", "estop" for "e-stop") is in the book.
- **Proper names**: a word capitalised inside the question ("How do I install ROS 2 on
  Windows?") is a name however common it is in English; one the book never uses names a
  thing the book lacks, like a rare word. A question in Title Case or capitals has none.
- **Phrase-only words**: a word the whole book writes only inside a hyphenated phrase of
  three or more words ("egg" in "chicken-and-egg", "flight" in "time-of-flight") is found
  only when the question has another content word of that phrase: "how long should I
  boil an egg?" is not about SLAM's chicken-and-egg problem (`Vocabulary.phrase_only`).
- **Adrift**: the book lacks a rare question word (specificity ≥ `TYPO_CHECK_SPECIFICITY`,
  zipf ≤ 2.5: "flange"), and the question's most specific word that the book does use
  ("calibration") is in none of the returned hits. The hits then match the question's
  surroundings ("wrist", "camera", "arm"), not what it asks about.
- **Identifiers**: a snake_case name in the question ("ros2_control", "cmd_vel") is a
  package, topic or function name, as specific as a word can be. The tokenizer splits it
  into everyday parts ("ros2", "control") that any ROS book contains, so it is looked up
  whole, case-insensitively, in the candidates' text: absent there, the question is about
  something the book does not name, and it is refused like any other named thing.

Verdicts: `refuse` when nothing specific was found, a named thing is missing, the search
is adrift, or the missing share is at least `REFUSE_MISSING_SHARE`; in the band from
`GREY_MISSING_SHARE` up, `refuse` when the best hit holds less than
`SCATTERED_BEST_HIT_SHARE` of the question, else `grey`; below the band, `answer`. A
follow-up on a topic the book has (its expansion words would not be refused on their own
missing share) is never refused on the missing share or the scattered hits: its own
words are a paraphrase ("and what if something blocks it halfway?" after a planning
question), so it is `grey` at worst unless something is evidently absent (nothing found,
a named thing, adrift). With
dense vectors a `refuse` needs the dense side to agree too: the best dense cosine in the
book below `DENSE_CLEAR_MISS` (the model decides the grey zone under the grounding rules,
so the gate refuses only clear misses).

Where the numbers come from: `REFUSE_MISSING_SHARE`, `GREY_MISSING_SHARE` and
`SCATTERED_BEST_HIT_SHARE` were set on the calibration part of the sample book's reader
questions (`sample_book/reader_questions.json`: paraphrases, symptoms, compound and short
questions, near and far out-of-book ones) and then checked, unchanged, on its held-out
part and on an unseen book. `NAMED_THING_SPECIFICITY` is where the frequency list leaves
everyday English (fewer than about 30 occurrences per billion words). The adrift rule
adds no number of its own: "rare" is the typo check's `TYPO_CHECK_SPECIFICITY`. An
out-of-book question of the unseen book prompted it (hand-eye calibration), so that book
no longer measures it blind; on every reader set it changes no other verdict, and a set
written to probe it (`reader_questions_fresh3.json`: in-book questions with rare words the
book lacks, "shag carpet", "gridworld", "haywire") had none refused by it. `DENSE_CLEAR_MISS`
could not be calibrated here (no network, so no real Gemini embeddings): it is set so
that dense evidence can only rescue a question from a lexical refusal, never cause one;
measure it on your book with `bookchat eval` and a key before relying on it. With the
local model (`EMBEDDING_PROVIDER=local`) the calibration set gives no reason to move it:
every floor from 0.28 to 0.50 scores the same there. A missing *name* is never rescued:
near-domain out-of-book questions ("PX4 parameters", "a ros2_control interface") have
cosines of 0.36–0.60 with the local model, inside the range of answerable ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from functools import lru_cache
from typing import Literal

import msgspec

from bookchat.text import (
    american_spelling,
    content_words,
    edits1,
    everyday_compound,
    everyday_spelling,
    light_stem,
    proper_names,
    specificity,
    stem,
    symbol_names,
)

__all__ = [
    "DENSE_CLEAR_MISS",
    "GREY_MISSING_SHARE",
    "REFUSE_MISSING_SHARE",
    "Evidence",
    "Verdict",
    "judge",
]

Verdict = Literal["answer", "grey", "refuse"]

REFUSE_MISSING_SHARE = 0.6
GREY_MISSING_SHARE = 0.3
SCATTERED_BEST_HIT_SHARE = 0.3
# zipf ≤ 1.5: names and jargon ("ubuntu", "px4", "quadcopter"), not everyday English.
NAMED_THING_SPECIFICITY = 4.0
TYPO_CHECK_SPECIFICITY = 3.0
DENSE_CLEAR_MISS = 0.5
EXPANSION_WEIGHT = 0.5
# snake_case names: letters/digits joined by underscores ("ros2_control", "cmd_vel").
_IDENTIFIER_RE = re.compile(r"(?<![\w.])[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?![\w])", re.I)


class Evidence(msgspec.Struct, kw_only=True, frozen=True):
    """The relevance signals of one search and the verdict drawn from them."""

    verdict: Verdict
    missing_share: float  # specificity share of question words the book lacks, 0–1
    weight: float  # total specificity of the question's words (0: nothing topical asked)
    found: float  # specificity of question words found in the returned hits
    best_hit_share: float  # the largest specificity share one hit holds (co-location)
    missing_words: list[str]  # the specific question words (or identifiers) found in no candidate
    dense_best: float | None  # best dense cosine in the book (None: BM25 only, or not needed)
    named: tuple[str, ...] = ()  # the named things (names, identifiers) the book lacks


STEM_ONLY_CREDIT = 0.5  # found only through stemming ("predictive" ~ "predict")
# Letters joined by hyphens ("Wi-Fi", "e-stop", "set-up"), read as one closed word.
_HYPHEN_COMPOUND_RE = re.compile(r"\b[a-z]+(?:-[a-z]+)+\b", re.I)


@lru_cache(maxsize=4096)
def _hyphen_compounds(text: str) -> frozenset[str]:
    """The hyphenated words of a chunk's `text`, written closed and lower-case ("wi-fi" →
    "wifi"). Memoised: the same candidates recur, and a scan of twenty costs a millisecond."""
    return frozenset(m.replace("-", "").lower() for m in _HYPHEN_COMPOUND_RE.findall(text))


def _credit(word: str, light: AbstractSet[str], stems: AbstractSet[str]) -> float:
    if light_stem(word) in light:
        return 1.0
    return STEM_ONLY_CREDIT if stem(word) in stems else 0.0


def _not_everyday(word: str) -> bool:
    """Neither one edit from an everyday word ("shoud"), a closed compound of two
    ("onboard") nor a British spelling ("millimetres"): a rare word the frequency list
    lacks for what it is."""
    return (
        everyday_spelling(word) is None
        and everyday_compound(word) is None
        and american_spelling(word) is None
    )


def _clipping(word: str, book_words: Iterable[str]) -> bool:
    """A word that is the head or the tail of a longer word of the book ("bot" of
    "robot", "sim" of "simulator", "odom" of "odometry"): a reader's short form of the
    book's word, not a name the book lacks."""
    if not word.isalpha() or len(word) < 3:
        return False
    return any(
        len(full) >= len(word) + 2 and (full.startswith(word) or full.endswith(word))
        for full in book_words
    )


def _adrift(
    own: Sequence[str],
    weighted: dict[str, float],
    in_book: dict[str, float],
    hit_light: AbstractSet[str],
    hit_terms: AbstractSet[str],
) -> bool:
    """The book lacks a rare word of the question and the hits lack its most specific word
    the book has: they hold the question's surroundings, not its subject ("hand-eye
    calibration … the arm's flange" finds wrists and cameras, none of them calibrated)."""
    if not any(
        in_book[w] == 0.0 and weighted[w] >= TYPO_CHECK_SPECIFICITY and _not_everyday(w)
        for w in own
    ):
        return False
    present = [w for w in own if in_book[w] > 0.0 and weighted[w] > 0.0]
    if not present:
        return False
    top = max(weighted[w] for w in present)
    return all(_credit(w, hit_light, hit_terms) == 0.0 for w in present if weighted[w] == top)


def judge(
    question: str,
    expansion: Iterable[str],
    *,
    candidate_terms: AbstractSet[str],
    candidate_light: AbstractSet[str],
    hit_terms: AbstractSet[str],
    hit_light: AbstractSet[str],
    each_hit: Sequence[tuple[frozenset[str], frozenset[str]]] = (),
    candidate_texts: Sequence[str] = (),
    dense_best: float | None = None,
    phrase_only: Mapping[str, AbstractSet[str]] | None = None,
) -> Evidence:
    """The verdict for `question` given the candidates' and the hits' stems.

    `*_terms` are the index's stems, `*_light` inflection-only stems (`text.light_stem`): a
    word found only through stem conflation earns `STEM_ONLY_CREDIT`. `each_hit` is
    (stems, light stems) per returned hit; `expansion` holds follow-up words (weigh half).
    `candidate_texts` are the candidates' raw texts, searched for the question's
    identifiers (only read when the question contains one).
    `phrase_only`: light stem → the other words of the hyphenated phrases that word is
    only ever written in, in the whole book (`Vocabulary.phrase_only`).
    """
    weighted: dict[str, float] = {}
    own = content_words(question)
    for word in own:
        weighted[word] = specificity(word)
    for word in expansion:
        for w in content_words(word):
            weighted.setdefault(w, specificity(w) * EXPANSION_WEIGHT)
    in_book = {w: _credit(w, candidate_light, candidate_terms) for w in weighted}
    names = symbol_names(question)  # "D*" is a name, not a misspelt "A*" or "star"
    for w in list(weighted):
        # Readers misspell: a rare word one edit from a word of the book is that word.
        if (
            in_book[w] == 0.0
            and w not in names
            and weighted[w] >= TYPO_CHECK_SPECIFICITY
            and w.isalpha()
            and len(w) >= 4
            and edits1(light_stem(w)) & candidate_light
        ):
            in_book[w] = 1.0
    if candidate_texts and any(
        c == 0.0 and len(w) >= 4 and w.isalpha() for w, c in in_book.items()
    ):
        # "wifi" where the book writes "Wi-Fi": a word the book hyphenates is in the book.
        compounds = [_hyphen_compounds(text) for text in candidate_texts]
        for w, c in in_book.items():
            if c == 0.0 and any(w in joined for joined in compounds):
                in_book[w] = 1.0
    if phrase_only:
        # "how long should I boil an egg?": the book's only egg is in "chicken-and-egg".
        # A word the book writes only inside such a phrase is found only when the
        # question has another word of the phrase ("why is SLAM chicken and egg?").
        asked = {light_stem(w) for w in weighted}
        for w in weighted:
            others = phrase_only.get(light_stem(w))
            if others is not None and in_book[w] > 0.0 and not others & asked:
                in_book[w] = 0.0
    total = sum(weighted.values())
    missing = [w for w, c in in_book.items() if c < 1.0]
    missing_mass = sum(weighted[w] * (1.0 - in_book[w]) for w in missing)
    found = sum(v * _credit(w, hit_light, hit_terms) for w, v in weighted.items())
    share = missing_mass / total if total else 1.0
    best_hit = max(
        (
            sum(v * _credit(w, light, stems) for w, v in weighted.items())
            for stems, light in each_hit
        ),
        default=0.0,
    )
    # One edit from an everyday word ("shoud" → "should") may be a typo: not a name.
    named = [
        w
        for w in own
        if in_book[w] == 0.0
        and weighted[w] >= NAMED_THING_SPECIFICITY
        and (w in names or (_not_everyday(w) and not _clipping(w, candidate_light)))
    ]
    for name in proper_names(question):
        # A proper noun ("Windows", "Raspberry") the book never uses names a thing the
        # book lacks, however common the word is in English.
        words = [w for w in content_words(name) if w in in_book]
        if words and all(in_book[w] == 0.0 for w in words) and words[0] not in named:
            named.append(words[0])
    identifiers = {m.lower() for m in _IDENTIFIER_RE.findall(question)}
    if identifiers:
        text = "\n".join(candidate_texts).lower()
        named += sorted(name for name in identifiers if name not in text)
    verdict: Verdict
    # A follow-up on a topic the book has: its own words are a paraphrase (see Verdicts).
    # Not when the earlier topic is missing too (a follow-up to an out-of-book question).
    topic = [w for w in weighted if w not in own]
    topic_mass = sum(weighted[w] for w in topic)
    on_books_topic = topic_mass > 0 and (
        sum(weighted[w] * (1.0 - in_book[w]) for w in topic) < REFUSE_MISSING_SHARE * topic_mass
    )
    if (
        found <= 0
        or (share >= REFUSE_MISSING_SHARE and not on_books_topic)
        or named
        or _adrift(own, weighted, in_book, hit_light, hit_terms)
    ):
        # `named`: the question names a thing (a product, a tool, a brand: a word nearly
        # absent from general English) that the book never mentions.
        verdict = "refuse"
    elif share >= GREY_MISSING_SHARE:
        # Partly missing and what was found is scattered: no single passage holds the
        # question's subject, so the book does not discuss it (it only uses its words).
        scattered = best_hit < SCATTERED_BEST_HIT_SHARE * total
        verdict = "refuse" if scattered and not on_books_topic else "grey"
    else:
        verdict = "answer"
    if (
        verdict == "refuse"
        and not named
        and dense_best is not None
        and dense_best >= DENSE_CLEAR_MISS
    ):
        # The dense side saw something: let the model decide. Not for a missing name:
        # "PX4" or "ros2_control" is absent whatever the cosine of the words around it.
        verdict = "grey"
    return Evidence(
        verdict=verdict,
        missing_share=round(share, 4),
        best_hit_share=round(best_hit / total, 4) if total else 0.0,
        weight=round(total, 3),
        found=round(found, 3),
        missing_words=[
            *(w for w in named if w in identifiers),
            *sorted((w for w in missing if weighted[w] > 0), key=lambda w: -weighted[w]),
        ],
        dense_best=None if dense_best is None else round(dense_best, 4),
        named=tuple(named),
    )
