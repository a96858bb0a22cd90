"""The execution page's live events in a real browser (headless Chromium, as
tests/web/test_browser_e2e.py drives it, against a real `taskloom api` and `taskloom worker`):
with JavaScript the page follows /ui/executions/{id}/events instead of reloading, shows the
step changes in its Live panel, and reloads once when the execution ends; no CSP violation."""

from __future__ import annotations

import asyncio
import json
import os

from playwright.async_api import async_playwright, expect

from tests.factories import PASSWORD, unique_email
from tests.web.test_browser_e2e import TIMEOUT_MS, base_url, chromium, deployment  # noqa: F401

DEFINITION = {
    "steps": [
        {"id": "pause", "type": "wait", "args": {"for": "30s"}},  # enough on a loaded machine
        {"id": "greet", "type": "transform", "args": {"value": "hi"}, "needs": ["pause"]},
    ]
}


async def test_the_execution_page_follows_live_events_without_reloading(
    chromium: str,  # noqa: F811
    base_url: str,  # noqa: F811
) -> None:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=args
        )
        context = await browser.new_context(base_url=base_url)
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = await context.new_page()
        refused: list[str] = []
        page.on(
            "console",
            lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
        )
        try:
            await page.goto("/ui/register")
            await page.get_by_label("Email").fill(unique_email("live"))
            await page.get_by_label("Your name").fill("Liv Events")
            await page.get_by_label("Organization name").fill("Live Works")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Create account").click()
            await page.get_by_role("link", name="New workflow").click()
            await page.get_by_label("Name").fill("Pause")
            await page.get_by_label("Definition (JSON)").fill(json.dumps(DEFINITION))
            await page.get_by_role("button", name="Create workflow").click()
            await page.get_by_role("button", name="Run workflow").click()

            live = page.locator("#live")
            await expect(live).to_contain_text("step pause: waiting")
            await expect(page.locator('[data-step-id="pause"] [data-step-status]')).to_have_text(
                "waiting"
            )
            # The page is not reloaded while it follows the events (the <meta> refresh, 2 s,
            # applies only without JavaScript): what the page holds survives.
            await page.evaluate("window.stillHere = true")
            await asyncio.sleep(3)
            assert await page.evaluate("window.stillHere === true")
            # The end arrives as an event; the page then reloads once to show the results.
            await expect(page.locator("#execution-status")).to_contain_text("succeeded")
            await expect(page.locator("li.step", has_text="greet")).to_contain_text("succeeded")
            await expect(page.locator("#live")).to_have_count(0)  # a finished page: no stream
            assert refused == []
        finally:
            await context.close()
            await browser.close()
