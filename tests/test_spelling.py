"""Spelling: a misspelt question word read as the book's word it is one typo from."""

from __future__ import annotations

import pytest

from bookchat.answer.grounding import PromptBuilder
from bookchat.answer.pipeline import AnswerDone, AnswerPipeline
from bookchat.llm.offline import OfflineGenerator
from bookchat.search import spelling
from bookchat.search.retriever import Retriever
from bookchat.search.spelling import Vocabulary
from bookchat.search.types import VectorStoreUnavailableError
from bookchat.text import light_stem
from tests.rag_fakes import SAMPLE_CHUNKS, FakeBM25Store, chunk

BOOK = [
    "Odometry integrates wheel motion. Its drift grows over time.",
    "Dijkstra's algorithm expands cells by cost. The follower tracks lines.",
    "A line follower reads the lines with reflectance sensors; overshoot is common.",
    "The robot publishes messages; subscribers receive them.",
]


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("odomatry", "odometry"),  # a letter replaced (long word)
        ("dikstra", "dijkstra"),  # a letter dropped
        ("drfit", "drift"),  # two neighbours swapped
        ("subscibers", "subscribers"),  # a letter dropped, plural
        ("overshoting", "overshoot"),  # through its stem: "overshot" is one from "overshoot"
        # One edit from an English word the book uses in another form ("reflectance"):
        # the search stems "reflective" as it does the book's word.
        ("refelctive", "reflective"),
    ],
)
def test_a_word_one_typo_from_the_books_is_read_as_it(typed: str, meant: str) -> None:
    assert Vocabulary(BOOK).word_for(typed) == meant


@pytest.mark.parametrize(
    "typed",
    [
        "lanes",  # English: a real word the book lacks is never "corrected" (lines)
        "odometry",  # the book's own word
        "follows",  # an inflection of the book's word
        "cobot",  # one letter replaced in a short word: another thing, not "robot"
        "robt",  # shorter than MIN_LENGTH
        "sourdogh",  # nothing of the book is one edit away ("sourdough" is not the book's)
    ],
)
def test_words_that_are_not_typos_of_the_books_are_left(typed: str) -> None:
    assert Vocabulary(BOOK).word_for(typed) is None


def test_the_word_in_most_chunks_wins_a_tie() -> None:
    # "lins" is one edit from "lines" (2 chunks) and from "line" (1 chunk)... and "lions".
    vocabulary = Vocabulary(["lines here", "lines there", "a line", "lions"])
    assert vocabulary.word_for("linnes") == "lines"


def test_correct_keeps_what_is_not_a_plain_word_and_the_first_letters_case() -> None:
    vocabulary = Vocabulary(BOOK)
    assert vocabulary.correct("Dikstra or odomatry?") == "Dijkstra or odometry?"
    # Identifiers, hyphenated words and words with digits are left as typed.
    assert vocabulary.correct("set odomatry_rate and x-odomatry") == (
        "set odomatry_rate and x-odomatry"
    )
    assert vocabulary.correct("what is it") == "what is it"


async def test_a_question_whose_only_subject_is_misspelt_is_answered() -> None:
    store = FakeBM25Store(SAMPLE_CHUNKS)
    result = await Retriever(store, None).search("What is a node lifecyle?")
    assert result.relevant and result.spelled == "What is a node lifecycle?"
    assert result.hits[0].payload.section == "Lifecycle"
    # The same question where the store cannot list the book's words: no hits for it.
    refused = await Retriever(_WithoutTexts(SAMPLE_CHUNKS), None).search("What is a lifecyle?")
    assert not refused.relevant and refused.spelled is None


async def test_the_offline_answer_is_found_with_the_corrected_word() -> None:
    pipeline = AnswerPipeline(
        Retriever(FakeBM25Store(SAMPLE_CHUNKS), None), OfflineGenerator(), PromptBuilder("R")
    )
    events = [e async for e in pipeline.run("What is a lifecyle?")]
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.grounded
    assert "lifecycle with the states unconfigured" in done.text


async def test_a_follow_ups_misspelt_history_is_read_too() -> None:
    retriever = Retriever(FakeBM25Store(SAMPLE_CHUNKS), None)
    result = await retriever.search("What are its states?", history=["what is a lifecyle?"])
    assert result.expanded and "lifecycle" in result.query_used
    assert result.hits[0].payload.section == "Lifecycle"


