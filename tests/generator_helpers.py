"""What the generator tests share: a request with history, and event collection."""

from __future__ import annotations

from bookchat.llm.base import (
    AnswerGenerator,
    GenerationError,
    GenerationEvent,
    GenerationRequest,
    TokenDelta,
    Turn,
)

REQUEST = GenerationRequest(
    system_instruction="You are a tutor for the book. Answer only from the context.",
    contents=[
        Turn(role="user", text="What is a robot?"),
        Turn(role="model", text="A machine that senses and acts [1]."),
        Turn(role="user", text="What is odometry?"),
    ],
    question="What is odometry?",
    context=[],
)


async def collect(
    generator: AnswerGenerator, request: GenerationRequest = REQUEST
) -> tuple[list[GenerationEvent], GenerationError | None]:
    """Every event the generator yields, and the GenerationError it ended with (if any)."""
    events: list[GenerationEvent] = []
    try:
        async for event in generator.stream(request):
            events.append(event)
    except GenerationError as exc:
        return events, exc
    return events, None


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))
