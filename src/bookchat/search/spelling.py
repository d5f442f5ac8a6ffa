"""A misspelt word of the question read as the book's word it is one typo from.

Readers type in a hurry: "what is odomatry", "dikstra or a star", "how does a partical
filter work". When the misspelt word is the question's subject, BM25 finds nothing for
it, and the relevance gate refuses a question the book answers (or the hits match the
question's everyday words only). The search index holds hashed terms, so the book's
words are read once from the stored chunks (`VectorStore.texts`) into a `Vocabulary`.

A question word is read as a word of the book when all of these hold:

- it has at least `MIN_LENGTH` letters and is written in letters only (names with digits,
  snake_case identifiers and hyphenated words are left as typed);
- it is not a word of the book, nor an inflection of one (`text.light_stem`);
- it is not an English word (pyspellchecker's list, as `text.specificity` reads it):
  "lanes", "capitol" and "bred" are real words the book may lack, and a real word the
  book lacks is what out-of-book questions are made of, so it is never "corrected";
- one edit turns it (or its light stem) into a word (stem) of the book: a letter
  dropped, added or two neighbours swapped; a *replaced* letter only from
  `SUBSTITUTION_MIN_LENGTH` letters on, as one letter changed in a short word is as often
  another thing ("cobot" is not a misspelt "robot");
- failing that, one such edit (no replaced letter) turns it into an English word that the
  search stems like a word of the book ("refelctive" → "reflective", where the book says
  "reflect" and "reflectance").

Among several such words the one in most chunks wins, then the more common in English,
then the first in alphabetical order. Only one edit: readers' typos are mostly one, and
two edits from a short word reach too many of the book's words.

Written here rather than with pyspellchecker's `SpellChecker`: that corrects towards
general English ("odomatry" → "idolatry", "partical" → "partial"), and loads a second
copy of the dictionary `text` already holds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterable

import anyio.to_thread

from bookchat.search.types import VectorStore
from bookchat.text import (
    MAX_SPECIFICITY,
    STOPWORDS,
    edits1,
    in_english,
    light_stem,
    specificity,
)
from bookchat.text import stem as index_stem

__all__ = [
    "MIN_LENGTH",
    "SUBSTITUTION_MIN_LENGTH",
    "VOCABULARY_MAX_AGE_S",
    "VOCABULARY_RETRY_S",
    "VOCABULARY_TTL_S",
    "BookWords",
    "Vocabulary",
]

logger = logging.getLogger(__name__)

MIN_LENGTH = 5
SUBSTITUTION_MIN_LENGTH = 7

# How long the book's words are used before the store is asked again whether they changed,
# and how soon a failed read is retried.
VOCABULARY_TTL_S = 300.0
VOCABULARY_RETRY_S = 30.0
# The book's words are read again at most this old even when the chunk count is the same.
VOCABULARY_MAX_AGE_S = 3600.0
# Books with more chunks than this have their vocabulary built in a worker thread.
_INLINE_CHUNKS = 200

_TEXT_WORD_RE = re.compile(r"[a-z]+")
# A hyphenated phrase of three or more words: "chicken-and-egg", "time-of-flight".
_PHRASE_RE = re.compile(r"\b[a-z]+(?:-[a-z]+){2,}\b")
# A question word made of letters only (`MIN_LENGTH` or more), not part of a name with
# digits, an identifier (wheel_base), a hyphenated word (c-space), a path or a contraction.
_QUESTION_WORD_RE = re.compile(rf"(?<![\w'’./\-])[A-Za-z]{{{MIN_LENGTH},}}(?![\w'’/\-])")


def _substitution(a: str, b: str) -> bool:
    """Whether `b` is `a` with one letter replaced (not two neighbours swapped)."""
    if len(a) != len(b):
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return len(diff) == 1


class Vocabulary:
    """The book's words (lower case) with the number of chunks each appears in.

    It also knows the words the book writes only inside a hyphenated phrase of three or
    more parts (`phrase_only`: "egg" of "chicken-and-egg", "flight" of "time-of-flight"),
    which the relevance decision reads (`search/relevance.py`).
    """

    def __init__(self, texts: Iterable[str]) -> None:
        counts: Counter[str] = Counter()
        occurrences: Counter[str] = Counter()
        in_phrases: Counter[str] = Counter()
        partners: dict[str, set[str]] = {}
        for text in texts:
            lowered = text.lower()
            words = _TEXT_WORD_RE.findall(lowered)
            counts.update(set(words))
            occurrences.update(words)
            for phrase in _PHRASE_RE.findall(lowered):
                parts = phrase.split("-")
                in_phrases.update(parts)
                for part in parts:
                    partners.setdefault(part, set()).update(p for p in parts if p != part)
        self._counts = counts
        phrase_only: dict[str, frozenset[str]] = {}
        for word, n in in_phrases.items():
            if occurrences[word] == n and word not in STOPWORDS:
                others = {light_stem(p) for p in partners[word] if p not in STOPWORDS}
                phrase_only[light_stem(word)] = frozenset(others)
        # Light stem of a word used only in such phrases → the light stems of the phrases'
        # other content words ("egg" → {"chicken"}).
        self.phrase_only: dict[str, frozenset[str]] = phrase_only
        # Light stem → the book's most frequent word of that stem.
        best: dict[str, tuple[int, str]] = {}
        for word, n in counts.items():
            stem = light_stem(word)
            if stem not in best or (n, word) > best[stem]:
                best[stem] = (n, word)
        self._stems = {stem: word for stem, (_n, word) in best.items()}
        # The index's stems of the book's words: an English word of the same stem
        # ("reflective" for the book's "reflect") is one the search finds.
        self._index_stems = {index_stem(word) for word in counts}
        self._fixes: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, word: object) -> bool:
        return word in self._counts

    def word_for(self, word: str) -> str | None:
        """The book's word that `word` (lower case) is a typo of, or None."""
        if word in self._fixes:
            return self._fixes[word]
        fix = self._find(word)
        if len(self._fixes) < 16384:
            self._fixes[word] = fix
        return fix

    def _find(self, word: str) -> str | None:
        if len(word) < MIN_LENGTH or not word.isalpha() or not self._counts:
            return None
        stem = light_stem(word)
        if word in self._counts or stem in self._stems or in_english(word):
            return None
        found = [
            w
            for w in edits1(word) & self._counts.keys()
            if len(word) >= SUBSTITUTION_MIN_LENGTH or not _substitution(word, w)
        ]
        if not found and len(stem) >= MIN_LENGTH - 1:
            found = [
                self._stems[s]
                for s in edits1(stem) & self._stems.keys()
                if len(stem) >= SUBSTITUTION_MIN_LENGTH or not _substitution(stem, s)
            ]
        if found:
            return min(found, key=lambda w: (-self._counts[w], specificity(w), w))
        # "refelctive": one edit from an English word ("reflective") that the book uses in
        # another form ("reflect", "reflectance"); the index stems both alike.
        english = [
            w
            for w in edits1(word)
            if in_english(w)
            and specificity(w) < MAX_SPECIFICITY
            and not _substitution(word, w)
            and index_stem(w) in self._index_stems
        ]
        return min(english, key=lambda w: (specificity(w), w)) if english else None

    def correct(self, text: str) -> str:
        """`text` with each misspelt word replaced by the book's word (same first-letter
        case); the same string when nothing needed it."""

        def fix(m: re.Match[str]) -> str:
            typed = m.group()
            word = self.word_for(typed.lower())
            if word is None:
                return typed
            return word.capitalize() if typed[0].isupper() else word

        return _QUESTION_WORD_RE.sub(fix, text)


