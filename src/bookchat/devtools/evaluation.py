"""Answer quality on a question set: `bookchat eval [QUESTIONS] [--docs PATH] [--json] ...`.

The book is ingested into a temporary embedded store (BM25 only, or hybrid when Gemini
is configured) and every question goes through the real `Retriever` and `AnswerPipeline`
(the offline extractive answerer, or Gemini). Exit code 1 when a gate fails, 2 on bad
input, so CI can gate the sample set.

Question file (the sample book's is `sample_book/questions.json`)::

    {"name": "...", "questions": [
      {"id": "lidar-glass", "question": "Why do glass walls confuse a lidar?",
       "expected": ["01-sensors/01-lidar"]},                        # in-book
      {"id": "f1", "history": ["How does a lidar measure distance?"],
       "question": "What are its limitations?", "expected": ["01-sensors/01-lidar"]},
      {"id": "o1", "out_of_book": true, "question": "What is the capital of France?"},
      {"id": "s1", "question": "Why?", "selection": "<text from the book>",
       "source_doc_path": "...", "source_section": "...",
       "expect": "answer" | "not_covered" | "short_note"}         # selected text
    ]}

The kind follows from the fields: `selection` → selected-text, `out_of_book` →
out-of-book, `history` → follow-up (the earlier questions are asked first and their
answers become the conversation), else in-book. `expected` lists acceptable doc_paths
(relative, no extension); a hit matches when its doc_path equals one or lies inside it
(`"01-sensors"` matches the whole folder). An in-book or follow-up question may carry
`"answer_has": ["d = c · t / 2", ...]`: verbatim phrases of the sentence(s) on its
expected pages that answer it (compared case-insensitively, ignoring emphasis, citation
marks and spacing). The corpus format
`{"test_queries": [{"id", "query", "expected_chapter": N}]}` is accepted too: N means
the docs folder whose name starts with `0N-`.

Metrics (the retrieval uses the pipeline's default top_k = 5):
- **answered@5**, the headline: the share of in-book and follow-up questions whose answer
  was given (not a refusal) *and* cites an expected page among the sources shown to the
  reader (`done.citations`). A refusal of an answerable question is a miss, listed per
  question; so is an answer that cites only other pages. This is what a reader gets, which
  retrieval recall cannot see (recall counts hits even when the answer refused);
- answer found: of the answerable questions annotated with `answer_has` (phrases of the
  book's answering sentences), the share answered@5 whose answer contains one of them.
  answered@5 cannot tell an answer that quotes the right page's specification table from
  one that quotes the sentence that answers; this can (`--min-answer-found`, default 0:
  reported, not gated);
- out-of-book abstention, reported separately for questions marked `"near": true` (out of
  the book but near its topics) and for the others;
- recall@1/3/5 and MRR@5 (retrieval diagnostics) over in-book and follow-up questions: a
  question counts when any of its top-k hits matches (the expected pages are alternatives);
- abstention precision/recall: "abstained" means the answer is the pipeline's
  non-answer (`grounded=False`, `finish_reason="abstained"`) or retrieval judged the
  hits not relevant; precision is over every normal-mode question that abstained;
- contamination: a selected-text question that touched the store or the embedder (both
  are wrapped in counting proxies), or whose citations name anything but the selection;
- citation validity: every URL cited by an answer must be the `url` of a chunk written
  to the store during ingestion, or of a heading recorded in its `sections`.

`--json` prints one object: `summary` (answered_at_5, refusals, answer_found,
answer_checked, questions, in_book,
follow_up, out_of_book, near_out_of_book, near_abstention, far_abstention, selected_text,
recall_at_1, recall_at_3, recall_at_5, mrr, abstention_precision,
abstention_recall, false_abstentions, contamination, selection_behaviour_correct,
citations_checked, invalid_citations, chunks_ingested, retrieval, generator, seconds),
`gate` (passed, failures, min_answered5, min_recall5, min_abstention_recall,
min_abstention_precision, min_answer_found) and `questions` (one object per question, see
`QuestionResult`). Gates: answered@5 ≥ --min-answered5 (0.9), recall@5 ≥ --min-recall5
(0.9), abstention recall ≥ --min-abstention-recall (1.0), abstention
precision ≥ --min-abstention-precision (0.5: an index without text abstains on
everything; only gated when the set has out-of-book questions), contamination = 0,
invalid citations = 0; a gate whose metric has no questions is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import inspect
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import msgspec

from bookchat.answer.grounding import (
    SELECTION_NOT_COVERED,
    Citation,
    PromptBuilder,
    short_selection_note,
)
from bookchat.answer.pipeline import (
    ABSTAINED,
    SELECTION_TITLE,
    AnswerDone,
    AnswerPipeline,
    Retrieved,
)
from bookchat.devtools.eval_report import (
    EvalReport,
    Kind,
    QuestionResult,
    Thresholds,
    check_gate,
    render_table,
    summarise,
)
from bookchat.llm.base import AnswerGenerator, Embedder, Turn, cited_pages
from bookchat.search.retriever import Retriever
from bookchat.search.types import VectorStore
from bookchat.text import word_count

if TYPE_CHECKING:
    from bookchat.llm.factory import ModelClients
    from bookchat.settings import Settings

__all__ = ["EvalQuestion", "EvalReport", "evaluate", "load_questions", "main", "register"]

PACKAGE_DIR = Path(__file__).parents[1]  # bookchat/
SAMPLE_DOCS = PACKAGE_DIR / "sample_book" / "docs"
SAMPLE_QUESTIONS = PACKAGE_DIR / "sample_book" / "questions.json"
TOP_K = 5
Expect = Literal["answer", "not_covered", "short_note"]


class EvalError(ValueError):
    """The question file or the docs tree cannot be evaluated (message says why)."""


class EvalQuestion(msgspec.Struct, kw_only=True, frozen=True):
    """One question of the sample format (see the module docs for the kinds)."""

    id: str
    question: str
    expected: list[str] = msgspec.field(default_factory=list)
    history: list[str] = msgspec.field(default_factory=list)
    out_of_book: bool = False
    near: bool = False  # out of the book but near its topics (reported apart)
    selection: str | None = None
    source_doc_path: str | None = None
    source_section: str | None = None
    expect: Expect = "answer"
    # Phrases of the book's answering sentence(s); an answer that contains one (see
    # `contains_answer`) says what the question asked, not only something from its page.
    answer_has: list[str] = msgspec.field(default_factory=list)

    @property
    def kind(self) -> Kind:
        """Inferred from the fields: selection, out_of_book, history, else in-book."""
        if self.selection is not None:
            return "selected_text"
        if self.out_of_book:
            return "out_of_book"
        return "follow_up" if self.history else "in_book"


class _SampleFile(msgspec.Struct):
    questions: list[EvalQuestion]


class _CorpusQuery(msgspec.Struct):
    id: int | str
    query: str
    expected_chapter: int


class _CorpusFile(msgspec.Struct):
    test_queries: list[_CorpusQuery]


def _chapter_folder(docs_root: Path, chapter: int) -> str:
    prefix = f"{chapter:02d}-"
    folders = sorted(
        p.name for p in docs_root.iterdir() if p.is_dir() and p.name.startswith(prefix)
    )
    if not folders:
        raise EvalError(f"expected_chapter {chapter}: no folder {prefix}… under {docs_root}")
    return folders[0]


def load_questions(path: Path, docs_root: Path) -> list[EvalQuestion]:
    """Read a question file in the sample or the corpus format; raises `EvalError`."""
    try:
        raw = path.read_bytes()
        data = msgspec.json.decode(raw)
        if isinstance(data, dict) and "test_queries" in data:
            corpus = msgspec.json.decode(raw, type=_CorpusFile)
            return [
                EvalQuestion(
                    id=str(q.id),
                    question=q.query,
                    expected=[_chapter_folder(docs_root, q.expected_chapter)],
                )
                for q in corpus.test_queries
            ]
        questions = msgspec.json.decode(raw, type=_SampleFile).questions
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EvalError(f"{path}: {exc}") from exc
    for q in questions:
        if q.kind in ("in_book", "follow_up") and not q.expected:
            raise EvalError(f"{path}: question {q.id!r} needs `expected` (or out_of_book: true)")
    if len({q.id for q in questions}) != len(questions):
        raise EvalError(f"{path}: question ids must be unique")
    return questions


_MARKUP_RE = re.compile(r"\*\*|__|[*`]|\s*\[\d+\]")


def _plain(text: str) -> str:
    """Lowercase text without Markdown emphasis, citation marks or repeated spaces."""
    return " ".join(_MARKUP_RE.sub("", html.unescape(text)).lower().split())


def contains_answer(answer: str, phrases: Sequence[str]) -> bool:
    """True when `answer` contains one of `phrases` (case, spacing, emphasis ignored)."""
    text = _plain(answer)
    return any(_plain(p) in text for p in phrases if p.strip())


def matches(doc_path: str, expected: Sequence[str]) -> bool:
    """True when `doc_path` is one of `expected` or inside one of them (a folder)."""
    return any(doc_path == e or doc_path.startswith(e.rstrip("/") + "/") for e in expected)


class _Counting:
    """Delegates to a store or embedder and counts every async call (and ingested URLs)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.urls: set[str] = set()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name == "upsert":
                for record in args[0]:
                    # A citation may link any heading inside the chunk (`sections`).
                    self.urls.add(record.payload.url)
                    self.urls.update(s.url for s in record.payload.sections)
            return await attr(*args, **kwargs)

        return counted


