"""The /admin/insights page in headless Chromium against a real server: the API key is
typed in and kept in memory only, the chart and the gap list render, reader text stays
text (never HTML). Leaves a screenshot in test-artifacts/insights-page.png."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from .servers import prepare_book_env, running_server
from .test_widget_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _browser_unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser, pytest.mark.server]

API_KEY = "authors-page-key-42"
HOSTILE = 'How do I wire <img src=x onerror="window.__pwned=1"> a quadcopter drone ESC?'
QUESTIONS = [
    "How does PID control work?",
    "How do I tune the PID of a quadcopter drone motor ESC firmware?",
    "How to tune PID for a quadcopter drone ESC firmware?",
    "What is the GDP of Brazil?",
    HOSTILE,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = prepare_book_env(
        tmp_path_factory.mktemp("insights-server"), API_KEYS=API_KEY, RATE_LIMIT_ANONYMOUS="100"
    )
    with running_server(env) as base_url:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            for question in QUESTIONS:
                response = client.post(
                    "/api/v1/chat",
                    json={"message": question},
                    headers={"Accept": "application/json"},
                )
                assert response.status_code == 200, response.text
                if question == QUESTIONS[0]:
                    body = response.json()
                    rated = client.post(
                        f"/api/v1/messages/{body['message_id']}/feedback",
                        json={"rating": "down", "comment": "Missing the anti-windup part"},
                        headers={"Authorization": f"Bearer {body['token']}"},
                    )
                    assert rated.status_code == 200
        yield base_url


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Browser]:
    reason = _browser_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def test_insights_page_shows_chart_and_gaps_with_the_key_in_memory_only(
    browser: Browser, server: str
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server + "/admin/insights")

        # A reader's own token is refused with a clear message.
        page.fill("#api-key", "bc_not-an-api-key")
        page.click("button[type=submit]")
        page.wait_for_selector("#status.error")
        assert page.locator("#report").is_hidden()

        page.fill("#api-key", API_KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("#report:not([hidden])")
        assert page.input_value("#api-key") == ""  # the key is not left in the form

        bars = page.locator("#chart svg rect")
        assert bars.count() >= 30  # one per day, refused ones drawn on top
        titles = page.locator("#chart svg rect title").all_text_contents()
        assert any(t.endswith(": 5 questions") for t in titles)
        assert any(t.endswith(": 4 refused") for t in titles)

        gaps = page.locator("#gaps tbody tr")
        first_gap = gaps.first.inner_text()
        assert first_gap.startswith("2") and "quadcopter drone" in first_gap
        assert "PID Control" in first_gap  # a closest page found by the search
        assert HOSTILE in page.locator("#gaps").inner_text()  # shown as text ...
        assert page.evaluate("window.__pwned") is None  # ... never run as HTML
        assert page.locator("#gaps img").count() == 0
        assert page.locator("#never-cited li").count() > 0
        downs = page.locator("#downs tbody").inner_text()
        assert "Missing the anti-windup part" in downs and "PID Control" in downs
        assert "PID Control" in page.locator("#cited-pages").inner_text()

        stored = page.evaluate(
            "() => JSON.stringify([Object.entries(localStorage),"
            " Object.entries(sessionStorage), document.cookie])"
        )
        assert API_KEY not in stored

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "insights-page.png"), full_page=True)
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
