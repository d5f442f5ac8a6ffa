"""One grounded answer, with no HTTP and no database: decide first, then stream.

`AnswerPipeline.prepare()` does everything that can fail or be decided before the first
byte is sent — retrieval (may raise `VectorStoreUnavailableError`), the relevance and
selection checks, the prompt — and returns a `PreparedAnswer`. `PreparedAnswer.stream()`
then yields `Retrieved`, `AnswerToken`…, `AnswerDone`. The HTTP layer can therefore map
retrieval failures to a 503 status before it starts an SSE response. A `GenerationError`
propagates out of `stream()` after the partial tokens (`PreparedAnswer.text` holds them).

Decisions made in `prepare()`:
- `normal`: retrieve and judge the evidence (`search/relevance.py`). A clear miss
  (`refuse`) is answered without the generator: the abstention message with related
  sections (`grounded=False`, `finish_reason="abstained"`). The grey zone reaches the
  generator with `closest_only=True`: a model judges the sources under the grounding
  rules, and a reply that opens with "the book does not cover this" becomes an
  abstention (`grounded=False`, `finish_reason="not_covered"`, no citations); the
  extractive answerer labels its excerpt as the book's closest passages.
- `selected_text_only`: the store and embedder are never touched. The selection is the
  only source (`[1]`). When the question is clearly about something else (the relevance
  test of `search/relevance.py` with the selection as the book refuses it, and it shares
  no specific word with the selection nor points at it; see `selection_covers`), the
  answer says so and suggests asking without a selection (`grounded=False`, no generator
  call). A selection under `min_selection_words` words is answered, followed by a note
  that more text would help.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Literal

import msgspec

from bookchat.answer.grounding import (
    SELECTION_NOT_COVERED,
    Citation,
    CitationMapper,
    PromptBuilder,
    abstention_message,
    declines,
    pin_citations,
    short_selection_note,
)
from bookchat.llm.base import (
    AnswerGenerator,
    ContextBlock,
    GenerationFinished,
    GenerationRequest,
    TokenDelta,
    Turn,
)
from bookchat.search.relevance import judge
from bookchat.search.retriever import RetrievalResult, Retriever, is_follow_up
from bookchat.search.types import ChunkPayload, SearchFilters
from bookchat.text import light_term_set, term_set, word_count

__all__ = [
    "ABSTAINED",
    "NOT_COVERED",
    "AnswerDone",
    "AnswerEvent",
    "AnswerPipeline",
    "AnswerToken",
    "Mode",
    "PreparedAnswer",
    "Retrieved",
]

Mode = Literal["normal", "selected_text_only"]
# finish_reason of answers given without calling the generator.
ABSTAINED = "abstained"
# finish_reason when the model itself replied that the book does not cover the question.
NOT_COVERED = "not_covered"
SELECTION_TITLE = "Selected text"
_PIECE_RE = re.compile(r"\s*\S+")
_PATH_WORDS = re.compile(r"(?:^|/)\d+[-_.]|[/_-]")  # "01-sensors/01-lidar" -> "sensors lidar"


class Retrieved(msgspec.Struct, kw_only=True, frozen=True, tag="retrieved"):
    """First event: the numbered sources the answer may cite (empty when abstaining)."""

    citations: list[Citation]
    grounded_candidate: bool  # False when the answer will be a non-answer


class AnswerToken(msgspec.Struct, kw_only=True, frozen=True, tag="token"):
    """A piece of answer text, invalid `[n]` markers already removed."""

    text: str


class AnswerDone(msgspec.Struct, kw_only=True, frozen=True, tag="done"):
    """Last event: the whole text and the citations actually used."""

    text: str
    citations: list[Citation]
    finish_reason: str  # the generator's ("stop", ...) or "abstained" when none was called
    prompt_tokens: int
    completion_tokens: int
    grounded: bool
    model: str  # generator name, "" when none was called


AnswerEvent = Retrieved | AnswerToken | AnswerDone


def _pieces(text: str) -> list[str]:
    return _PIECE_RE.findall(text)


class PreparedAnswer:
    """An answer whose retrieval and decisions are done; `stream()` produces its events."""

    def __init__(
        self,
        *,
        mode: Mode,
        citations: list[Citation],
        retrieval: RetrievalResult | None,
        generator: AnswerGenerator | None,
        request: GenerationRequest | None,
        canned_text: str | None = None,
        note: str | None = None,
        payloads: dict[int, ChunkPayload] | None = None,
    ) -> None:
        self.mode = mode
        self.citations = citations
        self.retrieval = retrieval  # None in selected-text mode
        self.request = request  # None when no generator call will be made
        self.canned_text = canned_text
        self.note = note
        self.payloads = payloads or {}  # the chunk behind each citation number
        self._generator = generator
        self._parts: list[str] = []

    @property
    def grounded_candidate(self) -> bool:
        """True when the generator will be called on grounded context."""
        return self.request is not None

    @property
    def text(self) -> str:
        """The answer text streamed so far (the partial answer after a failure)."""
        return "".join(self._parts)

    def _emit(self, piece: str) -> AnswerToken:
        self._parts.append(piece)
        return AnswerToken(text=piece)

    async def stream(self) -> AsyncIterator[AnswerEvent]:
        """Yield `Retrieved`, then `AnswerToken`s, then `AnswerDone`.

        Raises `GenerationError` after the partial tokens when generation fails. Closing
        this iterator early closes the generator's stream too.
        """
        yield Retrieved(citations=list(self.citations), grounded_candidate=self.grounded_candidate)
        if self.request is None or self._generator is None:
            for piece in _pieces(self.canned_text or ""):
                yield self._emit(piece)
            yield AnswerDone(
                text=self.text, citations=[], finish_reason=ABSTAINED, prompt_tokens=0,
                completion_tokens=0, grounded=False, model="",
            )  # fmt: skip
            return

        mapper = CitationMapper(self.citations)
        feed, parts = mapper.feed, self._parts  # `_emit` inlined: this runs per token
        finished: GenerationFinished | None = None
        async with aclosing(self._generator.stream(self.request)) as events:  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, TokenDelta):
                    shown = feed(event.text)
                    if shown:
                        parts.append(shown)
                        yield AnswerToken(text=shown)
                elif isinstance(event, GenerationFinished):
                    finished = event
        tail = mapper.flush()
        if tail:
            yield self._emit(tail)
        # Link each source at the heading of what the answer took from it.
        cited = pin_citations(mapper.cited(), self.text, self.payloads)
        # The grey zone reaches the model; its own "the book does not cover this" is an
        # abstention (not grounded, no citations), counted like the gate's refusals.
        declined = self.mode == "normal" and declines(self.text)
        if self.note and not declined:
            for piece in _pieces(f"\n\n{self.note}"):
                yield self._emit(piece)
        finish_reason = finished.finish_reason if finished else "stop"
        yield AnswerDone(
            text=self.text,
            citations=[] if declined else cited,
            finish_reason=NOT_COVERED if declined else finish_reason,
            prompt_tokens=finished.prompt_tokens if finished else 0,
            completion_tokens=finished.completion_tokens if finished else 0,
            grounded=not declined,
            model=finished.model if finished else self._generator.name,
        )


class AnswerPipeline:
    """Turns (question, mode, selection, history, filters) into answer events."""

    def __init__(
        self,
        retriever: Retriever,
        generator: AnswerGenerator,
        prompt_builder: PromptBuilder,
        *,
        min_selection_words: int = 10,
        min_selection_topic: float = 2.0,
    ) -> None:
        """`min_selection_topic`: below this total specificity (search/relevance.py) a
        question asks about the selection itself ("explain this") and is always covered."""
        self.retriever = retriever
        self.generator = generator
        self.prompt_builder = prompt_builder
        self.min_selection_words = min_selection_words
        self.min_selection_topic = min_selection_topic

    def selection_covers(self, question: str, selected_text: str, where: str = "") -> bool:
        """Whether the question is about the selection (the same test as for the book, and
        the reader's pointing).

        The selection plays the book (with `where`, the selection's page and section: a
        passage from the lidar page is about lidar even when it never says so). A question
        with nothing topical in it ("what does this mean?") is about the selection itself.
        The reader pointed at this passage, so a question the book's test would refuse is
        still about it when it shares a specific word with it ("why draw the walls
        thicker …?" on inflated obstacles) or points back at it as a follow-up would
        ("are these values final?", "what's the point of the second sentence?"). Declined:
        a question that names a thing the selection lacks ("… compared with PX4?"), or
        shares nothing with it and does not point at it ("how should I pick the integral
        gain?" on a lidar passage).
        """
        text = f"{selected_text}\n{where}"
        stems, light = term_set(text), light_term_set(text)
        evidence = judge(
            question, [], candidate_terms=stems, candidate_light=light, hit_terms=stems,
            hit_light=light, each_hit=[(stems, light)],
        )  # fmt: skip
        if evidence.weight < self.min_selection_topic or evidence.verdict != "refuse":
            return True
        if evidence.named:
            return False
        return evidence.found > 0 or is_follow_up(question, [selected_text])

    async def prepare(
        self,
        question: str,
        *,
        mode: Mode = "normal",
        selected_text: str | None = None,
        source_doc_path: str | None = None,
        source_section: str | None = None,
        history: Sequence[Turn] = (),
        filters: SearchFilters | None = None,
        top_k: int = 5,
    ) -> PreparedAnswer:
        """Retrieve and decide; may raise `VectorStoreUnavailableError` (normal mode only)."""
        question = question.strip()
        if mode == "selected_text_only":
            return self._prepare_selection(
                question, selected_text, source_doc_path, source_section, history
            )
        user_questions = [t.text for t in history if t.role == "user"]
        retrieval = await self.retriever.search(
            question,
            history=user_questions,
            filters=filters,
            top_k=top_k,
            # The previous answer's cited pages: a follow-up's topic.
            topic_pages=next((t.pages for t in reversed(history) if t.role == "model"), ()),
        )
        if not retrieval.relevant:
            return PreparedAnswer(
                mode=mode, citations=[], retrieval=retrieval, generator=None, request=None,
                # Hits that share no specific word with the question are no lead for its
                # reader ("a recipe for banana bread" matched only "good").
                canned_text=abstention_message(
                    retrieval.hits if retrieval.evidence.found > 0 else []
                ),
            )  # fmt: skip
        built = self.prompt_builder.compose(question, retrieval.hits, history, selected_text)
        request = built.request
        if retrieval.evidence.verdict == "grey":
            request = msgspec.structs.replace(request, closest_only=True)
        if retrieval.expanded:
            # A follow-up ("what are its drawbacks?") is about the earlier topic: the
            # extractive answerer scores sentences against the expanded question too
            # (a model reads the conversation in `contents`).
            request = msgspec.structs.replace(request, question=retrieval.query_used)
        elif retrieval.spelled is not None:
            # "what is odomatry": the extractive answerer looks for "odometry" (a model
            # reads the question as typed and knows what was meant).
            request = msgspec.structs.replace(request, question=retrieval.spelled)
        return PreparedAnswer(
            mode=mode,
            citations=built.citations,
            retrieval=retrieval,
            generator=self.generator,
            request=request,
            payloads={
                n: retrieval.hits[i].payload for n, i in enumerate(built.source_indices, start=1)
            },
        )

    def _prepare_selection(
        self,
        question: str,
        selected_text: str | None,
        source_doc_path: str | None,
        source_section: str | None,
        history: Sequence[Turn],
    ) -> PreparedAnswer:
        selection = (selected_text or "").strip()
        if not selection:
            raise ValueError("selected_text_only mode needs a non-empty selected_text")
        mode: Mode = "selected_text_only"
        where = f"{source_section or ''} {_PATH_WORDS.sub(' ', source_doc_path or '')}"
        if not self.selection_covers(question, selection, where):
            return PreparedAnswer(
                mode=mode, citations=[], retrieval=None, generator=None, request=None,
                canned_text=SELECTION_NOT_COVERED,
            )  # fmt: skip
        section = source_section or ""
        citation = Citation(
            n=1, doc_path=source_doc_path or "", title=SELECTION_TITLE, section=section,
            url="", module="", chapter="", score=1.0,
        )  # fmt: skip
        block = ContextBlock(n=1, title=SELECTION_TITLE, section=section, text=selection, score=1.0)
        built = self.prompt_builder.compose(question, [block], history, None)
        words = word_count(selection)
        return PreparedAnswer(
            mode=mode,
            citations=[citation],
            retrieval=None,
            generator=self.generator,
            request=msgspec.structs.replace(built.request, selection=True),
            note=short_selection_note(words) if words < self.min_selection_words else None,
        )

    async def run(
        self,
        question: str,
        *,
        mode: Mode = "normal",
        selected_text: str | None = None,
        source_doc_path: str | None = None,
        source_section: str | None = None,
        history: Sequence[Turn] = (),
        filters: SearchFilters | None = None,
        top_k: int = 5,
    ) -> AsyncIterator[AnswerEvent]:
        """`prepare()` then `stream()`: retrieval errors raise before any event."""
        prepared = await self.prepare(
            question,
            mode=mode,
            selected_text=selected_text,
            source_doc_path=source_doc_path,
            source_section=source_section,
            history=history,
            filters=filters,
            top_k=top_k,
        )
        async for event in prepared.stream():
            yield event
