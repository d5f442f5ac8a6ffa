"""The offline extractive answerer: useful, cited, labelled, word-streamed, fast."""

from __future__ import annotations

import re
import time

import msgspec

from bookchat.answer.grounding import PromptBuilder
from bookchat.llm.base import ContextBlock, GenerationFinished, TokenDelta
from bookchat.llm.offline import (
    _CAPABILITY_Q_RE,
    OFFLINE_LABEL,
    OfflineGenerator,
    _readable_units,
)
from bookchat.text import is_side_section

BLOCKS = [
    ContextBlock(
        n=1,
        title="PID Control",
        section="PID controllers",
        text=(
            "## PID controllers\n\n"
            "A **PID controller** computes a command from the error between a setpoint and a "
            "measurement. It adds a proportional term, an integral term and a derivative "
            "term. Tuning the three gains trades speed of response against overshoot.\n\n"
            "```python\nu = kp * e + ki * integral + kd * derivative\n```\n\n"
            "Exercises: what happens when the gain is too high?"
        ),
    ),
    ContextBlock(
        n=2,
        title="PID Control",
        section="Limitations of PID",
        text=(
            "PID control has limitations:\n\n"
            "- **Integral windup** when actuators saturate\n"
            "- Noise amplification by the derivative term\n\n"
            "See [gain scheduling](/docs/control/gain) for nonlinear plants."
        ),
    ),
    ContextBlock(
        n=3,
        title="Sensors",
        section="LiDAR",
        text="LiDAR measures distance by timing laser pulses. It produces a point cloud.",
    ),
]


async def _collect(question: str, blocks=BLOCKS) -> tuple[list[str], GenerationFinished]:
    request = PromptBuilder("Robots").build(question, blocks)
    events = [e async for e in OfflineGenerator().stream(request)]
    finished = events[-1]
    assert isinstance(finished, GenerationFinished)
    assert all(isinstance(e, TokenDelta) for e in events[:-1])
    return [e.text for e in events[:-1] if isinstance(e, TokenDelta)], finished


async def test_offline_answer_cites_and_streams_word_sized_tokens() -> None:
    pieces, finished = await _collect("What is a PID controller?")
    text = "".join(pieces)
    assert text.startswith(OFFLINE_LABEL)
    assert all(len(p.split()) == 1 for p in pieces)  # one word per token
    assert "[1]" in text and "[3]" not in text  # LiDAR is unrelated
    assert "computes a command from the error" in text
    assert "**" not in text and "##" not in text and "```" not in text
    assert "what happens when" not in text  # exercise prompts are not answers
    assert finished.finish_reason == "stop" and finished.model == "offline-extractive"
    assert finished.prompt_tokens > 0 and finished.completion_tokens > 0


async def test_offline_answer_strips_markdown_and_keeps_intro_with_its_list() -> None:
    text = "".join((await _collect("What are the limitations of PID control?"))[0])
    assert "Integral windup when actuators saturate" in text
    assert "[2]" in text
    body = text[len(OFFLINE_LABEL) :]
    sentences = re.findall(r"[^.!?]+[.!?]", body)
    assert 1 <= len(sentences) <= 6


async def test_code_is_shown_only_when_the_question_is_about_code() -> None:
    prose = "".join((await _collect("What does a PID controller compute?"))[0])
    assert "kp * e" not in prose
    code = "".join((await _collect("Show the code for a PID controller command"))[0])
    assert "```python" in code and "kp * e" in code


async def test_question_without_overlap_gets_the_opening_of_the_best_source() -> None:
    text = "".join((await _collect("Tell me more"))[0])
    assert "[1]" in text and "PID controller" in text


async def test_a_sentence_that_matches_only_through_its_pages_title_does_not_lead() -> None:
    # Every chunk of the PID page carries its title: "PID" in the title made the
    # implementation section's sampling-rate advice lead "what does the integral term of
    # PID do?" because its block ranked first (code full of `integral`).
    blocks = [
        ContextBlock(
            n=1, title="PID Control", section="Implementation",
            text="## Implementation\n\nA rule of thumb is to sample ten times faster than "
            "the fastest dynamics you want to control.",
        ),
        ContextBlock(
            n=2, title="PID Control", section="Integral term",
            text="## Integral term\n\nThe integral term accumulates the error over time, "
            "so even a small persistent error eventually produces a large correction.",
        ),
    ]  # fmt: skip
    text = "".join((await _collect("What does the integral term of PID do?", blocks))[0])
    body = text[len(OFFLINE_LABEL) :].strip()
    assert body.startswith("The integral term accumulates the error"), body
    assert "rule of thumb" not in body


