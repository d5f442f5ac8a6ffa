"""Loading a Docusaurus docs tree: front matter, skipped files, MDX cleanup, blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

import bookchat
from bookchat.ingest.markdown import (
    FrontMatterError,
    clean_mdx,
    iter_doc_files,
    load_docs,
    load_page,
    parse_blocks,
)

SAMPLE_DOCS = Path(bookchat.__file__).parent / "sample_book" / "docs"


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_front_matter_fields_are_read(tmp_path: Path) -> None:
    write(
        tmp_path,
        "01-a/02-page.md",
        """---
title: "Page: one"
description: Short.
tags: [alpha, {label: Beta, permalink: /beta}]
sidebar_label: One
sidebar_position: 3
slug: custom
id: page-one
unlisted: true
---

# Ignored H1

Body.
""",
    )
    page = load_docs(tmp_path)[0]
    fm = page.front_matter
    assert (fm.title, fm.description, fm.sidebar_label) == ("Page: one", "Short.", "One")
    assert fm.tags == ("alpha", "Beta")
    assert (fm.sidebar_position, fm.slug, fm.id, fm.draft, fm.unlisted) == (
        3.0,
        "custom",
        "page-one",
        False,
        True,
    )
    assert page.title == "Page: one"
    assert (page.doc_path, page.doc_id, page.route) == ("01-a/02-page", "a/page-one", "/a/custom")


def test_title_falls_back_to_first_h1_then_file_name(tmp_path: Path) -> None:
    write(tmp_path, "01-with-h1.md", "Intro.\n\n# The Heading\n\nText.\n")
    write(tmp_path, "02-plain.md", "Just text.\n")
    titles = {p.doc_path: p.title for p in load_docs(tmp_path)}
    assert titles == {"01-with-h1": "The Heading", "02-plain": "plain"}


def test_drafts_partials_and_underscore_folders_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "# A\n")
    write(tmp_path, "draft.md", "---\ndraft: true\n---\n# Draft\n")
    write(tmp_path, "_partial.mdx", "Partial.\n")
    write(tmp_path, "_shared/b.md", "# B\n")
    write(tmp_path, "sub/_c.md", "# C\n")
    write(tmp_path, "sub/_category_.json", "{}")
    write(tmp_path, "notes.txt", "not a doc")
    assert [p.doc_path for p in load_docs(tmp_path)] == ["a"]
    assert [p.name for p in iter_doc_files(tmp_path)] == ["a.md", "draft.md"]


def test_sample_book_skips_its_draft_and_partial() -> None:
    doc_paths = {p.doc_path for p in load_docs(SAMPLE_DOCS)}
    assert "03-navigation/03-multi-robot-coordination" not in doc_paths
    assert not any("_safety" in p for p in doc_paths)
    assert (SAMPLE_DOCS / "03-navigation/03-multi-robot-coordination.md").exists()
    assert (SAMPLE_DOCS / "05-practice/_safety-checklist.mdx").exists()


def test_invalid_front_matter_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.md", "---\ntitle: [unclosed\n---\n# Bad\n")
    with pytest.raises(FrontMatterError, match=r"bad\.md"):
        load_page(path, tmp_path)


MDX = """import Tabs from '@theme/Tabs';
import {
  Foo,
  Bar,
} from './parts';
export const meta = {
  level: 1,
};

# Title

<Tabs>
<TabItem value="py" label="Python">

Text inside a tab with <Highlight color="#25c2a0">highlighted words</Highlight>.

```jsx
import Keep from 'inside-fence';
<Tabs><TabItem value="x">kept verbatim</TabItem></Tabs>
```

</TabItem>
</Tabs>

Inline `<Tabs>` code stays, <https://example.org> autolinks stay, a < b stays.
<br/>{/* an MDX comment */}<!-- an HTML comment -->
<Card
  title="Multi-line"
  onClick={() => go({x: 1})}>Card text</Card>
"""


def test_clean_mdx_drops_esm_and_jsx_but_keeps_text_and_fences() -> None:
    cleaned = clean_mdx(MDX)
    assert cleaned.count("\n") == MDX.count("\n")  # line numbers stay valid
    assert "import Tabs" not in cleaned and "Foo," not in cleaned and "level: 1" not in cleaned
    assert "<TabItem" not in cleaned.split("```")[0] and "<Highlight" not in cleaned
    assert "Text inside a tab with highlighted words." in cleaned
    assert "import Keep from 'inside-fence';\n<Tabs><TabItem value=\"x\">kept verbatim" in cleaned
    assert (
        "Inline `<Tabs>` code stays, <https://example.org> autolinks stay, a < b stays." in cleaned
    )
    assert "comment" not in cleaned and "<br/>" not in cleaned
    assert "Card text" in cleaned and "Multi-line" not in cleaned


def test_blocks_keep_original_source_and_kinds() -> None:
    body = """# Title

