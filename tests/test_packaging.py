"""How bookchat is built and shipped: the container recipe, the wheel, the dependency list."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in ("dev", "bench"):
        specs += project["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


def _locked() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_constraints_file_pins_every_declared_dependency_within_its_range() -> None:
    # CI and the Containerfile install with `-c constraints.txt`: a dependency added to
    # pyproject.toml without `just lock`, or a range moved past the locked version, fails here.
    pins = _locked()
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not in constraints.txt (run `just lock`)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt has {req.name}=={pins[name]}, outside {req}"
        )


def test_runtime_dependencies_have_compatible_ranges() -> None:
    # Ranges in pyproject.toml (exact versions live in the lock): every runtime dependency has
    # a lower bound, and the framework, ORM toolkit, LLM SDK and vector engines an upper one.
    runtime = {
        canonicalize_name(r.name): r
        for r in (
            Requirement(s)
            for s in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        )
    }
    for req in runtime.values():
        assert any(s.operator in (">=", "~=", "==") for s in req.specifier), str(req)
    for name in (
        "litestar",
        "advanced-alchemy",
        "google-genai",
        "openai",
        "qdrant-client",
        "qdrant-edge-py",
    ):
        spec = runtime[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name}: a range, not an exact pin"
        assert any(s.operator in ("<", "~=") for s in spec), f"{name}: no upper bound"


def test_directly_imported_packages_are_declared() -> None:
    # Every third-party top-level import in src/bookchat is a declared dependency (runtime or
    # the bench extra), not something that happens to arrive with another package. Imports
    # guarded by `except ImportError` are optional and may stay undeclared.
    import_names = {  # import name -> distribution name, where they differ
        "yaml": "pyyaml",
        "dotenv": "python-dotenv",
        "jwt": "pyjwt",
        "qdrant_edge": "qdrant-edge-py",
        "markdown_it": "markdown-it-py",
        "mdit_py_plugins": "mdit-py-plugins",
        "google": "google-genai",
        "uuid_utils": "uuid-utils",
        "prometheus_client": "prometheus-client",
        "advanced_alchemy": "advanced-alchemy",
        "qdrant_client": "qdrant-client",
        "grpc": "grpcio",
    }
    declared = {canonicalize_name(r.name) for r in _requirements()}
    stdlib = sys.stdlib_module_names
    found: set[str] = set()
    for path in (ROOT / "src" / "bookchat").rglob("*.py"):
        tree = ast.parse(path.read_text())
        optional = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.Try)
            and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers
            )
            for inner in ast.walk(ast.Module(body=node.body, type_ignores=[]))
        }
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    third_party = {m for m in found if m not in stdlib and m not in ("bookchat", "__future__")}
    assert {"numpy", "anyio", "prometheus_client", "qdrant_client"} <= third_party
    missing = {m for m in third_party if canonicalize_name(import_names.get(m, m)) not in declared}
    assert missing == set()


def test_qdrant_client_is_not_imported_with_the_embedded_store(tmp_path: Path) -> None:
    # qdrant-client drags in grpcio, protobuf and numpy: only a Qdrant server store needs it.
    script = textwrap.dedent(
        """
        import sys
        from litestar.testing import TestClient
        from bookchat.app import create_app
        import bookchat.cli  # the CLI's own imports too

        with TestClient(create_app()) as client:
            assert client.get("/healthz").status_code == 200
            client.get("/api/v1/health")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("qdrant_client", "grpc")))
        """
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("QDRANT", "GEMINI", "DATABASE"))
    }
    env |= {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'b.db'}",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
