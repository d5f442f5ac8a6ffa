"""The project's one fake Gemini HTTP server (tests, benchmark, manual runs).

It speaks the slice of the Gemini Developer API (`v1beta`) that google-genai uses:

- `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` (SSE, chunked)
- `POST /v1beta/models/{model}:generateContent`
- `POST /v1beta/models/{model}:batchEmbedContents` and `:embedContent`
- `GET /v1beta/models` and `GET /v1beta/models/{model}`

Why hand-written on `asyncio.start_server` instead of a web framework: the fake must
(1) run in-process on its own event loop in a background thread so synchronous and
async tests can both use it, (2) notice precisely when a client drops a connection,
even while it is idling between two tokens, and (3) inject faults at byte level
(close the socket mid chunked body, never answer). No HTTP library offers all three,
and the HTTP/1.1 subset google-genai's httpx transport needs is small.

Usage in tests::

    with FakeGemini(token_delay=0.01) as fake:
        fake.script_generate(RateLimited(), RateLimited())   # then a normal answer
        fake.set_model_rule("gemini-main", ServerError())   # this model always fails
        client = make_genai_client("test-key", fake.base_url)
        ...
        assert fake.wait_until(lambda f: f.stream_closed_early, timeout=1.0)

From a shell: `python -m bookchat.devtools.fake_gemini --port 8765 --first-token-ms 300
--tokens-per-second 30`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import msgspec

DEFAULT_ANSWER = (
    "Odometry integrates wheel rotations to estimate pose [1]. It drifts over time [2]."
)
DEFAULT_EMBED_DIM = 768
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 32 * 1024 * 1024
_READ_SIZE = 64 * 1024
_JSON_TYPE = b"application/json; charset=UTF-8"

# --------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Reply:
    """Answer normally. `texts` gives the exact chunk texts (else the fake's answer)."""

    texts: tuple[str, ...] | None = None
    first_token_delay: float | None = None
    token_delay: float | None = None

    def __init__(
        self,
        texts: Iterable[str] | None = None,
        *,
        first_token_delay: float | None = None,
        token_delay: float | None = None,
    ) -> None:
        object.__setattr__(self, "texts", tuple(texts) if texts is not None else None)
        object.__setattr__(self, "first_token_delay", first_token_delay)
        object.__setattr__(self, "token_delay", token_delay)


@dataclass(frozen=True)
class RateLimited:
    """HTTP 429 RESOURCE_EXHAUSTED with a RetryInfo detail (`retry_delay=None` omits it)."""

    retry_delay: float | None = 0.05
    message: str = "Resource has been exhausted (e.g. check quota)."


@dataclass(frozen=True)
class ServerError:
    """An HTTP 5xx (500 INTERNAL by default, 503 UNAVAILABLE, ...)."""

    status: int = 500
    message: str = "An internal error has occurred. Please retry or report."


@dataclass(frozen=True)
class Hang:
    """Never send a token (nor, with `send_headers=False`, even the status line)."""

    send_headers: bool = True


@dataclass(frozen=True)
class Cut:
    """Send `after_tokens` tokens, then close the socket without the final chunk."""

    after_tokens: int = 3


@dataclass(frozen=True)
class Blocked:
    """Finish with a safety reason after `after_tokens` tokens (`finishReason: SAFETY`)."""

    after_tokens: int = 0
    reason: str = "SAFETY"


@dataclass(frozen=True)
class PromptBlocked:
    """Reject the prompt itself: one chunk with `promptFeedback.blockReason`."""

    reason: str = "SAFETY"


Behaviour = Reply | RateLimited | ServerError | Hang | Cut | Blocked | PromptBlocked

# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RequestRecord:
    """One request the fake received. `body` is the parsed JSON (None when absent)."""

    method: str
    path: str
    model: str | None
    action: str | None
    body: Any
    at: float  # time.monotonic()


@dataclass(frozen=True)
class StreamClosure:
    """How a streamed response ended.

    `reason` is `completed` (final chunk written), `client_closed` (the client went
    away before the final chunk), `cut` (the fake closed it on purpose) or `shutdown`.
    """

    model: str
    started_at: float
    closed_at: float
    tokens_sent: int
    reason: str


@dataclass
class _State:
    answer: str = DEFAULT_ANSWER
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    words_per_chunk: int = 1
    generate_script: deque[Behaviour] = field(default_factory=deque)
    embed_script: deque[Behaviour] = field(default_factory=deque)
    model_rules: dict[str, Behaviour] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    generate_requests: int = 0
    embed_requests: int = 0
    embed_texts: int = 0
    closures: list[StreamClosure] = field(default_factory=list)
    active_streams: int = 0


# --------------------------------------------------------------------------- embeddings

_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = (
    "ational",
    "ization",
    "ations",
    "ation",
    "ments",
    "ment",
    "ness",
    "ings",
    "ing",
    "ies",
    "ied",
    "ers",
    "er",
    "ed",
    "es",
    "ly",
    "s",
)


def _stem(word: str) -> str:
    # A crude suffix stripper: enough for "drifts"/"drifting"/"drift" to share a bucket.
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def fake_embedding(
    text: str, dim: int = DEFAULT_EMBED_DIM, title: str | None = None
) -> list[float]:
    """Deterministic L2-normalised hashed bag of word stems: similar texts are close."""
    vector = [0.0] * dim
    weighted: list[tuple[str, float]] = [(w, 1.0) for w in _WORD.findall(text.lower())]
    if title:
        weighted += [(w, 0.5) for w in _WORD.findall(title.lower())]
    for word, weight in weighted:
        digest = hashlib.blake2b(_stem(word).encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dim
        sign = 1.0 if digest[4] & 1 else -1.0
        vector[bucket] += sign * weight
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        # An empty text still needs a unit vector; pick a fixed axis.
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]


def _text_of(content: Any) -> str:
    if isinstance(content, dict):
        parts = content.get("parts") or []
        return " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
    return ""


# --------------------------------------------------------------------------- HTTP plumbing


class _PeerClosed(Exception):
    """The client closed the connection."""


class _Connection:
    """One keep-alive connection: a read buffer plus a pending 'EOF watch' read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.pending_read: asyncio.Task[bytes] | None = None

    async def _read_some(self) -> bytes:
        if self.pending_read is not None:
            task, self.pending_read = self.pending_read, None
            return await task
        try:
            return await self.reader.read(_READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def read_until(self, marker: bytes, limit: int) -> bytes | None:
        """Bytes up to and including `marker`; None on a clean EOF before any byte."""
        while True:
            index = self.buffer.find(marker)
            if index >= 0:
                end = index + len(marker)
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise ValueError("headers too large")
            chunk = await self._read_some()
            if not chunk:
                if self.buffer:
                    raise _PeerClosed
                return None
            self.buffer += chunk

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = await self._read_some()
            if not chunk:
                raise _PeerClosed
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def pause(self, seconds: float) -> None:
        """Wait `seconds` (inf = until the peer leaves); raise `_PeerClosed` on EOF.

        A read is kept pending while waiting so a client that closes the connection
        mid-stream is noticed at once, not at the next write.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if self.pending_read is None:
                self.pending_read = loop.create_task(self._guarded_read())
            remaining = deadline - loop.time()
            if remaining <= 0:
                if not self.pending_read.done():
                    return
                timeout: float | None = 0
            else:
                timeout = None if math.isinf(remaining) else remaining
            done, _ = await asyncio.wait({self.pending_read}, timeout=timeout)
            if not done:
                return
            data = self.pending_read.result()
            self.pending_read = None
            if not data:
                raise _PeerClosed
            # A client that sends while we stream (pipelining) keeps its bytes.
            self.buffer += data
            if remaining <= 0:
                return

    async def _guarded_read(self) -> bytes:
        try:
            return await self.reader.read(_READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise _PeerClosed
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise _PeerClosed from exc

    def close(self) -> None:
        """Close after flushing what was written (a cut stream still delivers its tokens)."""
        if self.pending_read is not None:
            self.pending_read.cancel()
            self.pending_read = None
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MODEL_PATH = re.compile(r"^/v1beta/models/([^:/]+)(?::([A-Za-z]+))?$")


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n".encode()


def _json_response(status: int, payload: Any, *, keep_alive: bool) -> bytes:
    body = msgspec.json.encode(payload)
    head = (
        _status_line(status)
        + b"Content-Type: "
        + _JSON_TYPE
        + b"\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + (b"" if keep_alive else b"Connection: close\r\n")
        + b"\r\n"
    )
    return head + body


def _error_payload(status: int, message: str, retry_delay: float | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if retry_delay is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay:g}s"}
        ]
    return {"error": error}


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# --------------------------------------------------------------------------- the server


class FakeGemini:
    """A fake Gemini API on 127.0.0.1, on its own event loop in a daemon thread.

    Behaviour per request: a model rule for the request's model wins; otherwise the
    next scripted behaviour (generate and embed calls have separate queues); otherwise
    a normal reply. All accessors are thread-safe and return copies.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        answer: str = DEFAULT_ANSWER,
        first_token_delay: float = 0.0,
        token_delay: float = 0.0,
        words_per_chunk: int = 1,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._defaults = (answer, first_token_delay, token_delay, max(1, words_per_chunk))
        self._state = self._fresh_state()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start serving in a background thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(
                        self._serve_connection, self._host, self._requested_port, backlog=2048
                    )
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-gemini", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close every connection and stop the loop thread."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop = None
        self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What to pass as `HttpOptions(base_url=...)`."""
        return f"http://{self._host}:{self.port}"

    label = "Gemini"

    @property
    def api_url(self) -> str:
        """What a client of this API takes as its base URL."""
        return self.base_url

    # ----------------------------------------------------------------- controls

    def configure(
        self,
        *,
        answer: str | None = None,
        first_token_delay: float | None = None,
        token_delay: float | None = None,
        words_per_chunk: int | None = None,
    ) -> None:
        """Change the default answer text and pacing for later requests.

        `words_per_chunk` > 1 models real Gemini, which streams several tokens per chunk.
        """
        with self._lock:
            if answer is not None:
                self._state.answer = answer
            if first_token_delay is not None:
                self._state.first_token_delay = first_token_delay
            if token_delay is not None:
                self._state.token_delay = token_delay
            if words_per_chunk is not None:
                self._state.words_per_chunk = max(1, words_per_chunk)

    def script_generate(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next generate calls, one per request, in order."""
        with self._lock:
            self._state.generate_script.extend(behaviours)

    def script_embed(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next embed calls, one per request, in order."""
        with self._lock:
            self._state.embed_script.extend(behaviours)

    def set_model_rule(self, model: str, behaviour: Behaviour | None) -> None:
        """Every request for `model` gets `behaviour` (None removes the rule)."""
        with self._lock:
            if behaviour is None:
                self._state.model_rules.pop(model, None)
            else:
                self._state.model_rules[model] = behaviour

    def reset(self) -> None:
        """Forget scripts, rules, logs and counters; restore default answer and pacing."""
        with self._lock:
            active = self._state.active_streams
            self._state = self._fresh_state()
            self._state.active_streams = active
            self._changed.notify_all()

    def _fresh_state(self) -> _State:
        answer, first_token_delay, token_delay, words_per_chunk = self._defaults
        return _State(
            answer=answer,
            first_token_delay=first_token_delay,
            token_delay=token_delay,
            words_per_chunk=words_per_chunk,
        )

    # ----------------------------------------------------------------- observations

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received, oldest first."""
        with self._lock:
            return list(self._state.requests)

    @property
    def generate_requests(self) -> int:
        """Number of generate calls (streamed or not)."""
        with self._lock:
            return self._state.generate_requests

    @property
    def embed_requests(self) -> int:
        """Number of embed HTTP calls."""
        with self._lock:
            return self._state.embed_requests

    @property
    def embed_texts(self) -> int:
        """Number of texts embedded across all embed calls."""
        with self._lock:
            return self._state.embed_texts

    @property
    def stream_closures(self) -> list[StreamClosure]:
        """How every finished stream ended."""
        with self._lock:
            return list(self._state.closures)

    @property
    def stream_closed_early(self) -> list[StreamClosure]:
        """Streams the client closed before the final chunk."""
        with self._lock:
            return [c for c in self._state.closures if c.reason == "client_closed"]

    @property
    def active_streams(self) -> int:
        """Streams currently open."""
        with self._lock:
            return self._state.active_streams

    def wait_until(self, predicate: Callable[[FakeGemini], object], timeout: float) -> bool:
        """Block until `predicate(self)` is truthy or `timeout` passes; returns the outcome.

        Woken by every state change, so tests need no sleeps. Do not call it from a
        coroutine whose event loop must make progress meanwhile: use `until()`.
        """
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                # Capped so a change between the check and the wait is never missed for long.
                self._changed.wait(min(remaining, 0.05))

    async def until(self, predicate: Callable[[FakeGemini], object], within: float) -> bool:
        """Async `wait_until`: polls every 5 ms for `within` seconds without blocking the loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate(self):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # ----------------------------------------------------------------- internals

    def _record(self, record: RequestRecord, *, generate: bool, embed_texts: int = 0) -> None:
        with self._lock:
            self._state.requests.append(record)
            if generate:
                self._state.generate_requests += 1
            elif record.action in ("batchEmbedContents", "embedContent"):
                self._state.embed_requests += 1
                self._state.embed_texts += embed_texts
            self._changed.notify_all()

    def _next_behaviour(self, model: str, *, generate: bool) -> tuple[Behaviour, _State]:
        with self._lock:
            state = self._state
            rule = state.model_rules.get(model)
            if rule is not None:
                return rule, state
            queue = state.generate_script if generate else state.embed_script
            return (queue.popleft() if queue else Reply()), state

    def _stream_opened(self) -> None:
        with self._lock:
            self._state.active_streams += 1

    def _stream_closed(self, closure: StreamClosure) -> None:
        with self._lock:
            self._state.active_streams -= 1
            self._state.closures.append(closure)
            self._changed.notify_all()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = _Connection(reader, writer)
        try:
            while True:
                request = await self._read_request(conn)
                if request is None:
                    break
                keep_alive = request.headers.get("connection", "").lower() != "close"
                if not await self._dispatch(conn, request, keep_alive=keep_alive):
                    break
                if not keep_alive:
                    break
        except (_PeerClosed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only `stop()` cancels connections; re-raising would make asyncio's
            # start_server callback log the cancellation as an error.
            pass
        except ValueError as exc:
            with contextlib.suppress(_PeerClosed):
                await conn.write(
                    _json_response(400, _error_payload(400, str(exc)), keep_alive=False)
                )
        finally:
            self._connections.discard(task)
            conn.close()

    async def _read_request(self, conn: _Connection) -> _Request | None:
        head = await conn.read_until(b"\r\n\r\n", _MAX_HEADER_BYTES)
        if head is None:
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise ValueError("malformed request line") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("malformed header line")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ValueError("chunked request bodies are not supported by the fake")
        length = int(headers.get("content-length", "0") or 0)
        if length > _MAX_BODY_BYTES:
            raise ValueError("request body too large")
        body = await conn.read_exactly(length) if length else b""
        parts = urlsplit(target)
        return _Request(method.upper(), unquote(parts.path), parts.query, headers, body)

    async def _dispatch(self, conn: _Connection, request: _Request, *, keep_alive: bool) -> bool:
        """Answer one request; False means the connection must not be reused."""
        now = time.monotonic()
        if request.method == "GET" and request.path.rstrip("/") == "/v1beta/models":
            self._record(RequestRecord("GET", request.path, None, None, None, now), generate=False)
            with self._lock:
                models = sorted(set(self._state.model_rules) | {"gemini-2.5-flash"})
            payload = {"models": [self._model_info(m) for m in models]}
            await conn.write(_json_response(200, payload, keep_alive=keep_alive))
            return True
        match = _MODEL_PATH.match(request.path)
        if match is None:
            self._record(
                RequestRecord(request.method, request.path, None, None, None, now), generate=False
            )
            await conn.write(
                _json_response(
                    404, _error_payload(404, f"Unknown path {request.path}"), keep_alive=keep_alive
                )
            )
            return True
        model, action = match.group(1), match.group(2)
        if request.method == "GET" and action is None:
            self._record(RequestRecord("GET", request.path, model, None, None, now), generate=False)
            await conn.write(_json_response(200, self._model_info(model), keep_alive=keep_alive))
            return True
        try:
            body = msgspec.json.decode(request.body) if request.body else None
        except msgspec.DecodeError:
            await conn.write(
                _json_response(
                    400,
                    _error_payload(400, "Invalid JSON payload received."),
                    keep_alive=keep_alive,
                )
            )
            return True
        record = RequestRecord(request.method, request.path, model, action, body, now)
        if request.method == "POST" and action in ("streamGenerateContent", "generateContent"):
            self._record(record, generate=True)
            behaviour, state = self._next_behaviour(model, generate=True)
            if action == "streamGenerateContent":
                return await self._stream(
                    conn, model, body, behaviour, state, keep_alive=keep_alive
                )
            return await self._generate_once(
                conn, model, body, behaviour, state, keep_alive=keep_alive
            )
        if request.method == "POST" and action in ("batchEmbedContents", "embedContent"):
            entries = self._embed_entries(action, body)
            self._record(record, generate=False, embed_texts=len(entries))
            behaviour, _state = self._next_behaviour(model, generate=False)
            return await self._embed(conn, action, entries, behaviour, keep_alive=keep_alive)
        self._record(record, generate=False)
        await conn.write(
            _json_response(
                404,
                _error_payload(404, f"Unsupported method {request.method} {action}"),
                keep_alive=keep_alive,
            )
        )
        return True

    @staticmethod
    def _model_info(model: str) -> dict[str, Any]:
        return {
            "name": f"models/{model}",
            "displayName": model,
            "supportedGenerationMethods": [
                "generateContent",
                "streamGenerateContent",
                "embedContent",
                "batchEmbedContents",
            ],
        }

    async def _write_failure(
        self, conn: _Connection, behaviour: Behaviour, *, keep_alive: bool
    ) -> bool | None:
        """Handle behaviours that fail before any body; None means 'not a failure'."""
        if isinstance(behaviour, RateLimited):
            payload = _error_payload(429, behaviour.message, behaviour.retry_delay)
            await conn.write(_json_response(429, payload, keep_alive=keep_alive))
            return True
        if isinstance(behaviour, ServerError):
            payload = _error_payload(behaviour.status, behaviour.message)
            await conn.write(_json_response(behaviour.status, payload, keep_alive=keep_alive))
            return True
        return None

    # ----------------------------------------------------------------- generate

    @staticmethod
    def _prompt_tokens(body: Any) -> int:
        if not isinstance(body, dict):
            return 0
        words = 0
        for content in body.get("contents") or []:
            words += len(_text_of(content).split())
        words += len(_text_of(body.get("systemInstruction")).split())
        return words

    @staticmethod
    def _tokens(behaviour: Behaviour, state: _State) -> list[str]:
        if isinstance(behaviour, Reply) and behaviour.texts is not None:
            return list(behaviour.texts)
        words = state.answer.split(" ")
        tokens = [w + " " for w in words[:-1]] + [words[-1]]
        size = state.words_per_chunk
        return ["".join(tokens[i : i + size]) for i in range(0, len(tokens), size)]

    @staticmethod
    def _chunk_payload(
        model: str,
        response_id: str,
        text: str | None,
        *,
        prompt_tokens: int,
        sent: int,
        finish: str | None,
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"index": 0}
        if text is not None:
            candidate["content"] = {"parts": [{"text": text}], "role": "model"}
        if finish is not None:
            candidate["finishReason"] = finish
            if finish != "STOP":
                candidate["safetyRatings"] = [
                    {
                        "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                        "probability": "HIGH",
                        "blocked": True,
                    }
                ]
        return {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": sent,
                "totalTokenCount": prompt_tokens + sent,
            },
            "modelVersion": model,
            "responseId": response_id,
        }

    async def _stream(
        self,
        conn: _Connection,
        model: str,
        body: Any,
        behaviour: Behaviour,
        state: _State,
        *,
        keep_alive: bool,
    ) -> bool:
        failed = await self._write_failure(conn, behaviour, keep_alive=keep_alive)
        if failed is not None:
            return failed
        first_delay = state.first_token_delay
        token_delay = state.token_delay
        if isinstance(behaviour, Reply):
            if behaviour.first_token_delay is not None:
                first_delay = behaviour.first_token_delay
            if behaviour.token_delay is not None:
                token_delay = behaviour.token_delay
        tokens = self._tokens(behaviour, state)
        prompt_tokens = self._prompt_tokens(body)
        response_id = uuid.uuid4().hex[:20]
        started = time.monotonic()
        sent = 0
        reason = "client_closed"
        self._stream_opened()
        try:
            if isinstance(behaviour, Hang) and not behaviour.send_headers:
                await conn.pause(math.inf)
                return False
            await conn.write(
                _status_line(200)
                + b"Content-Type: text/event-stream\r\n"
                + b"Transfer-Encoding: chunked\r\n"
                + (b"" if keep_alive else b"Connection: close\r\n")
                + b"\r\n"
            )
            if isinstance(behaviour, Hang):
                await conn.pause(math.inf)
                return False
            if isinstance(behaviour, PromptBlocked):
                payload = {
                    "promptFeedback": {"blockReason": behaviour.reason},
                    "usageMetadata": {
                        "promptTokenCount": prompt_tokens,
                        "totalTokenCount": prompt_tokens,
                    },
                    "modelVersion": model,
                    "responseId": response_id,
                }
                await conn.write(_chunk(b"data: " + msgspec.json.encode(payload) + b"\r\n\r\n"))
                await conn.write(b"0\r\n\r\n")
                reason = "completed"
                return True
            limit = len(tokens)
            finish: str = "STOP"
            if isinstance(behaviour, Cut):
                limit = min(behaviour.after_tokens, len(tokens))
            elif isinstance(behaviour, Blocked):
                limit = min(behaviour.after_tokens, len(tokens))
                finish = behaviour.reason
            await conn.pause(first_delay)
            for index in range(limit):
                if index:
                    await conn.pause(token_delay)
                last = index == limit - 1 and isinstance(behaviour, Reply)
                sent += 1
                payload = self._chunk_payload(
                    model,
                    response_id,
                    tokens[index],
                    prompt_tokens=prompt_tokens,
                    sent=sent,
                    finish=finish if last else None,
                )
                await conn.write(_chunk(b"data: " + msgspec.json.encode(payload) + b"\r\n\r\n"))
            if isinstance(behaviour, Cut):
                reason = "cut"
                return False
            if not isinstance(behaviour, Reply) or limit == 0:
                # Blocked (or an empty answer): a final chunk with only the finish reason.
                payload = self._chunk_payload(
                    model, response_id, None, prompt_tokens=prompt_tokens, sent=sent, finish=finish
                )
                await conn.write(_chunk(b"data: " + msgspec.json.encode(payload) + b"\r\n\r\n"))
            await conn.write(b"0\r\n\r\n")
            reason = "completed"
            return True
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        finally:
            self._stream_closed(StreamClosure(model, started, time.monotonic(), sent, reason))

    async def _generate_once(
        self,
        conn: _Connection,
        model: str,
        body: Any,
        behaviour: Behaviour,
        state: _State,
        *,
        keep_alive: bool,
    ) -> bool:
        failed = await self._write_failure(conn, behaviour, keep_alive=keep_alive)
        if failed is not None:
            return failed
        if isinstance(behaviour, Hang):
            await conn.pause(math.inf)
            return False
        if isinstance(behaviour, Cut):
            # A truncated body: announce more bytes than are sent, then close.
            await conn.write(
                _status_line(200)
                + b"Content-Type: "
                + _JSON_TYPE
                + b'\r\nContent-Length: 100000\r\n\r\n{"candidates": ['
            )
            return False
        prompt_tokens = self._prompt_tokens(body)
        response_id = uuid.uuid4().hex[:20]
        if isinstance(behaviour, PromptBlocked):
            payload: dict[str, Any] = {
                "promptFeedback": {"blockReason": behaviour.reason},
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "totalTokenCount": prompt_tokens,
                },
                "modelVersion": model,
                "responseId": response_id,
            }
        else:
            tokens = self._tokens(behaviour, state)
            finish = "STOP"
            if isinstance(behaviour, Blocked):
                tokens, finish = tokens[: behaviour.after_tokens], behaviour.reason
            await conn.pause(state.first_token_delay)
            payload = self._chunk_payload(
                model,
                response_id,
                "".join(tokens) or None,
                prompt_tokens=prompt_tokens,
                sent=len(tokens),
                finish=finish,
            )
        await conn.write(_json_response(200, payload, keep_alive=keep_alive))
        return True

    # ----------------------------------------------------------------- embed

    @staticmethod
    def _embed_entries(action: str | None, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            return []
        if action == "embedContent":
            return [body]
        return [r for r in body.get("requests") or [] if isinstance(r, dict)]

    async def _embed(
        self,
        conn: _Connection,
        action: str | None,
        entries: list[dict[str, Any]],
        behaviour: Behaviour,
        *,
        keep_alive: bool,
    ) -> bool:
        failed = await self._write_failure(conn, behaviour, keep_alive=keep_alive)
        if failed is not None:
            return failed
        if isinstance(behaviour, Hang | Cut):
            await conn.pause(math.inf)
            return False
        vectors = [
            {
                "values": fake_embedding(
                    _text_of(entry.get("content")),
                    int(entry.get("outputDimensionality") or DEFAULT_EMBED_DIM),
                    entry.get("title"),
                )
            }
            for entry in entries
        ]
        payload: dict[str, Any] = (
            {"embedding": vectors[0] if vectors else {"values": []}}
            if action == "embedContent"
            else {"embeddings": vectors}
        )
        await conn.write(_json_response(200, payload, keep_alive=keep_alive))
        return True


# --------------------------------------------------------------------------- CLI


def main(
    argv: list[str] | None = None, *, fake_class: type[FakeGemini] | None = None, port: int = 8765
) -> None:
    """Run the fake (or a subclass: the fake OpenAI server) from a shell until interrupted."""
    fake_class = fake_class or FakeGemini
    parser = argparse.ArgumentParser(
        prog=f"python -m {fake_class.__module__}", description=f"A fake {fake_class.label} API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--first-token-ms", type=float, default=0.0)
    parser.add_argument(
        "--tokens-per-second", type=float, default=0.0, help="0 means as fast as possible"
    )
    parser.add_argument("--answer", default=DEFAULT_ANSWER)
    parser.add_argument(
        "--words-per-chunk", type=int, default=1, help="words per SSE chunk (Gemini sends several)"
    )
    parser.add_argument(
        "--answer-words",
        type=int,
        default=0,
        help="repeat the answer's words up to this many tokens",
    )
    args = parser.parse_args(argv)
    answer = args.answer
    if args.answer_words > 0:
        words = answer.split()
        answer = " ".join(words[i % len(words)] for i in range(args.answer_words))
    fake = fake_class(
        host=args.host,
        port=args.port,
        answer=answer,
        first_token_delay=args.first_token_ms / 1000,
        token_delay=1 / args.tokens_per_second if args.tokens_per_second > 0 else 0.0,
        words_per_chunk=args.words_per_chunk,
    )
    with fake:
        print(f"fake {fake.label} listening on {fake.api_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
