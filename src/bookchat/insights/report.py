"""Author insights: what readers ask, what the book could not answer, what they disliked.

One report, built from the messages table and the store's list of pages, shown by
`bookchat insights`, `GET /api/v1/admin/insights` and the `/admin/insights` page. It holds
question text, answer text, feedback comments and page references only: never a token,
user id, session id, message id or IP address (docs/SECURITY.md).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bookchat.answer.pipeline import ABSTAINED, NOT_COVERED
from bookchat.db.models import Message
from bookchat.search.types import StoredPoint
from bookchat.text import jaccard, term_set

# The gate declined (no model call), or the model said the context does not cover it.
REFUSALS = frozenset({ABSTAINED, NOT_COVERED})
GROUP_SIMILARITY = 0.5  # Jaccard of content terms at which two refusals are one gap
MAX_SINCE_DAYS = 3660
MAX_GROUPS = 50
MAX_EXAMPLES = 5
MAX_THUMBS_DOWN = 100
MAX_CITED = 20
ANSWER_EXCERPT_CHARS = 600
SINCE_PATTERN = r"^\d{1,6}[hdw]$"  # the API's form; the CLI also takes ISO dates
_SINCE_RE = re.compile(r"^\s*(\d{1,6})\s*([hdw])\s*$")


class InsightsError(ValueError):
    """A bad report parameter (the message says which and why)."""


class PageRef(msgspec.Struct, kw_only=True, frozen=True):
    doc_path: str
    title: str
    section: str = ""
    url: str = ""


class PageCount(msgspec.Struct, kw_only=True):
    doc_path: str
    title: str
    section: str
    url: str
    count: int


class DayCount(msgspec.Struct, kw_only=True):
    day: date
    questions: int
    refused: int


class RefusalGroup(msgspec.Struct, kw_only=True):
    """Refused questions with similar wording: one content gap."""

    question: str  # the most frequent wording
    count: int
    examples: list[str]  # distinct wordings, most frequent first
    closest_pages: list[PageCount]  # what the search found, most often first


class ThumbsDown(msgspec.Struct, kw_only=True):
    day: date
    question: str
    answer: str  # excerpt
    comment: str | None
    cited_pages: list[PageRef]


class InsightsReport(msgspec.Struct, kw_only=True):
    since: datetime
    until: datetime
    questions: int
    answers: int
    refused: int
    thumbs_down_count: int
    pages_indexed: int
    questions_per_day: list[DayCount]
    refused_groups: list[RefusalGroup]
    thumbs_down: list[ThumbsDown]
    most_cited_pages: list[PageCount]
    most_cited_sections: list[PageCount]
    never_cited_pages: list[PageRef]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `4w` before `now`, or an ISO date/time (UTC when no zone is given).

    Reaches back at most MAX_SINCE_DAYS (older starts are clamped, not refused).
    """
    now = now or datetime.now(UTC)
    oldest = now - timedelta(days=MAX_SINCE_DAYS)
    match = _SINCE_RE.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        days = amount / 24 if unit == "h" else amount * (7 if unit == "w" else 1)
        return oldest if days >= MAX_SINCE_DAYS else now - timedelta(days=days)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InsightsError(
            f"since: expected a duration like 30d, 12h, 4w or an ISO date, got {text!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if parsed > now:
        raise InsightsError("since: must be in the past")
    return max(parsed, oldest)


@dataclass
class _Row:
    session_id: Any
    role: str
    content: str
    retrieval_mode: str
    finish_reason: str | None
    citations: list[dict[str, Any]]
    related: list[dict[str, Any]] | None
    feedback_rating: str | None
    feedback_comment: str | None
    created_at: datetime
    question: str = ""  # assistant rows: the question they answer


@dataclass
class _Group:
    terms: frozenset[str]
    wordings: Counter[str] = field(default_factory=Counter)
    pages: Counter[PageRef] = field(default_factory=Counter)


_COLUMNS = (
    Message.session_id,
    Message.role,
    Message.content,
    Message.retrieval_mode,
    Message.finish_reason,
    Message.citations,
    Message.related,
    Message.feedback_rating,
    Message.feedback_comment,
    Message.created_at,
)


async def _rows(db: AsyncSession, since: datetime, until: datetime) -> list[_Row]:
    """Messages in the window in conversation order; assistant rows learn their question."""
    result = await db.execute(
        select(*_COLUMNS)
        .where(Message.created_at >= since, Message.created_at <= until)
        .order_by(Message.session_id, Message.created_at, Message.id)
    )
    rows = [_Row(*r) for r in result.all()]
    last_question: dict[Any, str] = {}
    for row in rows:
        if row.role == "user":
            last_question[row.session_id] = row.content
        else:
            row.question = last_question.get(row.session_id, "")
    return rows


def _page(citation: dict[str, Any], *, with_section: bool = True) -> PageRef:
    url = str(citation.get("url") or "")
    return PageRef(
        doc_path=str(citation.get("doc_path") or ""),
        title=str(citation.get("title") or ""),
        section=str(citation.get("section") or "") if with_section else "",
        url=url if with_section else url.split("#", 1)[0],
    )


def _counts(counter: Counter[PageRef], limit: int) -> list[PageCount]:
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0].doc_path, kv[0].section))
    return [
        PageCount(doc_path=p.doc_path, title=p.title, section=p.section, url=p.url, count=n)
        for p, n in ordered[:limit]
    ]


