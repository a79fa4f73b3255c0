"""Step-up: a sensitive My Account call that needs recent MFA, satisfied by logging in again with OTP."""

from __future__ import annotations

import typing as t
from urllib.parse import parse_qs, urljoin, urlsplit

import pyotp
import pytest
import requests

from bff.myaccount import MFA_ACR
from tests.conftest import Stack
from tests.support.browser import follow, submit_form
from tests.support.problems import assert_problem

METHODS = "/me/v1/authentication-methods"
EMAIL, PASSWORD = "carol@example.com", "carol-password"


@pytest.fixture
def secret(stack: Stack) -> str:
    """A user with a TOTP second factor, logged in with the password only (the policy was off)."""
    value = pyotp.random_base32()
    stack.idp.add_user(EMAIL, PASSWORD, name="Carol", totp_secret=value)
    return value


def otp(stack: Stack, secret: str) -> str:
    return pyotp.TOTP(secret).at(int(stack.idp.clock.now()))


def step_up(http: requests.Session, stack: Stack, login_url: str, code: str) -> requests.Response:
    """Follow a problem's ``login_url`` in the same browser: the IdP asks only for the second factor."""
    response = http.get(stack.bff_url + login_url, allow_redirects=False)
    assert response.status_code == 302, response.text
    page = follow(http, response, until=stack.bff_url)
    assert page.status_code == 200 and 'name="otp"' in page.text, page.text[:300]
    answer = submit_form(http, page, {"otp": code}, button="verify")
    redirect = follow(http, answer, until=stack.bff_url)
    callback = urljoin(redirect.url, redirect.headers["Location"])
    assert callback.startswith(stack.bff_url + "/bff/callback"), callback
    return http.get(callback, allow_redirects=False)


def sensitive_call(stack: Stack, http: requests.Session) -> requests.Response:
    return http.post(
        stack.bff_url + METHODS, json={"type": "recovery-code"}, headers={"Referer": stack.bff_url + "/security"}
    )


def test_a_sensitive_call_needs_step_up_and_succeeds_after_it(stack: Stack, secret: str) -> None:
    http = stack.logged_in(email=EMAIL, password=PASSWORD)
    before = http.get(stack.bff_url + "/bff/user").json()["session"]
    assert before["amr"] == ["pwd"] and before["acr"] is None
    stack.idp.configure(default_policy_mfa=True)

    refused = assert_problem(sensitive_call(stack, http), 401, "step-up-required")
    query = parse_qs(urlsplit(refused["login_url"]).query)
    assert query == {"returnTo": ["/security"], "acr_values": [MFA_ACR]}

    callback = step_up(http, stack, refused["login_url"], otp(stack, secret))

    assert callback.status_code == 302 and callback.headers["Location"] == "/security"
    after = http.get(stack.bff_url + "/bff/user").json()["session"]
    assert after["acr"] == MFA_ACR and "mfa" in after["amr"]
    assert after["auth_time"] >= before["auth_time"]
    assert sensitive_call(stack, http).status_code == 202


def test_reads_keep_working_while_the_sensitive_scope_needs_step_up(stack: Stack, secret: str) -> None:
    http = stack.logged_in(email=EMAIL, password=PASSWORD)
    stack.idp.configure(default_policy_mfa=True)

    assert_problem(sensitive_call(stack, http), 401, "step-up-required")
    # The read token is minted now, under the policy: reads are a scope set of their own.
    listed = http.get(stack.bff_url + METHODS)

    assert listed.status_code == 200, listed.text
    assert http.get(stack.bff_url + "/bff/user").status_code == 200  # the session was kept


def test_a_wrong_second_factor_does_not_step_up(stack: Stack, secret: str) -> None:
    http = stack.logged_in(email=EMAIL, password=PASSWORD)
    stack.idp.configure(default_policy_mfa=True)
    refused = assert_problem(sensitive_call(stack, http), 401, "step-up-required")
    response = http.get(stack.bff_url + refused["login_url"], allow_redirects=False)
    page = follow(http, response, until=stack.bff_url)
    wrong = "000000" if otp(stack, secret) != "000000" else "111111"

    answer = submit_form(http, page, {"otp": wrong}, button="verify")

    assert answer.status_code == 400
    assert_problem(sensitive_call(stack, http), 401, "step-up-required")


def test_login_can_ask_for_mfa_up_front(stack: Stack, secret: str) -> None:
    http = stack.browser()
    response = http.get(stack.bff_url + "/bff/login", params={"acr_values": MFA_ACR}, allow_redirects=False)
    page = follow(http, response, until=stack.bff_url)
    page = follow(http, submit_form(http, page, {"email": EMAIL, "password": PASSWORD}), until=stack.bff_url)
    assert 'name="otp"' in page.text
    redirect = follow(http, submit_form(http, page, {"otp": otp(stack, secret)}, button="verify"),
                      until=stack.bff_url)
    assert http.get(urljoin(redirect.url, redirect.headers["Location"]), allow_redirects=False).status_code == 302
    session = t.cast(dict[str, t.Any], http.get(stack.bff_url + "/bff/user").json()["session"])
    assert session["acr"] == MFA_ACR and session["amr"] == ["pwd", "mfa"]
    stack.idp.configure(default_policy_mfa=True)
    assert sensitive_call(stack, http).status_code == 202