def test_offline_compose_is_fast() -> None:
    generator = OfflineGenerator()
    generator.compose("What is a PID controller?", BLOCKS)  # warm the per-chunk caches
    started = time.perf_counter()
    for _ in range(200):
        generator.compose("What is a PID controller?", BLOCKS)
    per_answer_ms = (time.perf_counter() - started) * 1000 / 200
    assert per_answer_ms < 2.0


def test_caveat_sections_answer_only_questions_about_caveats() -> None:
    context = [
        ContextBlock(
            n=1, title="PID Control", section="Limitations of PID",
            text="PID knows nothing about the plant it controls. Long dead times defeat it.",
        ),
        ContextBlock(
            n=2, title="PID Control", section="The control law",
            text="A PID controller measures the error between setpoint and measurement and "
            "adds proportional, integral and derivative terms of that error. The output is:",
        ),
    ]  # fmt: skip
    how = OfflineGenerator().compose("How does a PID controller work?", context)
    assert "proportional, integral and derivative" in how
    assert "knows nothing" not in how
    limits = OfflineGenerator().compose("What are the limitations of a PID controller?", context)
    assert "knows nothing" in limits


def test_a_how_to_after_the_readers_symptom_gets_the_code_with_its_intro_line() -> None:
    # "… all over the place. how do i clean them up?": a how-to question after a
    # statement wants the code that does it, and the line announcing that code is shown,
    # and scored, with it (the code alone was chosen, or nothing of the section).
    context = [
        ContextBlock(
            n=1, title="Control Systems", section="Measurement Noise Filtering",
            text="Real sensors are imperfect.\n\n"
            "Smooth noisy sensor signals with low-pass filter:\n\n"
            "```python\nclass LowPassFilter:\n    def step(self, measurement):\n"
            "        return self.alpha * measurement\n\n"
            "# Usage: denoise joint angle measurements\n"
            "clean_angle = joint_filter.step(measurement)\n```\n",
        ),
        ContextBlock(
            n=2, title="Humanoids", section="Inverse Kinematics",
            text="Given a desired hand pose, find joint angles that achieve it.",
        ),
    ]  # fmt: skip
    question = "my joint angle readings jump all over the place. how do i clean them up?"
    answer = OfflineGenerator().compose(question, context)
    assert "Smooth noisy sensor signals with low-pass filter" in answer
    assert answer.index("low-pass filter") < answer.index("class LowPassFilter")


def test_a_drawback_question_gets_the_line_labelled_as_one() -> None:
    # "**Limitation**: …" inside a model's own section (not a "Limitations" section) is
    # what "what's the downside?" or "is there a catch?" asks for.
    context = [
        ContextBlock(
            n=1, title="Vision-Language-Action Models", section="PaLM-E",
            text="PaLM-E is an embodied multimodal language model from Google Research. "
            "PaLM-E reads images, robot states and text in one sequence, and PaLM-E plans "
            "long tasks from a single instruction.\n\n"
            "**Language model**: PaLM with 540B parameters, used for embodied reasoning.\n\n"
            "**Innovation**: Treat robot sensory data as tokens in a language model sequence. "
            "PaLM-E answers visual questions and plans with the same weights.\n\n"
            "**Limitation**: Computationally expensive (requires TPU clusters for inference).\n",
        ),
        ContextBlock(
            n=2, title="Vision-Language-Action Models", section="RT-1",
            text="RT-1 maps camera images and an instruction to discretized robot actions.",
        ),
    ]  # fmt: skip
    for question in ("what's the downside of PaLM-E?", "is there any catch with PaLM-E?"):
        answer = OfflineGenerator().compose(question, context)
        assert "Computationally expensive" in answer, question


def test_sentences_cut_before_a_formula_are_left_out() -> None:
    context = [
        ContextBlock(
            n=1, title="PID Control", section="The control law",
            text="The PID controller sums three terms of the error. With error e, the PID "
            "output is\n\n```\nu = Kp e + Ki ∫e + Kd de/dt\n```\n\nTuning sets the gains.",
        )
    ]  # fmt: skip
    answer = OfflineGenerator().compose("What is the PID output?", context)
    assert "output is [1]" not in answer and "output is." not in answer