def _wording(question: str) -> str:
    return " ".join(question.split())


def group_refusals(refusals: Iterable[tuple[str, Sequence[PageRef]]]) -> list[RefusalGroup]:
    """Group refused questions whose content terms overlap (Jaccard ≥ GROUP_SIMILARITY).

    A cheap lexical grouping: stemmed content terms from `bookchat.text`, greedy, most
    frequent wording first so it becomes the group's representative.
    """
    by_wording: dict[str, list[Sequence[PageRef]]] = defaultdict(list)
    for question, pages in refusals:
        by_wording[_wording(question)].append(pages)
    groups: list[_Group] = []
    for wording in sorted(by_wording, key=lambda w: (-len(by_wording[w]), w.lower())):
        terms = term_set(wording)
        target = None
        if terms:
            best = max(groups, key=lambda g: jaccard(g.terms, terms), default=None)
            if best is not None and jaccard(best.terms, terms) >= GROUP_SIMILARITY:
                target = best
        else:  # no content words ("why?"): only identical wordings group
            target = next(
                (
                    g
                    for g in groups
                    if not g.terms and wording.lower() in map(str.lower, g.wordings)
                ),
                None,
            )
        if target is None:
            target = _Group(terms=terms)
            groups.append(target)
        target.wordings[wording] += len(by_wording[wording])
        for pages in by_wording[wording]:
            target.pages.update(set(pages))
    groups.sort(key=lambda g: (-g.wordings.total(), g.wordings.most_common(1)[0][0].lower()))
    return [
        RefusalGroup(
            question=g.wordings.most_common(1)[0][0],
            count=g.wordings.total(),
            examples=[w for w, _ in g.wordings.most_common(MAX_EXAMPLES)],
            closest_pages=_counts(g.pages, 3),
        )
        for g in groups[:MAX_GROUPS]
    ]


def book_pages(points: Iterable[StoredPoint]) -> dict[str, PageRef]:
    """doc_path → the page (title, URL without anchor) for every page in the store."""
    pages: dict[str, PageRef] = {}
    for point in sorted(points, key=lambda p: (p.doc_path, p.chunk_index)):
        if point.doc_path and point.doc_path not in pages:
            pages[point.doc_path] = PageRef(
                doc_path=point.doc_path, title=point.title, url=point.url.split("#", 1)[0]
            )
    return pages


