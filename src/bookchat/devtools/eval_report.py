"""Results of `bookchat eval`: per-question outcomes, overall metrics, the gate, the table.

Metric definitions are in `bookchat.devtools.evaluation`'s module docs; this module only counts
and renders, so it can be tested on hand-made results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import msgspec

__all__ = [
    "EvalReport",
    "EvalSummary",
    "Gate",
    "Kind",
    "QuestionResult",
    "Thresholds",
    "check_gate",
    "render_table",
    "summarise",
]

Kind = Literal["in_book", "follow_up", "out_of_book", "selected_text"]


class QuestionResult(msgspec.Struct, kw_only=True):
    """The outcome of one question; `rank` is the first matching hit (1-based) or None."""

    id: str
    kind: Kind
    question: str
    near: bool = False  # an out-of-book question near the book's topics
    expected: list[str]
    top_doc_paths: list[str]
    rank: int | None
    abstained: bool
    grounded: bool
    finish_reason: str
    cited_urls: list[str]
    cites_expected: bool | None  # an answered in-book question cites an expected page
    # What the reader got: answered (not refused) *and* an expected page among the sources
    # the answer shows. None for out-of-book and selected-text questions.
    answered: bool | None = None
    # Answered@5 and the answer contains one of the question's `answer_has` phrases; None
    # when the question has none (or is not answerable).
    has_answer: bool | None = None
    invalid_urls: list[str]
    contaminated: bool
    passed: bool
    problem: str  # why it did not pass ("" when it did)
    answer: str = ""  # the text the reader got (in `--json`; the table leaves it out)


class EvalSummary(msgspec.Struct, kw_only=True):
    """Overall metrics; a rate is None when no question measures it."""

    questions: int
    in_book: int
    follow_up: int
    out_of_book: int
    selected_text: int
    answered_at_5: float | None  # the headline: answerable questions the reader got answered
    refusals: int  # answerable (in-book, follow-up) questions refused
    # Of the answerable questions with `answer_has` phrases: answered@5 with one of them.
    answer_found: float | None = None
    answer_checked: int = 0  # how many questions carry `answer_has`
    recall_at_1: float | None
    recall_at_3: float | None
    recall_at_5: float | None
    mrr: float | None
    abstention_precision: float | None
    abstention_recall: float | None
    near_out_of_book: int
    near_abstention: float | None  # refused share of the out-of-book questions marked near
    far_abstention: float | None
    false_abstentions: int
    contamination: int
    selection_behaviour_correct: int
    citations_checked: int
    invalid_citations: int
    chunks_ingested: int
    retrieval: str
    generator: str
    seconds: float


class Thresholds(msgspec.Struct, kw_only=True, frozen=True):
    """The gate's limits (CLI: --min-answered5, --min-recall5, --min-abstention-*)."""

    min_answered5: float = 0.9
    min_recall5: float = 0.9
    min_abstention_recall: float = 1.0
    # Loose on purpose: it catches an index that lost its text (every answer abstains),
    # while the few paraphrases the lexical relevance gate rejects stay visible, not fatal.
    min_abstention_precision: float = 0.5
    # Reported, not gated, unless asked: few question sets carry `answer_has` phrases.
    min_answer_found: float = 0.0


class Gate(msgspec.Struct, kw_only=True):
    """Whether the report meets the thresholds, and which it misses."""

    passed: bool
    failures: list[str]
    min_answered5: float
    min_recall5: float
    min_abstention_recall: float
    min_abstention_precision: float
    min_answer_found: float = 0.0


class EvalReport(msgspec.Struct, kw_only=True):
    """What `bookchat eval --json` prints."""

    summary: EvalSummary
    gate: Gate
    questions: list[QuestionResult]


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def summarise(
    results: Sequence[QuestionResult],
    *,
    chunks: int,
    retrieval: str,
    generator: str,
    seconds: float,
) -> EvalSummary:
    """Overall metrics from per-question results (see the module docs for definitions)."""
    by_kind = Counter(r.kind for r in results)
    ranked = [r for r in results if r.kind in ("in_book", "follow_up")]
    oob = [r for r in results if r.kind == "out_of_book"]
    normal = [r for r in results if r.kind != "selected_text"]
    selected = [r for r in results if r.kind == "selected_text"]
    abstained = [r for r in normal if r.abstained]
    false_abstentions = sum(1 for r in ranked if r.abstained)

    def recall(k: int) -> float | None:
        return _rate(sum(1 for r in ranked if r.rank is not None and r.rank <= k), len(ranked))

    mrr = round(sum(1 / r.rank for r in ranked if r.rank) / len(ranked), 4) if ranked else None
    near = [r for r in oob if r.near]
    far = [r for r in oob if not r.near]
    checked = [r for r in ranked if r.has_answer is not None]
    return EvalSummary(
        answer_found=_rate(sum(1 for r in checked if r.has_answer), len(checked)),
        answer_checked=len(checked),
        answered_at_5=_rate(sum(1 for r in ranked if r.answered), len(ranked)),
        refusals=false_abstentions,
        near_out_of_book=len(near),
        near_abstention=_rate(sum(1 for r in near if r.abstained), len(near)),
        far_abstention=_rate(sum(1 for r in far if r.abstained), len(far)),
        questions=len(results), in_book=by_kind["in_book"], follow_up=by_kind["follow_up"],
        out_of_book=len(oob), selected_text=len(selected), recall_at_1=recall(1),
        recall_at_3=recall(3), recall_at_5=recall(5), mrr=mrr,
        abstention_precision=_rate(len(abstained) - false_abstentions, len(abstained)),
        abstention_recall=_rate(sum(1 for r in oob if r.abstained), len(oob)),
        false_abstentions=false_abstentions,
        contamination=sum(1 for r in selected if r.contaminated),
        selection_behaviour_correct=sum(1 for r in selected if r.passed),
        citations_checked=sum(len(r.cited_urls) for r in normal),
        invalid_citations=sum(len(r.invalid_urls) for r in results),
        chunks_ingested=chunks, retrieval=retrieval, generator=generator, seconds=round(seconds, 3),
    )  # fmt: skip


