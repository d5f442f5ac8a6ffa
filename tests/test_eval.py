"""`bookchat eval`: the sample set is the CI gate, and the gate notices when things break."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bookchat.answer import grounding
from bookchat.answer.pipeline import AnswerPipeline
from bookchat.devtools import evaluation
from bookchat.devtools.eval_report import EvalReport, EvalSummary
from bookchat.devtools.evaluation import (
    SAMPLE_DOCS,
    SAMPLE_QUESTIONS,
    EvalError,
    evaluate,
    load_questions,
    main,
    matches,
)
from bookchat.ingest import chunking
from bookchat.ingest import pipeline as ingest
from bookchat.llm.offline import OFFLINE_LABEL

SUMMARY_KEYS = {
    "questions", "in_book", "follow_up", "out_of_book", "selected_text", "recall_at_1",
    "recall_at_3", "recall_at_5", "mrr", "abstention_precision", "abstention_recall",
    "false_abstentions", "contamination", "selection_behaviour_correct", "citations_checked",
    "invalid_citations", "chunks_ingested", "retrieval", "generator", "seconds",
    "answered_at_5", "refusals", "near_out_of_book", "near_abstention", "far_abstention",
    "answer_found", "answer_checked",
}  # fmt: skip
GATE_KEYS = {
    "passed", "failures", "min_answered5", "min_recall5", "min_abstention_recall",
    "min_abstention_precision", "min_answer_found",
}  # fmt: skip
QUESTION_KEYS = {
    "id", "kind", "question", "expected", "top_doc_paths", "rank", "abstained", "grounded",
    "finish_reason", "cited_urls", "cites_expected", "invalid_urls", "contaminated", "passed",
    "problem", "near", "answered", "answer", "has_answer",
}  # fmt: skip


def _run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["--offline", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


async def _sample_report() -> EvalReport:
    return await evaluate(load_questions(SAMPLE_QUESTIONS, SAMPLE_DOCS), SAMPLE_DOCS)


def test_sample_question_set_covers_every_page_and_every_kind() -> None:
    questions = load_questions(SAMPLE_QUESTIONS, SAMPLE_DOCS)
    kinds = [q.kind for q in questions]
    assert len(questions) >= 30
    assert kinds.count("out_of_book") >= 5
    assert kinds.count("selected_text") >= 5
    assert kinds.count("follow_up") >= 3
    expects = {q.expect for q in questions if q.kind == "selected_text"}
    assert {"answer", "not_covered", "short_note"} <= expects
    pages = {page.doc_path for page in chunking.chunk_book(SAMPLE_DOCS, site_url="https://x")}
    for page in pages:
        assert any(matches(page, q.expected[:1]) for q in questions), f"no question for {page}"


async def test_sample_question_set_passes_the_gate() -> None:
    report = await _sample_report()
    s = report.summary
    assert report.gate.passed, report.gate.failures
    assert s.recall_at_5 is not None and s.recall_at_5 >= 0.9
    assert s.abstention_recall == 1.0
    assert s.contamination == 0
    assert s.invalid_citations == 0 and s.citations_checked > 0


def test_eval_cli_prints_one_json_object_with_the_documented_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, data = _run_json(capsys)
    assert code == 0
    assert set(data) == {"summary", "gate", "questions"}
    assert set(data["summary"]) == SUMMARY_KEYS
    assert set(data["gate"]) == GATE_KEYS
    assert all(set(q) == QUESTION_KEYS for q in data["questions"])
    # What the reader got, word for word: an answer quotes the book, a refusal says so.
    by_kind = {q["kind"]: q for q in data["questions"]}
    assert by_kind["in_book"]["answer"].startswith(OFFLINE_LABEL)
    refusal = grounding.abstention_message([]).split(":")[0]  # "I couldn't find this …"
    assert by_kind["out_of_book"]["answer"].startswith(refusal)


def test_eval_cli_runs_with_llm_provider_openai_against_the_fake(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bookchat.llm import factory

    closed: list[factory.ModelClients] = []
    close = factory.ModelClients.aclose

    async def recording_close(clients: factory.ModelClients) -> None:
        closed.append(clients)
        await close(clients)

    monkeypatch.setattr(factory.ModelClients, "aclose", recording_close)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    code = main(["--fake-openai", "--json"])
    data = json.loads(capsys.readouterr().out)

    assert code == 0, data["gate"]
    assert data["summary"]["generator"] == "fake-openai-model"
    assert data["summary"]["retrieval"] == "hybrid"  # embeddings from the fake's /embeddings
    # One set of provider clients, closed on the eval's loop (not left to the GC at exit).
    assert len(closed) == 1 and not closed[0]._openai


def test_eval_cli_prints_a_table_and_fails_above_an_impossible_threshold(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--offline", "--min-recall5", "1.01"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("| id | kind | rank |")
    assert "| **total** (" in out and "gate: FAILED: recall@5" in out


def test_shuffled_chunk_texts_drop_recall_below_the_gate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chunker that puts every text on the wrong page must fail the gate."""
    real_chunk_book = chunking.chunk_book

    def shuffled(docs_root: Path, **kwargs: Any) -> list[chunking.PageChunks]:
        pages = real_chunk_book(docs_root, **kwargs)
        chunks = [c for page in pages for c in page.chunks]
        texts = [c.text for c in chunks]
        random.Random(7).shuffle(texts)
        for page in pages:
            page.chunks[:] = [msgspec.structs.replace(c, text=texts.pop()) for c in page.chunks]
        return pages

    monkeypatch.setattr(ingest, "chunk_book", shuffled)
    code, data = _run_json(capsys)
    assert code == 1
    assert data["summary"]["recall_at_5"] < 0.9
    assert any(f.startswith("recall@5") for f in data["gate"]["failures"])