# Small sections are merged into one chunk: its `section` is the first heading only.
MERGED = ContextBlock(
    n=1,
    title="Lidar",
    section="Lidar basics",
    text=(
        "## Lidar basics\n\n"
        "A lidar sends laser pulses and times their echoes.\n\n"
        "### Limitations of lidar\n\n"
        "A lidar is blind to glass and to black surfaces in the room.\n"
        "Dark furniture absorbs the pulses and can vanish from the scan.\n"
    ),
)


def test_a_merged_sub_section_is_judged_by_its_own_heading() -> None:
    generator = OfflineGenerator()
    # The caveat sits under "Limitations of lidar": it does not lead a "what is" answer…
    what = generator.compose("What is a lidar?", [MERGED])
    assert "A lidar sends laser pulses" in what and "blind to glass" not in what
    # …but it answers a limitations question.
    limits = generator.compose("What are the limitations of lidar?", [MERGED])
    assert "blind to glass" in limits and "Dark furniture absorbs the pulses" in limits


def test_a_sentence_read_with_the_one_before_never_repeats_it() -> None:
    block = ContextBlock(
        n=1,
        title="Digital Twins",
        section="Overview",
        text=(
            "## Overview\n\n"
            "A digital twin is a virtual replica of a physical robot that mirrors its state. "
            "Digital twins enable safe development and testing of robot algorithms. "
            "This chapter explores simulation technologies for building digital twins."
        ),
    )
    answer = OfflineGenerator().compose("What is a digital twin?", [block])
    assert answer.count("Digital twins enable safe development") == 1


def _sample_section(page: str, heading: str, *, n: int = 1, title: str = "Lab") -> ContextBlock:
    """A real sample-book section (from `heading` to the next heading of its level)."""
    from bookchat.devtools.evaluation import SAMPLE_DOCS

    text = (SAMPLE_DOCS / page).read_text(encoding="utf-8")
    start = text.index(heading)
    level = heading.split(" ", 1)[0] + " "
    end = text.find("\n" + level, start + len(heading))
    return ContextBlock(
        n=n, title=title, section=heading.lstrip("# "), text=text[start : end if end > 0 else None]
    )


def test_a_sentence_that_introduces_code_is_shown_with_its_code() -> None:
    # Step 3 of the lab answers in one line ending "into wheel speeds:" and the code under it.
    block = _sample_section("05-practice/01-line-follower-lab.md", "## Step 3: Steer with PID")
    text = OfflineGenerator().compose("What does the PID controller turn the error into?", [block])
    assert "turns it into a yaw-rate command" in text
    assert "```python" in text and "set_wheel_speeds(w_r, w_l)" in text
    assert text.count("```") % 2 == 0  # the fence is closed
    # Every paragraph that announces something ("…wheel speeds [1]:") is followed by it.
    paragraphs = text.split("\n\n")[1:]  # after the label
    for paragraph, following in zip(paragraphs, [*paragraphs[1:], ""], strict=True):
        if paragraph.rstrip().endswith(":"):
            assert following.startswith("```")


def test_a_how_to_question_after_the_readers_context_gets_the_code() -> None:
    # "How do I …?" wants the code that does it, also when the reader sets the scene first
    # ("for a two-joint leg, how do I …"): read from the start only, the code was left out.
    block = ContextBlock(
        n=1,
        title="Modeling",
        section="Inverse Kinematics",
        text=(
            "### Inverse Kinematics\n\nFind joint angles given a desired foot position.\n\n"
            "Analytical IK for a 2-DOF leg:\n\n```python\ndef leg_ik(foot_x, foot_z):\n"
            '    """Compute hip and knee angles from the desired foot position"""\n'
            "    d = (foot_x**2 + foot_z**2) ** 0.5\n    return hip(d), knee(d)\n```\n"
        ),
    )
    for question in (
        "how do I get the hip and knee angles that put the foot at a given spot?",
        "for a two-joint leg, how do I get the hip and knee angles that put the foot there?",
    ):
        assert "def leg_ik" in OfflineGenerator().compose(question, [block]), question


