"""Failed navigations as a user meets them: the screen each one ends on, in Chromium.

A login or a connection that fails comes back to the demo with ``?error=`` and ``?error_description=``; the
demo says what happened in its banner and tidies the address bar. Where the BFF knows no safe page to go
back to, it answers a small page of its own whose "Try again" link works. Each test drives the failure the
way a person runs into it, checks the visible text and screenshots the screen.
"""

from __future__ import annotations

import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, Request, expect

from bff.session.core import LOGIN_TRANSACTION_TTL
from tests.browser.spa import Screenshots, Spa, make_demo
from tests.support.clock import ManualClock

if t.TYPE_CHECKING:
    from tests.conftest import StackFactory

pytestmark = pytest.mark.browser

CONNECTION = "google-oauth2"


class Addresses:
    """Every address the tab navigated to (redirect hops included), as the browser requested them."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("request", self._record)

    def _record(self, request: Request) -> None:
        if request.is_navigation_request():
            self.seen.append(request.url)

    def sent_back(self, spa: Spa, error: str) -> dict[str, str]:
        """The query of the redirect back to the demo's ``/`` that carried ``error``."""
        for url in self.seen:
            parts = urlsplit(url)
            query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
            if url.startswith(spa.url + "/?") and query.get("error") == error:
                return query
        raise AssertionError(f"no redirect back with error={error}: {self.seen}")


def expect_banner(spa: Spa, text: str, detail: str | None = None) -> None:
    """The demo's error banner says ``text`` (and ``detail`` under it), clear of the page beneath it."""
    banner = spa.testid("error")
    expect(banner.locator("p").first).to_have_text(text)
    if detail is None:
        expect(banner.locator("p")).to_have_count(1)
        expect(banner.locator("li")).to_have_count(0)
    else:
        expect(banner.locator(".message-detail")).to_have_text(detail)
    expect(banner).to_be_visible()
    # The address bar no longer shows the error: a reload does not tell it again.
    spa.expect_at("/")
    below = spa.page.evaluate(
        """() => {
            const messages = document.querySelector('.messages').getBoundingClientRect();
            const next = document.querySelector('.messages ~ :not([hidden])').getBoundingClientRect();
            return next.top >= messages.bottom - 1;
        }"""
    )
    assert below, "the banner covers the page under it"


def test_cancelling_the_login_says_so(spa: Spa, screenshots: Screenshots) -> None:
    addresses = Addresses(spa.page)
    spa.open()
    spa.testid("login").click()
    spa.expect_login_form()
    spa.page.get_by_role("button", name="Deny").click()
    expect_banner(
        spa,
        "The login was cancelled. You are not signed in.",
        "The identity provider answered access_denied: User did not authorize the request",
    )
    spa.expect_signed_out()
    assert addresses.sent_back(spa, "access_denied")["error_description"]
    screenshots.take("login-cancelled")

    # The banner goes with the next action; logging in works.
    spa.testid("login").click()
    spa.submit_login_form()
    spa.expect_signed_in()


def test_opening_a_used_login_callback_again_says_so(spa: Spa, screenshots: Screenshots) -> None:
    """A reload of the callback (from history, say) after the login finished: the user stays signed in."""
    addresses = Addresses(spa.page)
    spa.open()
    spa.testid("login").click()
    spa.expect_login_form()
    with spa.page.expect_request(lambda request: request.url.startswith(spa.url + "/bff/callback?")) as callback:
        spa.submit_login_form()
    spa.expect_signed_in()

    spa.page.goto(callback.value.url)
    expect_banner(
        spa,
        "The login could not be completed. You are still signed in.",
        "Unknown or expired login state, or a login this browser did not start.",
    )
    expect(spa.testid("profile-name")).to_be_visible()
    assert addresses.sent_back(spa, "login_failed")
    screenshots.take("callback-replayed")


def test_a_login_left_open_too_long_says_it_expired(
    make_stack: StackFactory, page: Page, screenshots: Screenshots
) -> None:
    """The login page stayed open past the BFF's login lifetime; the identity provider's session it
    started lets the next "Log in" through without the form."""
    clock = ManualClock()
    spa = Spa(page, make_demo(make_stack, clock=clock), screenshots)
    spa.open()
    spa.testid("login").click()
    spa.expect_login_form()
    clock.advance(LOGIN_TRANSACTION_TTL + 1)
    spa.submit_login_form()
    expect_banner(
        spa,
        "The login could not be completed. You are not signed in.",
        "Unknown or expired login state, or a login this browser did not start.",
    )
    spa.expect_signed_out()
    screenshots.take("login-expired")

    spa.testid("login").click()
    spa.expect_at("/")
    spa.expect_signed_in()