def test_index_without_chunk_text_fails_the_gate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Chunks indexed with no text (only their headings) must fail the gate, not just dip."""
    real_chunk_book = chunking.chunk_book

    def textless(docs_root: Path, **kwargs: Any) -> list[chunking.PageChunks]:
        pages = real_chunk_book(docs_root, **kwargs)
        for page in pages:
            page.chunks[:] = [msgspec.structs.replace(c, text="") for c in page.chunks]
        return pages

    monkeypatch.setattr(ingest, "chunk_book", textless)
    code, data = _run_json(capsys)
    assert code == 1
    assert data["summary"]["recall_at_5"] < 0.9
    assert data["summary"]["abstention_precision"] < 0.5
    assert data["summary"]["answered_at_5"] < 0.9


def test_fabricated_citation_url_fails_citation_validity(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_citation_for = grounding.citation_for

    def fabricated(n: int, source: grounding.Source) -> grounding.Citation:
        citation = real_citation_for(n, source)
        return msgspec.structs.replace(citation, url=citation.url + "-invented")

    monkeypatch.setattr(grounding, "citation_for", fabricated)
    code, data = _run_json(capsys)
    assert code == 1
    assert data["summary"]["invalid_citations"] > 0
    bad = [q for q in data["questions"] if q["invalid_urls"]]
    assert bad and all(u.endswith("-invented") for q in bad for u in q["invalid_urls"])


def test_selected_text_answer_from_the_store_counts_as_contamination(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A regression that searches the book in selected-text mode must fail the gate."""
    real_prepare = AnswerPipeline.prepare

    async def leaky(self: AnswerPipeline, question: str, **kwargs: object):  # type: ignore[no-untyped-def]
        kwargs["mode"] = "normal"
        return await real_prepare(self, question, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AnswerPipeline, "prepare", leaky)
    code, data = _run_json(capsys)
    assert code == 1
    leaked = [q for q in data["questions"] if q["contaminated"]]
    assert len(leaked) == data["summary"]["contamination"] >= 5
    assert all(q["kind"] == "selected_text" for q in leaked)


def test_an_answered_out_of_book_question_fails_the_abstention_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = tmp_path / "q.json"
    rows = [
        {"id": "in", "question": "Why do glass walls confuse a lidar?", "expected": ["01-sensors"]},
        {
            "id": "mislabelled",
            "out_of_book": True,
            "question": "How does a lidar turn the round-trip time of a pulse into distance?",
        },
    ]
    questions.write_text(json.dumps({"questions": rows}))
    code, data = _run_json(capsys, str(questions))
    assert code == 1
    assert data["summary"]["abstention_recall"] == 0.0
    assert data["questions"][0]["rank"] == 1  # a folder in `expected` matches its pages