def test_a_section_of_one_intro_line_and_code_can_lead_the_answer() -> None:
    # The best source holds only "…limits:" and code; before, it could not lead, and a
    # word match on another page answered instead.
    saturation = ContextBlock(
        n=1,
        title="Control",
        section="Actuator Saturation",
        text=(
            "### Actuator Saturation\n\nReal motors have torque limits:\n\n"
            "```python\n# Prevent integrator windup: integrate only when not saturated\n"
            "if abs(output) < torque_limit:\n    integral += error * dt\n```\n"
        ),
    )
    elsewhere = ContextBlock(
        n=2,
        title="Chatbots",
        section="Why RAG",
        text="Wrong information about motor torque limits can damage robots.",
    )
    text = OfflineGenerator().compose(
        "What goes wrong with the integral when the motor is maxed out on torque?",
        [saturation, elsewhere],
    )
    body = text[len(OFFLINE_LABEL) :].lstrip()
    assert body.startswith("Real motors have torque limits [1]:")
    assert "integral += error * dt" in text


def test_a_question_about_a_setting_is_shown_the_configuration() -> None:
    # "Pose update" ends with the YAML that holds the teleoperation limits; the sentence
    # that introduces it says no more than that a file exists.
    block = _sample_section("02-motion/01-differential-drive.md", "## Pose update", n=1)
    question = "Which setting limits how fast the robot drives under teleoperation?"
    text = OfflineGenerator().compose(question, [block])
    assert "```yaml" in text and "max_linear: 0.5" in text
    # Not every question is about configuration: the kinematics are prose.
    prose = OfflineGenerator().compose("How is the robot's pose updated?", [block])
    assert "```yaml" not in prose


def test_an_exercise_question_is_not_an_answer_and_an_intro_keeps_its_list() -> None:
    # The lab's report questions rank first for "double the D gain" ("…when you double
    # Kd?"); the answer is the tuning section's, and its "Then set" (no colon) runs into
    # the list of gains, so it is never quoted alone.
    report = _sample_section("05-practice/01-line-follower-lab.md", "## Questions for your report")
    tuning = _sample_section("02-motion/02-pid-control.mdx", "## Tuning with Ziegler", n=2)
    text = OfflineGenerator().compose("if I double the D gain what happens?", [report, tuning])
    body = text[len(OFFLINE_LABEL) :]
    assert "?" not in body and "[2]" in body
    assert "Then set [2]" not in body
    units = _readable_units(tuning.text)
    then_set = next(u for u in units if u.segment.text.startswith("Then set"))
    assert [b.text for b in then_set.bullets][:1] == ["Kp = 0.6 · Ku"]


def test_a_quizs_list_of_questions_is_never_quoted_as_the_answer() -> None:
    # "…both wheels turn 10 full times?" matches quiz question 3 ("Both wheels turn at
    # 10 rad/s …"). Its continuation used to run on into questions 3–5 ("What are v and
    # ω?", "Which PID term …?", "Name two reasons …"): prompts that answer nothing. Under
    # a "Questions" heading they are side text, and a continuation stops at a question.
    quiz = _sample_section("05-practice/02-quiz.md", "## Questions", title="Self-Check Quiz")
    answers = _sample_section("05-practice/02-quiz.md", "## Answers", title="Self-Check Quiz", n=2)
    kinematics = _sample_section("02-motion/01-differential-drive.md", "## Forward kin", n=3)
    question = "how far does my robot go if both wheels turn 10 full times?"
    alone = OfflineGenerator().compose(question, [quiz])[len(OFFLINE_LABEL) :]
    assert "?" not in alone and "Name two reasons" not in alone, alone
    # With the quiz's answers retrieved too, the answer quotes them, not the prompts.
    body = OfflineGenerator().compose(question, [quiz, answers, kinematics])[len(OFFLINE_LABEL) :]
    assert "the robot drives straight [2]" in body and "?" not in body, body
    assert is_side_section("Questions") and is_side_section("Questions for your report")
    assert not is_side_section("Frequently asked questions")


def test_a_how_far_question_gets_the_figure_in_its_units() -> None:
    # The range is a bullet that shares no word with "how far … see", and other sentences
    # of the section carry numbers in other units (Hz, degrees, ranges per scan).
    specs = _sample_section("01-sensors/01-lidar.md", "## Scan geometry and specifications")
    text = OfflineGenerator().compose("How far can a typical lidar see?", [specs])
    assert "indoor units reach 12–30 m" in text
    # Inside another question "how far" is not what is asked.
    from bookchat.llm.offline import _QUANTITY_Q_RE

    assert _QUANTITY_Q_RE.search("how does a scanner tell how far away a wall is?") is None
    assert _QUANTITY_Q_RE.search("is it faster? by how much?") is not None


