"""Docusaurus `trailingSlash`: the rule, reading it from the site config, the option."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bookchat.cli import build_parser
from bookchat.ingest.chunking import chunk_book
from bookchat.ingest.routes import (
    apply_trailing_slash,
    find_docusaurus_config,
    link_style,
    read_docusaurus_config,
)
from bookchat.settings import SettingsError, load_settings

SITE = "https://book.example.org"
PAGES = {
    "index.md": "# Home\n\nWelcome to the book about robots.\n",
    "01-guide/index.md": "# Guide\n\nThe guide's overview page.\n\n## Scope\n\nIts scope.\n",
    "01-guide/02-setup.md": "# Setup\n\nInstall the tools first.\n",
    "01-guide/03-deep.md": "---\nslug: sub/deep/\n---\n\n# Deep\n\nA slug written with a slash.\n",
}


def write_book(root: Path, config: str | None = None) -> Path:
    docs = root / "docs"
    for rel, text in PAGES.items():
        path = docs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if config is not None:
        (root / "docusaurus.config.ts").write_text(config, encoding="utf-8")
    return docs


def page_urls(docs: Path, site_url: str = SITE, **kw: object) -> dict[str, str]:
    return {
        page.doc_path: page.chunks[0].url.split("#")[0]
        for page in chunk_book(docs, site_url=site_url, **kw)  # type: ignore[arg-type]
    }


@pytest.mark.parametrize(
    ("path", "trailing_slash", "base_url", "expected"),
    [
        ("/guide/setup", True, "/", "/guide/setup/"),
        ("/guide/", True, "/", "/guide/"),
        ("/guide/setup", False, "/", "/guide/setup"),
        ("/guide/", False, "/", "/guide"),
        ("/guide/", None, "/", "/guide/"),
        ("/guide/setup", None, "/", "/guide/setup"),
        ("/", False, "/", "/"),  # the site root keeps its slash
        ("/book/", False, "/book/", "/book/"),  # and so does the baseUrl
        ("/book/docs/", False, "/book/", "/book/docs"),
    ],
)
def test_apply_trailing_slash_follows_docusaurus(
    path: str, trailing_slash: bool | None, base_url: str, expected: str
) -> None:
    assert apply_trailing_slash(path, trailing_slash, base_url) == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (
            "true",
            {
                "index": f"{SITE}/",
                "01-guide/index": f"{SITE}/guide/",
                "01-guide/02-setup": f"{SITE}/guide/setup/",
                "01-guide/03-deep": f"{SITE}/guide/sub/deep/",
            },
        ),
        (
            "false",
            {
                "index": f"{SITE}/",  # the site root keeps its "/"
                "01-guide/index": f"{SITE}/guide",
                "01-guide/02-setup": f"{SITE}/guide/setup",
                "01-guide/03-deep": f"{SITE}/guide/sub/deep",
            },
        ),
        (
            "keep",
            {
                "index": f"{SITE}/",
                "01-guide/index": f"{SITE}/guide/",
                "01-guide/02-setup": f"{SITE}/guide/setup",
                "01-guide/03-deep": f"{SITE}/guide/sub/deep/",
            },
        ),
    ],
)
def test_routes_for_each_trailing_slash_choice(
    tmp_path: Path, choice: str, expected: dict[str, str]
) -> None:
    docs = write_book(tmp_path)
    assert page_urls(docs, trailing_slash=choice) == expected


def test_anchors_follow_the_rewritten_path(tmp_path: Path) -> None:
    docs = write_book(tmp_path)
    (guide,) = [p for p in chunk_book(docs, site_url=SITE, trailing_slash="false")
                if p.doc_path == "01-guide/index"]  # fmt: skip
    urls = [(c.url, [s.url for s in c.sections]) for c in guide.chunks]
    assert urls == [
        (f"{SITE}/guide", [f"{SITE}/guide"]),
        (f"{SITE}/guide#scope", [f"{SITE}/guide#scope"]),
    ]


def test_docs_root_under_a_route_base_path_loses_its_slash(tmp_path: Path) -> None:
    # site URL = baseUrl "/" + routeBasePath "docs": "/docs/" is not the site root.
    docs = write_book(tmp_path)
    assert page_urls(docs, f"{SITE}/docs", trailing_slash="false")["index"] == f"{SITE}/docs"


CONFIG = """
// A real config imports things and computes values; none of that runs.
import {themes as prismThemes} from 'prism-react-renderer';
import type {Config} from '@docusaurus/types';

