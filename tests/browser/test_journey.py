"""The demo SPA in Chromium: the whole account-settings journey, and what the browser gets to see."""

from __future__ import annotations

import base64
import json

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.browser.exposure import JWT, TOKEN_NAMES, Exposure, Seen, jwt_claims
from tests.browser.journey import run_journey
from tests.browser.spa import Screenshots, Spa, session_ids
from tests.conftest import TOKEN_BINDINGS

# The journey answers the demo's confirmation dialogs itself: Cancel first, then confirm.
pytestmark = [pytest.mark.browser, pytest.mark.confirm_dialogs]


def test_account_settings_journey(spa: Spa, screenshots: Screenshots) -> None:
    """Log in, see the profile, add a passkey and an authenticator app, connect and disconnect an
    account, delete the passkey, log out."""
    run_journey(spa, screenshots.take)
    assert session_ids(spa.stack) == [], "logging out leaves no session behind"
    families = spa.stack.idp.counters()["families"]
    assert families and all(family["revoked"] for family in families.values()), families


@pytest.mark.parametrize("token_binding", TOKEN_BINDINGS)
def test_no_token_reaches_the_browser_during_the_journey(
    spa: Spa, context: BrowserContext, page: Page, screenshots: Screenshots, token_binding: str
) -> None:
    """No token, refresh token or connect secret reaches the browser, in any form it can observe.

    Searched: every request URL (redirect hops included) and address shown, every response header
    and body, and at each step every cookie, ``localStorage``, ``sessionStorage`` and
    ``document.cookie``. The rules:

    * No JWT (``eyJ….eyJ….…``: access and ID tokens) anywhere, the provider's logout URL included:
      it names the IdP session by ``logout_hint``, never by ``id_token_hint``.
    * No refresh token the emulator issued, and no ``access_token`` / ``refresh_token`` /
      ``id_token`` member or parameter, anywhere.
    * The Connected Accounts ``auth_session`` nowhere. The ``connect_code`` only in the protocol's
      front channel: the consent page's redirect (``Location``) and the ``/bff/connect/callback``
      URL it leads to, which the BFF consumes once; never in the address the SPA ends up at, in a
      body, cookie or storage.
    * An enrollment ``auth_session`` (passkey, TOTP) is part of the My Account API contract: it is
      answered to the SPA by ``POST /me/v1/authentication-methods`` and sent back to verify. It
      may appear in that response body only: no URL, header, cookie or storage.
    * ``document.cookie`` is empty on the SPA's origin at every step: no cookie is readable by script.
    * With DPoP: no proof (a JWT too), no ``DPoP`` or ``DPoP-Nonce`` header, and no session's private
      key (its scalar, in hex or base64url), anywhere; and every token the IdP issued was DPoP-bound.
    """
    exposure = Exposure(context, page, spa.url)
    keys: dict[str, bytes] = {}  # every session's exported DPoP key, gathered at each step

    def checkpoint(name: str) -> None:
        exposure.checkpoint(name)
        screenshots.take(name)
        for sid in session_ids(spa.stack):
            loaded = spa.stack.store.load(sid)
            sealed = loaded.fields.get("dk") if loaded is not None else None
            key = spa.stack.app.extensions["bff"].dpop_keys.open(sealed)
            if key is not None:
                keys[sid] = key.export()

    run_journey(spa, checkpoint)
    stack = spa.stack
    bff, issuer = stack.bff_url, stack.emulator.url

    # The recording saw the journey, so the rules below searched something.
    assert exposure.bodies("GET", bff + "/bff/user")
    assert not exposure.unread, f"bodies that could not be read: {exposure.unread}"
    checkpoints = [item for item in exposure.seen if item.kind == "document.cookie" and item.url.startswith(bff)]
    assert len(checkpoints) >= 8

    leaks: list[str] = []

    def only_in(value: str, what: str, allowed: list[Seen]) -> None:
        leaks.extend(f"{what} in {item}" for item in exposure.containing(value) if item not in allowed)

    # JWTs: nowhere; the logout URL (body of POST /bff/logout, then the navigation) uses logout_hint.
    for item in exposure.seen:
        for token in JWT.findall(item.text):
            leaks.append(f"a JWT (aud {jwt_claims(token).get('aud')!r}) in {item}")
    logout_urls = [item for item in exposure.seen
                   if item.kind in ("url", "address") and item.url.startswith(issuer + "/oidc/logout?")]
    assert logout_urls and all("logout_hint=" in item.text and "id_token_hint" not in item.text
                               for item in logout_urls)
    assert all(family["revoked"] for family in stack.idp.counters()["families"].values())

    # Refresh tokens and token-bearing names: nowhere.
    with stack.idp.lock:
        refresh_tokens = list(stack.idp.refresh_tokens)
    assert refresh_tokens
    for refresh_token in refresh_tokens:
        only_in(refresh_token, "a refresh token", [])
    leaks.extend(f"{match.group()!r} in {item}" for item in exposure.seen for match in TOKEN_NAMES.finditer(item.text))

    # Connected Accounts: auth_session nowhere; connect_code in the front channel only.
    with stack.idp.my_account.lock:
        connects = list(stack.idp.my_account._connect_requests.values())
    assert len(connects) == 1 and connects[0].connect_code and connects[0].completed

    def in_front_channel(item: Seen) -> bool:
        consent_redirect = (item.kind, item.method, item.url) == ("header", "POST", issuer + "/connect")
        callback = item.kind == "url" and item.url.startswith(bff + "/bff/connect/callback?")
        return (consent_redirect and item.text.lower().startswith("location: ")) or callback

    front_channel = [item for item in exposure.seen if in_front_channel(item)]
    assert [item for item in front_channel if connects[0].connect_code in item.text], "the callback was observed"
    only_in(connects[0].auth_session, "the connect auth_session", [])
    only_in(connects[0].connect_code, "the connect_code", front_channel)
    only_in("connect_code", "the name connect_code", front_channel)

    # Enrollment auth_sessions: in the enrollment's answer only.
    started = [
        item for item in exposure.seen
        if (item.kind, item.method, item.url) == ("body", "POST", bff + "/me/v1/authentication-methods")
    ]
    enrollments = [json.loads(item.text)["auth_session"] for item in started]
    assert len(enrollments) == 2, "a passkey and an authenticator app were enrolled"
    for auth_session in enrollments:
        only_in(auth_session, "an enrollment auth_session", started)

    # DPoP: the keys and proofs stay in the BFF.
    issued = stack.idp.issued_tokens()
    if token_binding == "dpop":
        assert keys and {i.token_type for i in issued} == {"DPoP"}
        assert {i.jkt for i in issued} <= {key_thumbprint(exported) for exported in keys.values()}
    else:
        assert not keys and {i.token_type for i in issued} == {"Bearer"}
    for exported in keys.values():
        scalar = int(exported.split(b":", 1)[1], 16)
        only_in(f"{scalar:x}", "a DPoP private key (hex)", [])
        only_in(base64.urlsafe_b64encode(scalar.to_bytes(32, "big")).rstrip(b"=").decode(),
                "a DPoP private key (base64url)", [])
    leaks.extend(f"a DPoP proof or header in {item}" for item in exposure.seen
                 if "dpop+jwt" in item.text or (item.kind == "header" and item.text.lower().startswith("dpop")))

    leaks.extend(f"a script-readable cookie {item.text!r} at {item.method}" for item in checkpoints if item.text)
    assert not leaks, "\n".join(leaks)


def key_thumbprint(exported: bytes) -> str:
    from bff.dpop import DpopKey

    key = DpopKey.load(exported)
    assert key is not None
    return key.thumbprint