def test_an_intro_ending_as_follows_is_kept_with_its_code() -> None:
    # "…is as follows:" / "…below:" would be a sentence cut short, but not before code.
    block = ContextBlock(
        n=1,
        title="Fusion",
        section="Outlier rejection",
        text=(
            "### Outlier rejection\n\nThe outlier gate for lidar readings is as follows:\n\n"
            "```python\nif mahalanobis(z, h_x, S) < 6.0:\n    ekf.update(z)\n```\n"
        ),
    )
    text = OfflineGenerator().compose("How do I ignore crazy lidar readings?", [block])
    assert "The outlier gate for lidar readings is as follows [1]:" in text
    assert "ekf.update(z)" in text


class _MeaningEncoder:
    """A stand-in sentence encoder: texts that mention `close` point the question's way."""

    def __init__(self, close: str) -> None:
        self.close = close
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        _question, *units = texts
        return [[1.0, 0.0], *([0.8, 0.6] if self.close in t else [0.0, 1.0] for t in units)]


# The reader's words share nothing with the section that answers ("the light travels to
# the target and back"), only with an unrelated page.
SYMPTOM = "My range reading is only half of the whole flight, what happened on the path?"
ROUND_TRIP = ContextBlock(
    n=2,
    title="Lidar",
    section="Time-of-flight principle",
    text=(
        "The sensor emits a short infrared pulse and measures the time t until the reflection "
        "returns. Because the light travels to the target and back, the distance is "
        "d = c · t / 2."
    ),
)
UNRELATED = ContextBlock(
    n=1,
    title="Odometry",
    section="Wheel odometry",
    text="Odometry reads the wheel encoders at every step to estimate the path of the robot.",
)


async def test_a_local_encoder_finds_the_sentence_that_answers_in_other_words() -> None:
    context = [UNRELATED, ROUND_TRIP]
    words_only = OfflineGenerator().compose(SYMPTOM, context)
    assert "travels to the target and back" not in words_only  # no shared word: not found
    encoder = _MeaningEncoder(close="travels to the target and back")
    request = PromptBuilder("Robots").build(SYMPTOM, context)
    events = [e async for e in OfflineGenerator(encoder=encoder).stream(request)]
    text = "".join(e.text for e in events if isinstance(e, TokenDelta))
    assert "travels to the target and back, the distance is d = c · t / 2 [2]" in text
    # The question and each candidate sentence once; a second answer encodes the question only.
    assert encoder.calls[0][0] == SYMPTOM and len(encoder.calls[0]) > 2
    _ = [e async for e in OfflineGenerator(encoder=encoder).stream(request)]
    generator = OfflineGenerator(encoder=encoder)
    _ = [e async for e in generator.stream(request)]
    _ = [e async for e in generator.stream(request)]
    assert encoder.calls[-1] == [SYMPTOM]


async def test_the_encoder_never_reads_a_selection() -> None:
    encoder = _MeaningEncoder(close="travels")
    request = PromptBuilder("Robots").build("Why is it divided by two?", [ROUND_TRIP])
    selection = msgspec.structs.replace(request, selection=True)
    events = [e async for e in OfflineGenerator(encoder=encoder).stream(selection)]
    assert "travels to the target and back" in "".join(
        e.text for e in events if isinstance(e, TokenDelta)
    )
    assert encoder.calls == []


def test_a_list_item_quoted_alone_ends_as_a_sentence() -> None:
    block = ContextBlock(
        n=1,
        title="SLAM",
        section="Graph SLAM",
        text=(
            "Graph SLAM keeps a pose graph.\n\n"
            "- every few tens of centimetres the robot adds a node holding its pose and scan;\n"
            "- consecutive nodes are linked by odometry edges,\n"
        ),
    )
    text = OfflineGenerator().compose("When does the robot add a node with its pose?", [block])
    assert "holding its pose and scan [1]." in text and ";" not in text.split("\n\n", 1)[1]


def _lidar(*headings: str) -> list[ContextBlock]:
    """Sections of the sample book's lidar page, in the given (search) order."""
    return [
        _sample_section("01-sensors/01-lidar.md", heading, n=n, title="Lidar Range Sensing")
        for n, heading in enumerate(headings, start=1)
    ]


