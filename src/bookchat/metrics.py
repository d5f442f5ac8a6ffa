"""Application metrics (Prometheus); request counts by route come from Litestar's plugin."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
