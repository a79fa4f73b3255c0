"""The demo as an end user meets it: codes in the demo inbox, confirmations, readable names, the notices
after logout, and the emulator's pages. Each test screenshots the screens it checks."""

from __future__ import annotations

import dataclasses
import re

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from bff.emulator.connect import scope_words
from tests.browser.journey import add_virtual_authenticator
from tests.browser.spa import EMAIL, PASSWORD, Screenshots, Spa
from tests.conftest import Stack

pytestmark = pytest.mark.browser


def below_messages(page: Page, testid: str) -> bool:
    """The element's top edge is not under the pinned message banner."""
    return bool(page.evaluate(
        """(id) => document.querySelector(`[data-testid="${id}"]`).getBoundingClientRect().top
                   >= document.querySelector(".messages").getBoundingClientRect().bottom - 1""",
        testid,
    ))


def test_email_enrollment_is_finished_with_the_code_from_the_demo_inbox(
    spa: Spa, context: BrowserContext, screenshots: Screenshots
) -> None:
    spa.open()
    spa.log_in()
    expect(spa.testid("email-address")).to_have_value(EMAIL)
    spa.testid("enroll-email").click()
    expect(spa.testid("otp-panel")).to_be_visible()
    link = spa.testid("inbox-link")
    expect(link).to_be_visible()
    expect(link).to_have_attribute("href", spa.issuer + "/inbox")
    assert below_messages(spa.page, "otp-panel"), "the banner covers the code panel"
    screenshots.take("code-panel-with-inbox-link")

    # The inbox, as the person at the demo opens it from the link.
    with context.expect_page() as opened:
        link.click()
    inbox = opened.value
    inbox.wait_for_load_state()
    expect(inbox.get_by_text(EMAIL)).to_be_visible()
    code = inbox.locator(".code").first.inner_text().replace(" ", "")
    assert re.fullmatch(r"\d{6}", code), code
    screenshots.page = inbox
    screenshots.take("inbox")
    screenshots.page = spa.page
    inbox.close()

    spa.testid("otp-code").fill(code)
    spa.testid("otp-submit").click()
    spa.expect_notice("Email added.")
    expect(spa.methods("email")).to_have_count(1)
    expect(spa.testid("otp-panel")).to_be_hidden()
    expect(spa.testid("email-address")).to_have_value("")  # the input clears after success
    screenshots.take("email-added")


def test_phone_codes_are_delivered_to_the_inbox(spa: Spa) -> None:
    spa.open()
    spa.log_in()
    spa.testid("phone-number").fill("+15551234567")
    spa.testid("enroll-phone").click()
    expect(spa.testid("otp-panel")).to_be_visible()
    [delivery] = [d for d in spa.stack.idp.outbox() if d.address == "+15551234567"]
    assert delivery.channel == "sms"
    spa.testid("otp-code").fill(delivery.code)
    spa.testid("otp-submit").click()
    spa.expect_notice("Phone added.")
    expect(spa.testid("phone-number")).to_have_value("")


@pytest.mark.confirm_dialogs
def test_destructive_actions_ask_for_confirmation(spa: Spa, screenshots: Screenshots) -> None:
    page = spa.page
    spa.open()
    spa.log_in()
    dialog = spa.testid("confirm-dialog")

    # Deleting a method: Cancel keeps it.
    spa.methods("password").get_by_test_id("delete").click()
    expect(dialog).to_be_visible()
    expect(spa.testid("confirm-message")).to_contain_text("Delete Password?")
    screenshots.take("confirm-delete-method")
    spa.testid("confirm-cancel").click()
    expect(dialog).to_be_hidden()
    expect(spa.methods("password")).to_have_count(1)
    assert spa.stack.idp.my_account.list_methods(spa.stack.idp.user_by_email(EMAIL).sub, "password")[
        "authentication_methods"
    ]

    # Ending a session: Escape cancels too.
    spa.testid("sessions").get_by_test_id("end-session").first.click()
    expect(spa.testid("confirm-message")).to_contain_text("End the session on this device?")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    spa.expect_signed_in()

    # Disconnecting an account: confirmed, it goes.
    spa.testid("connect-google-oauth2").click()
    page.get_by_role("button", name="Allow").click()
    expect(spa.accounts("google-oauth2")).to_have_count(1)
    spa.accounts("google-oauth2").get_by_test_id("disconnect").click()
    expect(spa.testid("confirm-message")).to_have_text(
        "Disconnect your Google account? The application loses access to it."
    )
    screenshots.take("confirm-disconnect")
    spa.testid("confirm-ok").click()
    expect(spa.accounts()).to_have_count(0)


