"""Docusaurus routes, doc ids and heading anchors, checked against what a built site serves."""

from __future__ import annotations

from pathlib import Path

import pytest

import bookchat
from bookchat.ingest.chunking import chunk_book
from bookchat.ingest.markdown import load_docs, parse_blocks
from bookchat.ingest.routes import (
    GithubSlugger,
    doc_route,
    github_slug,
    page_url,
    parse_heading_id,
    strip_number_prefix,
)

SAMPLE_DOCS = Path(bookchat.__file__).parent / "sample_book" / "docs"
SITE = "https://book.example.org/docs"

# Every published page of the sample book: route, doc id, and every heading anchor in order.
SAMPLE_PAGES: dict[str, tuple[str, str, list[str]]] = {
    "index": (
        "/",
        "index",
        [
            "foundations-of-mobile-robotics",
            "what-the-book-covers",
            "the-senseplanact-loop",
            "conventions-used-in-this-book",
            "how-to-read-this-book",
        ],
    ),
    "01-sensors/index": (
        "/sensors/",
        "sensors/index",
        [
            "proprioceptive-and-exteroceptive-sensors",
            "active-and-passive-sensors",
            "comparison-of-common-sensors",
            "accuracy-precision-and-resolution",
            "choosing-sensors",
        ],
    ),
    "01-sensors/01-lidar": (
        "/sensors/lidar",
        "sensors/lidar",
        [
            "lidar-range-sensing",
            "time-of-flight-principle",
            "scan-geometry-and-specifications",
            "limitations-of-lidar",
            "working-with-scans",
        ],
    ),
    # front matter `id: odometry` replaces the file name; explicit {#ids} win.
    "01-sensors/02-imu-and-odometry": (
        "/sensors/odometry",
        "sensors/odometry",
        [
            "wheel-odometry-and-imus",
            "wheel-encoders",
            "imu",
            "odometry-limitations",
            "calibration",
            "fusing-encoders-and-an-imu",
        ],
    ),
    # relative `slug: diff-drive` resolves against the (prefix-stripped) folder.
    "02-motion/01-differential-drive": (
        "/motion/diff-drive",
        "motion/differential-drive",
        [
            "differential-drive-kinematics",
            "robot-parameters",
            "forward-kinematics",
            "inverse-kinematics",
            "pose-update",
            "nonholonomic-constraints",
            "trade-offs-of-differential-drive",
        ],
    ),
    # three "Example" headings: example, example-1, example-2.
    "02-motion/02-pid-control": (
        "/motion/pid-control",
        "motion/pid-control",
        [
            "pid-control",
            "the-control-law",
            "proportional-term",
            "example",
            "integral-term",
            "example-1",
            "integral-windup",
            "derivative-term",
            "example-2",
            "implementation",
            "tuning-with-zieglernichols",
            "limitations-of-pid",
        ],
    ),
    "03-navigation/01-localization-and-slam": (
        "/navigation/localization-and-slam",
        "navigation/localization-and-slam",
        [
            "localization-and-slam",
            "localization-as-probability",
            "monte-carlo-localization",
            "occupancy-grid-maps",
            "slam",
            "limitations-of-localization-and-slam",
        ],
    ),
    # nested number-prefixed folders: 03-navigation/02-planning/01-path-planning
    "03-navigation/02-planning/01-path-planning": (
        "/navigation/planning/path-planning",
        "navigation/planning/path-planning",
        [
            "path-planning-with-a-and-rrt",
            "configuration-space",
            "dijkstras-algorithm",
            "a-star",
            "weighted-a",
            "rrt",
            "choosing-a-planner",
            "limitations-of-path-planning",
        ],
    ),
    # absolute `slug: /middleware` ignores the folder.
    "04-software/01-middleware": (
        "/middleware",
        "software/middleware",
        [
            "robot-middleware-and-message-passing",
            "publishsubscribe-topics",
            "services-and-actions",
            "messages-and-serialization",
            "qos",
            "coordinate-transforms",
            "trade-offs-of-middleware",
        ],
    ),
    "05-practice/01-line-follower-lab": (
        "/practice/line-follower-lab",
        "practice/line-follower-lab",
        [
            "lab-build-a-pid-line-follower",
            "equipment",
            "step-1-calibrate-the-sensors",
            "step-2-estimate-the-line-position",
            "step-3-steer-with-pid",
            "step-4-tune-the-gains",
            "expected-results",
            "questions-for-your-report",
        ],
    ),
    "05-practice/02-quiz": (
        "/practice/quiz",
        "practice/quiz",
        [
            "self-check-quiz",
            "questions",
            "answers",
        ],
    ),
}