async def test_the_books_words_are_read_once_then_again_when_the_stores_generation_moves() -> None:
    store = _WithGeneration(SAMPLE_CHUNKS)
    retriever = Retriever(store, None)
    for _ in range(3):
        await retriever.search("What is a lifecyle?")
    assert store.texts_read == 1
    store.generation += 1  # a write, or a snapshot's new copy after a re-ingest
    await retriever.search("What is a lifecyle?")  # the old words serve meanwhile
    assert retriever.book_words.reading is not None
    await retriever.book_words.reading
    assert store.texts_read == 2
    await retriever.search("What is a lifecyle?")
    assert store.texts_read == 2


async def test_a_store_that_fails_to_list_its_words_is_retried_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _FailingTexts(SAMPLE_CHUNKS)
    retriever = Retriever(store, None)
    result = await retriever.search("What is a PID controller?")
    assert result.relevant and result.spelled is None
    await retriever.search("What is a PID controller?")
    assert store.attempts == 1  # not on every search
    clock = spelling.time.monotonic() + spelling.VOCABULARY_RETRY_S + 1
    monkeypatch.setattr(spelling.time, "monotonic", lambda: clock)
    store.fail = False
    result = await retriever.search("What is a lifecyle?")
    assert store.attempts == 2 and result.spelled == "What is a lifecycle?"


class _WithGeneration(FakeBM25Store):
    generation = 0


class _WithoutTexts(FakeBM25Store):
    texts = None  # type: ignore[assignment]


class _FailingTexts(FakeBM25Store):
    fail = True
    attempts = 0

    async def texts(self) -> list[str]:
        self.attempts += 1
        if self.fail:
            raise VectorStoreUnavailableError("down")
        return await super().texts()


async def test_the_books_words_are_read_again_when_its_chunk_count_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = FakeBM25Store(SAMPLE_CHUNKS[:-1])
    retriever = Retriever(store, None)
    now = spelling.time.monotonic()
    monkeypatch.setattr(spelling.time, "monotonic", lambda: now)
    await retriever.search("What is a PID controller?")
    assert store.texts_read == 1

    async def after(seconds: float) -> Vocabulary | None:
        nonlocal now
        now += seconds
        await retriever.vocabulary()  # the check starts (old words serve meanwhile)
        assert retriever.book_words.reading is not None
        return await retriever.book_words.reading

    # Checked after the TTL: the same number of chunks, the words are not read again.
    await after(spelling.VOCABULARY_TTL_S + 1)
    assert store.texts_read == 1
    # A re-ingest added a page: read again, and its words are corrected to.
    store.payloads = list(SAMPLE_CHUNKS)
    vocabulary = await after(spelling.VOCABULARY_TTL_S + 1)
    assert store.texts_read == 2 and vocabulary is not None and "lidar" in vocabulary
    # An edit that kept the count is seen once the words are an hour old.
    await after(spelling.VOCABULARY_MAX_AGE_S + 1)
    assert store.texts_read == 3


def test_words_written_only_inside_a_hyphenated_phrase_are_known_with_its_other_words() -> None:
    vocabulary = Vocabulary(
        [
            "SLAM is a chicken-and-egg problem. A time-of-flight sensor times the light.",
            "Time is short; an up-to-date map helps.",
        ]
    )
    # Keyed and valued by light stem ("time" → "tim").
    assert vocabulary.phrase_only == {
        "chicken": frozenset({"egg"}),
        "egg": frozenset({"chicken"}),
        "flight": frozenset({light_stem("time")}),
        light_stem("date"): frozenset(),  # "up" and "to" are stop words
    }


EGG_BOOK = [
    chunk(
        "nav/slam", "SLAM", "SLAM",
        "SLAM is a chicken-and-egg problem: a map is needed to localize, and a pose is "
        "needed to build the map. Without it, a long corridor loop ends misaligned.",
    ),
    chunk(
        "sensors/lidar", "Lidar", "Time of flight",
        "A lidar times laser pulses: the time-of-flight principle gives the distance.",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("question", "relevant"),
    [
        # The book's only egg is SLAM's chicken-and-egg: a question about eggs is not.
        ("how long should I boil an egg?", False),
        ("why is SLAM called a chicken and egg problem?", True),
        ("what is time of flight?", True),
    ],
)
async def test_a_word_the_book_only_uses_in_a_phrase_is_found_with_the_phrase(
    question: str, relevant: bool
) -> None:
    result = await Retriever(FakeBM25Store(EGG_BOOK), None).search(question)
    assert result.relevant is relevant, result.evidence
