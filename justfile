# bookchat's entry points. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The sample book shipped with the package.
sample_book := "src/bookchat/sample_book/docs"

default:
    @just --list

# Install bookchat and its dev tools into the active Python environment
setup:
    pip install -c constraints.txt -e '.[dev]'

# Migrate, ingest the sample book and serve on http://127.0.0.1:8000 (the quick start)
up:
    bookchat up

# Run the API on granian (HOST, PORT, WORKERS or --host/--port/--workers)
serve *ARGS:
    bookchat serve {{ARGS}}

# Apply database migrations
migrate:
    bookchat migrate

# (Re-)ingest a Docusaurus docs/ tree: just ingest PATH [--site-url URL] [--recreate] [--json]
ingest PATH=sample_book *ARGS:
    bookchat ingest {{PATH}} {{ARGS}}

# Run the test suite on 2 processes (PostgreSQL/Redis tests need TEST_POSTGRES_URL / TEST_REDIS_URL)
test *ARGS:
    python -m pytest -n 2 --dist loadfile {{ARGS}}

# Regenerate constraints.txt, the exact versions CI and the container install (--upgrade to move them)
lock *ARGS:
    pip-compile -q --extra dev --extra bench --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --output-file constraints.txt {{ARGS}} pyproject.toml

# Lint and type-check
lint:
    ruff check src tests
    ruff format --check src tests
    mypy

# Benchmarks: time to first token, throughput, retrieval, ingestion (--quick for a short run)
bench *ARGS:
    bookchat bench {{ARGS}}

# The chat path's CPU, Python calls or instructions per chat, in one process (--mode cpu|cprofile|callgrind)
bench-inprocess *ARGS:
    python -m bookchat.devtools.bench.inprocess {{ARGS}}

# Answer quality on a question set (default: the sample book's)
eval *ARGS:
    bookchat eval {{ARGS}}

# Soak test: 200 concurrent conversations for 60 s against granian + PostgreSQL
soak *ARGS:
    bookchat soak {{ARGS}}

# Archive sessions idle for more than N days
archive DAYS="30":
    bookchat archive --idle-days {{DAYS}}

# Build the container image with podman (a local stand-in base image is built once under var/)
container-build TAG="bookchat":
    bash container/base-image.sh
    . container/env.sh && podman build --format docker -t {{TAG}} -f Containerfile .

# Build the image and check it: one-shot migrate, /healthz, healthcheck, non-root, PORT, SIGTERM
container-test:
    bash container/test.sh

# Author insights: questions per day, content gaps, thumbs-down answers, cited pages
insights *ARGS:
    bookchat insights {{ARGS}}

# Download the local embedding model once (EMBEDDING_PROVIDER=local: semantic search, no provider)
fetch-model *ARGS:
    bookchat fetch-model {{ARGS}}
