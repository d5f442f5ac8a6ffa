"""The package's rooms and their import directions (an AST walk: no import-linter needed).

- The product never imports `bookchat.devtools` (bench, soak, fakes, evaluation).
- Lower layers never reach up: `text`, `settings`, `llm`, `db` import none of `ingest`,
  `search`, `answer`, `chat`; `ingest` and `search` import neither `answer` nor `chat`;
  `answer` does not import `chat`.
- No import cycles among modules, counting imports inside functions too (a lazy import
  that closes a circle is still a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bookchat

PACKAGE_ROOT = Path(bookchat.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE_ROOT.rglob("*.py") if "sample_book" not in p.parts}


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every bookchat module `path` imports, anywhere in the file (resolved to modules)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` is module a.b.c when that exists, else a name in a.b.
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        for name in names:
            if name == "bookchat" or name.startswith("bookchat."):
                while name not in MODULES and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.add(name)
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_walk_sees_the_package() -> None:
    # Guards the test itself: a broken walk would find no edges and pass everything.
    assert {"bookchat.app", "bookchat.cli", "bookchat.search.retriever"} <= MODULES.keys()
    assert "bookchat.answer.pipeline" in GRAPH["bookchat.runtime"]
    assert "bookchat.search.types" in GRAPH["bookchat.ingest.pipeline"]


def test_the_product_never_imports_devtools() -> None:
    offenders = {
        module: sorted(t for t in targets if _room(t) == "devtools")
        for module, targets in GRAPH.items()
        if _room(module) != "devtools"
    }
    assert {m: t for m, t in offenders.items() if t} == {}


FORBIDDEN = {
    "text": {"ingest", "search", "answer", "chat", "llm", "db"},
    "settings": {"ingest", "search", "answer", "chat", "llm", "db"},
    "llm": {"ingest", "search", "answer", "chat", "db"},
    "db": {"ingest", "search", "answer", "chat", "llm"},
    "ingest": {"answer", "chat"},
    "search": {"answer", "chat", "ingest"},
    "answer": {"chat", "ingest"},
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_lower_layers_do_not_reach_up(room: str) -> None:
    bad = {
        module: sorted(t for t in targets if _room(t) in FORBIDDEN[room])
        for module, targets in GRAPH.items()
        if _room(module) == room
    }
    assert {m: t for m, t in bad.items() if t} == {}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    GRAPH["bookchat.text"].add("bookchat.answer.pipeline")
    try:
        assert any("bookchat.text" in c for c in _cycles())
    finally:
        GRAPH["bookchat.text"].discard("bookchat.answer.pipeline")