def test_devices_connections_and_scopes_have_readable_names(spa: Spa, screenshots: Screenshots) -> None:
    add_virtual_authenticator(spa.page)
    spa.open()
    spa.log_in()
    spa.testid("enroll-passkey").click()
    spa.expect_notice("Passkey added.")

    current = spa.testid("sessions").locator("[data-current=true] .item-title")
    expect(current).to_contain_text("Chrome on Linux")
    passkey = spa.methods("passkey").locator(".item-title")
    expect(passkey).to_have_text("Chrome on Linux")  # the same name as the session's
    expect(spa.methods("passkey").locator(".item-meta")).not_to_contain_text("Mozilla/")

    google = spa.testid("connections").locator('[data-connection="google-oauth2"]')
    expect(google.locator(".item-title")).to_have_text("Google")
    expect(spa.testid("connections").locator('[data-connection="github"] .item-title')).to_have_text("GitHub")
    google.locator("summary").click()
    labels = google.locator("label")
    expect(labels.first).to_be_visible()
    texts = labels.all_inner_texts()
    assert texts and not [text for text in texts if "://" in text], texts
    assert "See events on your calendars" in texts, texts
    expect(google.get_by_text("See events on your calendars")).to_have_attribute(
        "title", "https://www.googleapis.com/auth/calendar.events.readonly"
    )
    screenshots.take("readable-names")


def test_logout_says_you_have_been_signed_out(spa: Spa, screenshots: Screenshots) -> None:
    spa.open()
    spa.log_in()
    spa.testid("logout").click()
    spa.expect_at("/")
    spa.expect_signed_out()
    spa.expect_notice("You have been signed out.")
    screenshots.take("signed-out-notice")


def test_a_session_ended_from_another_device_is_explained(
    spa: Spa, context: BrowserContext, demo: Stack, screenshots: Screenshots
) -> None:
    spa.open()
    spa.log_in()

    # Another device (its own browser profile) logs in and ends this browser's session.
    other_context = context.browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    try:
        other = Spa(other_context.new_page(), demo, screenshots)
        other.open()
        other.log_in()
        other.testid("sessions").locator("[data-current=false]").get_by_test_id("end-session").click()
        other.testid("confirm-ok").click()
        expect(other.testid("sessions").locator("[data-current=false]")).to_have_count(0)
    finally:
        other_context.close()

    # Back here, the next call finds the session over: the user is told why, logs in (silently: the
    # identity provider's session lives on) and comes back.
    spa.testid("enroll-totp").click()
    spa.expect_signed_in()
    expect(spa.testid("notice")).to_have_text(
        "Your session was ended, from another device or because it timed out. You are signed in again."
    )
    screenshots.take("session-ended-elsewhere")


def test_the_login_page_shows_the_demo_credentials_and_what_is_missing(
    spa: Spa, demo: Stack, screenshots: Screenshots
) -> None:
    page = spa.page
    spa.open()
    spa.testid("login").click()
    spa.expect_login_form()
    expect(page.get_by_test_id("demo-credentials")).to_have_count(0)  # off unless it is the demo

    demo.idp.config = dataclasses.replace(demo.idp.config, show_demo_credentials=True)
    page.reload()
    credentials = page.get_by_test_id("demo-credentials")
    expect(credentials).to_contain_text(EMAIL)
    expect(credentials).to_contain_text(PASSWORD)
    screenshots.take("login-with-demo-credentials")

    # An empty submit stays on the page and says what is missing.
    page.get_by_label("Email address").fill("")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_test_id("email-missing")).to_be_visible()
    expect(page.get_by_test_id("password-missing")).to_be_visible()
    spa.expect_login_form()
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_test_id("email-missing")).to_be_hidden()
    expect(page.get_by_test_id("password-missing")).to_have_text("Enter your password.")
    screenshots.take("login-missing-password")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    spa.expect_signed_in()


