"""Retrieval for `normal` mode: hybrid (dense + BM25, fused by the store) or BM25 only.

On top of the store's ranking this module adds what the store cannot know:

- **History-aware queries** (the follow-up rule). A question is a *follow-up* when there
  is history and the question either contains an anaphoric word (it, its, they, them,
  their, this, these, those, he, she, that when it ends the question or follows a
  function word) or has fewer than two content terms ("why?", "drawbacks?"), unless it
  names its own subject ("what is odometry?", "what about SLAM?"; not "what is the
  range?", whose article points back) or is a lone name the previous question did not use
  ("dijkstra?", "and serialization?": a word nearly absent from everyday English,
  `NAMED_THING_SPECIFICITY`; "drawbacks?" is about the previous question). A pronoun
  that follows an earlier clause of the question naming something ("how does a lidar
  measure distance, and how far can it see?") refers to that, not to the conversation:
  such a question changes the subject and is searched alone. A question that opens by
  carrying on ("so …", "and …", "ok but …") is a follow-up when it brings no topic word
  the previous question did not use (specificity ≥ `QUERY_FULL_WEIGHT_SPECIFICITY`): "so
  the robot looks first and then acts?" continues, "so how does a lidar work?" does not.
  A follow-up's
  search query is the question plus the content words of the most recent user
  question(s), walking back over at most `follow_up_depth` questions until at least
  three expansion words are collected or a question that set the topic (one that was not
  a follow-up itself) is reached. The earlier topic's words weigh double in BM25
  (`sparse.TOPIC_WEIGHT`), unless the follow-up names a new thing of its own, a
  capitalised word inside the sentence ("and how is that different from Gazebo?").
  A follow-up's candidates from the pages the previous answer cited come first, in the
  order it cited them (`topic_pages`): the previous answer is the topic, and words alone
  can point elsewhere ("can that go wrong?" after the PID integral matched a gyro's
  "integrated").
- **Comparisons** ("the difference between a topic and a service", "RRT vs A*"): each
  compared thing is searched alone too (BM25, no embedding call), and its best passage
  with a sentence that opens with it ("Topics enable …") joins the hits after the
  question's own best, so the answer can say what each is; BM25 alone ranks the passages
  that merely name both (an exercise list, a command listing) first.
- **Spelling** (`search/spelling.py`): a question word that is neither the book's nor
  English and is one typo from a word of the book ("odomatry", "dikstra") is read as that
  word, in the question and its history, before anything else. The book's words come
  from the store and are kept current by `spelling.BookWords`.
- **Near-duplicate removal**: identical normalised text, or token-set Jaccard ≥
  `duplicate_jaccard` (same page) / ≥ `cross_page_duplicate_jaccard` (different pages).
  The stronger (earlier) hit is kept.
- **Relevance** (the abstention signal): `search/relevance.py` judges whether the book
  has the question's subject, from the stems of the candidates and of the hits. Fused RRF
  scores are rank-based and say nothing about relevance, so when a lexical refusal is
  possible the best dense cosine (a dense-only query, `search_dense`) is asked for too.
  A hit's `relevance` (the IDF-weighted fraction of question terms in its text, title and
  breadcrumb) and `coverage` (the same over the union of hits) remain as diagnostics and
  as the prompt builder's order for dropping sources.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import NamedTuple

import msgspec

from bookchat.llm.base import Embedder
from bookchat.search.relevance import NAMED_THING_SPECIFICITY, Evidence, judge
from bookchat.search.sparse import QUERY_FULL_WEIGHT_SPECIFICITY
from bookchat.search.spelling import BookWords, Vocabulary
from bookchat.search.types import (
    ChunkPayload,
    SearchFilters,
    SearchHit,
    VectorStore,
    VectorStoreUnavailableError,
)
from bookchat.text import (
    TermUnion,
    comparison_sides,
    content_terms,
    content_words,
    is_side_section,
    jaccard,
    light_stem,
    light_term_set,
    opens_with,
    proper_names,
    segments,
    specificity,
    term_set,
)

__all__ = ["RetrievalResult", "RetrievedHit", "Retriever", "is_follow_up"]

logger = logging.getLogger(__name__)

# Hits read per compared thing of a comparison question (`Retriever._with_sides`).
_SIDE_CANDIDATES = 10

# Words that point back at something said earlier in the conversation.
_ANAPHORA = frozenset(
    "it its itself they them their theirs this these those he she him her his that".split()  # noqa: SIM905 (word lists read better as text)
)
# Words after which "that" is a pronoun rather than a relative pronoun.
_FUNCTION_WORDS = frozenset(
    """
    is are was were does do did about of for with on in to from by why how what explain use
    using and or but like than can could would will should might may must
    """.split()  # noqa: SIM905 (word lists read better as text)
)


def _names_new_thing(question: str, topic: Sequence[str]) -> bool:
    """Whether a follow-up names something its earlier topic does not: a capitalised word
    inside the sentence ("… different from Gazebo?")."""
    known = {w.lower() for w in topic}
    return any(name.lower() not in known for name in proper_names(question))


class RetrievedHit(msgspec.Struct, kw_only=True, frozen=True):
    """One retrieved chunk: store score plus the lexical relevance used for abstention."""

    id: str
    score: float  # engine score (RRF when hybrid, BM25 when sparse only)
    relevance: float  # weighted fraction of the question's terms found in this chunk, 0–1
    payload: ChunkPayload


class RetrievalResult(msgspec.Struct, kw_only=True):
    """What `Retriever.search()` found and whether it is good enough to answer from."""

    hits: list[RetrievedHit]  # best first, at most top_k, near-duplicates removed
    relevant: bool  # False only for a clear miss (evidence.verdict == "refuse")
    evidence: Evidence  # the relevance signals and verdict (search/relevance.py)
    query_used: str  # the text sent to the store (expanded for follow-ups)
    elapsed_ms: float
    coverage: float  # weighted fraction of question terms found across `hits`
    dense_used: bool  # True when the query was embedded and the search was hybrid
    expanded: bool  # True when the follow-up rule added history words
    spelled: str | None = None  # the question as read, when a misspelt word was corrected


# Words and the punctuation that ends a clause, for `_pronoun_points_back`.
_WORD_OR_BREAK_RE = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?|[,;:]")
# What joins two clauses of one question ("what is RRT and why is it used?").
_CLAUSE_BREAKS = frozenset({",", ";", ":", "and", "but", "or", "so"})
# Chat openers that name nothing ("ok, and why does it drift?").
_INTERJECTIONS = frozenset(
    "ok okay alright hmm thanks thank cool great nice sure yeah yep hi hello hey wow".split()  # noqa: SIM905 (word lists read better as text)
)


def _pronoun_points_back(question: str) -> bool | None:
    """Whether the question's pronoun points back at the conversation (None: it has none).

    "that" is a pronoun at the start, at the end or after a function word ("is that",
    "about that"), but a relative pronoun after a noun ("the sensor that measures").
    A pronoun refers inside the question instead when the first one (or a pro-form "the
    I one", "the other ones") follows an earlier clause that names something: "how does
    a lidar measure distance, and how far can it see?", "what is RRT and why is it used
    for robot arms?". Such a question changes the subject, whatever was asked before;
    "why can that be dangerous …" and "how did the next version improve on it?" have no
    earlier clause, so their pronoun points back.
    """
    text = question.lower()
    toks = [
        (m.start(), re.split(r"['’]", m[0], maxsplit=1)[0])
        for m in _WORD_OR_BREAK_RE.finditer(text)
    ]
    clause_end: int | None = None
    inside: bool | None = None  # decided at the first pronoun or pro-form
    previous = ""
    for i, (start, tok) in enumerate(toks):
        if tok in _CLAUSE_BREAKS:
            clause_end = start
            if tok.isalpha():
                previous = tok
            continue
        pronoun = tok in _ANAPHORA and (
            tok != "that" or not previous or previous in _FUNCTION_WORDS or i == len(toks) - 1
        )
        # "one of …" counts; "the I one" stands for something said before.
        pro_one = (
            tok in ("one", "ones")
            and "the" in (t for _, t in toks[max(0, i - 2) : i])
            and (i + 1 == len(toks) or toks[i + 1][1] != "of")
        )
        if inside is None and (pronoun or pro_one):
            inside = clause_end is not None and any(
                w not in _INTERJECTIONS for w in content_words(text[:clause_end])
            )
        if pronoun:
            return not inside
        previous = tok
    return None


# "what is odometry?", "what about SLAM?", "explain anti-windup": a short question that
# names its own subject. Not "what is the range?": a definite article points back.
_OWN_SUBJECT_RE = re.compile(
    r"^\s*(?:(?:what|who)\s*(?:is|are|'s|’s)\s+(?:an?\s+)?|what\s+about\s+"
    r"|(?:explain|define|describe)\s+(?:an?\s+)?)(?!the\b)[^?,;:]+?\s*[?.!]?\s*$",
    re.I,
)


# "so the robot looks first and then acts?", "and in a busy place?": a question that
# opens by carrying on from the previous one.
_CARRIES_ON_RE = re.compile(
    r"^\s*(?:(?:ok(?:ay)?|alright|right)[,.]?\s+)?(?:so|and|but|then)\b", re.I
)


def is_follow_up(question: str, history: Sequence[str]) -> bool:
    """True when `question` needs the conversation to be understood (see module docs)."""
    if not history:
        return False
    points_back = _pronoun_points_back(question)
    if points_back is not None:
        return points_back
    earlier = {light_stem(w) for w in content_words(history[-1])}
    if _CARRIES_ON_RE.match(question) is not None and not any(
        specificity(w) >= QUERY_FULL_WEIGHT_SPECIFICITY and light_stem(w) not in earlier
        for w in content_words(question)
    ):
        # It carries on and brings no topic word of its own ("… and then acts, one step
        # after the other?"); "so how does a lidar measure distance?" changes the subject.
        return True
    if len(content_terms(question)) >= 2 or _OWN_SUBJECT_RE.match(question) is not None:
        return False
    # "dijkstra?", "and serialization?" after another topic: a lone name (nearly absent
    # from everyday English) that the previous question did not use is a new subject;
    # "drawbacks?" and "how accurate?" are about the previous one.
    return not any(
        specificity(w) >= NAMED_THING_SPECIFICITY and light_stem(w) not in earlier
        for w in content_words(question)
    )


_PAIR_CACHE_SIZE = 100_000  # chunk pairs compared and remembered (cleared when full)
_CHUNK_CACHE_SIZE = 20_000  # chunks' term sets kept (cleared when full)


class _ChunkTerms(NamedTuple):
    """A chunk's term sets: its text's, and text + title + breadcrumb (stemmed, light)."""

    text: frozenset[str]
    all: frozenset[str]
    light: frozenset[str]


class Retriever:
    """Searches the book for a question; decides whether anything relevant was found."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder | None,
        *,
        candidates: int = 20,
        duplicate_jaccard: float = 0.7,
        cross_page_duplicate_jaccard: float = 0.9,
        follow_up_depth: int = 2,
        query_cache_size: int = 1024,
    ) -> None:
        """Create a retriever.

        Args:
            store: the vector store (embedded engine or Qdrant server).
            embedder: dense query embedder; `None` means BM25 only (offline mode).
            candidates: hits fetched from the store before de-duplication (≥ top_k).
            duplicate_jaccard: token Jaccard above which two hits of a page are duplicates.
            cross_page_duplicate_jaccard: the same for hits from different pages.
            follow_up_depth: how many earlier user questions may expand a follow-up.
            query_cache_size: LRU size for query embeddings (0 disables the cache).
        """
        self.store = store
        self.embedder = embedder
        self.candidates = candidates
        self.duplicate_jaccard = duplicate_jaccard
        self.cross_page_duplicate_jaccard = cross_page_duplicate_jaccard
        self.follow_up_depth = follow_up_depth
        self._query_cache_size = query_cache_size
        self._query_cache: OrderedDict[str, list[float]] = OrderedDict()
        # Per chunk (content hash): the chunks it was compared with, and of those the
        # ones similar enough to be a near-duplicate, with their Jaccard.
        self._compared: dict[str, set[str]] = {}
        self._near_pairs: dict[str, dict[str, float]] = {}
        self._pairs = 0
        self._chunk_cache: dict[str, _ChunkTerms] = {}
        # The book's words, for spelling and phrase-only words (`search/spelling.py`).
        self.book_words = BookWords(store)

    async def vocabulary(self) -> Vocabulary | None:
        """The book's words (None when the store cannot list them): `BookWords.current`."""
        return await self.book_words.current()

    def build_query(self, question: str, history: Sequence[str] = ()) -> tuple[str, list[str]]:
        """The search text for `question` and the history words added to it (follow-up rule)."""
        question = question.strip()
        if not is_follow_up(question, history):
            return question, []
        own = set(content_words(question))
        extra: list[str] = []
        earlier = list(history)
        for _ in range(min(self.follow_up_depth, len(earlier))):
            previous = earlier.pop()
            for word in content_words(previous):
                if word not in own and word not in extra:
                    extra.append(word)
            # A question that was not a follow-up itself set the topic: what came before it
            # is another topic ("why does it drift?" after "what is odometry?" after PID).
            if len(extra) >= 3 or not is_follow_up(previous, earlier):
                break
        if not extra:
            return question, []
        return f"{question} {' '.join(extra)}", extra

    async def _embed(self, text: str) -> list[float] | None:
        assert self.embedder is not None
        cached = self._query_cache.get(text)
        if cached is not None:
            self._query_cache.move_to_end(text)
            return cached
        try:
            vector = await self.embedder.embed_query(text)
        except Exception as exc:
            # Answering from BM25 alone beats failing the chat when embeddings are down.
            logger.warning("query embedding failed, using BM25 only: %s", type(exc).__name__)
            return None
        if self._query_cache_size > 0:
            self._query_cache[text] = vector
            if len(self._query_cache) > self._query_cache_size:
                self._query_cache.popitem(last=False)
        return vector

    async def _dense_best(
        self, dense: list[float], filters: SearchFilters | None, hits: Sequence[RetrievedHit]
    ) -> float | None:
        """The best dense cosine in the book for this query (None if the store has none)."""
        search_dense = getattr(self.store, "search_dense", None)
        if search_dense is None or not hits:
            return None
        nearest = await search_dense(dense=dense, filters=filters, limit=1)
        return nearest[0].score if nearest else None

    async def _with_sides(
        self,
        ranked: list[SearchHit],
        sides: tuple[tuple[str, ...], tuple[str, ...]],
        filters: SearchFilters | None,
        top_k: int,
    ) -> list[SearchHit]:
        """`ranked` with the passage that introduces each compared thing in its first
        `top_k`: "what's the difference between a topic and a service?" ranks an exercise
        and a command listing that name both above "Topics enable …" and "Services provide
        …", which explain them.

        Each side is searched alone (BM25 only: no embedding call); its best hit with a
        sentence that opens with the side's words joins right after the question's own
        best hit, unless it is among the first `top_k` already.
        """
        shown = {h.id for h in ranked[:top_k]}
        joining: list[SearchHit] = []
        for side in sides:
            try:
                found = await self.store.search(
                    query_text=" ".join(side),
                    dense=None,
                    filters=filters,
                    limit=_SIDE_CANDIDATES,
                )
            except VectorStoreUnavailableError as exc:
                # The question's own search succeeded: answer from it rather than fail.
                logger.warning("comparison side search failed, answering without: %s", exc)
                return ranked
            for hit in sorted(found, key=lambda h: (-h.score, h.id)):
                if any(
                    seg.kind in ("prose", "bullet") and opens_with(seg.text, side)
                    for seg in segments(hit.payload.text)
                ):
                    if hit.id not in shown and all(hit.id != j.id for j in joining):
                        joining.append(hit)
                    break
        if not joining:
            return ranked
        ids = {h.id for h in joining}
        rest = [h for h in ranked if h.id not in ids]
        return [*rest[:1], *joining, *rest[1:]]

    def _terms(self, payload: ChunkPayload) -> _ChunkTerms:
        """A chunk's term sets, memoised by content hash: the same candidates recur, and
        the unions of three sets per candidate cost more than the rest of the ranking."""
        found = self._chunk_cache.get(payload.content_hash)
        if found is None:
            if len(self._chunk_cache) >= _CHUNK_CACHE_SIZE:
                self._chunk_cache.clear()
            found = self._chunk_cache[payload.content_hash] = _ChunkTerms(
                term_set(payload.text), self._hit_terms(payload), self._hit_light(payload)
            )
        return found

    def _near(self, payload: ChunkPayload, kept: dict[str, ChunkPayload]) -> dict[str, float]:
        """The Jaccard of `payload` with each of the `kept` chunks that may be its
        near-duplicate (at least the lower of the two limits), memoised per chunk: the
        same candidates recur across queries, so after the first few each hit costs one
        set difference instead of a comparison per kept hit."""
        own = payload.content_hash
        compared = self._compared.get(own)
        if compared is None:
            compared = self._compared[own] = set()
        near = self._near_pairs.get(own)
        if near is None:
            near = self._near_pairs[own] = {}
        unknown = kept.keys() - compared
        if unknown:
            if self._pairs >= _PAIR_CACHE_SIZE:
                self._compared.clear()
                self._near_pairs.clear()
                self._pairs = 0
                return self._near(payload, kept)
            floor = min(self.duplicate_jaccard, self.cross_page_duplicate_jaccard)
            terms = self._terms(payload).text
            for other in unknown:
                other_terms = self._terms(kept[other]).text
                small, large = sorted((len(terms), len(other_terms)))
                compared.add(other)
                self._compared.setdefault(other, set()).add(own)
                self._pairs += 1
                if large and small / large < floor:
                    continue  # an upper bound below both limits: never a duplicate
                similarity = jaccard(terms, other_terms)
                if similarity >= floor:
                    near[other] = similarity
                    self._near_pairs.setdefault(other, {})[own] = similarity
        return near

    def _dedupe(self, hits: Sequence[SearchHit]) -> list[SearchHit]:
        # Identical texts have identical term sets (Jaccard 1.0), so one check covers both.
        kept: list[SearchHit] = []
        kept_payloads: dict[str, ChunkPayload] = {}
        for hit in hits:
            p = hit.payload
            if p.content_hash in kept_payloads:
                continue
            near = self._near(p, kept_payloads) if kept else {}
            if any(
                near[other] >= self._limit(p, kept_payloads[other])
                for other in near.keys() & kept_payloads.keys()
            ):
                continue
            kept.append(hit)
            kept_payloads[p.content_hash] = p
        return kept

    def _limit(self, a: ChunkPayload, b: ChunkPayload) -> float:
        """The Jaccard from which `a` and `b` are duplicates (stricter across pages)."""
        return (
            self.duplicate_jaccard
            if a.doc_path == b.doc_path
            else self.cross_page_duplicate_jaccard
        )

    @staticmethod
    def _hit_light(payload: ChunkPayload) -> frozenset[str]:
        return (
            light_term_set(payload.text)
            | light_term_set(payload.title)
            | light_term_set(" ".join(payload.heading_breadcrumb))
        )

    @staticmethod
    def _hit_terms(payload: ChunkPayload) -> frozenset[str]:
        return (
            term_set(payload.text)
            | term_set(payload.title)
            | term_set(" ".join(payload.heading_breadcrumb))
        )

    async def search(
        self,
        query: str,
        *,
        history: Sequence[str] = (),
        filters: SearchFilters | None = None,
        top_k: int = 5,
        topic_pages: Sequence[str] = (),
    ) -> RetrievalResult:
        """Retrieve up to `top_k` chunks for `query` and judge their relevance.

        `history` holds the previous *user* questions, oldest first; `topic_pages` the
        pages the previous answer cited (a follow-up's candidates from them go first). Raises
        `VectorStoreUnavailableError` (from the store) when the store cannot answer.
        """
        started = time.perf_counter()
        top_k = max(1, min(top_k, 20))
        if filters is not None and filters.is_empty():
            filters = None
        spelled = None
        vocabulary = await self.vocabulary()
        if vocabulary is not None:
            corrected = vocabulary.correct(query)
            if corrected != query:
                query = spelled = corrected
            history = [vocabulary.correct(earlier) for earlier in history]
        query_used, extra_words = self.build_query(query, history)
        dense = await self._embed(query_used) if self.embedder is not None else None
        raw = await self.store.search(
            query_text=query_used,
            dense=dense,
            filters=filters,
            limit=max(self.candidates, top_k),
            # A follow-up that names a new thing ("and how is that different from
            # Gazebo?") is about both: the earlier topic does not outweigh it.
            topic=extra_words if extra_words and not _names_new_thing(query, extra_words) else (),
        )
        # Fused RRF scores tie often (a chunk first in one list, second in the other), and
        # the engine returns ties in no fixed order: break them by id, so a question gets
        # the same sources every time.
        ranked = sorted(raw, key=lambda h: (-h.score, h.id))
        if extra_words and topic_pages:
            # A follow-up continues the previous answer: its pages' candidates first, the
            # page it cited first (its main source) before the others ("can that go
            # wrong?" after the PID integral: not the gyro's "integrated" it also cited).
            # A page's references, exercises and objectives are not its content: they
            # keep their place.
            order = {page: n for n, page in reversed(list(enumerate(topic_pages)))}
            ranked = sorted(
                ranked,
                key=lambda h: (
                    len(order)
                    if is_side_section(h.payload.section)
                    else order.get(h.payload.doc_path, len(order))
                ),
            )
        sides = comparison_sides(query) if not extra_words else None
        if sides is not None:
            ranked = await self._with_sides(ranked, sides, filters, top_k)
        pool = self._dedupe(ranked)

        own_terms = content_terms(query)
        extra_terms = [t for t in content_terms(" ".join(extra_words)) if t not in own_terms]
        pool_chunks = [self._terms(h.payload) for h in pool]
        pool_terms = [c.all for c in pool_chunks]
        n = len(pool)
        weights: dict[str, float] = {}
        for term in own_terms + extra_terms:
            df = sum(1 for terms in pool_terms if term in terms)
            idf = 1.0 + math.log((n + 1) / (df + 1))
            weights[term] = idf * (2.0 if term in own_terms else 1.0)
        total = sum(weights.values())

        def fraction(terms: AbstractSet[str]) -> float:
            if total == 0:
                return 0.0
            return sum(w for t, w in weights.items() if t in terms) / total

        chosen = pool[:top_k]
        chosen_terms = pool_terms[:top_k]
        hits = [
            RetrievedHit(
                id=h.id, score=h.score, relevance=round(fraction(terms), 4), payload=h.payload
            )
            for h, terms in zip(chosen, chosen_terms, strict=True)
        ]
        union = TermUnion(chosen_terms)
        coverage = round(fraction(union), 4)
        pool_light = [c.light for c in pool_chunks]
        chosen_light = pool_light[:top_k]
        judge_hits = functools.partial(
            judge,
            query,
            extra_words,
            candidate_terms=TermUnion(pool_terms),
            candidate_light=TermUnion(pool_light),
            hit_terms=union,
            hit_light=TermUnion(chosen_light),
            each_hit=list(zip(chosen_terms, chosen_light, strict=True)),
            candidate_texts=[h.payload.text for h in pool],
            phrase_only=vocabulary.phrase_only if vocabulary is not None else None,
        )
        evidence = judge_hits()
        if evidence.verdict == "refuse" and dense is not None:
            # Only a lexical refusal can be rescued by dense evidence: ask for it then.
            evidence = judge_hits(dense_best=await self._dense_best(dense, filters, hits))
        return RetrievalResult(
            hits=hits,
            relevant=bool(hits) and evidence.verdict != "refuse",
            evidence=evidence,
            query_used=query_used,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
            coverage=coverage,
            dense_used=dense is not None,
            expanded=bool(extra_words),
            spelled=spelled,
        )
