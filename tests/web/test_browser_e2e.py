"""End to end in a real browser: headless Chromium (the system's, Debian's `chromium` package;
no browser download) driven by Playwright, against a real `taskloom api` and a real
`taskloom worker` on a deployment of their own (database, application role, Redis prefix).

One person's whole journey: register → create a workflow → run it → see it succeed with its
steps → download their data and find themselves and the workflow in it → delete the account →
be refused at sign-in. On the way, a screenshot of every main page goes to
test-artifacts/screenshots/ (kept by CI as an artifact; gitignored)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from taskloom.config import Settings
from tests.cli_support import deployment_env, serve_api
from tests.conftest import fresh_deployment
from tests.factories import PASSWORD, unique_email
from tests.servers import free_port, missing_program

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 30_000  # generous: two cores shared with other test runs

DEFINITION = {
    "steps": [
        {
            "id": "greet",
            "type": "transform",
            "args": {"value": {"greeting": "Hello, {{ input.name }}!"}},
        }
    ]
}


@pytest.fixture
async def deployment(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(pg_server_url, redis_url, label="e2e") as settings:
        yield settings


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskloom", "worker"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "worker_started" in log.read_text():
            return worker
        if worker.poll() is not None:
            break
        time.sleep(0.1)
    worker.kill()
    raise AssertionError(f"the worker did not start:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def base_url(deployment: Settings, tmp_path: Path) -> Iterator[str]:
    """A `taskloom api` and a `taskloom worker` on the deployment; both stopped afterwards."""
    env = deployment_env(deployment, LOG_LEVEL="info")
    port = free_port()
    api = serve_api(env, port, tmp_path / "api.log")
    try:
        worker = _start_worker(env, tmp_path / "worker.log")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(worker)
            print("--- worker log ---\n" + (tmp_path / "worker.log").read_text()[-5000:])
    finally:
        _stop(api)
        print("--- api log ---\n" + (tmp_path / "api.log").read_text()[-5000:])


# Form controls a person cannot identify: no <label>, no aria-label (hidden inputs excepted).
_UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
    .filter(e => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
    .map(e => e.name || e.id || e.outerHTML)"""


async def _shot(page: Page, name: str) -> None:
    """Screenshot the page, after checking that it has one <main> and labels everywhere."""
    assert await page.locator("main").count() == 1, name
    assert await page.evaluate(_UNLABELLED) == [], name
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def chromium() -> str:
    if not CHROMIUM.exists():
        missing_program(
            "the end-to-end tests need Chromium: apt-get install chromium chromium-driver"
        )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return str(CHROMIUM)


async def test_a_person_runs_a_workflow_downloads_their_data_and_deletes_their_account(
    chromium: str, base_url: str, tmp_path: Path
) -> None:
    email = unique_email("e2e")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=args
        )
        context = await browser.new_context(base_url=base_url, accept_downloads=True)
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = await context.new_page()
        try:
            await _journey(page, email, tmp_path)
        finally:
            await context.close()
            await browser.close()


# The computed fill of each node of the page's workflow graph (classes from app.css only).
_NODE_FILLS = """() => [...document.querySelectorAll('svg.graph g.node rect')]
    .map(r => getComputedStyle(r).fill)"""