@pytest.fixture(scope="module")
def sample_pages() -> dict[str, object]:
    return {page.doc_path: page for page in load_docs(SAMPLE_DOCS)}


def test_sample_book_publishes_exactly_the_listed_pages(sample_pages: dict) -> None:
    assert set(sample_pages) == set(SAMPLE_PAGES)


@pytest.mark.parametrize("doc_path", sorted(SAMPLE_PAGES))
def test_sample_page_route_id_and_anchors(doc_path: str, sample_pages: dict) -> None:
    route, doc_id, anchors = SAMPLE_PAGES[doc_path]
    page = sample_pages[doc_path]
    assert page.route == route
    assert page.doc_id == doc_id
    assert [h.anchor for h in page.headings] == anchors


def test_chunk_urls_are_page_routes_plus_real_anchors() -> None:
    for page in chunk_book(SAMPLE_DOCS, site_url=SITE + "/"):
        route, _, anchors = SAMPLE_PAGES[page.doc_path]
        allowed = {f"{SITE}{route}"} | {f"{SITE}{route}#{a}" for a in anchors}
        assert page.chunks
        for chunk in page.chunks:
            assert chunk.url in allowed, chunk.url


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("01-intro", "intro"),
        ("1_intro", "intro"),
        ("003 - my doc", "my doc"),
        ("10.setup", "setup"),
        ("intro", "intro"),
        ("2021-11-release", "2021-11-release"),  # date-like: not a prefix
        ("7.0-notes", "7.0-notes"),  # version-like: not a prefix
        ("01-", "01-"),
        ("12", "12"),
    ],
)
def test_number_prefix_stripping(name: str, expected: str) -> None:
    assert strip_number_prefix(name) == expected


@pytest.mark.parametrize(
    ("rel_path", "fm_id", "fm_slug", "route", "doc_id"),
    [
        ("index.md", None, None, "/", "index"),
        ("intro.md", None, None, "/intro", "intro"),
        ("01-guide/index.md", None, None, "/guide/", "guide/index"),
        ("01-guide/README.md", None, None, "/guide/", "guide/README"),
        ("01-guide/01-guide.mdx", None, None, "/guide/", "guide/guide"),  # named like its folder
        ("01-guide/02-setup.md", None, None, "/guide/setup", "guide/setup"),
        ("01-guide/02-setup.md", "install", None, "/guide/install", "guide/install"),
        ("01-guide/02-setup.md", None, "start", "/guide/start", "guide/setup"),
        ("01-guide/02-setup.md", None, "/start", "/start", "guide/setup"),
        ("01-guide/02-setup.md", None, "../top", "/top", "guide/setup"),
        ("01-guide/02-setup.md", None, "sub/deep/", "/guide/sub/deep/", "guide/setup"),
        ("a/01-b/02-c/03-d.md", None, None, "/a/b/c/d", "a/b/c/d"),
        ("01-guide/index.md", None, "overview", "/guide/overview", "guide/index"),
        ("01-guide/index.md", "home", None, "/guide/", "guide/home"),
    ],
)
def test_doc_route_rules(
    rel_path: str, fm_id: str | None, fm_slug: str | None, route: str, doc_id: str
) -> None:
    result = doc_route(rel_path, front_matter_id=fm_id, front_matter_slug=fm_slug)
    assert (result.route, result.doc_id) == (route, doc_id)


