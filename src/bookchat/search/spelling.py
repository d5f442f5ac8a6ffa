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
  another thing ("cobot" is not a misspelt "robot").

Among several such words the one in most chunks wins, then the more common in English,
then the first in alphabetical order. Only one edit: readers' typos are mostly one, and
two edits from a short word reach too many of the book's words.

Written here rather than with pyspellchecker's `SpellChecker`: that corrects towards
general English ("odomatry" → "idolatry", "partical" → "partial"), and loads a second
copy of the dictionary `text` already holds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from bookchat.text import STOPWORDS, edits1, in_english, light_stem, specificity

__all__ = ["MIN_LENGTH", "SUBSTITUTION_MIN_LENGTH", "Vocabulary"]

MIN_LENGTH = 5
SUBSTITUTION_MIN_LENGTH = 7

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
        if not found:
            return None
        return min(found, key=lambda w: (-self._counts[w], specificity(w), w))

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