async def _journey(page: Page, email: str, tmp_path: Path) -> None:
    refused: list[str] = []  # CSP violations the browser reports (an inline style, a script)
    page.on(
        "console",
        lambda message: (
            refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    # Sign in page, then register (a new account owns a new organization).
    await page.goto("/ui/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await _shot(page, "sign-in")
    await page.keyboard.press("Tab")  # keyboard users skip the header first
    await expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    await page.get_by_role("link", name="Create one").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Your name").fill("Erin End-to-End")
    await page.get_by_label("Organization name").fill("E2E Works")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_text("No workflows yet.")).to_be_visible()

    # Create a workflow with one transform step.
    await page.get_by_role("link", name="New workflow").click()
    await page.get_by_label("Name").fill("Greeting")
    await page.get_by_label("Definition (JSON)").fill(json.dumps(DEFINITION, indent=2))
    await page.get_by_role("button", name="Create workflow").click()
    await expect(page.get_by_role("status")).to_have_text("Workflow created.")
    # The definition's graph: one transform node, filled by the stylesheet's type colour.
    await expect(
        page.get_by_role("img", name="Workflow graph: 1 steps, 0 dependencies")
    ).to_be_visible()
    assert await page.evaluate(_NODE_FILLS) == ["rgb(218, 251, 225)"]
    await _shot(page, "workflow-edit")

    # Change it with a note, see the change on the History tab, and restore the first version.
    changed = json.dumps(DEFINITION).replace("Hello", "Bye")
    await page.get_by_label("Definition (JSON)").fill(changed)
    await page.get_by_label("Change note").fill("say bye")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_role("status")).to_have_text("Workflow saved.")
    await page.get_by_role("link", name="History", exact=True).click()
    await expect(page.locator("#version-2")).to_contain_text("say bye")
    await expect(page.locator("#diff .diff-add")).to_contain_text("Bye, {{ input.name }}!")
    await expect(page.locator("#diff .diff-del")).to_contain_text("Hello, {{ input.name }}!")
    await _shot(page, "workflow-history")
    await page.get_by_role("button", name="Restore", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("Version restored")
    await expect(page.locator("#version-3")).to_contain_text("Restored version 1")
    await page.get_by_role("link", name="Workflow", exact=True).click()

    # Run it; the execution page reloads itself until the worker has finished.
    await page.get_by_label("Input (JSON object)").fill('{"name": "Ada"}')
    await page.get_by_role("button", name="Run workflow").click()
    await expect(page.locator("#execution-status")).to_contain_text("succeeded")
    step = page.locator("li.step", has_text="greet")
    await expect(step).to_contain_text("succeeded")
    await expect(step).to_contain_text("Hello, Ada!")
    await expect(page.locator("svg.graph g.node.status-succeeded")).to_have_count(1)
    await expect(page.get_by_role("img", name=re.compile(r"^Timeline of 1 steps"))).to_be_visible()
    await _shot(page, "execution-detail")

    for link, name in [
        ("Workflows", "workflows"),
        ("Executions", "executions"),
        ("Audit log", "audit-log"),
        ("Members", "members"),
        ("Connections", "connections"),
        ("Webhooks", "webhooks"),
        ("Flags", "flags"),
        ("Health", "health"),
    ]:
        await page.get_by_role("link", name=link, exact=True).click()
        await expect(page.locator("h1")).to_be_visible()
        await _shot(page, name)
    await expect(page.get_by_text("1 worker online.")).to_be_visible()

    # Download my data (JSON): the file names the person and their workflow.
    await page.get_by_role("link", name="Privacy", exact=True).click()
    await _shot(page, "privacy")
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download as JSON").click()
    download = await download_info.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    exported = saved.read_text()
    json.loads(exported)
    assert email in exported
    assert "Greeting" in exported
    assert "Hello, {{ input.name }}!" in exported

    # Delete the account: the confirmation phrase and the password.
    await page.get_by_label("Type DELETE to confirm").fill("DELETE")
    await page.get_by_label("Your password").fill(PASSWORD)
    await page.get_by_role("button", name="Delete my account").click()
    await expect(page.get_by_role("heading", name="Your account has been deleted")).to_be_visible()

    # Signing in again is refused.
    await page.get_by_role("link", name="Back to the sign-in page").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Password").press("Enter")  # submitting from the keyboard
    await expect(page.get_by_role("alert")).to_contain_text("invalid email or password")
    assert refused == []


async def test_a_person_creates_a_schedule_on_the_triggers_tab_and_sees_its_next_runs(
    chromium: str, base_url: str
) -> None:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=args
        )
        context = await browser.new_context(base_url=base_url)
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = await context.new_page()
        try:
            await _schedule_journey(page)
        finally:
            await context.close()
            await browser.close()


async def _schedule_journey(page: Page) -> None:
    refused: list[str] = []
    page.on(
        "console",
        lambda message: (
            refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    await page.goto("/ui/register")
    await page.get_by_label("Email").fill(unique_email("e2e-sched"))
    await page.get_by_label("Your name").fill("Sam Scheduler")
    await page.get_by_label("Organization name").fill("Cron Works")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await page.get_by_role("link", name="New workflow").click()
    await page.get_by_label("Name").fill("Nightly report")
    await page.get_by_label("Definition (JSON)").fill(json.dumps(DEFINITION))
    await page.get_by_role("button", name="Create workflow").click()
    await expect(page.get_by_role("status")).to_have_text("Workflow created.")

    await page.get_by_role("link", name="Triggers").click()
    await expect(page.get_by_text("No schedules.")).to_be_visible()
    await page.get_by_label("Cron expression").fill("30 2 * * *")
    await page.get_by_label("Time zone").fill("Europe/Berlin")
    await page.get_by_label("Input (JSON object)").fill('{"name": "{{ schedule.tick }}"}')
    await page.get_by_role("button", name="Create schedule").click()
    await expect(page.get_by_role("status")).to_have_text("Schedule created.")
    schedule = page.locator("article.schedule")
    await expect(schedule.locator("h3")).to_have_text("30 2 * * * in Europe/Berlin enabled")
    runs = schedule.locator("ol.next-runs li")
    await expect(runs).to_have_count(5)
    for text in await runs.all_inner_texts():  # 02:30 in Berlin (03:00 on a spring-forward day)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d 0(2:30|3:00):00 CES?T \(.* UTC\)", text), text
    await _shot(page, "workflow-triggers")

    # A webhook trigger: the secret once, a copy button that works under the CSP.
    await page.get_by_role("button", name="Create webhook trigger").click()
    secret = await page.get_by_label("Secret", exact=True).input_value()
    assert secret.startswith("whsec_")
    await page.locator("#secret-once").get_by_role("button", name="Copy", exact=True).click()
    await expect(page.locator("#secret-once").get_by_text("Copied.")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await page.get_by_role("link", name="Triggers").click()
    await expect(page.get_by_label("URL")).to_have_value(re.compile(r"^/hooks/"))
    assert secret not in await page.content()
    assert refused == []
