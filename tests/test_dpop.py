"""DPoP end to end: the BFF against an emulator that requires sender-constrained tokens.

Each session gets a key of its own, named in the authorization request (``dpop_jkt``) and sealed in the
session record; every grant and every My Account call is proved with it; nonces are answered once and
remembered; tokens taken from the IdP's records (as a thief would have them) are useless without the key.
"""

from __future__ import annotations

import time
import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from bff.dpop import DpopKey
from tests.conftest import CLIENT_ID, CLIENT_SECRET, Stack, StackFactory
from tests.support.browser import follow, login, submit_form

AUTHENTICATION_METHODS = "/me/v1/authentication-methods"


@pytest.fixture
def token_binding() -> str:
    return "dpop"


def session_id(stack: Stack, http: requests.Session) -> str:
    sid = http.cookies.get(stack.settings.session_cookie_name)
    assert sid, "no session cookie"
    return sid


def session_key(stack: Stack, http: requests.Session) -> DpopKey:
    """The key the session record holds (opened with the BFF's own services, as the BFF does)."""
    loaded = stack.store.load(session_id(stack, http))
    assert loaded is not None
    sealed = loaded.fields.get("dk")
    assert sealed is not None, "the session record holds no DPoP key"
    key = stack.app.extensions["bff"].dpop_keys.open(sealed)
    assert key is not None
    return key


def my_account(stack: Stack, token: str, *, scheme: str, proof: str | None = None) -> requests.Response:
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return requests.get(stack.emulator.url + AUTHENTICATION_METHODS, headers=headers, timeout=10)


def refresh_directly(stack: Stack, refresh_token: str, proof: str | None) -> requests.Response:
    headers = {"DPoP": proof} if proof is not None else {}
    return requests.post(
        stack.emulator.url + "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID,
              "client_secret": CLIENT_SECRET},
        headers=headers,
        timeout=10,
    )


def challenges(stack: Stack, server: str) -> int:
    return int(stack.idp.counters()["dpop_nonce_challenges"][server])


# ------------------------------------------------------------------------------------------- binding


def test_the_authorization_request_names_the_key_the_session_keeps(stack: Stack) -> None:
    http = stack.browser()
    started = http.get(stack.bff_url + "/bff/login", allow_redirects=False, timeout=10)
    assert started.status_code == 302
    jkt = parse_qs(urlsplit(started.headers["Location"]).query)["dpop_jkt"]
    assert len(jkt) == 1
    page = follow(http, started, until=stack.bff_url)
    page = follow(http, submit_form(http, page, {"email": "alice@example.com", "password": "alice"}),
                  until=stack.bff_url)
    callback = http.get(page.headers["Location"], allow_redirects=False, timeout=10)
    assert callback.status_code == 302, callback.text

    assert session_key(stack, http).thumbprint == jkt[0]
    issued = stack.idp.issued_tokens()
    assert [i.grant_type for i in issued] == ["authorization_code"]
    assert issued[0].token_type == "DPoP" and issued[0].jkt == jkt[0]


def test_every_token_of_a_session_is_bound_to_that_sessions_key_and_no_other(stack: Stack) -> None:
    alice = stack.logged_in()
    assert alice.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200  # an MRRT exchange
    second = stack.logged_in()
    assert second.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200

    first_key, second_key = session_key(stack, alice), session_key(stack, second)
    assert first_key.thumbprint != second_key.thumbprint
    issued = stack.idp.issued_tokens()
    assert sorted(i.grant_type for i in issued) == ["authorization_code"] * 2 + ["refresh_token"] * 2
    assert {i.token_type for i in issued} == {"DPoP"}
    assert {i.jkt for i in issued} == {first_key.thumbprint, second_key.thumbprint}


def test_the_record_holds_the_key_sealed_never_in_the_clear(stack: Stack) -> None:
    http = stack.logged_in()
    key = session_key(stack, http)
    loaded = stack.store.load(session_id(stack, http))
    assert loaded is not None
    raw = b"".join(loaded.fields.values())
    scalar = key.export().split(b":", 1)[1]
    assert scalar not in raw and key.export() not in raw


# ------------------------------------------------------------------------------------------- thieves


def test_a_bound_access_token_from_the_idps_records_is_useless_without_the_key(stack: Stack) -> None:
    http = stack.logged_in()
    assert http.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200
    stolen = next(i for i in stack.idp.issued_tokens() if i.audience.endswith("/me/"))
    assert stolen.token_type == "DPoP"
    url = stack.emulator.url + AUTHENTICATION_METHODS
    thief = DpopKey.generate()

    as_bearer = my_account(stack, stolen.access_token, scheme="Bearer")
    other_key = my_account(stack, stolen.access_token, scheme="DPoP",
                           proof=thief.proof("GET", url, now=time.time(), access_token=stolen.access_token))
    assert as_bearer.status_code == 401 and other_key.status_code == 401
    assert as_bearer.headers["WWW-Authenticate"].startswith("DPoP")
    # The owner's key does work: the refusals are about the key, not a dead token.
    owner = session_key(stack, http)
    genuine = my_account(stack, stolen.access_token, scheme="DPoP",
                         proof=owner.proof("GET", url, now=time.time(), access_token=stolen.access_token))
    assert genuine.status_code == 200, genuine.text
    assert http.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200


