"""The demo page (`/`: a sample-book page with the chat widget) and `/widget.js`."""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from mdit_py_plugins.container import container_plugin

from bookchat.ingest.markdown import ADMONITION_KEYWORDS, clean_mdx, split_front_matter
from bookchat.ingest.routes import GithubSlugger, heading_anchor, parse_heading_id
from bookchat.settings import SAMPLE_BOOK, Settings

WIDGET_JS = Path(__file__).parent / "static" / "widget.js"
DEMO_DOC = "01-sensors/01-lidar.md"  # a page with headings, a list and admonitions

# The demo runs no inline script: the widget reads its configuration from data-
# attributes, so the page can forbid inline scripts outright.
DEMO_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_ADMONITION = re.compile(r"^\s*([A-Za-z]+)\s*(.*)$")


@dataclass(frozen=True)
class WidgetScript:
    body: bytes
    etag: str


@lru_cache(maxsize=1)
def widget_script() -> WidgetScript:
    """The widget, read once per process; the ETag lets browsers revalidate cheaply."""
    body = WIDGET_JS.read_bytes()
    return WidgetScript(body=body, etag='"' + hashlib.sha256(body).hexdigest()[:16] + '"')


def _heading_ids(state: StateCore) -> None:
    """Give headings Docusaurus's anchors (github-slugger, explicit `{#id}`)."""
    slugger = GithubSlugger()
    tokens = state.tokens
    for index, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        inline = tokens[index + 1]
        _, anchor = heading_anchor(inline.content, slugger)
        token.attrSet("id", anchor)
        children = inline.children or []
        if children and children[-1].type == "text":
            children[-1].content = parse_heading_id(children[-1].content)[0].rstrip()


def _render_admonition(self: Any, tokens: list[Token], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    if token.nesting != 1:
        return "</aside>\n"
    match = _ADMONITION.match(token.info)
    kind = match.group(1).lower() if match else "note"
    title = (match.group(2).strip() if match else "") or kind.capitalize()
    return (
        f'<aside class="admonition admonition-{html.escape(kind)}">'
        f'<p class="admonition-title">{html.escape(title)}</p>\n'
    )


def _markdown() -> MarkdownIt:
    # html=False: even the bundled book's raw HTML is shown as text, never executed.
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    container_plugin(
        md,
        "admonition",
        validate=lambda params, *_: bool(
            (m := _ADMONITION.match(params)) and m.group(1).lower() in ADMONITION_KEYWORDS
        ),
        render=_render_admonition,
    )
    md.core.ruler.push("docusaurus_heading_ids", _heading_ids)
    return md


@lru_cache(maxsize=4)
def render_doc(rel_path: str) -> tuple[str, str]:
    """(title, article HTML) of one sample-book page."""
    source = (SAMPLE_BOOK / rel_path).read_text(encoding="utf-8")
    front_matter, body, _ = split_front_matter(source)
    title = str(front_matter.get("title") or Path(rel_path).stem)
    return title, _markdown().render(clean_mdx(body))


def _book_title(settings: Settings) -> str:
    """BOOK_TITLE when set, else the title of the sample book's home page."""
    if settings.book_title != Settings().book_title:
        return settings.book_title
    return render_doc("index.md")[0]


def demo_html(settings: Settings) -> str:
    """The demo page: the sample page as a reader sees it, plus one widget script tag."""
    title, article = render_doc(DEMO_DOC)
    doc_path = DEMO_DOC.rsplit(".", 1)[0]
    book = html.escape(_book_title(settings))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · bookchat demo</title>
<link rel="icon" href="/favicon.ico" type="image/svg+xml">
<style>
  :root {{ color-scheme: light; }}
  body {{ margin: 0; font: 17px/1.65 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: #1c1e21; background: #fff; }}
  header.site {{ position: sticky; top: 0; display: flex; gap: 1rem; align-items: center;
                 padding: .7rem 1.5rem; background: #fff; border-bottom: 1px solid #e3e5e8;
                 z-index: 1; }}
  header.site strong {{ font-size: 1.05rem; }}
  header.site span {{ color: #606770; font-size: .9rem; }}
  main {{ max-width: 46rem; margin: 0 auto; padding: 1.5rem 1.5rem 8rem; }}
  h1 {{ font-size: 2.2rem; line-height: 1.2; }}
  h2 {{ margin-top: 2.2rem; }}
  code, pre {{ font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              background: #f4f5f7; border-radius: 4px; }}
  pre {{ padding: .8rem 1rem; overflow: auto; }}
  .admonition {{ border-left: 5px solid #00a400; background: #e6f6e6; padding: .6rem 1rem;
                 border-radius: 6px; margin: 1.2rem 0; }}
  .admonition-warning, .admonition-caution {{ border-color: #e6a700; background: #fff8e6; }}
  .admonition-danger {{ border-color: #fa383e; background: #ffebec; }}
  .admonition-note, .admonition-info {{ border-color: #1877f2; background: #eef5ff; }}
  .admonition-title {{ font-weight: 700; text-transform: uppercase; font-size: .8rem;
                       margin: 0 0 .3rem; letter-spacing: .04em; }}
  .hint {{ color: #606770; font-size: .92rem; border: 1px dashed #ccd0d5; border-radius: 6px;
           padding: .5rem .8rem; }}
</style>
</head>
<body>
<header class="site"><strong>{book}</strong><span>bookchat demo</span></header>
<main>
<p class="hint">Ask the book with the chat button at the bottom right, or highlight a
passage of this page and choose “Ask about selection”.</p>
<article class="markdown">
{article}
</article>
</main>
<script src="/widget.js" data-title="Ask the book"
        data-doc-path="{html.escape(doc_path)}" defer></script>
</body>
</html>
"""


@get("/", include_in_schema=False, sync_to_thread=False)
def demo_page(state: State) -> Response[str]:
    """The demo page: one page of the sample book with the widget embedded."""
    return Response(
        demo_html(state.settings),
        media_type="text/html",
        headers={"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-cache"},
    )


@get("/widget.js", include_in_schema=False, sync_to_thread=False)
def widget_js(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The embeddable widget; cacheable for an hour, revalidated by ETag after that."""
    script = widget_script()
    headers = {
        "ETag": script.etag,
        # Short max-age: a new release reaches embedding sites within the hour.
        "Cache-Control": "public, max-age=3600",
        # Any site may load the script; it only talks to the API base it is given.
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == script.etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(script.body, media_type="text/javascript", headers=headers)
