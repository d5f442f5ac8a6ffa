"""Retriever: BM25/hybrid search, follow-ups, near-duplicates, relevance, failures."""

from __future__ import annotations

import random

import pytest

from bookchat.search.retriever import Retriever, is_follow_up
from bookchat.search.types import SearchFilters, SearchHit, VectorStoreUnavailableError
from bookchat.text import jaccard, term_set
from tests.rag_fakes import (
    SAMPLE_CHUNKS,
    CountingEmbedder,
    FakeBM25Store,
    UnavailableStore,
    chunk,
)


async def test_bm25_search_finds_the_section_and_is_relevant() -> None:
    retriever = Retriever(FakeBM25Store(SAMPLE_CHUNKS), None)
    result = await retriever.search("What is a PID controller?", top_k=3)
    assert result.relevant
    assert result.hits[0].payload.section == "PID controllers"
    assert result.hits[0].relevance == 1.0
    assert not result.dense_used and len(result.hits) <= 3
    assert result.elapsed_ms >= 0


async def test_out_of_book_question_is_not_relevant() -> None:
    retriever = Retriever(FakeBM25Store(SAMPLE_CHUNKS), None)
    result = await retriever.search("What is the GDP of Brazil?")
    assert not result.relevant
    assert result.coverage == 0.0


async def test_partial_match_on_common_words_is_not_relevant() -> None:
    retriever = Retriever(FakeBM25Store(SAMPLE_CHUNKS), None)
    result = await retriever.search("Which robot vacuum cleaner should I buy for my flat?")
    assert not result.relevant


async def test_follow_up_retrieves_the_first_questions_section() -> None:
    store = FakeBM25Store(SAMPLE_CHUNKS)
    retriever = Retriever(store, None)
    first = await retriever.search("How does a PID controller work?")
    assert first.hits[0].payload.doc_path == "control/pid"
    follow = await retriever.search(
        "What are its limitations?", history=["How does a PID controller work?"]
    )
    assert follow.expanded and "pid" in follow.query_used.lower()
    assert follow.hits[0].payload.section == "Limitations of PID"
    assert follow.relevant


def test_follow_up_rule() -> None:
    history = ["What is a digital twin?"]
    assert is_follow_up("What are its limitations?", history)
    assert is_follow_up("Why?", history)
    assert is_follow_up("And is that used in practice?", history)
    assert not is_follow_up("What is domain randomization used for?", history)
    assert not is_follow_up("What is the sensor that measures distance?", history)
    assert not is_follow_up("What are its limitations?", [])


def test_a_pronoun_that_refers_inside_the_question_does_not_make_a_follow_up() -> None:
    history = ["How do I tune a PID controller?"]
    # An earlier clause of the question names what the pronoun stands for.
    for question in (
        "how does a lidar measure distance, and how far can it see?",
        "what is RRT and why is it used for robot arms?",
        "how do I tune the gains so that it stops overshooting?",
        "ok, what is quality of service and when does it matter?",
    ):
        assert not is_follow_up(question, history), question
    # The pronoun comes first, or the clause before it points back too ("the I one").
    for question in (
        "why can that be dangerous when the motor saturates, and how do people prevent it?",
        "how did the next version improve on it?",
        "ok, and why does it drift?",
        "what goes wrong with the I one when the motor is maxed out, and how do I fix it?",
    ):
        assert is_follow_up(question, history), question


def test_a_short_question_that_names_its_subject_is_not_a_follow_up() -> None:
    history = ["How do I tune a PID controller?"]
    for question in ("what is odometry?", "what about SLAM?", "explain anti-windup"):
        assert not is_follow_up(question, history), question
    # An attribute of what was asked before, or a definite article pointing back.
    for question in ("drawbacks?", "how accurate?", "what is the range?", "why?"):
        assert is_follow_up(question, history), question


def test_a_lone_name_the_previous_question_did_not_use_is_a_new_subject() -> None:
    # "dijkstra?" after an IMU question was searched with the IMU's words (and, once the
    # previous answer's pages came first, answered from the IMU page).
    history = ["What does an IMU measure?"]
    for question in ("dijkstra?", "and serialization?", "quaternions?"):
        assert not is_follow_up(question, history), question
    # An everyday word is about the previous question, and so is a name it used.
    assert is_follow_up("downsides?", history)
    assert is_follow_up("and the imu?", history)


def test_a_question_that_carries_on_without_a_topic_word_is_a_follow_up() -> None:
    # Blind textbook set: "so the robot looks first and then acts, …?" after a question on
    # the perception-action loop was searched alone and answered from the walking pages.
    history = ["what's the perception-action loop in physical ai?"]
    for question in (
        "so the robot looks first and then acts, one step after the other?",
        "and in a busy place full of people walking around?",
        "ok so the loop never really stops then?",
    ):
        assert is_follow_up(question, history), question
    # Opening with "so" or "and" while naming a topic of its own changes the subject.
    for question in (
        "so how does a lidar measure distance?",
        "and how do encoders count wheel turns?",
        "but how does the robot plan a path around obstacles?",
    ):
        assert not is_follow_up(question, history), question


