"""The client's enrollment helpers in Chromium, against the emulator's My Account API through the BFF.

Each method type is enrolled with its helper and confirmed with ``confirm(...)``: the authenticator
app with a code computed from the secret shown, email and phone with the code the emulator "sent",
the recovery code and push notifications as they are, a password under the emulator's policy, and a
passkey end to end with Chromium's virtual authenticator. The emulator then holds each, confirmed.
"""

from __future__ import annotations

import typing as t

import pyotp
import pytest
from playwright.sync_api import Page

from tests.browser.clientjs import EXAMPLES
from tests.browser.journey import add_virtual_authenticator
from tests.browser.spa import EMAIL, Screenshots, Spa
from tests.conftest import StackFactory

pytestmark = pytest.mark.browser

CLIENT = "const { myAccount } = await import('/bff/static/bff.js');"


def start(page: Page, call: str) -> dict[str, t.Any]:
    """Run ``myAccount.<call>`` in the page; keep the started enrollment as ``window.pending``."""
    return t.cast(dict[str, t.Any], page.evaluate(
        f"async () => {{ {CLIENT} window.pending = await myAccount.{call}; "
        "const { confirm, ...started } = window.pending; return started; }"
    ))


def confirm(page: Page, *args: str) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], page.evaluate("(args) => window.pending.confirm(...args)", list(args)))


def test_every_method_type_enrolls_with_its_helper(
    page: Page, make_stack: StackFactory, screenshots: Screenshots
) -> None:
    stack = make_stack(host="localhost", static_dir=str(EXAMPLES / "plain"))
    spa = Spa(page, stack, screenshots)
    spa.open("/")
    page.get_by_role("button", name="Log in").click()
    spa.expect_login_form()
    spa.submit_login_form()
    spa.expect_at("/")
    user = stack.idp.user_by_email(EMAIL)
    assert user is not None
    sent = stack.idp.my_account

    totp = start(page, "enrollTotp()")
    assert totp["barcode_uri"].startswith("otpauth://totp/") and totp["location"]
    assert confirm(page, pyotp.TOTP(totp["manual_input_code"]).now())["type"] == "totp"

    start(page, "enrollEmail('alice.work@example.com')")
    assert confirm(page, sent.last_otp(user.sub, "email"))["email"] == "alice.work@example.com"

    start(page, "enrollPhone('+15551234567', 'voice')")
    phone = confirm(page, sent.last_otp(user.sub, "phone"))
    assert (phone["phone_number"], phone["preferred_authentication_method"]) == ("+15551234567", "voice")

    recovery = start(page, "enrollRecoveryCode()")
    assert len(recovery["recovery_code"]) >= 16
    assert confirm(page)["type"] == "recovery-code"

    push = start(page, "enrollPushNotification()")
    assert push["barcode_uri"].startswith("otpauth://")
    assert confirm(page)["type"] == "push-notification"

    password = start(page, "enrollPassword()")
    assert password["policy"]["complexity"]["min_length"] >= 8
    assert confirm(page, "Quiet-Harbor-47")["type"] == "password"

    add_virtual_authenticator(page)
    passkey = page.evaluate(f"async () => {{ {CLIENT} return myAccount.enrollPasskey(); }}")
    assert passkey["type"] == "passkey"

    page.get_by_role("button", name="Show my sign-in methods").click()
    screenshots.take("enrolled")
    methods = sent.list_methods(user.sub, None)["authentication_methods"]
    kinds = {method["type"] for method in methods}
    assert {"totp", "email", "phone", "recovery-code", "push-notification", "password", "passkey"} <= kinds
    assert all(method.get("confirmed", True) for method in methods), methods