#: Scopes the emulator's connections do not offer, named from their last path segment.
UNKNOWN_SCOPES = {
    "https://www.googleapis.com/auth/drive.file": "Drive file",
    "https://www.googleapis.com/auth/gmail.readonly": "Gmail (read-only)",
    "https://example.com/scopes/": "Scopes",
    "admin:org_hook": "Admin org hook",
    "read_api": "Read api",
}


def test_the_consent_page_and_the_demo_name_permissions_in_words(spa: Spa, screenshots: Screenshots) -> None:
    """The consent page lists what the application may do in words, the scope itself in small type under
    them; the demo's permission choices and its connected account say the same words."""
    page = spa.page
    spa.open()
    spa.log_in()
    google = spa.testid("connections").locator('[data-connection="google-oauth2"]')
    google.locator("summary").click()
    labels = google.locator("label")
    expect(labels.first).to_be_visible()
    in_demo = {label.get_attribute("title"): label.inner_text() for label in labels.all()}
    offered = next(connection.scopes for connection in spa.stack.idp.my_account.connections
                   if connection.name == "google-oauth2")
    assert list(in_demo) == list(offered), in_demo

    # The demo and the emulator name unknown scopes alike too.
    for scope, words in UNKNOWN_SCOPES.items():
        assert scope_words(scope) == words
    named = page.evaluate("(scopes) => import('/ui.js').then((ui) => scopes.map(ui.scopeLabel))", list(UNKNOWN_SCOPES))
    assert named == list(UNKNOWN_SCOPES.values())

    spa.testid("connect-google-oauth2").click()
    items = page.locator("#scopes li")
    expect(items).to_have_count(len(offered))
    on_consent = {item.get_attribute("data-scope"): item.locator(".scope-words").inner_text() for item in items.all()}
    assert on_consent == in_demo
    assert on_consent["https://www.googleapis.com/auth/calendar.events.readonly"] == "See events on your calendars"
    assert on_consent["email"] == "See your email address"
    assert not [words for words in on_consent.values() if "://" in words or "." in words], on_consent
    # What the eye meets first in each item is the words: above the scope, in the page's type and colour;
    # the scope under them, smaller, in monospace.
    layout = page.evaluate(
        """() => [...document.querySelectorAll('#scopes li')].map((item) => {
            const words = item.querySelector('.scope-words');
            const code = item.querySelector('.scope');
            const scope = code.getBoundingClientRect();
            return {
                scope: code.textContent,
                wordsAbove: words.getBoundingClientRect().bottom <= scope.top + 1,
                wordsSize: parseFloat(getComputedStyle(words).fontSize),
                scopeSize: parseFloat(getComputedStyle(code).fontSize),
                scopeFont: getComputedStyle(code).fontFamily,
                wordsFont: getComputedStyle(words).fontFamily,
            };
        })"""
    )
    for item in layout:
        assert item["scope"] in offered, item
        assert item["wordsAbove"] and item["wordsSize"] > item["scopeSize"], item
        assert "monospace" in item["scopeFont"] and "monospace" not in item["wordsFont"], item
    screenshots.take("consent-in-words")

    page.get_by_role("button", name="Allow").click()
    spa.expect_notice("google-oauth2 is now connected.")
    permissions = spa.accounts("google-oauth2").get_by_test_id("account-scopes").locator("li")
    expect(permissions).to_have_count(len(offered))
    assert permissions.all_inner_texts() == list(on_consent.values())
    assert [item.get_attribute("title") for item in permissions.all()] == list(on_consent)
    expect(spa.accounts("google-oauth2")).not_to_contain_text("googleapis")
    screenshots.take("connected-account-in-words")


def test_the_consent_page_looks_like_the_login_page(spa: Spa, screenshots: Screenshots) -> None:
    page = spa.page
    spa.open()
    spa.log_in()
    spa.testid("connect-google-oauth2").click()
    expect(page.get_by_role("heading", name="Connect your google-oauth2 account")).to_be_visible()
    # The login page's card and buttons.
    assert page.evaluate("getComputedStyle(document.querySelector('main')).borderRadius") == "8px"
    assert page.evaluate("getComputedStyle(document.getElementById('allow')).backgroundColor") == "rgb(99, 93, 255)"
    screenshots.take("consent")
    page.get_by_role("button", name="Allow").click()
    spa.expect_notice("google-oauth2 is now connected.")