def _days(since: datetime, until: datetime) -> list[date]:
    first, last = since.astimezone(UTC).date(), until.astimezone(UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


async def build_report(
    db: AsyncSession,
    points: Iterable[StoredPoint],
    *,
    since: datetime,
    until: datetime | None = None,
) -> InsightsReport:
    """The insights for messages created in [since, until] (UTC days)."""
    until = until or datetime.now(UTC)
    rows = await _rows(db, since, until)
    per_day: Counter[date] = Counter()
    refused_per_day: Counter[date] = Counter()
    refusals: list[tuple[str, list[PageRef]]] = []
    downs: list[tuple[datetime, ThumbsDown]] = []
    cited_pages: Counter[PageRef] = Counter()
    cited_sections: Counter[PageRef] = Counter()
    cited_paths: set[str] = set()
    answers = 0
    for row in rows:
        day = row.created_at.astimezone(UTC).date()
        if row.role == "user":
            per_day[day] += 1
            continue
        answers += 1
        cited = [_page(c) for c in row.citations or []]
        if row.finish_reason in REFUSALS and row.retrieval_mode == "normal":
            refused_per_day[day] += 1
            refusals.append((row.question, [_page(c) for c in row.related or []]))
        if row.retrieval_mode == "normal":  # a selection's "citation" is the reader's own text
            cited_paths.update(p.doc_path for p in cited)
            cited_pages.update({_page(c, with_section=False) for c in row.citations or []})
            cited_sections.update(set(cited))
        if row.feedback_rating == "down":
            excerpt = row.content[:ANSWER_EXCERPT_CHARS]
            if len(row.content) > ANSWER_EXCERPT_CHARS:
                excerpt = excerpt.rstrip() + "…"
            downs.append(
                (
                    row.created_at,
                    ThumbsDown(
                        day=day,
                        question=row.question,
                        answer=excerpt,
                        comment=row.feedback_comment,
                        cited_pages=cited,
                    ),
                )
            )
    pages = book_pages(points)
    downs.sort(key=lambda item: item[0], reverse=True)
    return InsightsReport(
        since=since,
        until=until,
        questions=sum(per_day.values()),
        answers=answers,
        refused=len(refusals),
        thumbs_down_count=len(downs),
        pages_indexed=len(pages),
        questions_per_day=[
            DayCount(day=d, questions=per_day[d], refused=refused_per_day[d])
            for d in _days(since, until)
        ],
        refused_groups=group_refusals(refusals),
        thumbs_down=[d for _, d in downs[:MAX_THUMBS_DOWN]],
        most_cited_pages=_counts(cited_pages, MAX_CITED),
        most_cited_sections=_counts(cited_sections, MAX_CITED),
        never_cited_pages=[p for path, p in sorted(pages.items()) if path not in cited_paths],
    )


CSV_COLUMNS = ("kind", "day", "text", "count", "doc_path", "title", "section", "url", "comment")


def report_csv(report: InsightsReport) -> str:
    """One flat table: a `kind` column says which list a row belongs to."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)

    def pages(refs: Sequence[PageRef | PageCount]) -> dict[str, str]:
        return {
            "doc_path": "; ".join(p.doc_path for p in refs),
            "title": "; ".join(p.title for p in refs),
            "section": "; ".join(p.section for p in refs),
            "url": "; ".join(p.url for p in refs),
        }

    def row(kind: str, **values: object) -> None:
        writer.writerow([kind, *(values.get(c, "") for c in CSV_COLUMNS[1:])])

    for d in report.questions_per_day:
        row("questions_per_day", day=d.day.isoformat(), count=d.questions)
        row("refused_per_day", day=d.day.isoformat(), count=d.refused)
    for g in report.refused_groups:
        row("refused", text=g.question, count=g.count, **pages(g.closest_pages))
    for t in report.thumbs_down:
        row(
            "thumbs_down",
            day=t.day.isoformat(),
            text=t.question,
            comment=t.comment or "",
            **pages(t.cited_pages),
        )
    for p in report.most_cited_pages:
        row("cited_page", count=p.count, **pages([p]))
    for p in report.most_cited_sections:
        row("cited_section", count=p.count, **pages([p]))
    for n in report.never_cited_pages:
        row("never_cited", **pages([n]))
    return out.getvalue()


def report_text(report: InsightsReport) -> str:
    """The report for a terminal."""
    lines = [
        f"bookchat insights {report.since:%Y-%m-%d %H:%M} → {report.until:%Y-%m-%d %H:%M} UTC",
        f"  questions {report.questions}, answers {report.answers}, refused {report.refused}, "
        f"thumbs down {report.thumbs_down_count}, pages indexed {report.pages_indexed}",
        "",
        "Questions per day",
    ]
    peak = max((d.questions for d in report.questions_per_day), default=0) or 1
    for d in report.questions_per_day:
        bar = "#" * round(30 * d.questions / peak)
        lines.append(f"  {d.day}  {d.questions:>5}  refused {d.refused:>4}  {bar}")
    lines += ["", "Refused questions (content gaps)"]
    for g in report.refused_groups:
        lines.append(f"  {g.count:>4}× {g.question}")
        for other in g.examples[1:]:
            lines.append(f"        also: {other}")
        if g.closest_pages:
            closest = ", ".join(f"{p.doc_path}#{p.section}" for p in g.closest_pages)
            lines.append(f"        closest: {closest}")
    lines += ["", "Thumbs-down answers"]
    for t in report.thumbs_down:
        lines.append(f"  {t.day}  {t.question}")
        if t.comment:
            lines.append(f"        comment: {t.comment}")
        if t.cited_pages:
            lines.append("        cited: " + ", ".join(p.doc_path for p in t.cited_pages))
    lines += ["", "Most-cited pages"]
    lines += [f"  {p.count:>5}  {p.doc_path}  ({p.title})" for p in report.most_cited_pages]
    lines += ["", "Most-cited sections"]
    lines += [f"  {p.count:>5}  {p.doc_path} › {p.section}" for p in report.most_cited_sections]
    lines += ["", f"Pages never cited ({len(report.never_cited_pages)})"]
    lines += [f"  {p.doc_path}  ({p.title})" for p in report.never_cited_pages]
    return "\n".join(lines) + "\n"
