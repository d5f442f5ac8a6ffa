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
general English (it would turn "odomatry" into nothing and "dikstra" into "diktat"),
and loads a second copy of the dictionary `text` already holds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from bookchat.text import edits1, in_english, light_stem, specificity

__all__ = ["MIN_LENGTH", "SUBSTITUTION_MIN_LENGTH", "Vocabulary"]

MIN_LENGTH = 5
SUBSTITUTION_MIN_LENGTH = 7

_TEXT_WORD_RE = re.compile(r"[a-z]+")
# A question word made of letters only, not part of a name with digits, an identifier
# (wheel_base), a hyphenated word (c-space), a path or a contraction.
_QUESTION_WORD_RE = re.compile(r"(?<![\w'’./\-])[A-Za-z]+(?![\w'’/\-])")


def _substitution(a: str, b: str) -> bool:
    """Whether `b` is `a` with one letter replaced (not two neighbours swapped)."""
    if len(a) != len(b):
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return len(diff) == 1


class Vocabulary:
    """The book's words (lower case) with the number of chunks each appears in."""

    def __init__(self, texts: Iterable[str]) -> None:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(set(_TEXT_WORD_RE.findall(text.lower())))
        self._counts = counts
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
