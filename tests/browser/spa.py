"""The demo SPA and the emulator's pages as a user sees them, driven through Playwright."""

from __future__ import annotations

import base64
import re
import typing as t
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from bff.demo import demo_content_security_policy, demo_static_dir, with_demo_config

if t.TYPE_CHECKING:
    from bff.clock import Clock
    from tests.conftest import Stack, StackFactory

EMAIL = "alice@example.com"
PASSWORD = "alice"
NAME = "Alice Example"


class Screenshots:
    """Numbered full-page screenshots of one test, in the order they were taken."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.page: Page | None = None
        self._count = 0

    def take(self, name: str) -> Path:
        assert self.page is not None, "no page to screenshot"
        self._count += 1
        path = self.folder / f"{self._count:02d}-{name}.png"
        # From the top: a sticky header would otherwise be drawn over the middle of a full page.
        self.page.evaluate("window.scrollTo(0, 0)")
        # A modal dialog's backdrop covers the window only: the window is what the user sees then.
        modal = self.page.evaluate("document.querySelector('dialog:modal') !== null")
        self.page.screenshot(path=str(path), full_page=not modal)
        return path


class Spa:
    """The account-settings page of ``bff demo``, its ``data-testid``s and the emulator's forms."""

    def __init__(self, page: Page, stack: Stack, screenshots: Screenshots) -> None:
        self.page = page
        self.stack = stack
        self.url = stack.bff_url
        self.issuer = stack.emulator.url
        self.screenshots = screenshots

    def testid(self, name: str) -> Locator:
        return self.page.get_by_test_id(name)

    # Navigation ----------------------------------------------------------------------------------

    def open(self, path: str = "/") -> None:
        self.page.goto(self.url + path)

    def expect_at(self, path: str) -> None:
        """The SPA is showing ``path`` (exactly: query included, nothing left over from a redirect)."""
        expect(self.page).to_have_url(self.url + path)

    def expect_signed_out(self) -> None:
        expect(self.testid("signed-out")).to_be_visible()
        expect(self.testid("signed-in")).to_be_hidden()
        expect(self.testid("logout")).to_be_hidden()

    def expect_signed_in(self, *, error_shown: bool = False) -> None:
        """Signed in, every card loaded; and no error shown unless ``error_shown``."""
        expect(self.testid("signed-in")).to_be_visible()
        expect(self.testid("profile-name")).to_have_text(NAME)
        expect(self.testid("profile-email")).to_have_text(EMAIL)
        expect(self.testid("signed-out")).to_be_hidden()
        # Every card has finished loading (the lists replace their empty state).
        for name in ("methods", "factors", "accounts", "connections", "sessions"):
            expect(self.testid(name).locator("li").first).to_be_visible()
        if not error_shown:
            expect(self.testid("error")).to_be_empty()

    # The emulator's pages --------------------------------------------------------------------------

    def expect_login_form(self) -> None:
        expect(self.page).to_have_url(re.compile("^" + re.escape(self.issuer) + "/"))
        expect(self.page.get_by_role("heading", name="Welcome")).to_be_visible()

    def submit_login_form(self, email: str = EMAIL, password: str = PASSWORD) -> None:
        self.page.get_by_label("Email address").fill(email)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Continue").click()

    def log_in(self, path: str = "/") -> None:
        """From the signed-out page at ``path``: Log in -> the emulator's form -> back to ``path``."""
        self.expect_signed_out()
        self.testid("login").click()
        self.expect_login_form()
        self.submit_login_form()
        self.expect_at(path)
        self.expect_signed_in()

    # Sign-in methods -----------------------------------------------------------------------------

    def methods(self, type: str | None = None) -> Locator:
        selector = "[data-testid=method-item]" + (f'[data-method-type="{type}"]' if type else "")
        return self.testid("methods").locator(selector)

    def expect_notice(self, text: str) -> None:
        expect(self.testid("notice")).to_have_text(text)
        expect(self.testid("error")).to_be_empty()

    # Connected accounts --------------------------------------------------------------------------

    def accounts(self, connection: str | None = None) -> Locator:
        selector = "[data-testid=account-item]" + (f'[data-connection="{connection}"]' if connection else "")
        return self.testid("accounts").locator(selector)

    # What the browser holds ------------------------------------------------------------------------

    def storage(self) -> dict[str, dict[str, str]]:
        """``localStorage``, ``sessionStorage`` and ``document.cookie`` of the page's current origin."""
        return t.cast(
            dict[str, dict[str, str]],
            self.page.evaluate(
                """() => ({
                    localStorage: Object.fromEntries(Object.entries(localStorage)),
                    sessionStorage: Object.fromEntries(Object.entries(sessionStorage)),
                    documentCookie: {value: document.cookie},
                })"""
            ),
        )


def store_keys(stack: Stack, pattern: str = "*") -> set[str]:
    """Keys in the BFF's Redis (sessions are ``bff:s:{<sid>}``)."""
    import redis

    client = redis.Redis.from_url(str(stack.settings.session_store), decode_responses=True)
    try:
        return {str(key) for key in client.keys(pattern)}
    finally:
        client.close()


def session_ids(stack: Stack) -> list[str]:
    return sorted(key.removeprefix("bff:s:{").removesuffix("}") for key in store_keys(stack, "bff:s:*"))


def b64url_of_b64(value: str) -> str:
    """CDP reports binary WebAuthn fields in standard base64; the API uses unpadded base64url."""
    return base64.urlsafe_b64encode(base64.b64decode(value)).rstrip(b"=").decode()


def serve_with_policy(stack: Stack, policy: str, clock: Clock | None = None) -> Stack:
    """Serve ``stack``'s SPA with Content-Security-Policy ``policy`` from now on.

    A policy naming the emulator's origin can only be written once the emulator runs, after the stack's
    BFF was built: the same settings with the policy build a second BFF (same store, and ``clock`` if the
    stack was built with one) that takes over the stack's server."""
    import dataclasses

    from bff import create_app

    settings = dataclasses.replace(stack.settings, content_security_policy=policy)
    stack.app.wsgi_app = create_app(settings, store=stack.store, clock=clock).wsgi_app
    stack.settings = settings
    return stack


def make_demo(make_stack: StackFactory, **overrides: t.Any) -> Stack:
    """The emulator and a BFF on ``http://localhost:<port>`` serving the demo SPA, with the test Redis and
    the policy ``bff demo`` serves it with (the emulator's avatars allowed); ``overrides`` go to
    ``make_stack`` (a ``clock``, say)."""
    stack = make_stack(host="localhost", static_dir=demo_static_dir(), **overrides)
    serve_with_policy(stack, demo_content_security_policy(stack.emulator.url), overrides.get("clock"))
    # What ``bff demo`` adds to the BFF: /demo-config.json, naming the emulator's inbox.
    stack.app.wsgi_app = with_demo_config(stack.app.wsgi_app, stack.emulator.url)
    return stack