def test_answer_found_sees_an_answer_from_the_right_page_that_misses_the_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """answered@5 counts both questions; only the phrase check sees which answer says it."""
    questions = tmp_path / "q.json"
    rows = [
        {
            "id": "tof",
            "question": "How does a lidar turn the round-trip time of a pulse into distance?",
            "expected": ["01-sensors/01-lidar"],
            "answer_has": ["the distance is d = c · t / 2"],
        },
        {
            "id": "wrong-sentence",
            "question": "How does a lidar turn the round-trip time of a pulse into distance?",
            "expected": ["01-sensors/01-lidar"],
            # A real sentence of the lidar page, but not one that answers this question.
            "answer_has": ["certified safety scanners"],
        },
        {
            "id": "plain",
            "question": "Why do glass walls confuse a lidar?",
            "expected": ["01-sensors"],
        },
    ]
    questions.write_text(json.dumps({"questions": rows}))
    code, data = _run_json(capsys, str(questions))
    by_id = {q["id"]: q for q in data["questions"]}
    assert [by_id[i]["answered"] for i in ("tof", "wrong-sentence", "plain")] == [True] * 3
    assert by_id["tof"]["has_answer"] is True
    assert by_id["wrong-sentence"]["has_answer"] is False
    assert by_id["plain"]["has_answer"] is None  # no phrases: not counted
    assert data["summary"]["answer_checked"] == 2
    assert data["summary"]["answer_found"] == 0.5
    assert code == 0  # reported, not gated, by default
    assert main(["--offline", "--min-answer-found", "0.9", str(questions)]) == 1
    assert "gate: FAILED: answer found 0.500 < 0.9" in capsys.readouterr().out


def test_contains_answer_ignores_case_emphasis_citations_and_spacing() -> None:
    answer = (
        "Because the light travels **to the target** and back [1], the distance\n"
        "is d = c · t / 2 [1]."
    )
    assert evaluation.contains_answer(answer, ["Travels to the target and back, the distance"])
    assert evaluation.contains_answer(answer, ["nothing", "the distance is d = c · t / 2"])
    assert not evaluation.contains_answer(answer, ["speed of sound"])
    assert not evaluation.contains_answer(answer, [" "])


def _tiny_book(root: Path) -> Path:
    docs = root / "docs"
    for folder, text in {
        "01-introduction": "# Embodied AI\n\nEmbodied AI gives a model a body with sensors.",
        "02-humanoids": "# Humanoids\n\nThe zero moment point keeps a biped balanced.",
    }.items():
        (docs / folder).mkdir(parents=True)
        (docs / folder / "index.md").write_text(text)
    return docs


async def test_corpus_format_maps_expected_chapter_to_its_folder(tmp_path: Path) -> None:
    docs = _tiny_book(tmp_path)
    corpus = tmp_path / "queries.json"
    queries = [
        {"id": 1, "chapter": 1, "query": "What is embodied AI?", "expected_chapter": 1},
        {"id": 2, "chapter": 2, "query": "What is the zero moment point?", "expected_chapter": 2},
    ]
    corpus.write_text(json.dumps({"test_queries": queries}))
    questions = load_questions(corpus, docs)
    assert [(q.id, q.kind, q.expected) for q in questions] == [
        ("1", "in_book", ["01-introduction"]),
        ("2", "in_book", ["02-humanoids"]),
    ]
    report = await evaluate(questions, docs)
    assert [r.rank for r in report.questions] == [1, 1]
    assert report.summary.abstention_recall is None and report.gate.passed


def test_question_file_errors_are_reported_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_expected = tmp_path / "bad.json"
    missing_expected.write_text(json.dumps({"questions": [{"id": "a", "question": "Why?"}]}))
    with pytest.raises(EvalError, match="needs `expected`"):
        load_questions(missing_expected, SAMPLE_DOCS)
    assert evaluation.main(["--offline", str(missing_expected)]) == 2
    assert "needs `expected`" in capsys.readouterr().err
    corpus = tmp_path / "corpus.json"
    missing = [{"id": 1, "query": "q", "expected_chapter": 9}]
    corpus.write_text(json.dumps({"test_queries": missing}))
    with pytest.raises(EvalError, match="no folder 09-"):
        load_questions(corpus, SAMPLE_DOCS)


# The reader-phrased sets gate CI: the calibration set at the 0.90 target (measured
# 0.912, BM25), the held-out set as a regression floor under its measured 0.842 (the
# target there, within 0.05 of the calibration set, is not reached with BM25 alone; see
# the README's measured results).
READER_FLOOR = {"reader_questions.json": 0.9, "reader_questions_heldout.json": 0.8}
# "answer found" (the answer contains a phrase of the book's answering sentence), a
# regression floor under the measured levels (BM25: 0.618 and 0.526).
ANSWER_FOUND_FLOOR = {"reader_questions.json": 0.55, "reader_questions_heldout.json": 0.45}


async def _sample_set(name: str) -> EvalSummary:
    """The offline eval of one of the sample book's question files."""
    path = SAMPLE_DOCS.parent / name
    return (await evaluate(load_questions(path, SAMPLE_DOCS), SAMPLE_DOCS)).summary