def test_a_negated_question_asks_for_the_limitations() -> None:
    # "Why can't it see…?" asks what a lidar cannot do: its limitations section answers,
    # though a question that does not ask about limits is not answered from it.
    context = _lidar("## Scan geometry and specifications", "## Limitations of lidar")
    for question in (
        "why can't my lidar see the glass door of the office?",
        "why cant my lidar see the glass door of the office",
    ):
        answer = OfflineGenerator().compose(question, context)
        assert "Transparent surfaces let the beam pass" in answer, question


def test_a_how_question_gets_the_principle_of_the_page_it_quotes() -> None:
    # No word of the question is in the time-of-flight sentence ("far away" vs
    # "distance"), but the answer quotes the lidar page, whose principle section says how.
    context = _lidar(
        "## Scan geometry and specifications",
        "## Limitations of lidar",
        "## Time-of-flight principle",
    )
    question = "How does a laser scanner tell how far away an obstacle is?"
    answer = OfflineGenerator().compose(question, context)
    assert "measures the time t until the reflection returns [3]" in answer
    # Only from the page the answer quotes: another page's principle is not dragged in.
    other_page = [msgspec.structs.replace(b, title="Sonar") for b in context[2:]]
    answer = OfflineGenerator().compose(question, [*context[:2], *other_page])
    assert "until the reflection returns" not in answer


def test_the_books_overview_of_its_chapters_does_not_answer_for_them() -> None:
    # "What the book covers" names every chapter's topics ("topics, services and …"):
    # it matches many questions and answers none; the chapter's own section does.
    context = [
        _sample_section(
            "index.md", "## What the book covers", title="Foundations of Mobile Robotics"
        ),
        _sample_section(
            "04-software/01-middleware.md", "## Services and actions", n=2, title="Robot Middleware"
        ),
    ]
    question = "Is a topic or a service the right way to send my arm back to its home pose?"
    answer = OfflineGenerator().compose(question, context)
    assert "arm motions are usually actions [2]" in answer
    assert "[1]" not in answer


def _planning(*headings: str) -> list[ContextBlock]:
    """Sections of the sample book's path-planning page, each up to the next heading of
    any level (as the chunker cuts them), in the given (search) order."""
    from bookchat.devtools.evaluation import SAMPLE_DOCS

    text = (SAMPLE_DOCS / "03-navigation/02-planning/01-path-planning.md").read_text("utf-8")
    blocks = []
    for n, heading in enumerate(headings, start=1):
        start = text.index(heading)
        end = text.find("\n#", start + len(heading))
        section = heading.lstrip("# ").split(" {#")[0]
        title = "Path Planning with A* and RRT"
        blocks.append(ContextBlock(n=n, title=title, section=section, text=text[start:end]))
    return blocks


def test_a_definition_question_leads_with_the_sentence_that_defines_it() -> None:
    # BM25 ranks the two-sentence "Weighted A*" section above "The A* algorithm": the
    # answer still opens with "A* adds a heuristic …", read on through its formula.
    context = _planning("### Weighted A*", "## The A* algorithm {#a-star}")
    answer = OfflineGenerator().compose("What is A*?", context)
    body = answer.split("\n\n", 1)[1]
    assert body.startswith("A* adds a heuristic h(n)"), body
    assert "expands the node with the lowest f(n) = g(n) + h(n) [2]." in body
    assert body.index("[2]") < body.index("[1]")
    # A sentence that only mentions the subject ("makes A* greedier") does not lead, and
    # one that opens with it but says nothing ("The integral term.") is no definition.
    pid = _sample_section("02-motion/02-pid-control.mdx", "## Integral term", title="PID")
    quiz = _sample_section("05-practice/02-quiz.md", "## Answers", n=2, title="Quiz")
    answer = OfflineGenerator().compose("What does the integral term do?", [pid, quiz])
    assert answer.split("\n\n", 1)[1].startswith("The I term accumulates the error"), answer


def test_a_formula_is_read_with_the_line_that_names_its_symbols() -> None:
    # "… the distance is\n\n    d = c · t / 2\n\nwhere c ≈ 3 × 10⁸ m/s is the speed of light."
    answer = OfflineGenerator().compose(
        "What is the time-of-flight principle?", _lidar("## Time-of-flight principle")
    )
    assert "the distance is d = c · t / 2, where c ≈ 3 × 10⁸ m/s is the speed of light [1]." in (
        answer
    )
    assert answer.count("where c ≈") == 1