class BookWords:
    """A store's `Vocabulary`, read on first use and kept current.

    Read again at once when the store's `generation` moves (the embedded store's writes, a
    snapshot's new copy after a re-ingest); on a store without one, every
    `VOCABULARY_TTL_S` its chunk count is checked and the words are read again when it
    changed, or when they are `VOCABULARY_MAX_AGE_S` old. The previous words keep
    serving while a new read runs.
    """

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self.words: Vocabulary | None = None
        self.reading: asyncio.Task[Vocabulary | None] | None = None  # the read in flight
        self._until = -math.inf  # used without asking the store until then
        self._count = 0  # the store's chunk count when the words were read
        self._built = -math.inf
        self._generation: object = None  # the store's generation when read

    async def current(self) -> Vocabulary | None:
        """The book's words (None when the store cannot list them)."""
        changed = getattr(self.store, "generation", None) != self._generation
        if time.monotonic() < self._until and not changed:
            return self.words
        loop = asyncio.get_running_loop()
        task = self.reading
        if task is None or task.done() or task.get_loop() is not loop:
            task = self.reading = loop.create_task(self._read())
        if self.words is None:
            return await asyncio.shield(task)
        return self.words

    async def _read(self) -> Vocabulary | None:
        read = getattr(self.store, "texts", None)
        if read is None:  # a store that cannot list its chunks: no spelling correction
            self._until = math.inf
            return None
        generation = getattr(self.store, "generation", None)
        try:
            # Reading every chunk's text is the costly part (a large book on a Qdrant
            # server): done again only when the store's generation or the number of
            # chunks changed, or once the words are `VOCABULARY_MAX_AGE_S` old (an edit
            # that kept the count on a store without a generation).
            count = await self.store.count()
            if (
                self.words is not None
                and generation == self._generation
                and count == self._count
                and time.monotonic() - self._built < VOCABULARY_MAX_AGE_S
            ):
                self._until = time.monotonic() + VOCABULARY_TTL_S
                return self.words
            texts: list[str] = await read()
        except Exception as exc:  # a store down now: searches report it; retry later
            logger.warning("could not read the book's words", extra={"error": str(exc)})
            self._until = time.monotonic() + VOCABULARY_RETRY_S
            return self.words
        if len(texts) > _INLINE_CHUNKS:
            words = await anyio.to_thread.run_sync(Vocabulary, texts)
        else:
            words = Vocabulary(texts)
        self.words, self._count, self._generation = words, count, generation
        self._built = time.monotonic()
        self._until = self._built + VOCABULARY_TTL_S
        return words
