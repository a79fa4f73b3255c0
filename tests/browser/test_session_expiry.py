"""A session that ends while the page is open: the next call leads to login and back to the page."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext

from tests.browser.spa import Spa, session_ids
from tests.conftest import Stack

pytestmark = pytest.mark.browser

PAGE = "/account/security?tab=methods"


def test_an_expired_session_sends_the_user_to_log_in_and_back_to_the_same_page(
    spa: Spa, context: BrowserContext, demo: Stack
) -> None:
    spa.open(PAGE)
    spa.log_in(PAGE)
    spa.screenshots.take("signed-in")

    # The session ends on the server while the page stays open; the identity provider's session
    # is gone too (its cookie cleared), so the emulator asks for the password again.
    [sid] = session_ids(demo)
    demo.store.delete(sid)
    context.clear_cookies(domain=urlsplit(demo.emulator.url).hostname)

    # The next call from the SPA answers 401; the client takes the user to log in.
    spa.testid("enroll-totp").click()
    spa.expect_login_form()
    spa.screenshots.take("login-again")
    spa.submit_login_form()

    spa.expect_at(PAGE)
    spa.expect_signed_in()
    spa.screenshots.take("back-on-the-page")
    assert len(session_ids(demo)) == 1 and session_ids(demo) != [sid]
