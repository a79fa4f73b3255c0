"""The client's examples in Chromium, each served by a BFF (``BFF_STATIC_DIR``) beside the emulator.

* The plain example (``clients/js/examples/plain``, quoted in ``docs/client.md``) imports
  ``/bff/static/bff.js`` as it is served.
* The React example (``clients/js/examples/react``) is bundled by esbuild with React from npm and the
  client from the ``@bff/client`` package, as an application's bundler would.

Each logs in and shows the user, comes back to the page it started from (query included), and reacts
once, in one place, when the session ends on the server (``bff:session-expired``), without leaving the
page; a store outage (503 ``store-unavailable``) is not taken for an expired session.
"""

from __future__ import annotations

import time
import typing as t
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from bff.demo import demo_content_security_policy
from tests.browser.clientjs import EXAMPLES, build_react_example, ensure_node_modules
from tests.browser.conftest import TIMEOUT_MS
from tests.browser.spa import EMAIL, NAME, Screenshots, Spa, serve_with_policy, session_ids
from tests.conftest import Stack, StackFactory
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.browser

PAGE = "/settings?tab=profile"
SIGNED_IN = f"Signed in as {NAME} ({EMAIL})"
EXPIRED = "Your session has ended. Log in again to continue."

#: Counts the client's session-expired events, and the CSP violations the page reports.
RECORDER = """
window.expiredEvents = 0;
window.violations = [];
document.addEventListener("bff:session-expired", () => { window.expiredEvents += 1; });
document.addEventListener("securitypolicyviolation", (event) => {
  window.violations.push(event.effectiveDirective + " " + event.blockedURI);
});
"""


@pytest.fixture(scope="module")
def react_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_node_modules()
    return build_react_example(tmp_path_factory.mktemp("react-example"))


Example = t.Literal["plain", "react"]


@pytest.fixture(params=["plain", "react"])
def example(request: pytest.FixtureRequest) -> Example:
    return t.cast(Example, request.param)


def serve(make_stack: StackFactory, request: pytest.FixtureRequest, example: Example) -> Stack:
    directory = request.getfixturevalue("react_build") if example == "react" else EXAMPLES / "plain"
    return make_stack(host="localhost", static_dir=str(directory))


def status(page: Page) -> t.Any:
    return expect(page.get_by_test_id("status"))


def log_in_from(spa: Spa, path: str) -> None:
    page = spa.page
    page.add_init_script(RECORDER)
    spa.open(path)
    status(page).to_have_text("You are signed out.")
    page.get_by_role("button", name="Log in").click()
    spa.expect_login_form()
    spa.submit_login_form()
    spa.expect_at(path)
    status(page).to_have_text(SIGNED_IN)


def test_each_example_shows_the_logged_in_user_and_returns_to_the_page_it_started_from(
    page: Page, make_stack: StackFactory, request: pytest.FixtureRequest, example: Example, screenshots: Screenshots
) -> None:
    stack = serve(make_stack, request, example)
    spa = Spa(page, stack, screenshots)
    log_in_from(spa, PAGE)
    screenshots.take("signed-in")

    page.get_by_role("button", name="Show my sign-in methods").click()
    expect(page.get_by_test_id("method-list").locator("li")).to_have_text(["password"])

    page.get_by_role("button", name="Log out").click()
    status(page).to_have_text("You are signed out.")
    assert session_ids(stack) == []


def test_each_example_reacts_once_when_the_session_ends_and_stays_on_the_page(
    page: Page, context: BrowserContext, make_stack: StackFactory, request: pytest.FixtureRequest,
    example: Example, screenshots: Screenshots,
) -> None:
    stack = serve(make_stack, request, example)
    spa = Spa(page, stack, screenshots)
    log_in_from(spa, PAGE)

    [sid] = session_ids(stack)
    stack.store.delete(sid)
    methods = page.get_by_role("button", name="Show my sign-in methods")
    methods.click()
    status(page).to_have_text(EXPIRED)
    spa.expect_at(PAGE)
    screenshots.take("expired")
    if example == "plain":
        # Another failing call of the same client announces nothing new: the application was told once.
        # (The React bundle holds its own copy of the client, which this import would not reach.)
        page.evaluate("import('/bff/static/bff.js').then(({ myAccount }) => myAccount.listFactors()).catch(() => 0)")
    assert page.evaluate("window.expiredEvents") == 1

    # Logging in again, from the page's own button, comes back to the same page.
    context.clear_cookies(domain=urlsplit(stack.emulator.url).hostname)
    page.get_by_role("button", name="Log in").click()
    spa.expect_login_form()
    spa.submit_login_form()
    spa.expect_at(PAGE)
    status(page).to_have_text(SIGNED_IN)
    assert len(session_ids(stack)) == 1


def test_a_store_outage_is_not_taken_for_an_expired_session(
    page: Page, make_stack: StackFactory, request: pytest.FixtureRequest, redis_server: RedisServer,
    screenshots: Screenshots,
) -> None:
    stack = serve(make_stack, request, "react")
    spa = Spa(page, stack, screenshots)
    log_in_from(spa, PAGE)

    redis_server.stop()
    try:
        page.get_by_role("button", name="Show my sign-in methods").click()
        expect(page.get_by_role("alert")).to_contain_text("session store")
        status(page).to_have_text(SIGNED_IN)
        screenshots.take("store-outage")
        assert page.evaluate("window.expiredEvents") == 0
    finally:
        redis_server.start()

    # The session survived the outage.
    page.get_by_role("button", name="Show my sign-in methods").click()
    expect(page.get_by_test_id("method-list").locator("li")).to_have_text(["password"])


AVATAR_LOADED = "(() => { const img = document.querySelector('main img'); return !!img && img.naturalWidth > 0; })()"


def eventually(page: Page, expression: str) -> None:
    """Wait until ``expression`` is truthy in the page. (``page.wait_for_function`` polls with ``eval``, which
    the pages' policy refuses; ``page.evaluate`` does not need it.)"""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {TIMEOUT_MS} ms: {expression}"
        time.sleep(0.05)


def test_the_default_policy_refuses_a_plain_http_avatar(
    page: Page, make_stack: StackFactory, request: pytest.FixtureRequest, example: Example, screenshots: Screenshots
) -> None:
    stack = serve(make_stack, request, example)
    log_in_from(Spa(page, stack, screenshots), PAGE)
    eventually(page, f"window.violations.some((v) => v.startsWith('img-src {stack.emulator.url}/'))")
    assert not page.evaluate(AVATAR_LOADED)


def test_the_demo_policy_lets_the_emulator_avatar_load(
    page: Page, make_stack: StackFactory, request: pytest.FixtureRequest, example: Example, screenshots: Screenshots
) -> None:
    stack = serve(make_stack, request, example)
    serve_with_policy(stack, demo_content_security_policy(stack.emulator.url))
    log_in_from(Spa(page, stack, screenshots), PAGE)
    eventually(page, AVATAR_LOADED)
    screenshots.take("avatar")
    assert page.evaluate("window.violations") == []
