"""A fake OpenAI-compatible HTTP server (tests, benchmark, eval, manual runs).

It speaks the slice of the OpenAI API that bookchat's `openai` SDK client uses:

- `POST /v1/chat/completions` with `stream: true` (SSE, chunked; a last usage chunk
  when `stream_options.include_usage` is set, then `data: [DONE]`)
- `POST /v1/embeddings` (`encoding_format` `float` or `base64`, optional `dimensions`)
- `GET /v1/models`

It is the fake Gemini with another dispatcher: the same event loop in a background
thread, byte-level fault injection, behaviours (`Reply`, `RateLimited`, `ServerError`,
`Hang`, `Cut`, `Blocked` → `finish_reason: content_filter`), per-model rules, request
log and stream-closure records, so tests read the same for both providers::

    with FakeOpenAI() as fake:
        fake.set_model_rule("gpt-main", ServerError())   # this model always fails
        client = make_openai_client("test-key", fake.api_base)
        ...
        assert fake.wait_until(lambda f: f.stream_closed_early, timeout=1.0)

From a shell: `python -m bookchat.devtools.fake_openai --port 8766 --first-token-ms 300`.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
import uuid
from typing import Any

import msgspec

from bookchat.devtools import fake_gemini
from bookchat.devtools.fake_gemini import (
    DEFAULT_ANSWER,
    DEFAULT_EMBED_DIM,
    Behaviour,
    Blocked,
    Cut,
    FakeGemini,
    Hang,
    PromptBlocked,
    RateLimited,
    Reply,
    RequestRecord,
    ServerError,
    StreamClosure,
    _chunk,
    _Connection,
    _json_response,
    _Request,
    _State,
    fake_embedding,
)

__all__ = [
    "DEFAULT_ANSWER",
    "Blocked",
    "Cut",
    "FakeOpenAI",
    "Hang",
    "RateLimited",
    "Reply",
    "ServerError",
]

_CHAT = "chat.completions"
_EMBEDDINGS = "embeddings"
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


def _error_response(
    status: int, message: str, *, keep_alive: bool, retry_after: float | None = None
) -> bytes:
    """OpenAI's error envelope; a 429 may carry `retry-after-ms` like OpenAI's own."""
    payload = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "api_error"),
            "param": None,
            "code": _ERROR_TYPES.get(status),
        }
    }
    response = _json_response(status, payload, keep_alive=keep_alive)
    if retry_after is None:
        return response
    head, sep, body = response.partition(b"\r\n\r\n")
    return head + f"\r\nretry-after-ms: {round(retry_after * 1000)}".encode() + sep + body


def _text_of(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


class FakeOpenAI(FakeGemini):
    """A fake OpenAI-compatible API on 127.0.0.1 (see the module docstring).

    `api_base` is what the `openai` client takes as `base_url`. Behaviour per request:
    a model rule wins, else the next scripted behaviour, else a normal reply.
    """

    def __init__(self, *, embed_dim: int = DEFAULT_EMBED_DIM, **options: Any) -> None:
        super().__init__(**options)
        self._embed_dim = embed_dim

    label = "OpenAI-compatible"

    @property
    def api_base(self) -> str:
        """What the `openai` client takes as `base_url`."""
        return f"{self.base_url}/v1"

    @property
    def api_url(self) -> str:
        return self.api_base

    def _record(self, record: RequestRecord, *, generate: bool, embed_texts: int = 0) -> None:
        with self._lock:
            self._state.requests.append(record)
            if generate:
                self._state.generate_requests += 1
            elif record.action == _EMBEDDINGS:
                self._state.embed_requests += 1
                self._state.embed_texts += embed_texts
            self._changed.notify_all()

    async def _dispatch(self, conn: _Connection, request: _Request, *, keep_alive: bool) -> bool:
        now = time.monotonic()
        path = request.path.rstrip("/")
        if request.method == "GET" and path == "/v1/models":
            self._record(RequestRecord("GET", path, None, None, None, now), generate=False)
            with self._lock:
                models = sorted(set(self._state.model_rules) | {"gpt-4o-mini"})
            payload = {
                "object": "list",
                "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in models],
            }
            await conn.write(_json_response(200, payload, keep_alive=keep_alive))
            return True
        action = {"/v1/chat/completions": _CHAT, "/v1/embeddings": _EMBEDDINGS}.get(path)
        if request.method != "POST" or action is None:
            self._record(RequestRecord(request.method, path, None, None, None, now), generate=False)
            await conn.write(
                _error_response(404, f"Unknown path {request.path}", keep_alive=keep_alive)
            )
            return True
        try:
            body = msgspec.json.decode(request.body) if request.body else {}
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            await conn.write(
                _error_response(400, "A JSON body with a model is required.", keep_alive=keep_alive)
            )
            return True
        model = body["model"]
        record = RequestRecord("POST", path, model, action, body, now)
        if action == _CHAT:
            self._record(record, generate=True)
            behaviour, state = self._next_behaviour(model, generate=True)
            if not body.get("stream"):
                await conn.write(
                    _error_response(400, "The fake only streams.", keep_alive=keep_alive)
                )
                return True
            return await self._stream_chat(
                conn, model, body, behaviour, state, keep_alive=keep_alive
            )
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs or []]
        self._record(record, generate=False, embed_texts=len(texts))
        behaviour, _state = self._next_behaviour(model, generate=False)
        return await self._embeddings(conn, model, body, texts, behaviour, keep_alive=keep_alive)

    @staticmethod
    async def _failure(conn: _Connection, behaviour: Behaviour, *, keep_alive: bool) -> bool:
        """Write a 429/5xx for those behaviours; False when `behaviour` is no such failure."""
        if isinstance(behaviour, RateLimited):
            await conn.write(
                _error_response(
                    429, behaviour.message, keep_alive=keep_alive, retry_after=behaviour.retry_delay
                )
            )
            return True
        if isinstance(behaviour, ServerError):
            await conn.write(
                _error_response(behaviour.status, behaviour.message, keep_alive=keep_alive)
            )
            return True
        return False

    async def _stream_chat(
        self,
        conn: _Connection,
        model: str,
        body: dict[str, Any],
        behaviour: Behaviour,
        state: _State,
        *,
        keep_alive: bool,
    ) -> bool:
        if await self._failure(conn, behaviour, keep_alive=keep_alive):
            return True
        if isinstance(behaviour, PromptBlocked):  # OpenAI refuses such prompts with a 400
            await conn.write(
                _error_response(400, "content_policy_violation", keep_alive=keep_alive)
            )
            return True
        first_delay, token_delay = state.first_token_delay, state.token_delay
        if isinstance(behaviour, Reply):
            if behaviour.first_token_delay is not None:
                first_delay = behaviour.first_token_delay
            if behaviour.token_delay is not None:
                token_delay = behaviour.token_delay
        tokens = self._tokens(behaviour, state)
        prompt_tokens = sum(len(_text_of(m).split()) for m in body.get("messages") or [])
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:20]}"
        created = int(time.time())

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if with_usage:
                payload["usage"] = usage
            return _chunk(b"data: " + msgspec.json.encode(payload) + b"\n\n")

        started = time.monotonic()
        sent = 0
        reason = "client_closed"
        self._stream_opened()
        try:
            await conn.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n"
                + (b"" if keep_alive else b"Connection: close\r\n")
                + b"\r\n"
            )
            if isinstance(behaviour, Hang):
                await conn.pause(math.inf)
                return False
            limit = len(tokens)
            finish = "stop"
            if isinstance(behaviour, Cut | Blocked):
                limit = min(behaviour.after_tokens, len(tokens))
            if isinstance(behaviour, Blocked):
                finish = "content_filter"
            # Like OpenAI: an empty role-only chunk at once, the first token later.
            await conn.write(event([{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
            await conn.pause(first_delay)
            for index in range(limit):
                if index:
                    await conn.pause(token_delay)
                sent += 1
                delta = {"content": tokens[index]}
                await conn.write(event([{"index": 0, "delta": delta, "finish_reason": None}]))
            if isinstance(behaviour, Cut):
                reason = "cut"
                return False
            await conn.write(event([{"index": 0, "delta": {}, "finish_reason": finish}]))
            if with_usage:
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": sent,
                    "total_tokens": prompt_tokens + sent,
                }
                await conn.write(event([], usage))
            await conn.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            reason = "completed"
            return True
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        finally:
            self._stream_closed(StreamClosure(model, started, time.monotonic(), sent, reason))

    async def _embeddings(
        self,
        conn: _Connection,
        model: str,
        body: dict[str, Any],
        texts: list[str],
        behaviour: Behaviour,
        *,
        keep_alive: bool,
    ) -> bool:
        if await self._failure(conn, behaviour, keep_alive=keep_alive):
            return True
        if isinstance(behaviour, Hang | Cut):
            await conn.pause(math.inf)
            return False
        dim = int(body.get("dimensions") or self._embed_dim)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = fake_embedding(text, dim)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        words = sum(len(t.split()) for t in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": words, "total_tokens": words},
        }
        await conn.write(_json_response(200, payload, keep_alive=keep_alive))
        return True


def main(argv: list[str] | None = None) -> None:
    """Run the fake from a shell until interrupted (the fake Gemini's options)."""
    fake_gemini.main(argv, fake_class=FakeOpenAI, port=8766)


if __name__ == "__main__":
    main()