Intro paragraph
on two lines.

- item one
- item two

| a | b |
|---|---|
| 1 | 2 |

```python
# not a heading
---
x = 1
```

:::warning Battery safety
Never short the pack.

```bash
# still inside the admonition
```
:::

> quoted

---

#### Deep heading
"""
    blocks, headings = parse_blocks(body)
    kinds = [b.kind for b in blocks]
    assert kinds == [
        "heading",
        "paragraph",
        "list",
        "table",
        "code",
        "admonition",
        "blockquote",
        "hr",
        "heading",
    ]
    assert blocks[1].text == "Intro paragraph\non two lines."
    assert blocks[2].parts == ("- item one", "- item two")
    assert blocks[4].text.startswith("```python\n# not a heading\n---\n")
    assert blocks[5].text.startswith(":::warning Battery safety") and blocks[5].text.endswith(":::")
    assert "# still inside the admonition" in blocks[5].text
    assert [(h.level, h.anchor) for h in headings] == [(1, "title"), (4, "deep-heading")]


def test_admonition_keeps_its_label_and_nested_fence_when_loaded(tmp_path: Path) -> None:
    write(tmp_path, "p.md", ":::tip\nBody text.\n:::\n\n:::note[Bracket title]\nMore.\n:::\n")
    page = load_docs(tmp_path)[0]
    assert [b.kind for b in page.blocks] == ["admonition", "admonition"]
    assert page.blocks[0].text == ":::tip\nBody text.\n:::"
    assert page.blocks[1].text.startswith(":::note[Bracket title]")


def test_block_line_numbers_include_front_matter(tmp_path: Path) -> None:
    write(tmp_path, "p.md", "---\ntitle: T\n---\n\n## First\n\nText.\n")
    page = load_docs(tmp_path)[0]
    lines = page.source_path.read_text().split("\n")
    for block in page.blocks:
        assert lines[block.start_line].startswith(block.text.split("\n")[0])


def test_sample_mdx_page_is_clean_of_jsx() -> None:
    page = next(p for p in load_docs(SAMPLE_DOCS) if p.rel_path.endswith(".mdx"))
    text = "\n".join(b.text for b in page.blocks)
    assert "import " not in text and "<Tabs" not in text and "<Highlight" not in text
    assert "Each term looks at the error in a different time frame" in text
    assert "class PID:" in text and "float PID::step" in text


def _page_text(page: object) -> str:
    return "\n".join(b.text for b in page.blocks)  # type: ignore[attr-defined]


def test_an_imported_partial_is_read_where_the_page_renders_it(tmp_path: Path) -> None:
    write(
        tmp_path, "_shared/_setup.md", "---\ntitle: ignored\n---\nInstall the **driver** first.\n"
    )
    write(
        tmp_path,
        "guide/_note.mdx",
        "import Setup from '../_shared/_setup.md';\n\nA note.\n\n<Setup />\n",
    )
    write(
        tmp_path,
        "guide/page.mdx",
        "import Note from './_note.mdx';\nimport Tabs from '@theme/Tabs';\n\n# Guide\n\n"
        "Before.\n\n<Note />\n\nAfter.\n\n```mdx\n<Note />\n```\n\n<Tabs>tabbed</Tabs>\n",
    )
    [page] = load_docs(tmp_path)  # the partials are not pages of their own
    text = _page_text(page)
    # In the page's order, nested partials included, front matter dropped.
    assert text.index("Before.") < text.index("A note.") < text.index("Install the **driver**")
    assert text.index("Install the **driver**") < text.index("After.")
    assert "title: ignored" not in text
    assert "```mdx\n<Note />\n```" in text  # a use inside a code fence is shown, not inlined
    assert text.count("A note.") == 1
    assert "tabbed" in text and "@theme" not in text


def test_the_sample_lab_page_carries_its_safety_checklist() -> None:
    [lab] = [p for p in load_docs(SAMPLE_DOCS) if p.doc_path.endswith("line-follower-lab")]
    assert "keep a hand near the power switch" in " ".join(_page_text(lab).split())
