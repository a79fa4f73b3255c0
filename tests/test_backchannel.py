"""Back-channel logout: the IdP ends BFF sessions with a signed logout token."""

from __future__ import annotations

import base64
import json
import secrets
import time
import typing as t

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from bff.emulator.state import BACKCHANNEL_LOGOUT_EVENT
from tests.conftest import CLIENT_ID, TOKEN_BINDINGS, Stack
from tests.support.problems import assert_problem


@pytest.fixture(params=TOKEN_BINDINGS)
def token_binding(request: pytest.FixtureRequest) -> str:
    """Every test here holds with Bearer tokens and with DPoP-bound ones."""
    return str(request.param)


def session_doc(stack: Stack, http: requests.Session) -> dict[str, t.Any]:
    record = stack.store.load(http.cookies[stack.settings.session_cookie_name])
    assert record is not None
    return t.cast(dict[str, t.Any], json.loads(record.fields["doc"]))


def logged_in_as(stack: Stack, email: str, password: str) -> requests.Session:
    if stack.idp.user_by_email(email) is None:
        stack.idp.add_user(email, password)
    return stack.logged_in(email=email, password=password)


def is_logged_in(stack: Stack, http: requests.Session) -> bool:
    status = http.get(stack.bff_url + "/bff/user").status_code
    assert status in (200, 401)
    return status == 200


def post_token(stack: Stack, token: str) -> requests.Response:
    # The IdP's server-to-server POST: no cookie, no CSRF header.
    return requests.post(stack.bff_url + "/bff/backchannel-logout", data={"logout_token": token}, timeout=10)


