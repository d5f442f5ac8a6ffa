"""Docusaurus conventions: doc ids, routes (slugs) and heading anchors.

Mirrors `@docusaurus/plugin-content-docs` (numberPrefix.ts, slug.ts, docs.ts) and
github-slugger 2.x as used by Docusaurus' heading-id remark plugin, so that chunk URLs
deep-link to exactly the places a built Docusaurus site serves.

Routes are the doc *slug*, relative to the docs plugin's base URL: the caller's site URL
must therefore include `baseUrl` + `routeBasePath` (e.g. `https://book.example.com/docs`).
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath

# numberPrefix.ts: "7.0-foo" and "2021-11-foo" look like versions/dates, not prefixes.
_IGNORED_PREFIX = re.compile(r"^\d+[-_.]\d+")
_NUMBER_PREFIX = re.compile(r"^(?P<number>\d+)\s*[-_.]+\s*(?P<suffix>[^-_.\s].*)$", re.DOTALL)

# parseMarkdownHeadingId() in @docusaurus/utils.
_HEADING_ID = re.compile(r"\s*\{#((?:.(?!\{#|\}))*.)\}$")

# github-slugger strips these Unicode general categories (see its script/generate-regex).
_STRIPPED_CATEGORIES = frozenset(
    {"No", "Pe", "Pf", "Pi", "Ps", "Po", "Pd", "Sc", "Sk", "Sm", "So", "Cc", "Co", "Cf", "Cn"}
    | {"Zl", "Zp", "Zs"}
)
# Other_Alphabetic symbols (circled/squared letters) that github-slugger keeps.
_ALPHABETIC_SYMBOL_RANGES = (
    (0x24B6, 0x24E9),
    (0x1F130, 0x1F149),
    (0x1F150, 0x1F169),
    (0x1F170, 0x1F189),
)

INDEX_NAMES = frozenset({"index", "readme"})


def strip_number_prefix(name: str) -> str:
    """Remove a Docusaurus number prefix (`01-intro` → `intro`), keeping date/version names."""
    if _IGNORED_PREFIX.match(name):
        return name
    match = _NUMBER_PREFIX.match(name)
    return match.group("suffix") if match else name


def strip_path_number_prefixes(path: str) -> str:
    """Strip number prefixes from every segment of a posix path."""
    return "/".join(strip_number_prefix(segment) for segment in path.split("/"))


@dataclass(frozen=True, slots=True)
class DocRoute:
    """Where Docusaurus publishes one doc file."""

    doc_id: str  # e.g. "sensors/lidar"
    route: str  # slug relative to the docs base URL, always starting with "/"
    is_category_index: bool  # index.md / README.md / <folder>/<folder>.md


def is_category_index(rel_path: str) -> bool:
    """True for `index`, `readme` or a file named like its folder (Docusaurus isCategoryIndex)."""
    path = PurePosixPath(rel_path)
    parent = path.parent.name
    stem = path.stem.lower()
    return stem in INDEX_NAMES or (parent != "" and stem == parent.lower())


def doc_route(
    rel_path: str, *, front_matter_id: str | None = None, front_matter_slug: str | None = None
) -> DocRoute:
    """Compute a doc's id and route from its path relative to the docs root (posix, with ext)."""
    path = PurePosixPath(rel_path)
    source_dir = str(path.parent)  # "." at the docs root, like path.dirname in Node
    base_id = front_matter_id if front_matter_id else strip_number_prefix(path.stem)
    if "/" in base_id:
        raise ValueError(f"{rel_path}: document id {base_id!r} cannot include slash")
    dir_stripped = strip_path_number_prefixes(source_dir) if source_dir != "." else ""
    doc_id = f"{dir_stripped}/{base_id}" if dir_stripped else base_id
    dir_slug = "/" if source_dir == "." else f"/{dir_stripped}/"
    index = is_category_index(rel_path)
    if front_matter_slug and front_matter_slug.startswith("/"):
        route = front_matter_slug
    elif not front_matter_slug and index:
        route = dir_slug
    else:
        route = resolve_pathname(front_matter_slug or base_id, dir_slug)
    return DocRoute(doc_id=doc_id, route=route, is_category_index=index)


def resolve_pathname(to: str, base: str) -> str:
    """Resolve a relative URL path against a directory path like a browser (resolve-pathname)."""
    if to.startswith("/"):
        return to
    joined = posixpath.normpath(posixpath.join(base, to))
    # normpath keeps a leading "//" and cannot climb above "/", matching resolve-pathname.
    joined = "/" + joined.lstrip("/")
    if to.endswith("/") and not joined.endswith("/"):
        joined += "/"
    return joined


def page_url(site_url: str, route: str, anchor: str = "") -> str:
    """Site URL (trailing slash ignored) + route + optional `#anchor`."""
    url = site_url.rstrip("/") + route
    return f"{url}#{anchor}" if anchor else url


def parse_heading_id(heading: str) -> tuple[str, str | None]:
    """Split `Title {#custom-id}` into (`Title`, `custom-id`); id is None when absent."""
    match = _HEADING_ID.search(heading)
    if match is None:
        return heading, None
    return heading[: match.start()] + heading[match.end() :], match.group(1)


@lru_cache(maxsize=4096)
def _is_stripped(char: str) -> bool:
    if char in " -":
        return False
    code = ord(char)
    if any(low <= code <= high for low, high in _ALPHABETIC_SYMBOL_RANGES):
        return False
    return unicodedata.category(char) in _STRIPPED_CATEGORIES


def github_slug(value: str, *, maintain_case: bool = False) -> str:
    """github-slugger's `slug()`: lowercase, drop punctuation/symbols, spaces → `-`."""
    if not maintain_case:
        value = value.lower()
    return "".join(c for c in value if not _is_stripped(c)).replace(" ", "-")


class GithubSlugger:
    """Stateful github-slugger: repeated slugs on one page get `-1`, `-2`, …"""

    def __init__(self) -> None:
        self._occurrences: dict[str, int] = {}

    def slug(self, value: str, *, maintain_case: bool = False) -> str:
        """Slug `value`, de-duplicated against every slug produced so far."""
        original = github_slug(value, maintain_case=maintain_case)
        result = original
        while result in self._occurrences:
            self._occurrences[original] += 1
            result = f"{original}-{self._occurrences[original]}"
        self._occurrences[result] = 0
        return result

    def reset(self) -> None:
        """Forget all slugs (a new page)."""
        self._occurrences.clear()


def heading_anchor(text: str, slugger: GithubSlugger) -> tuple[str, str]:
    """Return (display text, anchor) for a heading's plain text, as Docusaurus assigns it.

    An explicit `{#id}` is used verbatim and, as in Docusaurus, not registered with the
    slugger, so it does not push later duplicates to `-1`.
    """
    display, explicit = parse_heading_id(text)
    if explicit is not None:
        return display, explicit
    return text, slugger.slug(text)