async def _answer(
    pipeline: AnswerPipeline, q: EvalQuestion, history: Sequence[Turn]
) -> tuple[Any, Retrieved, AnswerDone]:
    prepared = await pipeline.prepare(
        q.question,
        mode="selected_text_only" if q.selection is not None else "normal",
        selected_text=q.selection,
        source_doc_path=q.source_doc_path,
        source_section=q.source_section,
        history=history,
        top_k=TOP_K,
    )
    events = [event async for event in prepared.stream()]
    retrieved, done = events[0], events[-1]
    assert isinstance(retrieved, Retrieved) and isinstance(done, AnswerDone)
    return prepared.retrieval, retrieved, done


async def _conversation(pipeline: AnswerPipeline, q: EvalQuestion) -> list[Turn]:
    """Ask the earlier questions first so the follow-up carries a real conversation."""
    turns: list[Turn] = []
    for earlier in q.history:
        _, _, done = await _answer(pipeline, EvalQuestion(id="", question=earlier), turns)
        pages = cited_pages(c.doc_path for c in done.citations)
        turns += [Turn(role="user", text=earlier), Turn(role="model", text=done.text, pages=pages)]
    return turns


def _selection_leaks(citations: Sequence[Citation]) -> bool:
    return any(c.url or c.title != SELECTION_TITLE for c in citations)


