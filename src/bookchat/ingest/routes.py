"""Docusaurus conventions: doc ids, routes (slugs) and heading anchors.

Mirrors `@docusaurus/plugin-content-docs` (numberPrefix.ts, slug.ts, docs.ts) and
github-slugger 2.x as used by Docusaurus' heading-id remark plugin, so that chunk URLs
deep-link to exactly the places a built Docusaurus site serves.

Routes are the doc *slug*, relative to the docs plugin's base URL: the caller's site URL
must therefore include `baseUrl` + `routeBasePath` (e.g. `https://book.example.com/docs`).

The site's `trailingSlash` option rewrites every published URL (`applyTrailingSlash` in
@docusaurus/utils-common); `link_style()` reads it from a `docusaurus.config.*` above the
docs folder unless `--trailing-slash` / `TRAILING_SLASH` says otherwise.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

# numberPrefix.ts: "7.0-foo" and "2021-11-foo" look like versions/dates, not prefixes.
_IGNORED_PREFIX = re.compile(r"^\d+[-_.]\d+")
_NUMBER_PREFIX = re.compile(r"^(?P<number>\d+)\s*[-_.]+\s*(?P<suffix>[^-_.\s].*)$", re.DOTALL)

# parseMarkdownHeadingId() in @docusaurus/utils, without its leading `\s*`: searched, that
# rescans every run of spaces from each of its positions (quadratic); rstrip() does it.
_HEADING_ID = re.compile(r"\{#((?:.(?!\{#|\}))*.)\}$")

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


def page_url(site_url: str, route: str, anchor: str = "", style: LinkStyle | None = None) -> str:
    """Site URL (trailing slash ignored) + route, `trailingSlash` applied, + `#anchor`."""
    url = site_url.rstrip("/") + route
    if style is not None and style.trailing_slash is not None:
        parts = urlsplit(url)
        path = apply_trailing_slash(parts.path or "/", style.trailing_slash, style.base_url)
        url = urlunsplit(parts._replace(path=path))
    return f"{url}#{anchor}" if anchor else url


# ---------------------------------------------------------------------------------------
# trailingSlash
# ---------------------------------------------------------------------------------------

TrailingSlashChoice = Literal["auto", "true", "false", "keep"]
CONFIG_NAMES = tuple(f"docusaurus.config.{ext}" for ext in ("ts", "mts", "cts", "js", "mjs", "cjs"))
CONFIG_SEARCH_DEPTH = 3  # the site folder is normally the docs folder's parent


def apply_trailing_slash(pathname: str, trailing_slash: bool | None, base_url: str = "/") -> str:
    """Docusaurus' `applyTrailingSlash`: add (True) or remove (False) the final `/`.

    `None` (the option unset) keeps routes as written. The site root `/` and the
    `baseUrl` itself always keep their slash (Docusaurus emits `/base/index.html`).
    """
    if trailing_slash is None or pathname in ("/", base_url):
        return pathname
    if trailing_slash:
        return pathname if pathname.endswith("/") else pathname + "/"
    return pathname[:-1] if pathname.endswith("/") else pathname


@dataclass(frozen=True, slots=True)
class DocusaurusConfig:
    """The few site options bookchat reads from `docusaurus.config.*`."""

    path: Path
    trailing_slash: bool | None  # None: not set, Docusaurus keeps routes as written
    base_url: str | None
    unreadable: tuple[str, ...] = ()  # options present but not written as plain literals


@dataclass(frozen=True, slots=True)
class LinkStyle:
    """How page URLs are written: the `trailingSlash` rule and the site's `baseUrl`."""

    trailing_slash: bool | None = None
    base_url: str = "/"
    source: str = "default (routes kept as written)"  # what decided, for the CLI to show


_Token = tuple[Literal["str", "word", "punct"], str]