def test_a_bound_refresh_token_from_the_idps_records_is_useless_without_the_key(stack: Stack) -> None:
    http = stack.logged_in()
    stolen = stack.idp.issued_tokens()[0]
    assert stolen.refresh_token and stolen.jkt
    endpoint = stack.emulator.url + "/oauth/token"
    thief = DpopKey.generate()

    without = refresh_directly(stack, stolen.refresh_token, None)
    other_key = refresh_directly(stack, stolen.refresh_token, thief.proof("POST", endpoint, now=time.time()))
    assert without.status_code == 400 and without.json()["error"] == "invalid_dpop_proof"
    assert other_key.status_code == 400 and other_key.json()["error"] == "invalid_dpop_proof"
    # Refused before reuse detection: the session's own refresh still works.
    assert http.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200
    assert len(stack.idp.issued_tokens()) == 2


# ------------------------------------------------------------------------------------------- nonces


def test_a_token_endpoint_nonce_costs_one_retry_and_is_remembered(stack: Stack) -> None:
    stack.idp.configure(dpop_nonce=True)
    http = stack.logged_in()  # the code exchange: challenged once, retried with the nonce
    assert challenges(stack, "token_endpoint") == 1
    assert http.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200  # MRRT, nonce remembered
    assert challenges(stack, "token_endpoint") == 1
    assert [i.grant_type for i in stack.idp.issued_tokens()] == ["refresh_token", "authorization_code"]

    stack.idp.rotate_dpop_nonce("token_endpoint")
    other = stack.logged_in()  # a stale nonce: one more challenge, one retry
    assert other.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200
    assert challenges(stack, "token_endpoint") == 2


def test_an_api_nonce_costs_one_retry_and_is_remembered(stack: Stack) -> None:
    stack.idp.configure(dpop_api_nonce=True)
    http = stack.logged_in()
    first = http.get(stack.bff_url + AUTHENTICATION_METHODS)
    assert first.status_code == 200, first.text
    assert challenges(stack, "my_account") == 1
    for _ in range(3):
        assert http.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200
    assert challenges(stack, "my_account") == 1
    # The nonce retry is not a token refusal: no second token was minted.
    assert [i.grant_type for i in stack.idp.issued_tokens()] == ["refresh_token", "authorization_code"]


def test_a_nonce_refused_twice_for_one_call_is_an_error_not_a_loop(stack: Stack) -> None:
    stack.idp.configure(dpop_api_nonce=True)
    http = stack.logged_in()
    assert http.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200
    before = challenges(stack, "my_account")
    guard = stack.idp.dpop_guards["my_account"]
    original = guard.check

    def rotating_check(*args: t.Any, **kwargs: t.Any) -> t.Any:
        stack.idp.rotate_dpop_nonce("my_account")  # every proof arrives with a nonce just replaced
        return original(*args, **kwargs)

    guard.check = rotating_check  # type: ignore[method-assign]
    try:
        response = http.get(stack.bff_url + AUTHENTICATION_METHODS)
    finally:
        guard.check = original  # type: ignore[method-assign]
    assert response.status_code == 502, response.text
    assert response.json()["type"] == "urn:bff:problem:upstream-unavailable"
    assert challenges(stack, "my_account") == before + 2


# ------------------------------------------------------------------------------------------- refusals


def test_a_provider_without_a_usable_algorithm_is_named_at_login(make_stack: StackFactory) -> None:
    stack = make_stack()
    stack.idp.configure(dpop_signing_algs=("PS256",))
    http = stack.browser()
    response = http.get(stack.bff_url + "/bff/login", headers={"Accept": "application/json"},
                        allow_redirects=False, timeout=10)
    assert response.status_code == 502
    assert response.json()["type"] == "urn:bff:problem:idp-misconfigured"
    assert "DPoP" in response.json()["detail"]


def test_a_bearer_answer_where_dpop_was_required_fails_the_login_clearly(stack: Stack) -> None:
    """A tenant without DPoP ignores the proof and answers Bearer tokens: the BFF refuses them."""
    stack.idp.configure(dpop_enabled=False, require_proof_of_possession=False)
    http = stack.browser()
    response = login(http, stack.bff_url)
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    query = parse_qs(location.query)
    assert query["error"] == ["server_error"], query
    assert "DPoP" in query["error_description"][0]
    assert http.get(stack.bff_url + "/bff/user").status_code == 401
    assert [i.token_type for i in stack.idp.issued_tokens()] == ["Bearer"]


def test_a_bearer_answer_to_a_dpop_refresh_is_refused_and_the_rotated_token_kept(stack: Stack) -> None:
    http = stack.logged_in()
    stack.idp.configure(dpop_enabled=False, require_proof_of_possession=False)
    response = http.get(stack.bff_url + AUTHENTICATION_METHODS)
    assert response.status_code == 502, response.text
    assert response.json()["type"] == "urn:bff:problem:idp-rejected"
    assert "DPoP" in response.json()["detail"]
    # The refresh token the IdP rotated was saved: with DPoP back, the session goes on without reuse.
    stack.idp.configure(dpop_enabled=True, require_proof_of_possession=True)
    assert http.get(stack.bff_url + AUTHENTICATION_METHODS).status_code == 200
    assert not any(family["reuse_detected"] for family in stack.idp.counters()["families"].values())