def _selection_behaviour_ok(q: EvalQuestion, done: AnswerDone) -> bool:
    if q.expect == "not_covered":
        return not done.grounded and done.text.strip() == SELECTION_NOT_COVERED
    answered = done.grounded and done.finish_reason != ABSTAINED
    if q.expect == "short_note":
        return answered and short_selection_note(word_count(q.selection or "")) in done.text
    return answered


async def _run_question(
    q: EvalQuestion, pipeline: AnswerPipeline, store: _Counting, embedder: _Counting | None
) -> QuestionResult:
    history = await _conversation(pipeline, q)
    touched_before = store.total_calls + (embedder.total_calls if embedder else 0)
    retrieval, retrieved, done = await _answer(pipeline, q, history)
    touched = store.total_calls + (embedder.total_calls if embedder else 0) - touched_before

    hits = retrieval.hits if retrieval is not None else []
    top = [h.payload.doc_path for h in hits]
    rank = next((i for i, d in enumerate(top, 1) if matches(d, q.expected)), None)
    # Only a normal-mode non-answer is an abstention; selected text has its own "not covered".
    # The gate's refusal ("abstained") or the model's own ("not_covered"): what the reader got.
    abstained = q.kind != "selected_text" and not done.grounded
    cited = [c.url for c in done.citations]
    invalid = [u for u in cited if u not in store.urls] if q.kind != "selected_text" else []
    contaminated = q.kind == "selected_text" and (
        touched > 0 or retrieval is not None or _selection_leaks(retrieved.citations)
        or _selection_leaks(done.citations)
    )  # fmt: skip
    answered_in_book = q.kind in ("in_book", "follow_up") and not abstained
    cites_expected = (
        any(matches(c.doc_path, q.expected) for c in done.citations) if answered_in_book else None
    )
    answerable = q.kind in ("in_book", "follow_up")
    answered = bool(cites_expected) if answerable else None
    has_answer = (
        bool(answered) and contains_answer(done.text, q.answer_has)
        if answerable and q.answer_has
        else None
    )

    problem = ""
    if q.kind in ("in_book", "follow_up"):
        if rank is None:
            problem = f"expected page not in top {TOP_K} (got {', '.join(top) or 'no hits'})"
        elif abstained:
            problem = f"refused although the expected page ranked {rank}"
        elif not cites_expected:
            cited_pages = ", ".join(sorted({c.doc_path for c in done.citations})) or "nothing"
            problem = f"answered but cites {cited_pages}, not an expected page"
    elif q.kind == "out_of_book" and not abstained:
        problem = f"answered instead of abstaining (top hit {top[0] if top else '-'})"
    elif q.kind == "selected_text":
        if contaminated:
            problem = f"contaminated: store/embedder calls {touched}, citations {cited}"
        elif not _selection_behaviour_ok(q, done):
            problem = f"expected {q.expect}, got {done.finish_reason} grounded={done.grounded}"
    if invalid and not problem:
        problem = f"cited URLs not in the ingested book: {invalid}"
    return QuestionResult(
        id=q.id, kind=q.kind, question=q.question, near=q.near, expected=list(q.expected),
        top_doc_paths=top, answered=answered, has_answer=has_answer,
        rank=rank, abstained=abstained, grounded=done.grounded, finish_reason=done.finish_reason,
        cited_urls=cited, cites_expected=cites_expected, invalid_urls=invalid,
        contaminated=contaminated, passed=not problem, problem=problem, answer=done.text,
    )  # fmt: skip


