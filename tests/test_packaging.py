"""How bookchat is built and shipped: the container recipe, the wheel, the dependency list."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_podman_build_asks_for_the_docker_format() -> None:
    # podman writes OCI images by default, and the OCI format drops HEALTHCHECK: every
    # documented or scripted build must say --format docker (container/test.sh then checks
    # the built image really carries the healthcheck).
    places = [ROOT / "README.md", ROOT / "Containerfile", ROOT / "justfile"]
    places += sorted((ROOT / "container").glob("*.sh"))
    builds = []
    for path in places:
        for line in path.read_text().splitlines():
            if re.search(r"\bpodman build\b", line) and not line.lstrip().startswith("step "):
                builds.append((path.name, line.strip()))
    assert len(builds) >= 4, builds  # README, Containerfile, justfile, container/test.sh
    assert [b for b in builds if "--format docker" not in b[1]] == []


def test_container_test_is_in_ci_and_checks_what_the_issue_lists() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "just container-test" in ci
    script = (ROOT / "container" / "test.sh").read_text()
    for check in ("bookchat migrate", "/healthz", "podman healthcheck run", "PORT=", "podman stop"):
        assert check in script, check
