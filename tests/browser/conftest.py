"""Real-browser fixtures: Debian's Chromium driven by Playwright, the demo SPA served by the BFF.

The BFF is reached as ``http://localhost:<port>``: WebAuthn needs a domain as relying-party id (an IP
address is refused), and the emulator checks passkeys against that host and origin. Every test gets
its own browser context (cookies, storage, virtual authenticators) and its own stack.

Screenshots go to ``test-artifacts/screenshots/<test>/``; a failing test also keeps ``failed.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import typing as t
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.browser.spa import Screenshots, Spa, make_demo
from tests.conftest import Stack, StackFactory

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
#: Upper bound for one auto-waiting action or assertion; the stack answers in milliseconds.
TIMEOUT_MS = 10_000

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_written: set[Path] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> t.Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    if _written:
        terminalreporter.write_sep("-", "browser screenshots")
        for folder in sorted(_written):
            terminalreporter.write_line(str(folder))


@pytest.fixture(scope="session")
def playwright() -> t.Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def chromium(playwright: Playwright) -> t.Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (scripts/test.sh installs it with apt-get)")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    expect.set_options(timeout=TIMEOUT_MS)
    yield browser
    browser.close()


@pytest.fixture
def context(chromium: Browser) -> t.Iterator[BrowserContext]:
    context = chromium.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-US", timezone_id="UTC", color_scheme="light"
    )
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Screenshots:
    folder = SCREENSHOTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _written.add(folder)
    print(f"screenshots: {folder}")
    return Screenshots(folder)


@pytest.fixture
def page(context: BrowserContext, screenshots: Screenshots, request: pytest.FixtureRequest) -> t.Iterator[Page]:
    """A tab whose uncaught script errors fail the test, screenshotted when the test fails."""
    page = context.new_page()
    screenshots.page = page
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"{error.name}: {error.message}"))
    yield page
    call = request.node.stash.get(_REPORTS, {}).get("call")
    if call is None or call.failed:
        try:
            print(f"failure screenshot: {screenshots.take('failed')}")
        except Exception as error:  # the page may be gone; the test's own failure matters more
            print(f"no failure screenshot: {error}")
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def demo(make_stack: StackFactory) -> Stack:
    """The demo SPA's stack (:func:`make_demo`)."""
    return make_demo(make_stack)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "confirm_dialogs: the test answers the demo's confirmation dialogs itself"
    )


@pytest.fixture
def spa(page: Page, demo: Stack, screenshots: Screenshots, request: pytest.FixtureRequest) -> Spa:
    """The demo SPA. Its destructive actions ask for confirmation in an in-page dialog; unless the test is
    marked ``confirm_dialogs`` (and answers them itself), every dialog that opens is confirmed."""
    if request.node.get_closest_marker("confirm_dialogs") is None:
        page.add_locator_handler(
            page.get_by_test_id("confirm-dialog"), lambda dialog: dialog.get_by_test_id("confirm-ok").click()
        )
    return Spa(page, demo, screenshots)