async def evaluate(
    questions: Sequence[EvalQuestion],
    docs_root: Path,
    *,
    site_url: str = "http://localhost:3000",
    embedder: Embedder | None = None,
    generator: AnswerGenerator | None = None,
    book_title: str = "this book",
    thresholds: Thresholds | None = None,
) -> EvalReport:
    """Ingest `docs_root` into a temporary embedded store and run every question."""
    from bookchat.ingest.pipeline import ingest_book
    from bookchat.llm.offline import OfflineGenerator
    from bookchat.search.embedded import EmbeddedVectorStore

    started = time.perf_counter()
    if generator is None:
        from bookchat.llm.local import LocalEmbedder

        # As `make_generator` does: with the local model, the extractive answer uses it.
        local = embedder.encoder if isinstance(embedder, LocalEmbedder) else None
        generator = OfflineGenerator(encoder=local)
    with tempfile.TemporaryDirectory(prefix="bookchat-eval-") as tmp:
        store = _Counting(EmbeddedVectorStore(Path(tmp), "eval"))
        counted_embedder = _Counting(embedder) if embedder is not None else None
        typed_store = cast(VectorStore, store)
        typed_embedder = cast(Embedder | None, counted_embedder)
        try:
            ingest = await ingest_book(
                docs_root, store=typed_store, embedder=typed_embedder, site_url=site_url
            )
            pipeline = AnswerPipeline(
                Retriever(typed_store, typed_embedder), generator, PromptBuilder(book_title)
            )
            results = [await _run_question(q, pipeline, store, counted_embedder) for q in questions]
        finally:
            await typed_store.close()
    summary = summarise(
        results,
        chunks=ingest.chunks_added,
        retrieval="hybrid" if embedder is not None else "bm25",
        generator=getattr(generator, "name", type(generator).__name__),
        seconds=time.perf_counter() - started,
    )
    gate = check_gate(summary, thresholds or Thresholds())
    return EvalReport(summary=summary, gate=gate, questions=results)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "questions", nargs="?", type=Path, default=SAMPLE_QUESTIONS,
        help="question file (default: the sample book's questions.json)",
    )  # fmt: skip
    parser.add_argument("--docs", type=Path, default=SAMPLE_DOCS, help="the docs/ tree to ingest")
    parser.add_argument("--site-url", help="base URL for citations (default SITE_URL)")
    defaults = Thresholds()
    for flag, default in (
        ("--min-answered5", defaults.min_answered5),
        ("--min-recall5", defaults.min_recall5),
        ("--min-abstention-recall", defaults.min_abstention_recall),
        ("--min-abstention-precision", defaults.min_abstention_precision),
        ("--min-answer-found", defaults.min_answer_found),
    ):
        parser.add_argument(flag, type=float, default=default, help=f"gate (default {default})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--offline", action="store_true", help="BM25 + extractive answers even if Gemini is set"
    )
    parser.add_argument(
        "--fake-openai",
        action="store_true",
        help="answers and embeddings from an in-process fake OpenAI-compatible server "
        "(LLM_PROVIDER=openai plumbing; the fake's canned answers say nothing of quality)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the eval for parsed arguments; returns the exit code (0, 1 gate, 2 input)."""
    from bookchat.settings import SettingsError, load_settings

    try:
        settings = load_settings()
        questions = load_questions(args.questions, args.docs)
    except (SettingsError, EvalError) as exc:
        print(f"bookchat eval: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.fake_openai:
            from bookchat.devtools.fake_openai import FakeOpenAI

            fake = stack.enter_context(FakeOpenAI())
            settings = settings.replace(
                llm_provider="openai",
                openai_base_url=fake.api_base,
                openai_model="fake-openai-model",
                embedding_provider="openai",
                embedding_model="fake-openai-embedding",
            )
        return _run(args, settings, questions)


def _run(args: argparse.Namespace, settings: Settings, questions: list[EvalQuestion]) -> int:
    embedder: Embedder | None = None
    generator: AnswerGenerator | None = None
    clients: ModelClients | None = None
    if not (args.offline or settings.offline):
        from bookchat.llm.factory import ModelClients, make_embedder, make_generator
        from bookchat.llm.local import LocalModelError

        clients = ModelClients(settings)  # one set of provider clients, closed at the end
        try:
            embedder, generator = (
                make_embedder(settings, clients),
                make_generator(settings, clients),
            )
        except LocalModelError as exc:
            print(f"bookchat eval: {exc}", file=sys.stderr)
            return 2

    async def run_eval() -> EvalReport:
        try:
            return await evaluate(
                questions,
                args.docs,
                site_url=(args.site_url or settings.site_url).rstrip("/"),
                embedder=embedder,
                generator=generator,
                book_title=settings.book_title,
                thresholds=Thresholds(
                    min_answered5=args.min_answered5,
                    min_recall5=args.min_recall5,
                    min_abstention_recall=args.min_abstention_recall,
                    min_abstention_precision=args.min_abstention_precision,
                    min_answer_found=args.min_answer_found,
                ),
            )
        finally:
            if clients is not None:
                # Their HTTP sessions belong to this loop: closed on it, not left to GC
                # ("Unclosed client session" at exit).
                await clients.aclose()

    report = asyncio.run(run_eval())
    print(msgspec.json.encode(report).decode() if args.json else render_table(report))
    return 0 if report.gate.passed else 1


def cmd_eval(args: argparse.Namespace) -> None:
    """`bookchat eval` entry point for the main CLI."""
    code = run(args)
    if code:
        raise SystemExit(code)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `eval` to the `bookchat` CLI's subcommands."""
    parser = sub.add_parser("eval", help="answer quality on a question set (recall, abstention)")
    _add_arguments(parser)
    parser.set_defaults(func=cmd_eval)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (`python -m bookchat.devtools.evaluation`); returns the exit code."""
    parser = argparse.ArgumentParser(prog="bookchat eval", description=__doc__.split("\n")[0])
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
