"""Request and response bodies of the chat API (msgspec Structs, validated by Litestar)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from bookchat.answer.grounding import Citation

RetrievalMode = Literal["normal", "selected_text_only"]
ContentTypeName = Literal["prose", "code", "table", "lab", "quiz", "assessment"]
# PostgreSQL text cannot hold NUL: refuse it in every stored or searched string (400, not 5xx).
NO_NUL = r"^[^\x00]*$"
FilterValue = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
FilterList = Annotated[list[FilterValue], Meta(max_length=20)]

# The one definition of "blank", shared by the server and the OpenAPI document: every
# character Python's str.isspace() accepts, plus the zero-width ones JSON Schema's \s
# (ECMAScript) or a reader would also see as nothing (BOM, zero-width space).
BLANK_CHARACTERS = frozenset(
    [chr(c) for c in range(0x110000) if chr(c).isspace()] + ["\ufeff", "\u200b"]
)
_BLANK_CLASS = "".join(f"\\u{ord(c):04x}" for c in sorted(BLANK_CHARACTERS))
# Some character that is neither blank nor NUL, and no NUL anywhere (ECMAScript and
# Python regex alike: \uXXXX escapes only).
NOT_BLANK = rf"^[^\x00]*[^{_BLANK_CLASS}\x00][^\x00]*$"


def is_blank(text: str) -> bool:
    """Only blank characters (or nothing): the server's rule, documented as `NOT_BLANK`."""
    return all(c in BLANK_CHARACTERS for c in text)


MAX_MESSAGE_CHARS = 4000
MAX_SELECTION_CHARS = 10_000
MAX_DOC_PATH_CHARS = 512  # the column's size
MAX_SECTION_CHARS = 300


def cut_at_word(text: str, limit: int) -> str:
    """`text` if it fits, else its longest prefix of at most `limit` characters that ends
    at a word boundary (whitespace or `/`); a single over-long word is cut hard."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1]
    boundary = max(cut.rfind(" "), cut.rfind("\t"), cut.rfind("\n"), cut.rfind("/"))
    return (cut[:boundary] if boundary > 0 else text[:limit]).rstrip()


class ChatFilters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    modules: FilterList = msgspec.field(default_factory=list)
    chapters: FilterList = msgspec.field(default_factory=list)
    content_types: Annotated[list[ContentTypeName], Meta(max_length=6)] = msgspec.field(
        default_factory=list
    )
    tags: FilterList = msgspec.field(default_factory=list)
    top_k: Annotated[int, Meta(ge=1, le=20)] = 5


class ChatRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A question. `selected_text` is required (and the only context) in `selected_text_only`."""

    message: Annotated[str, Meta(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    session_id: UUID | None = None
    mode: RetrievalMode = "normal"
    selected_text: Annotated[str, Meta(max_length=MAX_SELECTION_CHARS)] | None = None
    # Page hints (the book's widget sends `document.title`): longer ones are cut at a word
    # boundary, not refused; the body limit (MAX_BODY_BYTES) bounds them.
    source_doc_path: Annotated[str, Meta(pattern=NO_NUL)] | None = None
    source_section: Annotated[str, Meta(pattern=NO_NUL)] | None = None
    filters: ChatFilters | None = None

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a validation error (HTTP 400).
        if "\x00" in self.message or (self.selected_text and "\x00" in self.selected_text):
            raise ValueError("text must not contain NUL characters")
        if is_blank(self.message):
            raise ValueError("message must not be blank")
        if self.mode == "selected_text_only" and is_blank(self.selected_text or ""):
            raise ValueError("selected_text is required when mode is selected_text_only")
        if self.source_doc_path is not None:
            self.source_doc_path = cut_at_word(self.source_doc_path, MAX_DOC_PATH_CHARS)
        if self.source_section is not None:
            self.source_section = cut_at_word(self.source_section, MAX_SECTION_CHARS)


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatResponse(msgspec.Struct, kw_only=True):
    """The whole answer at once (`Accept: application/json`)."""

    message_id: UUID
    session_id: UUID
    answer: str
    citations: list[Citation]
    usage: Usage
    grounded: bool
    finish_reason: str
    token: str | None = None  # only when this request created a new anonymous user
    persistence_warning: str | None = None


# SSE event payloads (BRIEF §6). Documented in OpenAPI; encoded with msgspec on the wire.
class SessionEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    session_id: UUID
    message_id: UUID
    token: str | None = None


class CitationsEvent(msgspec.Struct, kw_only=True):
    citations: list[Citation]


class TokenEvent(msgspec.Struct, kw_only=True):
    content: str


class DoneEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    message_id: UUID
    session_id: UUID
    citations: list[Citation]
    usage: Usage
    finish_reason: str
    grounded: bool
    persistence_warning: str | None = None


class ErrorEvent(msgspec.Struct, kw_only=True):
    code: str
    message: str
    retryable: bool


class SessionSummary(msgspec.Struct, kw_only=True):
    id: UUID
    title: str
    message_count: int
    last_activity: datetime
    created_at: datetime


class SessionList(msgspec.Struct, kw_only=True):
    sessions: list[SessionSummary]
    total: int


class MessageOut(msgspec.Struct, kw_only=True):
    id: UUID
    role: Literal["user", "assistant"]
    content: str
    retrieval_mode: RetrievalMode
    citations: list[Citation]
    status: Literal["complete", "streaming", "interrupted", "failed"]
    created_at: datetime


class MessageList(msgspec.Struct, kw_only=True):
    session_id: UUID
    messages: list[MessageOut]


class FeedbackRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rating: Literal["up", "down"]
    comment: Annotated[str, Meta(max_length=2000, pattern=NO_NUL)] | None = None


class FeedbackOut(msgspec.Struct, kw_only=True):
    message_id: UUID
    rating: Literal["up", "down"]
    comment: str | None


class ErrorDetail(msgspec.Struct, kw_only=True):
    code: str
    message: str


class ErrorEnvelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every 4xx/5xx body. A chat that failed after its question was stored (JSON mode's
    502/504) also says where it is: `session_id`, `message_id` and a new user's `token`."""

    error: ErrorDetail
    session_id: UUID | None = None
    message_id: UUID | None = None
    token: str | None = None


class MigrateSessionsRequest(msgspec.Struct, kw_only=True):
    """A guest's bookchat token; without one (or one bookchat does not know as a guest's),
    the tokenless sessions bound to the caller's client IP move instead."""

    anonymous_token: Annotated[str, Meta(max_length=512, pattern=NO_NUL)] | None = None


class MigrateSessionsResponse(msgspec.Struct, kw_only=True):
    migrated_count: int