def test_a_sentence_that_matches_only_the_pages_title_does_not_lead() -> None:
    # Every chunk of the page carries its title "Path Planning with A* and RRT": the page's
    # opening sentence shares no word of the question and does not lead the answer.
    context = _planning(
        "# Path Planning with A* and RRT", "## Choosing a planner", "### Weighted A*"
    )
    answer = OfflineGenerator().compose("how is RRT different from A*?", context)
    body = answer.split("\n\n", 1)[1]
    assert not body.startswith("Once the robot knows where it is"), body
    assert "RRT — Complete?: Probabilistically" in body


def test_a_can_question_is_answered_from_the_limitations_too() -> None:
    # "Can a lidar see through glass?" asks what it can and cannot do: the failure-mode list
    # answers it, though the question names no limitation.
    context = _lidar("## Limitations of lidar", "## Scan geometry and specifications")
    answer = OfflineGenerator().compose("can lidar see through glass", context)
    assert "Transparent surfaces let the beam pass" in answer
    # "How can I …" asks how to, not whether: the limitations stay out of a how-to answer.
    assert _CAPABILITY_Q_RE.match("How can I mount a lidar?") is None


def _middleware(*headings: str) -> list[ContextBlock]:
    page = "04-software/01-middleware.md"
    title = "Robot Middleware and Message Passing"
    return [
        _sample_section(page, heading, n=n, title=title)
        for n, heading in enumerate(headings, start=1)
    ]


def test_a_comparison_says_what_each_side_is() -> None:
    # The quality-of-service section names both ("every topic … quality of service") and
    # ranks first; the answer still introduces each: "Topics …" and "A service is …".
    context = _middleware(
        "## Quality of service {#qos}", "## Publish/subscribe topics", "## Services and actions"
    )
    answer = OfflineGenerator().compose(
        "what's the difference between a topic and a service?", context
    )
    assert "Topics suit continuous data streams" in answer, answer
    assert "A service is a request/response call" in answer, answer


def test_what_an_abbreviation_stands_for_is_not_about_standing() -> None:
    from bookchat.devtools.evaluation import SAMPLE_DOCS

    kinematics = _sample_section(
        "02-motion/01-differential-drive.md", "## Forward kinematics", title="Differential Drive"
    )
    page = (SAMPLE_DOCS / "05-practice/01-line-follower-lab.md").read_text("utf-8")
    start = page.index("# Lab: Build a PID Line Follower")
    intro = page[start : page.index("<SafetyChecklist />", start)]  # the lab's opening
    # …and the safety checklist that the ingester expands the MDX component into:
    intro += "Before powering the motors: put the robot on a stand with its wheels off the table."
    lab = ContextBlock(n=2, title="Lab: Build a PID Line Follower", section="", text=intro)
    answer = OfflineGenerator().compose("what does ICR stand for", [kinematics, lab])
    assert "instantaneous centre of rotation (ICR)" in answer
    assert "on a stand" not in answer and "[2]" not in answer, answer


def test_a_code_only_section_named_after_the_question_is_shown() -> None:
    # Technical books often answer with a heading and code alone: "how is a RAG chatbot
    # evaluated?" is answered by the "Evaluation Metrics" code, not by the overview.
    metrics = ContextBlock(
        n=1, title="RAG Chatbots", section="Evaluation Metrics",
        text="### Evaluation Metrics\n\n```python\ndef evaluate_chatbot(questions, expected):\n"
        "    correct = sum(e in chatbot.answer(q) for q, e in zip(questions, expected))\n"
        "    return correct / len(questions)\n```\n",
    )  # fmt: skip
    overview = ContextBlock(
        n=2, title="RAG Chatbots", section="Overview",
        text="## Overview\n\nA RAG chatbot grounds its answers in retrieved passages of a book.",
    )  # fmt: skip
    answer = OfflineGenerator().compose("how is a rag chatbot evaluated", [metrics, overview])
    assert "def evaluate_chatbot" in answer and "Code from [1]" in answer
    # Code whose heading the question does not name stays out of a prose question.
    other = msgspec.structs.replace(metrics, section="Deployment", text=metrics.text.replace(
        "### Evaluation Metrics", "### Deployment"))  # fmt: skip
    assert "def evaluate_chatbot" not in OfflineGenerator().compose(
        "how is a rag chatbot evaluated", [other, overview]
    )