def test_front_matter_id_with_slash_is_rejected() -> None:
    with pytest.raises(ValueError, match="cannot include slash"):
        doc_route("a/b.md", front_matter_id="x/y")


def test_page_url_joins_site_route_and_anchor() -> None:
    assert page_url("https://x.org/book/", "/a/b", "c") == "https://x.org/book/a/b#c"
    assert page_url("https://x.org/book", "/", "") == "https://x.org/book/"


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Hello World", "hello-world"),
        ("bravoCharlieDelta", "bravocharliedelta"),
        ("heading with a - dash", "heading-with-a---dash"),
        ("heading with an _ underscore", "heading-with-an-_-underscore"),
        ("heading with a period.txt", "heading-with-a-periodtxt"),
        (
            "exchange.bind_headers(exchange, routing [, bindCallback])",
            "exchangebind_headersexchange-routing--bindcallback",
        ),
        ("apostrophe’s should be trimmed", "apostrophes-should-be-trimmed"),
        ("I ♥ unicode", "i--unicode"),
        ("en–dash", "endash"),
        ("😄 unicode emoji", "-unicode-emoji"),
        ("Привет non-latin 你好", "привет-non-latin-你好"),
        ("Sensors & Actuators", "sensors--actuators"),
        ("What is ROS 2?", "what-is-ros-2"),
        ("C++ vs. Python", "c-vs-python"),
        ("$100 robot: a 50% cheaper build", "100-robot-a-50-cheaper-build"),
        ("Café déjà vu", "café-déjà-vu"),
        (" a ", "-a-"),
        ("Ⓐ circled", "ⓐ-circled"),
    ],
)
def test_github_slugger_matches_reference_fixtures(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_github_slugger_duplicate_counting_matches_reference() -> None:
    slugger = GithubSlugger()
    inputs = ["echo", "echo", "echo 1", "echo-1", "echo", "foxtrot-1", "foxtrot", "foxtrot"]
    expected = [
        "echo",
        "echo-1",
        "echo-1-1",
        "echo-1-2",
        "echo-2",
        "foxtrot-1",
        "foxtrot",
        "foxtrot-2",
    ]
    assert [slugger.slug(value) for value in inputs] == expected


def test_heading_anchor_from_markdown_inline_code_and_entities() -> None:
    body = "# Use `rclpy.spin()` &amp; **friends**\n\n## Example\n\n## Example\n\n### Example\n"
    _, headings = parse_blocks(body)
    assert [h.anchor for h in headings] == [
        "use-rclpyspin--friends",
        "example",
        "example-1",
        "example-2",
    ]
    assert headings[0].text == "Use rclpy.spin() & friends"


def test_explicit_heading_id_wins_and_is_not_counted_as_duplicate() -> None:
    body = "## Setup {#install}\n\n## Install\n\n## Limits {#limits}\n\n## Limits\n"
    blocks, headings = parse_blocks(body)
    # As in Docusaurus, explicit ids bypass the slugger: "limits" is issued twice.
    assert [h.anchor for h in headings] == ["install", "install", "limits", "limits"]
    assert [h.text for h in headings] == ["Setup", "Install", "Limits", "Limits"]
    assert blocks[0].text == "## Setup"


@pytest.mark.parametrize(
    ("heading", "text", "anchor"),
    [
        ("Title {#custom-id}", "Title", "custom-id"),
        ("Title {#Custom_ID}", "Title", "Custom_ID"),
        ("Title{#x}", "Title", "x"),
        ("Title {#a} more", "Title {#a} more", None),
        ("No id", "No id", None),
    ],
)
def test_parse_heading_id(heading: str, text: str, anchor: str | None) -> None:
    assert parse_heading_id(heading) == (text, anchor)