@pytest.mark.parametrize("name", sorted(READER_FLOOR))
async def test_reader_phrased_questions_are_answered_not_refused(name: str) -> None:
    summary = await _sample_set(name)
    assert summary.answered_at_5 is not None and summary.answered_at_5 >= READER_FLOOR[name]
    assert summary.refusals <= 1
    assert summary.far_abstention == 1.0  # every far out-of-book question refused
    assert summary.invalid_citations == 0
    # Every answerable question carries its answering phrases, and enough answers say them.
    assert summary.answer_checked == summary.in_book + summary.follow_up
    assert summary.answer_found is not None and summary.answer_found >= ANSWER_FOUND_FLOOR[name]


# Measured (BM25) 1.000, 1.000 and 1.000; 0.750, 0.500 and 0.833 when a pronoun always
# pointed back, one content word always made a follow-up, and a follow-up's walk back
# went past the question that changed the subject (0.833 for the second set while a lone
# name, "dijkstra?", was read as a follow-up).
SWITCH_FLOOR = {
    "reader_questions_switch.json": 0.9,
    "reader_questions_switch2.json": 0.9,
    "reader_questions_switch3.json": 0.9,
}


@pytest.mark.parametrize("name", sorted(SWITCH_FLOOR))
async def test_a_reader_who_changes_the_subject_is_answered_on_the_new_one(name: str) -> None:
    # Every question follows one on another topic, or is a short real follow-up.
    summary = await _sample_set(name)
    assert summary.answered_at_5 is not None and summary.answered_at_5 >= SWITCH_FLOOR[name]
    assert summary.refusals == 0
    assert summary.abstention_recall == 1.0  # out of book, near the book's topics too


async def test_questions_with_misspelt_key_words_are_answered() -> None:
    # Written before the spelling correction and run blind: 0.727 with 3 refusals
    # (BM25); 0.909 with 1 once the misspelt word is read as the book's. Every
    # out-of-book question, typos and all, is still refused.
    summary = await _sample_set("reader_questions_fresh7.json")
    assert summary.answered_at_5 is not None and summary.answered_at_5 >= 0.85
    assert summary.refusals <= 1
    assert summary.abstention_recall == 1.0


async def test_conversations_with_lone_words_and_typos_keep_their_topic() -> None:
    # Written after this session's follow-up and spelling rules and run blind against
    # them: 1.000 with no refusal (BM25 and local); 0.812 with 2 refusals before them.
    summary = await _sample_set("reader_questions_fresh9.json")
    assert summary.answered_at_5 is not None and summary.answered_at_5 >= 0.9
    assert summary.refusals == 0
    assert summary.far_abstention == 1.0


# Sets written blind by a helper who read only the book, with no refusal allowed: floors
# for answered@5 and "answer found", and whether near out-of-book questions must be
# refused too (far ones always are).
# - fresh10 (session 15: reported symptoms, casual words): 0.750 with 1 refusal (BM25);
#   then a reader's report of trouble ("my robot keeps getting stuck …") is answered from
#   the section saying what goes wrong, and a word made from an everyday one ("zigzaggy")
#   is not taken for a name: 0.900, no refusal, answer found 0.55.
# - fresh13 (session 16: missing articles, quoted figures and symbols, how-many
#   questions, procedures), never used to change anything: 0.958, no refusal, every
#   out-of-book question refused, answer found 0.71.
BLIND_FLOOR = {
    "reader_questions_fresh10.json": (0.85, 0.45, False),
    "reader_questions_fresh13.json": (0.9, 0.6, True),
}


@pytest.mark.parametrize("name", sorted(BLIND_FLOOR))
async def test_blind_reader_sets_are_answered(name: str) -> None:
    answered, found, near_refused = BLIND_FLOOR[name]
    summary = await _sample_set(name)
    assert summary.answered_at_5 is not None and summary.answered_at_5 >= answered
    assert summary.refusals == 0
    assert summary.far_abstention == 1.0
    if near_refused:
        assert summary.abstention_recall == 1.0
    assert summary.answer_checked == summary.in_book + summary.follow_up
    assert summary.answer_found is not None and summary.answer_found >= found


async def test_selected_text_questions_in_the_readers_words_are_answered() -> None:
    # 24 questions on highlighted passages, written blind by a helper (session 16): 16
    # about the passage in the reader's words, 8 about something else. Run blind, 13 of
    # 24 behaved (5 of the 16 answered, all 8 declined); 23 since a question that shares a
    # word with the passage, or points at it, is about it. The store is never touched.
    summary = await _sample_set("selection_questions_fresh.json")
    assert summary.selected_text == 24
    assert summary.selection_behaviour_correct >= 22
    assert summary.contamination == 0
