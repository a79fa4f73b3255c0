"""The account-settings journey of the demo SPA, from login to logout, as one user does it.

Each step is checked twice: on the page (what the user sees) and at the emulator (what really
happened at the identity provider), so a page that merely looks right does not pass.
"""

from __future__ import annotations

import re
import typing as t

import pyotp
from playwright.sync_api import CDPSession, Locator, Page, expect

from tests.browser.spa import EMAIL, Spa, b64url_of_b64

#: Called after each main step with the step's name (screenshots, snapshots of the browser's state).
Checkpoint = t.Callable[[str], object]

CONNECTION = "google-oauth2"
#: The passkey is named after the device it was created on, as the session is.
DELETE_PASSKEY = "Delete the passkey on Chrome on Linux? You won't be able to sign in with it any more."


def add_virtual_authenticator(page: Page) -> tuple[CDPSession, str]:
    """A platform authenticator with user verification, answering WebAuthn ceremonies of ``page``."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, t.cast(str, added["authenticatorId"])


def confirm(
    spa: Spa, button: Locator, question: str, still_there: t.Callable[[], object], checkpoint: Checkpoint, name: str
) -> None:
    """A destructive action as a careful user takes it: ``button`` asks ``question`` in the demo's dialog
    (checkpoint ``name``); Cancel first (``still_there`` asserts nothing was removed), then again, and confirm."""
    dialog = spa.testid("confirm-dialog")
    button.click()
    expect(dialog).to_be_visible()
    expect(spa.testid("confirm-message")).to_have_text(question)
    checkpoint(name)
    spa.testid("confirm-cancel").click()
    expect(dialog).to_be_hidden()
    still_there()
    button.click()
    expect(dialog).to_be_visible()
    spa.testid("confirm-ok").click()
    expect(dialog).to_be_hidden()


def run_journey(spa: Spa, checkpoint: Checkpoint) -> None:
    """The journey; the test answers the demo's confirmation dialogs itself (``confirm_dialogs``)."""
    page, stack = spa.page, spa.stack
    my_account = stack.idp.my_account
    cdp, authenticator = add_virtual_authenticator(page)

    # Log in through the emulator's form and see the profile.
    spa.open("/")
    spa.expect_signed_out()
    checkpoint("signed-out")
    spa.testid("login").click()
    spa.expect_login_form()
    checkpoint("emulator-login")
    spa.submit_login_form()
    spa.expect_at("/")
    spa.expect_signed_in()
    expect(spa.methods("password")).to_have_count(1)
    expect(spa.methods("passkey")).to_have_count(0)
    checkpoint("profile")
    user = stack.idp.user_by_email(EMAIL)
    assert user is not None
    sub = user.sub

    # Enroll a passkey: Chromium's authenticator creates it, the emulator verifies the attestation.
    spa.testid("enroll-passkey").click()
    spa.expect_notice("Passkey added.")
    expect(spa.methods("passkey")).to_have_count(1)
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(credentials) == 1, credentials
    assert credentials[0]["rpId"] == "localhost"
    assert credentials[0]["isResidentCredential"] is True
    passkeys = my_account.list_methods(sub, "passkey")["authentication_methods"]
    assert [method["key_id"] for method in passkeys] == [b64url_of_b64(credentials[0]["credentialId"])]
    assert passkeys[0]["relying_party_id"] == "localhost"
    expect(spa.methods("passkey")).to_have_attribute("data-method-id", passkeys[0]["id"])
    checkpoint("passkey-added")

    # Enroll an authenticator app with the code computed from the secret shown.
    spa.testid("enroll-totp").click()
    expect(spa.testid("totp-panel")).to_be_visible()
    expect(spa.testid("totp-qr").locator("svg")).to_be_visible()
    expect(spa.testid("totp-secret")).to_have_text(re.compile(r"^[A-Z2-7]{16,}$"))
    checkpoint("totp-setup")
    secret = spa.testid("totp-secret").inner_text()
    spa.testid("totp-code").fill(pyotp.TOTP(secret).now())
    spa.testid("totp-submit").click()
    spa.expect_notice("Authenticator app added.")
    expect(spa.testid("totp-panel")).to_be_hidden()
    expect(spa.methods("totp")).to_have_count(1)
    totps = my_account.list_methods(sub, "totp")["authentication_methods"]
    assert [method["confirmed"] for method in totps] == [True]
    checkpoint("totp-added")

    # Connect an account through the emulator's consent page.
    spa.testid(f"connect-{CONNECTION}").click()
    expect(page).to_have_url(re.compile("^" + re.escape(spa.issuer) + r"/connect\?ticket="))
    expect(page.get_by_role("heading", name=f"Connect your {CONNECTION} account")).to_be_visible()
    checkpoint("consent")
    page.get_by_role("button", name="Allow").click()
    spa.expect_notice(f"{CONNECTION} is now connected.")
    spa.expect_at("/")  # the SPA tidied ?connected= away
    expect(spa.accounts(CONNECTION)).to_have_count(1)
    linked = my_account.list_accounts(sub, [], None, 100)["accounts"]
    assert [account["connection"] for account in linked] == [CONNECTION]
    expect(spa.accounts(CONNECTION)).to_have_attribute("data-account-id", linked[0]["id"])
    checkpoint("account-connected")

    # Disconnect it: Cancel keeps it, at the provider too; then confirmed.
    def still_connected() -> None:
        expect(spa.accounts(CONNECTION)).to_have_count(1)
        assert [account["id"] for account in my_account.list_accounts(sub, [], None, 100)["accounts"]] == [
            linked[0]["id"]
        ]

    confirm(
        spa,
        spa.accounts(CONNECTION).get_by_test_id("disconnect"),
        "Disconnect your Google account? The application loses access to it.",
        still_connected,
        checkpoint,
        "confirm-disconnect",
    )
    spa.expect_notice(f"{CONNECTION} disconnected.")
    expect(spa.accounts()).to_have_count(0)
    expect(spa.testid("accounts")).to_have_text("No connected accounts yet.")
    assert my_account.list_accounts(sub, [], None, 100)["accounts"] == []
    checkpoint("account-disconnected")

    # Delete the passkey (Cancel first keeps it); the authenticator app stays.
    def passkey_kept() -> None:
        expect(spa.methods("passkey")).to_have_count(1)
        assert [method["id"] for method in my_account.list_methods(sub, "passkey")["authentication_methods"]] == [
            passkeys[0]["id"]
        ]

    confirm(spa, spa.methods("passkey").get_by_test_id("delete"), DELETE_PASSKEY, passkey_kept, checkpoint,
            "confirm-delete-passkey")
    spa.expect_notice("Passkey removed.")
    expect(spa.methods("passkey")).to_have_count(0)
    expect(spa.methods("totp")).to_have_count(1)
    assert my_account.list_methods(sub, "passkey")["authentication_methods"] == []
    checkpoint("passkey-deleted")

    # Log out: the BFF session ends, then the emulator's, and the SPA comes back signed out.
    with page.expect_response(lambda response: response.url.startswith(spa.issuer + "/oidc/logout")):
        spa.testid("logout").click()
    spa.expect_at("/")
    spa.expect_signed_out()
    expect(spa.testid("profile-name")).to_be_hidden()
    assert page.evaluate("fetch('/bff/user').then((response) => response.status)") == 401
    checkpoint("logged-out")
