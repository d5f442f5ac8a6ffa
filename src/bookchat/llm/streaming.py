"""Deadlines, retries and fallback for streamed answers, shared by every provider.

Policy (BRIEF §7): 429/5xx are retried with backoff only before the first token, then
the next route (fallback model, possibly of another provider) is tried; one
first-token deadline and one total deadline bound the whole call (retries and
fallbacks included); anything after the first token is final, because the caller has
already shown the partial text. A provider (`gemini.py`, `openai.py`) only knows how
to open its stream, decode its chunks into `StreamPiece`s and classify its errors.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import httpx
import msgspec

from bookchat.llm.base import (
    ErrorCode,
    GenerationError,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    TokenDelta,
)
from bookchat.llm.health import LLMHealth, stream_failed

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BACKOFF = 10.0

# Close tasks must outlive a cancelled consumer; asyncio only keeps weak references.
_BACKGROUND: set[asyncio.Task[None]] = set()


class StreamPiece(msgspec.Struct, frozen=True, kw_only=True):
    """One decoded provider chunk, in provider-neutral terms (made once per chunk: a
    msgspec Struct is built in C, where a frozen dataclass sets each field in Python)."""

    text: str = ""
    finish_reason: str | None = None  # lower case: "stop", "max_tokens", "safety", ...
    finish_blocked: bool = False  # the finish reason is a safety stop
    prompt_blocked: bool = False  # the provider refused the prompt itself
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ProviderStream(Protocol):
    """One streamed provider call."""

    model: str

    async def next_piece(self, deadline: float) -> StreamPiece:
        """The next piece; TimeoutError past `deadline` (loop time), StopAsyncIteration at end.

        A stream that decodes several pieces per read may also offer `buffered_piece()`:
        the next piece when one is decoded already, else None (no waiting, no deadline).
        """
        ...

    async def close(self) -> None:
        """Release the HTTP response at once (the provider sees its connection close).

        A stream whose close never waits may also offer it as a plain method,
        `close_now()`, which `close_shielded` then calls instead."""
        ...


class Provider(Protocol):
    """How one provider opens streams and classifies its failures."""

    name: str

    def open_stream(self, model: str, request: GenerationRequest) -> ProviderStream: ...

    def is_retryable(self, exc: BaseException) -> bool: ...

    def is_rate_limited(self, exc: BaseException) -> bool: ...

    def retry_hint(self, exc: BaseException) -> float | None: ...

    def describe(self, exc: BaseException) -> str: ...


class StreamDeadline:
    """A provider stream's deadline as one loop timer for the whole stream.

    `asyncio.timeout_at` around each read that waits made a `Timeout`, a timer handle and
    its cancellation per read, i.e. per token when tokens arrive one by one. Like it, this
    cancels the task only while the task waits in `wait()`, and turns that cancellation
    (and no other) into `TimeoutError`; a deadline that passed meanwhile fails the next
    `wait()` at once. A new deadline (the first token's, then the total one) re-arms it.
    """

    __slots__ = ("_fired", "_timer", "_waiting", "_when")

    def __init__(self) -> None:
        self._when: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: asyncio.Task[object] | None = None
        self._fired = False

    async def wait(self, deadline: float, read: Callable[[], Awaitable[T]]) -> T:
        """`await read()`, or TimeoutError once loop time reaches `deadline`."""
        if deadline != self._when:
            if self._timer is not None:
                self._timer.cancel()
            self._when, self._fired = deadline, False
            self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)
        if self._fired:
            raise TimeoutError
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._waiting = task
        try:
            return await read()
        except asyncio.CancelledError:
            if self._fired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._waiting = None

    def _fire(self) -> None:
        self._timer = None
        self._fired = True
        if self._waiting is not None:
            self._waiting.cancel()

    def cancel(self) -> None:
        """Drop the timer (the stream is closed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass(frozen=True, slots=True)
class Route:
    """A model of a provider; a generator tries its routes in order."""

    provider: Provider
    model: str


class ShardedTransport(httpx.AsyncBaseTransport):
    """Spreads requests over several connection pools.

    httpcore's pool rescans every connection on each request and response close, so
    one pool with 500 live streams spends most of its CPU there (measured: raw
    streaming throughput fell 4x from 100 to 500 concurrent streams). Small pools
    keep that scan short.
    """

    def __init__(self, shards: int, limits: httpx.Limits) -> None:
        # One TLS context for all pools: building one loads the CA bundle (~60 ms).
        tls = httpx.create_ssl_context()
        self._pools = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(shards)]
        self._turn = itertools.count()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pools[next(self._turn) % len(self._pools)]
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def provider_transport() -> ShardedTransport:
    """The transport of every provider's httpx client: sized for hundreds of live streams."""
    return ShardedTransport(16, httpx.Limits(max_connections=256, max_keepalive_connections=32))


def backoff_delay(attempt: int, base: float, hint: float | None, cap: float) -> float:
    """Exponential backoff with jitter; the server's hint wins when it gives one."""
    if hint is not None:
        return min(cap, hint) * random.uniform(1.0, 1.1)
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


async def close_shielded(stream: ProviderStream) -> None:
    """`stream.close()` that completes even when the consumer is being cancelled."""
    close_now: Callable[[], None] | None = getattr(stream, "close_now", None)
    if close_now is not None:
        # A close that never waits cannot be cut short: no task and shield around it (a
        # task, two callbacks and three loop iterations at the end of every answer).
        try:
            close_now()
        except Exception:  # closing must never mask the caller's outcome
            logger.debug("closing a provider stream failed", exc_info=True)
        return

    async def close() -> None:
        try:
            await stream.close()
        except Exception:  # closing must never mask the caller's outcome
            logger.debug("closing a provider stream failed", exc_info=True)

    task = asyncio.ensure_future(close())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    await asyncio.shield(task)


async def _first_piece(stream: ProviderStream, deadline: float) -> StreamPiece:
    """The first piece that says something: OpenAI-style servers open with an empty
    role-only chunk, which must not count as the first token (nor end the retries)."""
    while True:
        piece = await stream.next_piece(deadline)
        if piece.text or piece.finish_reason is not None or piece.prompt_blocked:
            return piece


class StreamingGenerator:
    """`AnswerGenerator` over routes (provider + model), with retries, fallback, deadlines."""

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        first_token_timeout: float,
        total_timeout: float,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        if not routes:
            raise ValueError("a generator needs at least one route")
        self.name = routes[0].model
        self.routes = tuple(routes)
        self._first_token_timeout = first_token_timeout
        self._total_timeout = total_timeout
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._max_backoff = max_backoff

    # `TrackedGenerator` passes its `LLMHealth` to `stream` rather than wrapping it.
    reports_health = True

    async def stream(
        self, request: GenerationRequest, health: LLMHealth | None = None
    ) -> AsyncIterator[GenerationEvent]:
        """Yield `TokenDelta`s then one `GenerationFinished`, or raise `GenerationError`.

        `health` is told what `TrackedGenerator` would tell it (the first event: the model
        answered; an exception: `stream_failed`) without an async generator around this
        one, which every token would pass through.
        """
        reported = False
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            total_deadline = started + self._total_timeout
            first_deadline = min(started + self._first_token_timeout, total_deadline)
            stream, piece = await self._open(request, first_deadline)
            # A piece already read needs no coroutine of `next_piece` (most of them, when
            # a read holds several chunks).
            buffered: Callable[[], StreamPiece | None] | None = getattr(
                stream, "buffered_piece", None
            )
            # The relay loop is inlined here: one async generator fewer for every chunk.
            finish: str | None = None
            blocked = False
            prompt_tokens = completion_tokens = 0
            try:
                while True:
                    if piece.prompt_blocked:
                        raise GenerationError(
                            "generation_blocked",
                            "The question was blocked by the model's safety filters.",
                        )
                    if piece.prompt_tokens is not None:
                        prompt_tokens = piece.prompt_tokens
                    if piece.completion_tokens is not None:
                        completion_tokens = piece.completion_tokens
                    if piece.text:
                        if health is not None and not reported:
                            health.succeeded()  # the first token: the model answered
                            reported = True
                        yield TokenDelta(text=piece.text)
                    if piece.finish_reason is not None:
                        finish, blocked = piece.finish_reason, piece.finish_blocked
                    try:
                        if buffered is not None and (ready := buffered()) is not None:
                            piece = ready
                        else:
                            piece = await stream.next_piece(total_deadline)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise GenerationError(
                            "generation_timeout", "The answer took too long.", retryable=True
                        ) from None
                    except Exception as exc:
                        raise GenerationError(
                            "generation_failed",
                            f"The answer stream broke off ({type(exc).__name__}).",
                            retryable=True,
                        ) from exc
            finally:
                await close_shielded(stream)
            if finish is None:
                raise GenerationError(
                    "generation_failed", "The answer stream ended unexpectedly.", retryable=True
                )
            if blocked:
                raise GenerationError(
                    "generation_blocked", "The answer was blocked by the model's safety filters."
                )
            if health is not None and not reported:
                health.succeeded()  # no token, yet the model answered
            yield GenerationFinished(
                finish_reason=finish,
                model=stream.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        except Exception as exc:  # cancellation (BaseException) is not the model's fault
            if health is not None:
                stream_failed(health, exc)
            raise

    async def _open(
        self, request: GenerationRequest, deadline: float
    ) -> tuple[ProviderStream, StreamPiece]:
        """Start a stream that delivered its first piece, retrying and falling back."""
        loop = asyncio.get_running_loop()
        last_error: BaseException | None = None
        last_route = self.routes[0]
        for route in self.routes:
            for attempt in range(self._max_retries + 1):
                stream = route.provider.open_stream(route.model, request)
                try:
                    return stream, await _first_piece(stream, deadline)
                except TimeoutError:
                    await close_shielded(stream)
                    raise GenerationError(
                        "generation_timeout",
                        "The model did not start answering in time.",
                        retryable=True,
                    ) from None
                except StopAsyncIteration:
                    await close_shielded(stream)
                    raise GenerationError(
                        "generation_failed", "The model returned an empty answer.", retryable=True
                    ) from None
                except asyncio.CancelledError:
                    await close_shielded(stream)
                    raise
                except Exception as exc:
                    await close_shielded(stream)
                    if not route.provider.is_retryable(exc):
                        raise GenerationError(
                            "generation_failed",
                            f"The model request was rejected ({route.provider.describe(exc)}).",
                        ) from exc
                    last_error, last_route = exc, route
                if attempt == self._max_retries:
                    break
                hint = route.provider.retry_hint(last_error)
                delay = backoff_delay(attempt, self._backoff_base, hint, self._max_backoff)
                if loop.time() + delay >= deadline:
                    break  # sleeping would pass the deadline: try the fallback now
                logger.info(
                    "%s %s failed with %s; retry %d in %.2fs",
                    route.provider.name,
                    route.model,
                    route.provider.describe(last_error),
                    attempt + 1,
                    delay,
                )
                await asyncio.sleep(delay)
            logger.warning(
                "%s %s exhausted retries (%s)",
                route.provider.name,
                route.model,
                route.provider.describe(last_error) if last_error else "no error",
            )
        assert last_error is not None
        provider = last_route.provider
        code: ErrorCode = (
            "rate_limited" if provider.is_rate_limited(last_error) else "generation_failed"
        )
        message = (
            "The model is rate limited; try again shortly."
            if code == "rate_limited"
            else f"The model is unavailable ({provider.describe(last_error)})."
        )
        raise GenerationError(code, message, retryable=True) from last_error
