"""`python -m bookchat.devtools.bench.inprocess`: the chat path's own cost, in one process.

`bookchat bench` measures a real server from outside; its figures move with the machine's
load (issue 15's rounds saw the bare floor move from 0.66 to 1.41 ms between runs). This
driver measures what a change to the chat path does, steadily enough to compare a commit
with its parent:

- the product app (`create_app`) is called as a raw ASGI app, one chat after the other,
  on SQLite (or `--database-url`) and the embedded store, with the fake Gemini (instant,
  one word per chunk) in a thread; no server, no sockets, no load generator;
- the first `--skip` chats warm the caches (they are not counted);
- `--mode cpu` prints the process CPU (the fake's thread included) and the event loop
  thread's CPU per chat;
  `--mode cprofile` the Python calls per chat and the modules that take the time (and
  `--dump FILE` writes the pstats); `--mode callgrind` runs the counted chats inside a
  C callback, so that valgrind collects only them:

      valgrind --tool=callgrind --collect-atstart=no --toggle-collect=closure_fcn \\
          --separate-threads=yes python -m bookchat.devtools.bench.inprocess \\
          --mode callgrind --chats 120 --skip 20

  then `totals` of the event loop thread's file (`callgrind.out.<pid>-01`) ÷ 100 is the
  instruction count per chat that issue 15's rows in the README quote.

Every chat must end with `done` and no persistence warning; the driver exits 1 if one
does not. It is a developer tool like the bench: never imported by the product.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bookchat.devtools.bench.cli import SAMPLE_QUESTIONS, _answer, _bodies
from bookchat.devtools.bench.server import bench_env, prepare_data
from bookchat.devtools.fake_gemini import FakeGemini

__all__ = ["main"]

_Message = dict[str, Any]


class _Driver:
    """The app's lifespan and sequential chats on one event loop."""

    def __init__(self, app: Any, bodies: Sequence[bytes]) -> None:
        self.app = app
        self.bodies = bodies
        self.failures: list[str] = []
        self._lifespan_in: asyncio.Queue[_Message] = asyncio.Queue()
        self._lifespan_out: asyncio.Queue[_Message] = asyncio.Queue()
        self._lifespan: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async def lifespan() -> None:
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            await self.app(scope, self._lifespan_in.get, self._lifespan_out.put)

        self._lifespan = asyncio.create_task(lifespan())
        await self._lifespan_in.put({"type": "lifespan.startup"})
        message = await self._lifespan_out.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {message}")

    async def stop(self) -> None:
        await self._lifespan_in.put({"type": "lifespan.shutdown"})
        await self._lifespan_out.get()
        if self._lifespan is not None:
            await self._lifespan

    async def chat(self, n: int) -> None:
        body = self.bodies[n % len(self.bodies)]
        finished = asyncio.get_running_loop().create_future()
        sent = False

        async def receive() -> _Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished  # the client stays until the stream ends
            return {"type": "http.disconnect"}

        chunks: list[bytes] = []

        async def send(message: _Message) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/v1/chat",
            "raw_path": b"/api/v1/chat",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"content-type", b"application/json"),
                (b"accept", b"text/event-stream"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 40000 + n % 1000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await self.app(scope, receive, send)
        if not finished.done():
            finished.set_result(None)
        stream = b"".join(chunks)
        if b"event: done" not in stream or b"persistence_warning" in stream:
            self.failures.append(stream[-300:].decode(errors="replace"))

    async def chats(self, start: int, stop: int) -> None:
        for n in range(start, stop):
            await self.chat(n)


def _module_of(filename: str) -> str:
    """ "bookchat/search", "litestar/routes", "std/asyncio" … for a profile's file name."""
    name = re.sub(r".*site-packages/", "", filename)
    name = re.sub(r".*/python3\.\d+/", "std/", name)
    name = re.sub(r".*/src/", "", name)
    parts = name.split("/")
    return "/".join(parts[:2]) if len(parts) > 1 else parts[0]


def _report_profile(stats: Any, chats: int, top: int = 20) -> None:
    seconds: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for (filename, _, function), (_, ncalls, tottime, _, _) in stats.stats.items():
        key = f"builtin {function[:40]}" if filename == "~" else _module_of(filename)
        seconds[key] += tottime
        calls[key] += ncalls
    total = sum(seconds.values()) or 1.0
    print(f"calls per chat {sum(calls.values()) / chats:.0f}")
    for key, value in seconds.most_common(top):
        print(
            f"{value / chats * 1e6:9.1f} µs {value / total * 100:5.1f} %"
            f" {calls[key] / chats:8.1f} calls  {key}"
        )


def run(
    mode: str,
    chats: int,
    skip: int,
    tokens: int,
    dump: Path | None = None,
    database_url: str | None = None,
    token_delay: float = 0.0,
) -> int:
    """Measure `chats - skip` chats after `skip` warm-up ones; 0 when every chat ended well.

    `database_url`: another database than the temporary SQLite file (e.g. an empty
    PostgreSQL database; it is migrated here). `token_delay`: seconds between the fake's
    chunks, so that each arrives on its own as from a real model (with none, a chat's
    chunks arrive a few per read)."""
    from bookchat.settings import SAMPLE_BOOK

    with tempfile.TemporaryDirectory(prefix="bookchat-inprocess-") as tmp:
        data = Path(tmp)
        with FakeGemini(answer=_answer(tokens), words_per_chunk=1, token_delay=token_delay) as fake:
            env = bench_env(data, fake.api_url)
            if database_url is not None:
                env["DATABASE_URL"] = database_url
            prepare_data(env, Path(SAMPLE_BOOK))
            saved = dict(os.environ)
            os.environ.update({k: v for k, v in env.items() if k.isupper()})
            try:
                from bookchat.app import create_app

                app = create_app()  # reads its settings from the environment
            finally:
                os.environ.clear()
                os.environ.update(saved)
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            driver = _Driver(app, _bodies(list(SAMPLE_QUESTIONS), 2000))
            loop.run_until_complete(driver.start())
            loop.run_until_complete(driver.chats(0, skip))
            counted = chats - skip
            if mode == "callgrind":
                # valgrind's --toggle-collect=closure_fcn collects inside this C callback only.
                callback = ctypes.CFUNCTYPE(None)(
                    lambda: loop.run_until_complete(driver.chats(skip, chats))
                )
                callback()
                print(f"callgrind: {counted} chats counted (chats {skip + 1}–{chats})")
            elif mode == "cprofile":
                import cProfile
                import pstats

                profile = cProfile.Profile(time.thread_time)
                profile.enable()
                loop.run_until_complete(driver.chats(skip, chats))
                profile.disable()
                stats = pstats.Stats(profile)
                if dump is not None:
                    stats.dump_stats(str(dump))
                _report_profile(stats, counted)
            else:
                process, thread = time.process_time(), time.thread_time()
                loop.run_until_complete(driver.chats(skip, chats))
                process, thread = time.process_time() - process, time.thread_time() - thread
                print(
                    f"cpu per chat {process / counted * 1000:.3f} ms (process), "
                    f"{thread / counted * 1000:.3f} ms (event loop thread), {counted} chats"
                )
            loop.run_until_complete(driver.stop())
            loop.close()
    for failure in driver.failures[:3]:
        print(f"a chat did not end with `done`: …{failure}", file=sys.stderr)
    if driver.failures:
        print(f"{len(driver.failures)} of {chats} chats failed", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bookchat.devtools.bench.inprocess",
        description="CPU, calls or instructions per chat of the product app, in one process",
    )
    parser.add_argument("--mode", choices=("cpu", "cprofile", "callgrind"), default="cpu")
    parser.add_argument("--chats", type=int, default=420, help="chats in all (default 420)")
    parser.add_argument("--skip", type=int, default=20, help="warm-up chats not counted")
    parser.add_argument("--tokens", type=int, default=50, help="answer words (one per chunk)")
    parser.add_argument("--dump", type=Path, help="cprofile: also write the pstats here")
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        help="seconds between the fake's chunks (e.g. 0.001: each token read on its own)",
    )
    parser.add_argument(
        "--database-url",
        help="an empty database to use instead of a temporary SQLite file (migrated here), "
        "e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/inprocess",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.skip < args.chats:
        parser.error("--skip must be at least 0 and below --chats")
    return run(
        args.mode,
        args.chats,
        args.skip,
        args.tokens,
        args.dump,
        args.database_url,
        args.token_delay,
    )


if __name__ == "__main__":
    sys.exit(main())
