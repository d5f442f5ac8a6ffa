"""Application metrics (Prometheus); request counts by route come from Litestar's plugin."""

from __future__ import annotations

import time
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

from litestar.enums import ScopeType
from litestar.plugins.prometheus import PrometheusMiddleware
from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from litestar.plugins.prometheus import PrometheusConfig
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

CHAT_OUTCOMES = Counter(
    "bookchat_chat_outcomes_total",
    "Finished chat answers by outcome",
    ["outcome"],  # complete | abstained | interrupted | failed
)
TIME_TO_FIRST_TOKEN = Histogram(
    "bookchat_time_to_first_token_seconds",
    "From request start to the first answer token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20),
)
ANSWER_TOKENS = Counter(
    "bookchat_answer_tokens_total", "Tokens reported by the generator", ["kind"]
)
RETRIEVAL_LATENCY = Histogram(
    "bookchat_retrieval_seconds",
    "Retrieval latency (embedding + vector search)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
ZERO_HIT_RETRIEVALS = Counter(
    "bookchat_zero_hit_retrievals_total", "Retrievals where nothing relevant was found"
)
# livesum: with several workers (PROMETHEUS_MULTIPROC_DIR) the gauge adds up live processes.
ACTIVE_STREAMS = Gauge(
    "bookchat_active_streams", "Chat answers being streamed now", multiprocess_mode="livesum"
)
LLM_ERRORS = Counter("bookchat_llm_errors_total", "Generation failures by code", ["code"])
RATE_LIMITED = Counter("bookchat_rate_limited_total", "Requests refused with 429", ["tier"])
PERSISTENCE_FAILURES = Counter(
    "bookchat_persistence_failures_total", "Answers streamed but not saved"
)
SLOW_READERS = Counter(
    "bookchat_slow_readers_total", "Streams ended because the client stopped reading"
)


@cache
def answer_tokens(kind: str) -> Counter:
    """`ANSWER_TOKENS` for `kind`, the labelled child looked up once (prompt | completion)."""
    return ANSWER_TOKENS.labels(kind)


@cache
def chat_outcome(outcome: str) -> Counter:
    """`CHAT_OUTCOMES` for `outcome`, the labelled child looked up once."""
    return CHAT_OUTCOMES.labels(outcome)


class _RouteChildren(NamedTuple):
    in_progress: Gauge  # labelled with status 200, as Litestar's middleware does
    requests: Counter
    duration: Histogram
    errors: Counter | None  # only for 5xx


class RouteMetricsMiddleware(PrometheusMiddleware):
    """Litestar's `PrometheusMiddleware`, the same metrics, names and labels, with each
    (method, route, status)'s labelled children looked up once instead of per request.

    Per request the original builds a `Request`, two label dicts, a `functools.wraps`
    send wrapper and four `labels()` lookups under a lock. Extra labels, exemplars,
    excluded methods and websockets take the original path.
    """

    def __init__(self, app: ASGIApp, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self._plain = not (config.labels or config.exemplars or config.excluded_http_methods)
        self._children: dict[tuple[str, str, int], _RouteChildren] = {}

    def _route_children(self, method: str, path: str, status: int) -> _RouteChildren:
        children = self._children.get((method, path, status))
        if children is None:
            labels: dict[str, str | int | float] = {
                "method": method,
                "path": path,
                "status_code": status,
                "app_name": self._config.app_name,
            }
            values = [*labels.values()]
            children = _RouteChildren(
                self.requests_in_progress(labels).labels(method, path, 200, labels["app_name"]),
                self.request_count(labels).labels(*values),
                self.request_time(labels).labels(*values),
                self.requests_error_count(labels).labels(*values) if status >= 500 else None,
            )
            # Bounded as prometheus' own children are: by the app's routes and methods.
            self._children[(method, path, status)] = children
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._plain or scope["type"] != ScopeType.HTTP:
            await super().__call__(scope, receive, send)
            return
        method = scope["method"]
        path = scope["path_template"] if self._config.group_path else scope["path"]
        started = time.perf_counter()
        status = 200
        duration = 0.0

        async def timed_send(message: Message) -> None:
            nonlocal status, duration
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                duration = time.perf_counter() - started
            await send(message)

        in_progress = self._route_children(method, path, 200).in_progress
        in_progress.inc()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            in_progress.dec()
            children = self._route_children(method, path, status)
            if children.errors is not None:
                children.errors.inc()
            children.requests.inc()
            children.duration.observe(duration)