def logout_claims(stack: Stack, doc: dict[str, t.Any], **changes: t.Any) -> dict[str, t.Any]:
    """Valid logout-token claims for the session ``doc``; a change to ``None`` removes the claim."""
    now = int(stack.idp.clock.now())
    claims: dict[str, t.Any] = {
        "iss": stack.idp.issuer,
        "sub": doc["sub"],
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(16),
        "sid": doc["idp_sid"],
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def test_logging_out_elsewhere_ends_the_bff_session_and_its_refresh_token(stack: Stack) -> None:
    http = stack.logged_in()
    sub = http.get(stack.bff_url + "/bff/user").json()["claims"]["sub"]
    box = stack.app.extensions["bff"].box
    record = stack.store.load(http.cookies[stack.settings.session_cookie_name])
    family = stack.idp.family_of(box.open(record.fields["rt"]).decode())

    assert stack.idp.logout_user(sub)
    deliveries = stack.idp.wait_for_backchannel(1)

    assert [delivery.status_code for delivery in deliveries] == [200]
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")
    assert stack.idp.family_revoked(family)


def test_logout_at_the_identity_provider_page_ends_the_bff_session(stack: Stack) -> None:
    http = stack.logged_in()
    page = http.get(stack.emulator.url + "/oidc/logout", params={"client_id": CLIENT_ID}, timeout=10)
    # Without post_logout_redirect_uri, to the first Allowed Logout URL (oidc-logout.md): the BFF's root.
    assert page.history[0].status_code == 302 and page.url == stack.bff_url + "/"
    assert stack.idp.wait_for_backchannel(1)[0].status_code == 200
    assert not is_logged_in(stack, http)


def test_only_the_named_users_sessions_end(stack: Stack) -> None:
    alice = stack.logged_in()
    bob = logged_in_as(stack, "bob@example.com", "bob-password")
    bob_sub = session_doc(stack, bob)["sub"]

    stack.idp.logout_user(bob_sub)
    stack.idp.wait_for_backchannel(1)

    assert not is_logged_in(stack, bob)
    assert is_logged_in(stack, alice)


def test_a_sid_ends_only_that_idp_sessions_bff_session(stack: Stack) -> None:
    laptop = stack.logged_in()
    phone = stack.logged_in()  # another browser: another IdP session of the same user
    laptop_doc, phone_doc = session_doc(stack, laptop), session_doc(stack, phone)
    assert laptop_doc["idp_sid"] != phone_doc["idp_sid"]

    stack.idp.end_sso_session(laptop_doc["idp_sid"])
    stack.idp.wait_for_backchannel(1)

    assert not is_logged_in(stack, laptop)
    assert is_logged_in(stack, phone)


def test_a_token_with_only_sub_ends_every_session_of_the_user(stack: Stack) -> None:
    laptop, phone = stack.logged_in(), stack.logged_in()
    bob = logged_in_as(stack, "bob@example.com", "bob-password")
    doc = session_doc(stack, laptop)
    response = post_token(stack, stack.idp.sign(logout_claims(stack, doc, sid=None)))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert not is_logged_in(stack, laptop) and not is_logged_in(stack, phone)
    assert is_logged_in(stack, bob)


def test_a_token_with_only_sid_ends_that_session(stack: Stack) -> None:
    laptop, phone = stack.logged_in(), stack.logged_in()
    response = post_token(stack, stack.idp.sign(logout_claims(stack, session_doc(stack, laptop), sub=None)))
    assert response.status_code == 200
    assert not is_logged_in(stack, laptop)
    assert is_logged_in(stack, phone)


def test_a_token_for_an_unknown_session_is_accepted_and_ends_nothing(stack: Stack) -> None:
    http = stack.logged_in()
    doc = session_doc(stack, http)
    response = post_token(stack, stack.idp.sign(logout_claims(stack, doc, sid="unknown-sid", sub=None)))
    assert response.status_code == 200
    assert is_logged_in(stack, http)


def _foreign_key_token(stack: Stack, claims: dict[str, t.Any]) -> str:
    kid = stack.idp.jwks()["keys"][0]["kid"]
    key = RSAKey.generate_key(2048, parameters={"kid": kid})
    return jwt.encode({"alg": "RS256", "kid": kid}, claims, key)


def _tampered_token(stack: Stack, claims: dict[str, t.Any]) -> str:
    header, _, signature = stack.idp.sign({**claims, "sub": "auth0|someone-else"}).split(".")
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def _unsigned_token(stack: Stack, claims: dict[str, t.Any]) -> str:
    def part(value: dict[str, t.Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


INVALID: dict[str, t.Callable[[Stack, dict[str, t.Any]], str]] = {
    "signed-by-another-key": lambda stack, doc: _foreign_key_token(stack, logout_claims(stack, doc)),
    "payload-tampered": lambda stack, doc: _tampered_token(stack, logout_claims(stack, doc)),
    "alg-none": lambda stack, doc: _unsigned_token(stack, logout_claims(stack, doc)),
    "not-a-jwt": lambda stack, doc: "not.a.jwt",
    "wrong-audience": lambda stack, doc: stack.idp.sign(logout_claims(stack, doc, aud="another-client")),
    "wrong-issuer": lambda stack, doc: stack.idp.sign(logout_claims(stack, doc, iss="https://evil.example/")),
    "expired": lambda stack, doc: stack.idp.sign(
        logout_claims(stack, doc, iat=int(time.time()) - 300, exp=int(time.time()) - 180)
    ),
    "issued-in-the-future": lambda stack, doc: stack.idp.sign(
        logout_claims(stack, doc, iat=int(time.time()) + 600, exp=int(time.time()) + 720)
    ),
    "issued-too-long-ago": lambda stack, doc: stack.idp.sign(
        logout_claims(stack, doc, iat=int(time.time()) - 3600, exp=int(time.time()) + 120)
    ),
    "no-exp": lambda stack, doc: stack.idp.sign(logout_claims(stack, doc, exp=None)),
    "no-jti": lambda stack, doc: stack.idp.sign(logout_claims(stack, doc, jti=None)),
    "no-events": lambda stack, doc: stack.idp.sign(logout_claims(stack, doc, events=None)),
    "other-event": lambda stack, doc: stack.idp.sign(
        logout_claims(stack, doc, events={"http://schemas.openid.net/event/other": {}})
    ),
    "event-not-an-object": lambda stack, doc: stack.idp.sign(
        logout_claims(stack, doc, events={BACKCHANNEL_LOGOUT_EVENT: "yes"})
    ),
    "with-nonce": lambda stack, doc: stack.idp.sign(logout_claims(stack, doc, nonce="n-0S6_WzA2Mj")),
    "neither-sid-nor-sub": lambda stack, doc: stack.idp.sign(logout_claims(stack, doc, sid=None, sub=None)),
    "sid-not-a-string": lambda stack, doc: stack.idp.sign(logout_claims(stack, doc, sid=["a", "b"])),
}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_an_invalid_logout_token_is_400_and_ends_nothing(stack: Stack, kind: str) -> None:
    http = stack.logged_in()
    token = INVALID[kind](stack, session_doc(stack, http))
    response = post_token(stack, token)
    assert_problem(response, 400, "invalid-logout-token")
    assert response.headers["Cache-Control"] == "no-store"
    assert is_logged_in(stack, http)


def test_a_missing_logout_token_is_400(stack: Stack) -> None:
    response = requests.post(stack.bff_url + "/bff/backchannel-logout", data={}, timeout=10)
    assert_problem(response, 400, "invalid-logout-token")


def test_a_replayed_logout_token_is_400(stack: Stack) -> None:
    first = stack.logged_in()
    token = stack.idp.sign(logout_claims(stack, session_doc(stack, first), sid=None))
    assert post_token(stack, token).status_code == 200
    second = stack.logged_in()  # a new session of the same user after the first logout

    assert_problem(post_token(stack, token), 400, "invalid-logout-token")
    assert is_logged_in(stack, second)


def test_the_endpoint_needs_no_csrf_header_but_no_cookie_is_used_either(stack: Stack) -> None:
    victim = stack.logged_in()
    # A browser posting a form cross-site carries the victim's cookies but cannot forge a token.
    response = victim.post(
        stack.bff_url + "/bff/backchannel-logout", data={"logout_token": "x"}, headers={"X-CSRF": ""}
    )
    assert_problem(response, 400, "invalid-logout-token")
    assert is_logged_in(stack, victim)