def _js_tokens(source: str) -> list[_Token]:
    """Strings, words and punctuation of JS/TS source; comments dropped.

    A linear scan rather than regexes, so comments and strings (URLs contain `//`)
    cannot confuse it and no pattern can backtrack on a hostile file.
    """
    tokens: list[_Token] = []
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char.isspace():
            i += 1
        elif source.startswith("//", i):
            end = source.find("\n", i)
            i = n if end < 0 else end
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif char in "'\"`":
            j, value = i + 1, []
            while j < n and source[j] != char:
                if source[j] == "\\" and j + 1 < n:
                    j += 1
                value.append(source[j])
                j += 1
            tokens.append(("str", "".join(value)))
            i = j + 1
        elif char.isalnum() or char in "_$":
            j = i
            while j < n and (source[j].isalnum() or source[j] in "_$"):
                j += 1
            tokens.append(("word", source[i:j]))
            i = j
        else:
            tokens.append(("punct", char))
            i += 1
    return tokens


def _literal_values(tokens: list[_Token], key: str) -> tuple[list[_Token], int]:
    """Values written as `key: <one token>` followed by `,` or `}`; and other uses of key."""
    values: list[_Token] = []
    other = 0
    for index, (kind, text) in enumerate(tokens):
        if kind == "punct" or text != key:
            continue
        rest = tokens[index + 1 : index + 4]
        if (
            len(rest) >= 2
            and rest[0] == ("punct", ":")
            and rest[1][0] != "punct"
            and (len(rest) == 2 or rest[2] in (("punct", ","), ("punct", "}")))
        ):
            values.append(rest[1])
        else:
            other += 1
    return values, other


def read_docusaurus_config(path: Path) -> DocusaurusConfig:
    """Read `trailingSlash` and `baseUrl` from a Docusaurus config file.

    The config is JavaScript/TypeScript, and evaluating it would need Node and would run
    the site's code (plugins, imports) during ingestion; the two options are almost
    always plain literals, so they are read from the source's tokens instead. Anything
    else (`trailingSlash: process.env.X === "1"`) is reported as unreadable.
    """
    tokens = _js_tokens(path.read_text(encoding="utf-8", errors="replace"))
    unreadable: list[str] = []
    slash_values, slash_other = _literal_values(tokens, "trailingSlash")
    written = {text if kind == "word" else "?" for kind, text in slash_values}
    trailing_slash: bool | None = None
    if slash_other or len(written) > 1 or not written <= {"true", "false", "undefined"}:
        unreadable.append("trailingSlash")
    elif written:
        trailing_slash = {"true": True, "false": False, "undefined": None}[written.pop()]
    base_values, base_other = _literal_values(tokens, "baseUrl")
    bases = {text for kind, text in base_values if kind == "str"}
    base_url = bases.pop() if len(bases) == 1 and len(base_values) == 1 else None
    if base_url is None and (base_values or base_other):
        unreadable.append("baseUrl")
    return DocusaurusConfig(
        path=path, trailing_slash=trailing_slash, base_url=base_url, unreadable=tuple(unreadable)
    )


def find_docusaurus_config(docs_root: Path) -> Path | None:
    """The `docusaurus.config.*` of the nearest folder above `docs_root`, if any."""
    for folder in list(docs_root.absolute().parents)[:CONFIG_SEARCH_DEPTH]:
        for name in CONFIG_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def link_style(docs_root: Path, choice: TrailingSlashChoice = "auto") -> LinkStyle:
    """The URL rule for a book: an explicit choice wins, else its Docusaurus config's."""
    config_path = find_docusaurus_config(docs_root)
    config = read_docusaurus_config(config_path) if config_path else None
    base_url = config.base_url if config and config.base_url else "/"
    if choice != "auto":
        value = {"true": True, "false": False, "keep": None}[choice]
        return LinkStyle(trailing_slash=value, base_url=base_url, source=f"trailing slash {choice}")
    if config is None:
        return LinkStyle()
    if "trailingSlash" in config.unreadable:
        source = f"{config.path}: trailingSlash is not a plain true/false, routes kept as written"
    elif config.trailing_slash is None:
        source = f"{config.path}: trailingSlash not set, routes kept as written"
    else:
        source = f"{config.path}: trailingSlash {str(config.trailing_slash).lower()}"
    return LinkStyle(trailing_slash=config.trailing_slash, base_url=base_url, source=source)


def parse_heading_id(heading: str) -> tuple[str, str | None]:
    """Split `Title {#custom-id}` into (`Title`, `custom-id`); id is None when absent."""
    match = _HEADING_ID.search(heading)
    if match is None:
        return heading, None
    return heading[: match.start()].rstrip() + heading[match.end() :], match.group(1)


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