def test_a_failure_of_the_identity_provider_at_the_callback_says_so(spa: Spa, screenshots: Screenshots) -> None:
    addresses = Addresses(spa.page)
    spa.stack.idp.fail_next_token("server_error", 500)
    spa.open()
    spa.testid("login").click()
    spa.expect_login_form()
    spa.submit_login_form()
    expect_banner(
        spa,
        "The identity provider is unavailable. Try again later. You are not signed in.",
        "The token endpoint failed (server_error).",
    )
    spa.expect_signed_out()
    assert addresses.sent_back(spa, "temporarily_unavailable")
    assert spa.stack.idp.counters()["faulted_token_calls"] == 1
    screenshots.take("idp-failed")

    spa.testid("login").click()
    spa.expect_at("/")
    spa.expect_signed_in()


def test_an_error_the_identity_provider_sends_back_says_so(spa: Spa, screenshots: Screenshots) -> None:
    """A silent login (``prompt=none``) without a session at the identity provider: it answers
    ``login_required`` to the callback."""
    addresses = Addresses(spa.page)
    spa.page.goto(spa.url + "/bff/login?prompt=none&returnTo=/")
    expect_banner(
        spa,
        "The identity provider needs you to log in. You are not signed in.",
        "The identity provider answered login_required: The user must authenticate interactively",
    )
    spa.expect_signed_out()
    assert addresses.sent_back(spa, "login_required")
    screenshots.take("idp-answered-error")


def test_cancelling_a_connection_at_the_consent_page_says_so(spa: Spa, screenshots: Screenshots) -> None:
    addresses = Addresses(spa.page)
    spa.open()
    spa.log_in()
    spa.testid(f"connect-{CONNECTION}").click()
    expect(spa.page.get_by_role("heading", name=f"Connect your {CONNECTION} account")).to_be_visible()
    spa.page.get_by_role("button", name="Deny").click()
    expect_banner(spa, "Connecting your Google account was cancelled. Nothing was connected.",
                  "The connection was declined (access_denied).")
    spa.expect_signed_in(error_shown=True)
    expect(spa.testid("accounts")).to_have_text("No connected accounts yet.")
    sub = spa.stack.idp.user_by_email("alice@example.com").sub
    assert spa.stack.idp.my_account.list_accounts(sub, [], None, 100)["accounts"] == []
    assert addresses.sent_back(spa, "access_denied")
    screenshots.take("connect-cancelled")

    # On a phone the banner wraps, and still covers nothing.
    spa.page.set_viewport_size({"width": 375, "height": 740})
    expect_banner(spa, "Connecting your Google account was cancelled. Nothing was connected.",
                  "The connection was declined (access_denied).")
    screenshots.take("connect-cancelled-phone")


def test_opening_a_used_connect_callback_again_says_so(spa: Spa, screenshots: Screenshots) -> None:
    spa.open()
    spa.log_in()
    spa.testid(f"connect-{CONNECTION}").click()
    with spa.page.expect_request(
        lambda request: request.url.startswith(spa.url + "/bff/connect/callback?")
    ) as callback:
        spa.page.get_by_role("button", name="Allow").click()
    spa.expect_notice(f"{CONNECTION} is now connected.")

    spa.page.goto(callback.value.url)
    expect_banner(spa, "The account could not be connected.", "Unknown, expired or already used connect state.")
    expect(spa.accounts(CONNECTION)).to_have_count(1)  # the first time counted
    screenshots.take("connect-callback-replayed")


def test_a_stray_login_callback_goes_home_and_says_so(spa: Spa, screenshots: Screenshots) -> None:
    """A callback with a state this browser never started (and no login cookie)."""
    spa.page.goto(spa.url + "/bff/callback?state=" + "garbage" * 4 + "&code=whatever")
    expect_banner(
        spa,
        "The login could not be completed. You are not signed in.",
        "Unknown or expired login state, or a login this browser did not start.",
    )
    spa.expect_signed_out()
    screenshots.take("stray-callback")


def test_a_login_with_nowhere_safe_to_return_shows_a_page_whose_link_works(
    spa: Spa, screenshots: Screenshots
) -> None:
    page = spa.page
    page.goto(spa.url + "/bff/login?returnTo=https://evil.example/elsewhere")
    expect(page.get_by_role("heading", name="Invalid return URL")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("evil.example")
    retry = page.get_by_role("link", name="Try again")
    expect(retry).to_be_visible()
    screenshots.take("try-again-page")

    retry.click()
    spa.expect_login_form()
    spa.submit_login_form()
    spa.expect_at("/")
    spa.expect_signed_in()


def test_a_foreign_logout_link_shows_a_page_whose_link_leads_home(spa: Spa, screenshots: Screenshots) -> None:
    """A logout link that does not carry this session's tag (planted by another site, say) ends nothing."""
    page = spa.page
    spa.open()
    spa.log_in()
    page.goto(spa.url + "/bff/logout?sid=" + "x" * 43)
    expect(page.get_by_role("heading", name="Anti-forgery check failed")).to_be_visible()
    expect(page.get_by_text("A logout link must carry this session's sid parameter.")).to_be_visible()
    screenshots.take("foreign-logout-page")

    page.get_by_role("link", name="Try again").click()
    spa.expect_at("/")
    spa.expect_signed_in()