async def test_standalone_question_is_not_expanded() -> None:
    store = FakeBM25Store(SAMPLE_CHUNKS)
    result = await Retriever(store, None).search(
        "What does LiDAR measure?", history=["How does a PID controller work?"]
    )
    assert not result.expanded
    assert store.calls[-1]["query_text"] == "What does LiDAR measure?"


async def test_near_duplicates_are_removed() -> None:
    text = SAMPLE_CHUNKS[3].text
    dup_same_page = chunk("control/pid", "PID Control", "PID controllers (again)", text + " Yes.")
    dup_other_page = chunk("appendix/pid", "Appendix", "PID", text)
    store = FakeBM25Store([SAMPLE_CHUNKS[3], dup_same_page, dup_other_page, *SAMPLE_CHUNKS[4:]])
    result = await Retriever(store, None).search("PID controller gains", top_k=5)
    texts = [h.payload.text for h in result.hits]
    assert len([t for t in texts if t.startswith("A PID controller")]) == 1


def test_remembered_comparisons_drop_the_same_hits_as_comparing_every_pair() -> None:
    # Overlapping word windows: neighbours are near-duplicates, some only on one page.
    words = [f"word{n}" for n in range(60)]
    chunks = [chunk(f"page-{n % 3}", "T", f"S{n}", " ".join(words[n : n + 20])) for n in range(12)]
    retriever = Retriever(FakeBM25Store([]), None, duplicate_jaccard=0.6)

    def every_pair(hits: list[SearchHit]) -> list[SearchHit]:
        kept: list[SearchHit] = []
        for hit in hits:
            p = hit.payload
            if not any(
                jaccard(term_set(p.text), term_set(k.payload.text))
                >= (0.6 if k.payload.doc_path == p.doc_path else 0.9)
                for k in kept
            ):
                kept.append(hit)
        return kept

    rng = random.Random(7)
    pairs_dropped = 0
    for _ in range(30):
        order = rng.sample(chunks, k=rng.randint(2, len(chunks)))
        hits = [SearchHit(id=str(n), score=1.0, payload=p) for n, p in enumerate(order)]
        expected = every_pair(hits)
        assert retriever._dedupe(hits) == expected
        pairs_dropped += len(hits) - len(expected)
    assert pairs_dropped > 0


async def test_hybrid_embeds_the_query_once_and_passes_the_vector() -> None:
    store = FakeBM25Store(SAMPLE_CHUNKS)
    embedder = CountingEmbedder()
    retriever = Retriever(store, embedder)
    for _ in range(2):
        result = await retriever.search("What is a digital twin?")
    assert result.dense_used and result.relevant
    assert embedder.queries == ["What is a digital twin?"]  # second call hit the LRU cache
    assert store.calls[-1]["dense"] == [0.5, 0.5, 0.5, 0.5]


async def test_failing_embedder_falls_back_to_bm25() -> None:
    class Down(CountingEmbedder):
        async def embed_query(self, text: str) -> list[float]:
            raise TimeoutError("embeddings down")

    store = FakeBM25Store(SAMPLE_CHUNKS)
    result = await Retriever(store, Down()).search("What is a digital twin?")
    assert not result.dense_used and result.relevant
    assert store.calls[-1]["dense"] is None


async def test_filters_and_top_k_are_passed_to_the_store() -> None:
    store = FakeBM25Store(SAMPLE_CHUNKS)
    result = await Retriever(store, None, candidates=10).search(
        "nodes lifecycle controller", filters=SearchFilters(modules=("ros",)), top_k=1
    )
    assert [h.payload.module for h in result.hits] == ["ros"]
    assert store.calls[-1]["limit"] == 10


async def test_store_failure_propagates() -> None:
    with pytest.raises(VectorStoreUnavailableError):
        await Retriever(UnavailableStore(), None).search("What is a node?")


# Passages that name both compared things rank above the ones that explain either.
ROS_CHUNKS = [
    chunk("ros/exercises", "Exercises", "Exercise 1",
          "Topic or service? Pick a topic or a service for each: a camera topic, a map "
          "service, a battery service, a joint state topic."),
    chunk("ros/tools", "Command-line tools", "Listing",
          "ros2 topic list shows every topic; ros2 service list shows every service; "
          "ros2 topic echo prints a topic and ros2 service call calls a service."),
    chunk("ros/concepts", "Core concepts", "Publish and subscribe",
          "Topics enable asynchronous many-to-many communication between the programs of a "
          "robot: publishers send messages without knowing who listens, any number of "
          "subscribers receive them, and data flows one way, which suits sensor streams "
          "such as camera images, laser scans and the robot's joint states."),
    chunk("ros/concepts", "Core concepts", "Request and reply",
          "Services provide synchronous one-to-one communication between two programs of a "
          "robot: a client sends a request message and then blocks until the response "
          "message arrives, which suits infrequent queries, configuration changes and "
          "triggers that need an immediate result."),
    *(chunk(f"ros/filler{i}", "Filler", f"Filler {i}", f"Launch files start nodes {i}.")
      for i in range(6)),
]  # fmt: skip