/* trailingSlash: true (an old setting, commented out) */
const config: Config = {
  title: 'Robots', url: 'https://book.example.org', baseUrl: '/',
  // trailingSlash: true,
  trailingSlash: false,
  presets: [['classic', {docs: {routeBasePath: '/'}}]],
};

export default config;
"""


def test_config_above_the_docs_folder_sets_trailing_slash(tmp_path: Path) -> None:
    docs = write_book(tmp_path, CONFIG)
    assert find_docusaurus_config(docs) == tmp_path / "docusaurus.config.ts"
    style = link_style(docs)
    assert (style.trailing_slash, style.base_url) == (False, "/")
    assert "trailingSlash false" in style.source
    assert page_urls(docs)["01-guide/index"] == f"{SITE}/guide"
    # An explicit choice wins over the config.
    assert page_urls(docs, trailing_slash="keep")["01-guide/index"] == f"{SITE}/guide/"


def test_config_base_url_keeps_its_slash(tmp_path: Path) -> None:
    config = "module.exports = {baseUrl: '/book/', trailingSlash: false, url: 'https://x.org'};"
    docs = write_book(tmp_path, config)
    (tmp_path / "docusaurus.config.ts").rename(tmp_path / "docusaurus.config.js")
    assert link_style(docs).base_url == "/book/"
    assert page_urls(docs, "https://x.org/book")["index"] == "https://x.org/book/"


@pytest.mark.parametrize(
    ("source", "trailing_slash", "unreadable"),
    [
        ("export default {trailingSlash: true};", True, ()),
        ("export default {'trailingSlash': false,};", False, ()),
        ("export default {trailingSlash: undefined};", None, ()),
        ("export default {title: 'no option'};", None, ()),
        ("export default {trailingSlash: process.env.SLASH === '1'};", None, ("trailingSlash",)),
        ("const a = {trailingSlash: true}; const b = {trailingSlash: false};", None,
         ("trailingSlash",)),
        ("export default {url: 'https://x.org//trailingSlash: true'};", None, ()),
        ("export default {title: `trailingSlash: true`, trailingSlash: false};", False, ()),
    ],
)  # fmt: skip
def test_config_parsing_reads_only_plain_literals(
    tmp_path: Path, source: str, trailing_slash: bool | None, unreadable: tuple[str, ...]
) -> None:
    path = tmp_path / "docusaurus.config.mjs"
    path.write_text(source, encoding="utf-8")
    config = read_docusaurus_config(path)
    assert (config.trailing_slash, config.unreadable) == (trailing_slash, unreadable)


def test_no_config_means_routes_as_written(tmp_path: Path) -> None:
    docs = write_book(tmp_path)
    assert find_docusaurus_config(docs) is None
    assert link_style(docs).trailing_slash is None


def test_trailing_slash_setting_and_cli_option() -> None:
    assert load_settings({}).trailing_slash == "auto"
    assert load_settings({"TRAILING_SLASH": "false"}).trailing_slash == "false"
    with pytest.raises(SettingsError, match="TRAILING_SLASH"):
        load_settings({"TRAILING_SLASH": "sometimes"})
    parser = build_parser()
    assert (
        parser.parse_args(["ingest", "docs", "--trailing-slash", "true"]).trailing_slash == "true"
    )
    assert parser.parse_args(["ingest", "docs"]).trailing_slash is None
    with pytest.raises(SystemExit):
        parser.parse_args(["ingest", "docs", "--trailing-slash", "maybe"])


def test_ingest_cli_says_which_rule_it_applied(tmp_path: Path) -> None:
    docs = write_book(tmp_path, CONFIG)
    env = {**os.environ, "QDRANT_PATH": str(tmp_path / "q"), "GEMINI_API_KEY": ""}
    env.pop("TRAILING_SLASH", None)
    run = [sys.executable, "-m", "bookchat.cli", "ingest", str(docs), "--dry-run"]
    result = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "docusaurus.config.ts: trailingSlash false" in result.stdout
    result = subprocess.run(
        [*run, "--trailing-slash", "true"], env=env, capture_output=True, text=True,
        timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trailing slash true" in result.stdout
