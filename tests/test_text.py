"""Text analysis: stemming, content terms, Markdown-aware sentence splitting."""

from __future__ import annotations

from bookchat.text import (
    content_terms,
    content_words,
    segments,
    split_sentences,
    stem,
    strip_markdown,
)


def test_stemmer_conflates_inflections() -> None:
    # The BM25 index's own analysis: the same term as the index for every inflection.
    assert stem("limitations") == stem("limits") == stem("limitation") != stem("lidar")
    assert stem("embodied") == stem("embodiment")
    assert stem("running") == stem("run")
    assert stem("ros2") == "ros2"  # words with digits are kept as they are


def test_content_terms_drop_question_words_and_stopwords() -> None:
    # "how it works" is question phrasing, not the topic.
    assert content_terms("What is embodied AI? Explain how it works.") == [
        stem("embodied"),
        "ai",
    ]
    assert content_terms("Describe what this does") == []


def test_content_words_keep_surface_forms_and_drop_negated_auxiliaries() -> None:
    assert content_words("Why won't the robot's motors start?") == ["robot", "motors", "start"]


def test_sentences_respect_abbreviations_decimals_and_inline_code() -> None:
    text = (
        "Sensors, e.g. cameras, are noisy. The gain is 0.5 by default. "
        "Call `rclpy.init()` first. Then spin the node!"
    )
    assert split_sentences(text) == [
        "Sensors, e.g. cameras, are noisy.",
        "The gain is 0.5 by default.",
        "Call rclpy.init() first.",
        "Then spin the node!",
    ]


def test_a_numbered_bold_label_is_not_a_sentence_of_its_own() -> None:
    # "**3. Safety Measures**:" split after "3." left "**3" as a sentence ("**3 [1].").
    text = "**3. Safety Measures**: Limit joint velocities. It costs 3. Then stop."
    assert split_sentences(text) == [
        "3. Safety Measures: Limit joint velocities.",
        "It costs 3.",
        "Then stop.",
    ]


def test_segments_keep_code_whole_and_split_lists_tables_headings() -> None:
    text = (
        "## Nodes {#nodes}\n\n"
        "A **node** is a [process](/docs/p). It runs one task.\n\n"
        "- **Small**: easy to test\n"
        "- Reusable across robots\n\n"
        "```python\nnode = Node('a')\nprint('x. Y')\n```\n\n"
        "| Feature | ROS1 | ROS2 |\n|---|---|---|\n| Security | None | DDS |\n"
    )
    segs = segments(text)
    kinds = [s.kind for s in segs]
    assert kinds == ["heading", "prose", "prose", "bullet", "bullet", "code", "table_row"]
    assert segs[0].text == "Nodes"
    assert segs[1].text == "A node is a process."
    assert segs[3].text == "Small: easy to test"
    assert segs[5].text.startswith("```python") and "print('x. Y')" in segs[5].text
    assert segs[6].text == "Security — ROS1: None; ROS2: DDS."
    assert "node = Node" not in " ".join(split_sentences(text))


def test_strip_markdown_removes_syntax_but_keeps_words() -> None:
    raw = "**Bold** _it_ `code` [link](http://x) ![img](a.png) <Tabs>kept</Tabs> ~~old~~"
    assert strip_markdown(raw) == "Bold it code link kept old"


def test_names_spelt_with_symbols_are_one_word_each() -> None:
    from bookchat.text import spell_symbols, tokenize

    assert tokenize("What is A*?") == ["what", "is", "astar"]
    assert tokenize("Is RRT* better than D* Lite?") == [
        "is", "rrtstar", "better", "than", "dstar", "lite",
    ]  # fmt: skip
    assert tokenize("a-star or A-Star") == ["astar", "or", "astar"]
    assert tokenize("C++ and C# on a microcontroller")[:3] == ["cplusplus", "and", "csharp"]
    # Markdown emphasis is not a starred name, and arithmetic is left alone.
    assert spell_symbols("it is *admissible*, in *Isaac Sim*") == "it is admissible, in Isaac Sim"
    assert spell_symbols("A* adds a **heuristic**") == "Astar adds a **heuristic**"
    assert spell_symbols("2*3 = f(n)*2") == "2*3 = f(n)*2"
    assert spell_symbols("char* name; void* p") == "char* name; void* p"  # C pointers


def test_an_escaped_star_is_a_literal_star() -> None:
    from bookchat.text import tokenize

    # Markdown source of the sample book: "**RRT\*** rewires the tree".
    assert strip_markdown("**RRT\\*** rewires the tree") == "RRT* rewires the tree"
    assert tokenize("**RRT\\*** rewires")[:1] == ["rrtstar"]
    assert strip_markdown("a `file\\.txt` here") == "a file\\.txt here"  # code is literal


def test_character_references_are_their_characters_outside_code() -> None:
    # MDX makes authors write "&lt;"; the site shows "<", and so must answers and the index.
    assert strip_markdown("target: &lt;120 s, &gt;90% &amp; up&#8212;ok") == (
        "target: <120 s, >90% & up\u2014ok"
    )
    assert strip_markdown("write `&lt;` for <") == "write &lt; for <"  # code is literal
    assert strip_markdown("R&D and AT&T; &notanentity") == "R&D and AT&T; &notanentity"


def test_symbol_names_are_the_words_made_of_symbols() -> None:
    from bookchat.text import symbol_names

    assert symbol_names("How does D* differ from A* in C++?") == {"dstar", "astar", "cplusplus"}
    assert symbol_names("**bold**, 2*3 and a plain question") == frozenset()


def test_comparison_sides_are_the_words_next_to_the_comparison() -> None:
    from bookchat.text import comparison_sides

    assert comparison_sides("what's the difference between a topic and a service?") == (
        ("topic",),
        ("service",),
    )
    assert comparison_sides("When should I use a service vs a topic in ROS2?") == (
        ("service",),
        ("topic",),
    )
    assert comparison_sides("how is RRT different from A*?") == (("rrt",), ("astar",))
    assert comparison_sides("A* compared with Dijkstra") == (("astar",), ("dijkstra",))
    # A side that ends (or starts) on a function word is a clause, not a thing's name.
    assert comparison_sides("the difference between sensors that look at it and others") is None
    assert comparison_sides("What is a topic?") is None


def test_opens_with_reads_a_sentence_about_the_subject_not_a_label() -> None:
    from bookchat.text import opens_with

    assert opens_with("A* adds a heuristic h(n) to the cost.", ("astar",))
    assert opens_with("Services provide synchronous communication.", ("service",))
    assert opens_with("The integral term removes the error.", ("integral", "term"))
    assert not opens_with("Weighted A* makes A* greedier.", ("astar",))
    assert not opens_with("Topic: /imu/data at 200 Hz", ("topic",))
    assert not opens_with("A* — Complete?: Yes", ("astar",))


def test_contractions_typed_without_their_apostrophe_are_function_words() -> None:
    assert content_words("whats wrong, why doesnt my robot turn? its wheels dont spin") == [
        "wrong",
        "robot",
        "turn",
        "wheels",
        "spin",
    ]