async def test_a_comparison_retrieves_the_passage_that_explains_each_side() -> None:
    question = "what's the difference between a topic and a service?"
    store = FakeBM25Store(ROS_CHUNKS)
    plain = await store.search(query_text=question, dense=None, filters=None, limit=3)
    assert "Publish and subscribe" not in {h.payload.section for h in plain}  # the trap
    result = await Retriever(store, None).search(question, top_k=3)
    sections = [h.payload.section for h in result.hits]
    assert sections[0] == plain[0].payload.section  # the question's own best stays first
    assert {"Publish and subscribe", "Request and reply"} <= set(sections), sections
    # Not a comparison: one search, nothing added.
    store.calls.clear()
    await Retriever(store, None).search("what is a topic?", top_k=3)
    assert len(store.calls) == 1


async def test_a_follow_up_that_names_a_new_thing_does_not_favour_the_earlier_topic() -> None:
    # "…different from Gazebo?" after an Isaac Sim question is about both: the earlier
    # topic's words are searched at their own weight, not doubled over "Gazebo".
    store = FakeBM25Store(SAMPLE_CHUNKS)
    retriever = Retriever(store, None)
    history = ["How does Isaac Sim generate training data?"]
    result = await retriever.search("and how is that different from Gazebo?", history=history)
    assert result.expanded and "isaac" in result.query_used.lower()
    assert store.calls[-1]["topic"] == ()
    # A follow-up in its own everyday words keeps the earlier topic's weight.
    await retriever.search("What are its main drawbacks?", history=history)
    assert "isaac" in store.calls[-1]["topic"]


async def test_a_failing_side_search_leaves_the_questions_own_hits() -> None:
    class FailsAfterFirst(FakeBM25Store):
        async def search(self, **kwargs):  # type: ignore[no-untyped-def]
            if self.calls:
                raise VectorStoreUnavailableError("the store went away")
            return await super().search(**kwargs)

    store = FailsAfterFirst(ROS_CHUNKS)
    result = await Retriever(store, None).search(
        "what's the difference between a topic and a service?", top_k=3
    )
    assert len(store.calls) == 1 and result.hits  # answered from the first search


def test_a_follow_up_walks_back_only_to_the_question_that_set_its_topic() -> None:
    retriever = Retriever(FakeBM25Store(SAMPLE_CHUNKS), None)
    # "what is odometry?" changed the subject: the PID question before it is not the topic.
    _, extra = retriever.build_query(
        "why does it drift?", ["How do I tune a PID controller?", "what is odometry?"]
    )
    assert extra == ["odometry"]
    # A follow-up of a follow-up reaches the question that set the topic.
    _, extra = retriever.build_query(
        "and how do people work around them?",
        ["How does a lidar measure distance?", "What are its main drawbacks?"],
    )
    assert extra[:2] == ["main", "drawbacks"] and "lidar" in extra


TOPIC_BOOK = [
    chunk(
        "sensors/imu", "IMU", "Gyro drift",
        "A heading integrated from a gyro alone drifts: cheap parts integrate their bias "
        "into the heading, and integrated errors grow with time.",
    ),
    chunk(
        "control/pid", "Control", "Windup",
        "When the output saturates, the integral keeps growing and the wheel overshoots.",
    ),
    chunk("control/pid", "Control", "Exercises", "Part two: log the wheel speed.", chunk_index=1),
]  # fmt: skip


async def test_a_follow_up_prefers_the_pages_the_previous_answer_cited_first() -> None:
    retriever = Retriever(FakeBM25Store(TOPIC_BOOK), None)
    history = ["what does the integral part of pid do?"]
    # Words alone: "integral" and "part" match the gyro's "integrated ... parts" best.
    alone = await retriever.search("can that go wrong?", history=history)
    assert alone.expanded and alone.hits[0].payload.doc_path == "sensors/imu"
    # The previous answer cited the PID page first (and the IMU page after it).
    result = await retriever.search(
        "can that go wrong?", history=history, topic_pages=("control/pid", "sensors/imu")
    )
    # The page's exercises are not its content: they keep their place.
    assert [h.payload.section for h in result.hits] == ["Windup", "Gyro drift", "Exercises"]
    # Not a follow-up (it names its own subject): the previous answer's pages do not count.
    own = await retriever.search(
        "what is gyro drift?", history=history, topic_pages=("control/pid",)
    )
    assert not own.expanded and own.hits[0].payload.doc_path == "sensors/imu"
