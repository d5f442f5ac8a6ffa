"""The relevance decision (search/relevance.py) and what the answer does with each verdict."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bookchat.answer.grounding import (
    NOT_COVERED_REPLY,
    SELECTION_NOT_COVERED,
    PromptBuilder,
    declines,
)
from bookchat.answer.pipeline import NOT_COVERED, AnswerDone, AnswerPipeline
from bookchat.ingest.pipeline import ingest_book
from bookchat.llm.base import Turn
from bookchat.llm.offline import CLOSEST_LABEL, OfflineGenerator
from bookchat.search.embedded import EmbeddedVectorStore
from bookchat.search.relevance import (
    NAMED_THING_SPECIFICITY,
    REFUSE_MISSING_SHARE,
    SCATTERED_BEST_HIT_SHARE,
    judge,
)
from bookchat.search.retriever import Retriever
from bookchat.settings import SAMPLE_BOOK
from bookchat.text import (
    american_spelling,
    content_words,
    everyday_compound,
    light_stem,
    light_term_set,
    specificity,
    term_set,
)
from tests.rag_fakes import (
    SAMPLE_CHUNKS,
    CountingEmbedder,
    FakeBM25Store,
    RaisingGenerator,
    RaisingStore,
    ScriptedGenerator,
)


def test_everyday_words_weigh_less_than_jargon_and_names() -> None:
    assert specificity("look") == 0.0
    assert specificity("shove") < specificity("gearbox") < specificity("quadcopter")
    assert specificity("unitree") == specificity("px4")  # unknown to English: the maximum
    assert specificity("2018") == 1.0


def test_light_stem_keeps_derivations_apart() -> None:
    assert light_stem("tuning") == light_stem("tune") == light_stem("tuned")
    assert light_stem("encoders") == light_stem("encoder")
    assert light_stem("transformer") != light_stem("transforms")


def _judge(question: str, book: str, hits: str | None = None):
    hit_text = book if hits is None else hits
    return judge(
        question,
        [],
        candidate_terms=term_set(book),
        candidate_light=light_term_set(book),
        hit_terms=term_set(hit_text),
        hit_light=light_term_set(hit_text),
        each_hit=[(term_set(hit_text), light_term_set(hit_text))],
        candidate_texts=[book],
    )


BOOK = (
    "A biped keeps its balance with push recovery: when pushed, the controller moves the "
    "zero moment point inside the support polygon and takes a recovery step."
)


def test_a_paraphrase_in_everyday_words_is_answered() -> None:
    # "shove", "feet", "side" are not in the book, but they are everyday words.
    evidence = _judge("If you shove a biped from the side, how does it stay on its feet?", BOOK)
    assert evidence.verdict != "refuse"  # answered (perhaps as the closest passages)
    assert evidence.missing_share < 0.6


def test_a_question_about_a_named_thing_the_book_lacks_is_refused() -> None:
    evidence = _judge("Which PX4 parameters tune a quadcopter's balance controller?", BOOK)
    assert evidence.verdict == "refuse"
    assert {"px4", "quadcopter"} <= set(evidence.missing_words)


def test_nothing_specific_found_is_refused() -> None:
    assert _judge("What is the capital of France?", BOOK).verdict == "refuse"


def test_dense_evidence_turns_a_lexical_refusal_into_the_grey_zone() -> None:
    args = dict(
        candidate_terms=term_set(BOOK), candidate_light=light_term_set(BOOK),
        hit_terms=term_set(BOOK), hit_light=light_term_set(BOOK),
    )  # fmt: skip
    # Refused for its missing everyday words, not for a name: dense evidence can rescue it.
    question = "Why does my walker topple when I nudge it sideways at the waist?"
    assert _judge(question, BOOK).verdict == "refuse"
    assert judge(question, [], dense_best=0.2, **args).verdict == "refuse"
    assert judge(question, [], dense_best=0.8, **args).verdict == "grey"


def test_dense_evidence_never_rescues_a_missing_name() -> None:
    args = dict(
        candidate_terms=term_set(BOOK), candidate_light=light_term_set(BOOK),
        hit_terms=term_set(BOOK), hit_light=light_term_set(BOOK),
    )  # fmt: skip
    # "PX4" and "quadcopter" are absent whatever the cosine of the words around them.
    question = "Which PX4 parameters tune a quadcopter's balance controller?"
    assert judge(question, [], dense_best=0.8, **args).verdict == "refuse"


def test_a_compound_of_everyday_words_is_not_a_name() -> None:
    # "onboard" is missing from the frequency list, like many closed compounds.
    assert everyday_compound("onboard") == ("on", "board")
    assert everyday_compound("quadcopter") is None and everyday_compound("unitree") is None
    book = "Run the balance controller on the robot itself; plan routes in the cloud."
    assert (
        _judge("Should the balance controller run onboard or in the cloud?", book).verdict
        != "refuse"
    )


def test_a_word_made_from_an_everyday_one_by_a_suffix_is_not_a_name() -> None:
    # "zigzaggy" is missing from the frequency list and weighed like "PX4": a named thing
    # the book lacks, so "a* path too zigzaggy?" was refused on a page about jagged paths.
    assert specificity("zigzaggy") < NAMED_THING_SPECIFICITY
    assert specificity("zigzag") < specificity("zigzaggy") <= specificity("zigzag") + 0.5
    assert specificity("laggy") < NAMED_THING_SPECIFICITY
    # Not a short word with a "y": "Sony" is not "son" made into an adjective.
    assert specificity("sony") > 3.5
    book = "A* paths on a grid are jagged, so they are usually smoothed afterwards."
    assert _judge("a* path too zigzaggy?", book).verdict != "refuse"
    assert _judge("a* path too zigzaggy and laggy?", book).verdict != "refuse"


def test_a_british_spelling_is_not_a_name() -> None:
    # The word list is American: "millimetres" is missing from it and was taken for a
    # named thing the book lacks, refusing a question on the encoder's counts.
    assert american_spelling("millimetres") == "millimeters"
    assert american_spelling("localisation") == "localization"
    assert american_spelling("roomba") is None and american_spelling("meters") is None
    book = "A wheel encoder counts ticks. The distance a wheel travels per count is 2πr / N."
    question = "how do I turn the encoder's counts into millimetres travelled?"
    assert _judge(question, book).verdict != "refuse"


def test_a_clipped_word_of_the_book_is_not_a_name() -> None:
    # "bot" is missing from the book and rare in the frequency list, so it was taken for a
    # named thing the book lacks and a question on the turning centre was refused.
    book = (
        "When a two-wheeled robot drives round a curve, it turns about the instantaneous "
        "centre of curvature, a point on the wheel axis set by the two wheel speeds."
    )
    question = "when my two wheeled bot drives round a curve, what point is it turning around?"
    assert specificity("bot") >= NAMED_THING_SPECIFICITY
    evidence = _judge(question, book)
    assert evidence.verdict != "refuse" and "bot" in evidence.missing_words
    # Only the head or tail of a longer word of the book: a name stays a name.
    assert _judge("which ouster lidar should my robot use?", book).verdict == "refuse"
    named = "when my two wheeled PX4 drives round a curve, what point is it turning around?"
    assert _judge(named, book).verdict == "refuse"


def test_a_word_the_book_hyphenates_is_in_the_book() -> None:
    # The frequency list lacks "wifi" (no everyday weight), so a book without it refuses
    # the question as one about a missing name; a book that writes "Wi-Fi" answers it.
    question = "My camera messages get dropped when the wifi is bad, what helps?"
    without = "Reliable delivery retransmits lost camera messages; best effort drops them."
    evidence = _judge(question, without)
    assert evidence.verdict == "refuse" and "wifi" in evidence.missing_words
    with_it = without + " Discovery can flood a busy Wi-Fi network."
    evidence = _judge(question, with_it)
    assert evidence.verdict != "refuse" and "wifi" not in evidence.missing_words


def test_declines_recognises_the_models_not_covered_reply() -> None:
    assert declines(f"{NOT_COVERED_REPLY} The sources cover PID tuning [1].")
    assert declines("I'm sorry, but the provided sources do not mention hand-eye calibration.")
    assert not declines("PID has three terms [1]. The book does not cover MPC in depth, but...")
    assert not declines("Lidar measures distance by timing light [1].")


def _pipeline(generator) -> AnswerPipeline:  # type: ignore[no-untyped-def]
    return AnswerPipeline(
        Retriever(FakeBM25Store(SAMPLE_CHUNKS), None), generator, PromptBuilder("R")
    )


async def _done(pipeline: AnswerPipeline, question: str, **kwargs) -> AnswerDone:  # type: ignore[no-untyped-def]
    events = [e async for e in pipeline.run(question, **kwargs)]
    done = events[-1]
    assert isinstance(done, AnswerDone)
    return done


# Partly in the fake book (PID, controller), partly not ("gearbox", "backlash"): grey.
GREY = "Does gearbox backlash upset a PID controller?"


async def test_the_grey_zone_reaches_the_model_marked_closest_only() -> None:
    generator = ScriptedGenerator(["PID reacts to the error [1]."])
    prepared = await _pipeline(generator).prepare(GREY)
    assert prepared.retrieval is not None and prepared.retrieval.evidence.verdict == "grey"
    done = await _done(_pipeline(generator), GREY)
    assert generator.requests and generator.requests[-1].closest_only
    assert done.grounded and done.citations


async def test_the_models_own_refusal_is_an_ungrounded_abstention() -> None:
    generator = ScriptedGenerator([NOT_COVERED_REPLY, " The sources cover PID [1]."])
    done = await _done(_pipeline(generator), GREY)
    assert generator.requests  # the model was asked
    assert not done.grounded and done.finish_reason == NOT_COVERED and done.citations == []


async def test_a_clear_miss_never_calls_the_model() -> None:
    done = await _done(
        _pipeline(RaisingGenerator()), "How long should a steak rest after grilling?"
    )
    assert not done.grounded and done.finish_reason == "abstained"


async def test_offline_grey_zone_answers_with_the_closest_passages() -> None:
    done = await _done(_pipeline(OfflineGenerator()), GREY)
    assert done.grounded and done.text.startswith(CLOSEST_LABEL)


# -- the sample book: follow-ups and the offline answerer's rules ----------------------


@pytest.fixture(scope="module")
def sample_pipeline():  # type: ignore[no-untyped-def]
    import asyncio

    tmp = tempfile.TemporaryDirectory()
    store = EmbeddedVectorStore(Path(tmp.name), "book")
    asyncio.run(ingest_book(SAMPLE_BOOK, store=store, embedder=None, site_url="https://b.org"))
    yield AnswerPipeline(Retriever(store, None), OfflineGenerator(), PromptBuilder("Robots"))
    asyncio.run(store.close())
    tmp.cleanup()


async def _ask(pipeline: AnswerPipeline, question: str, *history: str) -> AnswerDone:
    turns = [t for q in history for t in (Turn(role="user", text=q), Turn(role="model", text="."))]
    return await _done(pipeline, question, history=turns)


async def test_an_everyday_word_does_not_outweigh_the_questions_subject(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    # "put" and "little" led the search to the line-follower lab ("put the robot on a
    # stand"); "laser" and "sensor" are what the question is about.
    retrieval = await sample_pipeline.retriever.search(
        "at what height should I put the laser sensor on my little robot?"
    )
    assert retrieval.hits[0].payload.doc_path == "01-sensors/01-lidar"


async def test_a_name_spelt_with_a_symbol_is_found(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    # "What is A*?" was refused: "a" is a stop word and the tokenizers dropped the star.
    done = await _ask(sample_pipeline, "What is A*?")
    assert done.grounded and done.finish_reason != NOT_COVERED
    assert {c.doc_path for c in done.citations} == {"03-navigation/02-planning/01-path-planning"}
    assert "A* is guaranteed to return an optimal path" in done.text
    done = await _ask(sample_pipeline, "Is RRT* better than RRT?")
    assert "RRT* — Complete?: Probabilistically; Optimal?: Asymptotically" in done.text


async def test_a_starred_name_the_book_lacks_is_refused() -> None:
    retriever = Retriever(FakeBM25Store(SAMPLE_CHUNKS), None)
    result = await retriever.search("What is A*?")
    assert not result.relevant
    assert result.evidence.missing_words == ["astar"]


async def test_a_starred_name_is_not_a_misspelling_of_another(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    # "dstar" is one letter from "astar" (the book teaches A*, not D*) and from "star":
    # read as a typo, D* questions were answered from the A* section.
    result = await sample_pipeline.retriever.search("How does D* replan when the map changes?")
    assert not result.relevant
    assert result.evidence.missing_words == ["dstar"]


async def test_follow_up_on_a_techniques_drawbacks_stays_on_its_page(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    done = await _ask(sample_pipeline, "What are its main drawbacks?", "How does a lidar work?")
    assert done.grounded
    assert {c.doc_path for c in done.citations} == {"01-sensors/01-lidar"}


async def test_follow_up_comparing_directions_stays_on_the_method(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    done = await _ask(
        sample_pipeline,
        "Why is that harder than the other direction, and what usually goes wrong?",
        "How does forward kinematics of a differential drive work?",
    )
    assert done.grounded
    assert "02-motion/01-differential-drive" in {c.doc_path for c in done.citations}


async def test_a_follow_up_in_words_the_book_lacks_stays_on_the_books_topic(
    sample_pipeline,
) -> None:  # type: ignore[no-untyped-def]
    # "blocks" and "halfway" are not the book's words (nor is "route"): the question was
    # refused on its missing share, although it asks about the planning topic.
    planning = "how does the planner find a route?"
    done = await _ask(sample_pipeline, "and what if something blocks it halfway?", planning)
    assert done.grounded and done.finish_reason != NOT_COVERED
    assert "03-navigation/02-planning/01-path-planning" in {c.doc_path for c in done.citations}
    # A follow-up to a topic the book lacks is refused as before.
    done = await _ask(sample_pipeline, "how long should it rise?", "how do I bake sourdough bread?")
    assert not done.grounded and done.finish_reason == "abstained"


@pytest.mark.parametrize(
    ("question", "page"),
    [
        # The "it" refers to the lidar the question names, not to the PID controller.
        ("how does a lidar measure distance, and how far can it see?", "01-sensors/01-lidar"),
        # One content word, but a subject of its own.
        ("what is odometry?", "01-sensors/02-imu-and-odometry"),
    ],
)
async def test_a_question_that_changes_the_subject_is_answered_from_its_own_topic(
    sample_pipeline, question: str, page: str
) -> None:  # type: ignore[no-untyped-def]
    # Read as follow-ups, the PID question's words weighed double and the answers came
    # from the PID page.
    done = await _ask(sample_pipeline, question, "How do I tune a PID controller?")
    assert done.grounded
    assert done.citations[0].doc_path == page
    assert "02-motion/02-pid-control" not in {c.doc_path for c in done.citations}


async def test_an_out_of_book_question_after_an_in_book_one_is_still_refused(
    sample_pipeline,
) -> None:  # type: ignore[no-untyped-def]
    # Expanded with the lidar question's words, the bread question was answered from
    # the lidar page.
    done = await _ask(
        sample_pipeline,
        "how do I bake sourdough bread and how long should it rise?",
        "How does a lidar measure distance?",
    )
    assert not done.grounded and done.finish_reason == "abstained"


async def test_a_limitations_question_gets_the_sections_list(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    done = await _ask(sample_pipeline, "What are the limitations of lidar?")
    assert "Glass and mirrors" in done.text and "Sunlight" in done.text


async def test_a_why_question_is_answered_from_the_limitations_it_asks_about(
    sample_pipeline,
) -> None:  # type: ignore[no-untyped-def]
    # "Why does X go wrong?" is answered by X's limitations section, which answers only
    # questions asking for caveats: a gyro sentence with "which is why" led instead.
    done = await _ask(sample_pipeline, "why is my wheel odometry so much worse on thick carpet?")
    assert "the encoders count rotation that never became motion" in done.text
    assert "01-sensors/02-imu-and-odometry" in {c.doc_path for c in done.citations}
    # Readers often tell the symptom first and ask "why?" last.
    done = await _ask(sample_pipeline, "my wheel odometry is so much worse on thick carpet. Why?")
    assert "the encoders count rotation that never became motion" in done.text


async def test_is_that_normal_is_answered_from_the_limitations_it_asks_about(
    sample_pipeline,
) -> None:  # type: ignore[no-untyped-def]
    # "…, is that normal?" asks whether a behaviour is a known failure: the limitations
    # section answers it, not the specifications that share the question's "lidar".
    done = await _ask(
        sample_pipeline, "my lidar goes crazy outside in bright sunshine, is that normal?"
    )
    assert "Strong sunlight adds infrared noise" in done.text
    assert "905 nm lasers designed to meet Class 1" not in done.text


async def test_a_reported_symptom_is_answered_from_the_limitations_it_runs_into(
    sample_pipeline,
) -> None:  # type: ignore[no-untyped-def]
    # "our … gets sluggish when …" tells a failure as "why …?" asks for one: PID's
    # limitations ("one set of gains may not suit both") answer it; they were weighed
    # down as an unasked-for caveat and left out.
    done = await _ask(sample_pipeline, "our pid loop gets sluggish when the robot carries a load")
    assert "one set of gains may not suit" in done.text


async def test_a_figure_in_words_answers_a_how_long_question(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    # "Plan for about two hours." states the duration without a digit: the figure rule
    # ("how long" → a time) looked for digits only and quoted speeds and lap times.
    done = await _ask(sample_pipeline, "how long will the line follower lab take me?")
    assert "Plan for about two hours" in done.text


async def test_a_filler_word_does_not_pull_in_another_topics_sentence(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    # "even" counted as a topic word: it diluted the SLAM sentences' scores until an
    # integral-windup sentence sharing only "robot" came within reach and trailed them.
    question = "how can a robot make a map while it doesn't even know where it is yet?"
    assert "even" not in content_words(question) and "yet" not in content_words(question)
    done = await _ask(sample_pipeline, question)
    assert "simultaneous localization and mapping" in done.text
    assert done.citations[0].doc_path == "03-navigation/01-localization-and-slam"
    assert "windup" not in done.text


def test_a_formula_stays_with_the_sentence_that_introduces_it() -> None:
    from bookchat.ingest.chunking import chunk_book
    from bookchat.llm.base import ContextBlock

    pages = chunk_book(SAMPLE_BOOK, site_url="https://b.org")
    tof = next(c for p in pages for c in p.chunks if c.section == "Time-of-flight principle")
    block = ContextBlock(n=1, title=tof.title, section=tof.section, text=tof.text)
    text = OfflineGenerator().compose(
        "How does the light's travel time give the distance?", [block]
    )
    assert "the distance is d = c · t / 2" in text


async def test_no_sentence_opens_with_a_dangling_this(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    done = await _ask(sample_pipeline, "How is integral windup prevented?")
    assert "windup" in done.text.lower()
    for paragraph in done.text.split("\n\n")[1:]:
        assert not paragraph.startswith(("Anti-windup prevents this", "This ", "These "))


# -- selected text: answered in the reader's words, declined only when about something else --

TOF_SELECTION = (
    "The sensor emits a short infrared pulse and measures the time t until the reflection "
    "returns. Because the light travels to the target and back, the distance is\n\n"
    "    d = c · t / 2\n\n"
    "where c ≈ 3 × 10⁸ m/s is the speed of light. Light covers about 30 cm per nanosecond, "
    "so a target 15 m away returns its echo after only 100 ns."
)


async def _ask_selection(question: str) -> tuple[AnswerDone, CountingEmbedder]:
    embedder = CountingEmbedder()
    pipeline = AnswerPipeline(
        Retriever(RaisingStore(), embedder), OfflineGenerator(), PromptBuilder("Robots")
    )  # RaisingStore fails the test on any use of the store
    done = await _done(
        pipeline,
        question,
        mode="selected_text_only",
        selected_text=TOF_SELECTION,
        source_doc_path="01-sensors/01-lidar",
        source_section="Time-of-flight principle",
    )
    assert embedder.queries == []
    return done, embedder


async def test_why_about_the_selection_gets_the_sentence_with_the_reason() -> None:
    done, _ = await _ask_selection("Why is the time divided by two?")
    assert done.grounded
    assert "travels to the target and back" in done.text
    assert "d = c · t / 2" in done.text


@pytest.mark.parametrize(
    "question",
    [
        "What does this mean in plain words?",
        "Explain this passage",
        "how fast is light?",
        # Shares a word with the passage ("sensor"), though most of it is the reader's own
        # (a blind set's question, declined when the passage had to hold 40 % of it).
        "Why does the stopwatch inside the sensor have to be so ridiculously fast?",
        # Shares nothing, but points at the passage as a follow-up points back.
        "Are these numbers exact, or only rough?",
    ],
)
async def test_questions_about_the_selection_in_other_words_are_answered(question: str) -> None:
    done, _ = await _ask_selection(question)
    assert done.grounded and done.citations and done.citations[0].url == ""


@pytest.mark.parametrize(
    "question",
    [
        "How does A* decide which node to expand next?",
        "What is the capital of France?",
        "How should I pick the integral gain for my wheel motor controller?",
        # Points at the passage, but names a thing it never mentions.
        "How does this compare with a Velodyne VLP-16?",
    ],
)
async def test_questions_about_something_else_are_declined(question: str) -> None:
    done, _ = await _ask_selection(question)
    assert not done.grounded and done.text == SELECTION_NOT_COVERED


ROS_BOOK = (
    "ROS 2 nodes publish messages on topics; a subscriber receives them. Install the "
    "packages your robot needs and source the workspace before you launch a node. "
    "Dijkstra's algorithm expands the cheapest node first."
)


def test_a_named_thing_the_book_never_mentions_is_refused() -> None:
    # Most words are the book's; "Ubuntu" is a name the book never uses.
    evidence = _judge("How do I install ROS 2 nodes on Ubuntu?", ROS_BOOK)
    assert evidence.verdict == "refuse" and "ubuntu" in evidence.missing_words


def test_a_typo_is_not_a_name() -> None:
    # "shoud" is one edit from "should"; "djikstra" one edit from the book's "dijkstra".
    assert _judge("which node shoud publish the topic?", ROS_BOOK).verdict != "refuse"
    assert _judge("how does djikstra expand a node?", ROS_BOOK).verdict == "answer"


async def test_how_a_lidar_measures_distance_includes_the_time_of_flight_sentence(
    sample_pipeline,  # type: ignore[no-untyped-def]
) -> None:
    done = await _ask(sample_pipeline, "How does a lidar measure distance?")
    assert "the light travels to the target and back, the distance is d = c · t / 2" in done.text


async def test_an_answer_does_not_trail_off_into_a_weaker_chunk(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    done = await _ask(sample_pipeline, "What are the limitations of lidar?")
    assert {c.doc_path for c in done.citations} == {"01-sensors/01-lidar"}
    assert "Triangulation is accurate up close" not in done.text


def test_a_letter_hyphenated_to_a_word_is_one_thing() -> None:
    from bookchat.text import tokenize

    assert tokenize("an H-bridge and an e-stop") == ["an", "h-bridge", "and", "an", "e-stop"]
    book = "A DC motor runs in reverse when its wires are swapped; the bridge of the robot."
    # "bridge" and "motor" are in the book, an H-bridge is not.
    evidence = _judge("How do I wire an H-bridge so my DC motor can run in reverse?", book)
    assert evidence.verdict == "refuse" and "h-bridge" in evidence.missing_words


CONTROL_BOOK = (
    "A ROS 2 control node reads the hardware interface of each motor and publishes "
    "velocity commands on cmd_vel; the driver board applies them."
)


def test_an_identifier_the_book_never_names_is_refused() -> None:
    # Every part ("ros2", "control", "hardware", "interface") is the book's; the name is not.
    evidence = _judge("How do I write a ros2_control hardware interface?", CONTROL_BOOK)
    assert evidence.verdict == "refuse" and evidence.missing_words[0] == "ros2_control"
    # Without the identifier the same words are answered.
    assert (
        _judge("How do I write a ROS 2 control hardware interface?", CONTROL_BOOK).verdict
        == "answer"
    )


def test_an_identifier_the_book_uses_is_found() -> None:
    evidence = _judge("What does the node publish on CMD_VEL?", CONTROL_BOOK)
    assert evidence.verdict == "answer" and "cmd_vel" not in evidence.missing_words


def test_a_proper_name_the_book_never_uses_is_a_named_thing() -> None:
    # "Windows" is an everyday word, but capitalised inside the sentence it names an
    # operating system, which the book (ROS_BOOK: nodes, topics, install) never mentions.
    evidence = _judge("How do I install ROS 2 on Windows?", ROS_BOOK)
    assert evidence.verdict == "refuse" and evidence.missing_words[0] == "windows"
    # Lower case, it is only a missing everyday word; names the book uses are found.
    assert _judge("How do I install ROS 2 on windows?", ROS_BOOK).verdict != "refuse"
    assert _judge("How do ROS nodes receive messages?", ROS_BOOK).verdict == "answer"
    # A question typed in Title Case capitalises everything: no word is a name for it.
    assert _judge("How Do ROS Nodes Receive Messages From Topics Quickly?", ROS_BOOK).verdict != (
        "refuse"
    )


ARM_BOOK = (
    "A wrist camera is an eye on the object the hand is about to grasp. The arm has six joints. "
    "Calibration of the simulator's friction makes the digital twin match the real robot."
)
ARM_HITS = (
    "A wrist camera is an eye on the object the hand is about to grasp. The arm has six joints."
)


def test_hits_without_the_questions_subject_and_a_rare_word_missing_are_adrift() -> None:
    question = "How do I do hand-eye calibration between my wrist camera and the arm's flange?"
    # The book lacks "flange" and has "calibration", but only in a passage not returned:
    # the hits hold the wrist, the camera and the arm, not what the question asks about.
    adrift = _judge(question, ARM_BOOK, hits=ARM_HITS)
    assert adrift.verdict == "refuse" and adrift.missing_words == ["flange"]
    # Without the adrift rule the same evidence would be answered (as the closest passages).
    assert adrift.missing_share < REFUSE_MISSING_SHARE
    assert adrift.best_hit_share >= SCATTERED_BEST_HIT_SHARE
    # Hits holding the subject are not adrift, though "flange" is still missing...
    assert _judge(question, ARM_BOOK).verdict != "refuse"
    # ...nor is a question whose missing word is everyday ("towel"), not rare.
    everyday = "How do I do calibration between my wrist camera and the arm's towel?"
    assert _judge(everyday, ARM_BOOK, hits=ARM_HITS).verdict != "refuse"


async def test_a_contraction_typed_without_its_apostrophe_is_no_topic_word(sample_pipeline) -> None:  # type: ignore[no-untyped-def]
    # "doesnt" counted as a word the book lacks, and its weight refused the question
    # that "doesn't" got answered.
    typed = await sample_pipeline.retriever.search("why doesnt my robot turn on the spot?")
    spelt = await sample_pipeline.retriever.search("why doesn't my robot turn on the spot?")
    assert typed.evidence == spelt.evidence
    assert typed.relevant and typed.evidence.missing_words == []
    assert [h.id for h in typed.hits] == [h.id for h in spelt.hits]