def check_gate(summary: EvalSummary, limits: Thresholds) -> Gate:
    """Which thresholds the summary misses.

    A metric with no questions is not gated, and abstention precision only when the set
    has out-of-book questions (a set without them has nothing to trade precision against).
    """
    failures: list[str] = []
    precision = summary.abstention_precision if summary.out_of_book else None
    for name, value, minimum in (
        ("answered@5", summary.answered_at_5, limits.min_answered5),
        ("recall@5", summary.recall_at_5, limits.min_recall5),
        ("abstention recall", summary.abstention_recall, limits.min_abstention_recall),
        ("abstention precision", precision, limits.min_abstention_precision),
        ("answer found", summary.answer_found, limits.min_answer_found),
    ):
        if value is not None and value < minimum:
            failures.append(f"{name} {value:.3f} < {minimum}")
    if summary.contamination:
        failures.append(f"{summary.contamination} selected-text answer(s) contaminated")
    if summary.invalid_citations:
        failures.append(f"{summary.invalid_citations} cited URL(s) not in the ingested book")
    return Gate(passed=not failures, failures=failures, **msgspec.structs.asdict(limits))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_table(report: EvalReport) -> str:
    """A Markdown table, one row per question, then the totals and the gate."""
    rows = [
        "| id | kind | rank | R@1 | R@3 | R@5 | RR | outcome | answered | has answer | ok "
        "| problem |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.questions:
        ranked = r.kind in ("in_book", "follow_up")
        marks = [("1" if r.rank and r.rank <= k else "0") if ranked else "" for k in (1, 3, 5)]
        rr = (f"{1 / r.rank:.2f}" if r.rank else "0") if ranked else ""
        if r.abstained:
            outcome = "abstained"
        elif r.grounded:
            outcome = "answered"
        else:
            outcome = "not covered" if r.kind == "selected_text" else r.finish_reason
        problem = r.problem.replace("|", "\\|")
        answered = "" if r.answered is None else ("yes" if r.answered else "NO")
        has = "" if r.has_answer is None else ("yes" if r.has_answer else "NO")
        kind = f"{r.kind} (near)" if r.near else r.kind
        rows.append(
            f"| {r.id} | {kind} | {r.rank or '-'} | {' | '.join(marks)} | {rr} | {outcome} "
            f"| {answered} | {has} | {'yes' if r.passed else 'NO'} | {problem} |"
        )
    s = report.summary
    passed = sum(r.passed for r in report.questions)
    rows.append(
        f"| **total** ({s.questions}) | | | {_fmt(s.recall_at_1)} | {_fmt(s.recall_at_3)} "
        f"| {_fmt(s.recall_at_5)} | {_fmt(s.mrr)} | | {_fmt(s.answered_at_5)} "
        f"| {_fmt(s.answer_found)} | {passed} ok | |"
    )
    lines = [
        "\n".join(rows),
        "",
        f"questions {s.questions}: in-book {s.in_book}, follow-up {s.follow_up}, "
        f"out-of-book {s.out_of_book}, selected-text {s.selected_text}",
        f"answered@5 {_fmt(s.answered_at_5)} (what the reader got: answered and citing an "
        f"expected page)  refusals of answerable questions {s.refusals}",
        f"answer found {_fmt(s.answer_found)} (of {s.answer_checked} questions with "
        f"`answer_has` phrases: answered@5 and the answer contains one)",
        f"out-of-book refused {_fmt(s.abstention_recall)}: near the book's topics "
        f"{_fmt(s.near_abstention)} ({s.near_out_of_book}), far {_fmt(s.far_abstention)}",
        f"retrieval diagnostics: recall@1 {_fmt(s.recall_at_1)}  recall@3 {_fmt(s.recall_at_3)}  "
        f"recall@5 {_fmt(s.recall_at_5)}  MRR@5 {_fmt(s.mrr)}",
        f"abstention precision {_fmt(s.abstention_precision)}  recall "
        f"{_fmt(s.abstention_recall)}  false abstentions {s.false_abstentions}",
        f"contamination {s.contamination}  selected-text behaviour "
        f"{s.selection_behaviour_correct}/{s.selected_text}",
        f"citations checked {s.citations_checked}, invalid {s.invalid_citations}",
        f"{s.chunks_ingested} chunks, retrieval {s.retrieval}, generator {s.generator}, "
        f"{s.seconds:.2f} s",
        "gate: passed"
        if report.gate.passed
        else "gate: FAILED: " + "; ".join(report.gate.failures),
    ]
    return "\n".join(lines)
