"""Enrolling, reading, renaming and deleting authentication methods through the BFF's /me/v1 proxy.

Every enrollable type of the spec, end to end against the emulator: the SPA sees only the BFF's
``/me/v1`` URLs (``Location`` rewritten to the BFF's origin), never a token, and the emulator verifies
what it is sent for real (a ``none`` attestation, TOTP codes, the codes it "sent" by email and text
message).
"""

from __future__ import annotations

import typing as t

import pyotp
import pytest
import requests

from tests.conftest import Stack
from tests.support.browser import login
from tests.support.webauthn import passkey_credential

METHODS = "/me/v1/authentication-methods"


@pytest.fixture
def http(stack: Stack) -> requests.Session:
    return stack.logged_in()


def sub_of(stack: Stack, http: requests.Session) -> str:
    return t.cast(str, http.get(stack.bff_url + "/bff/user").json()["claims"]["sub"])


def enroll(stack: Stack, http: requests.Session, body: dict[str, t.Any]) -> requests.Response:
    response = http.post(stack.bff_url + METHODS, json=body)
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    # The BFF's absolute URL of the method: the API's own never reaches the SPA.
    assert location.startswith(stack.bff_url + METHODS + "/"), location
    return response


def verify(stack: Stack, http: requests.Session, started: requests.Response, **body: t.Any) -> requests.Response:
    body.setdefault("auth_session", started.json()["auth_session"])
    return http.post(started.headers["Location"] + "/verify", json=body)


def confirmed(stack: Stack, response: requests.Response) -> dict[str, t.Any]:
    assert response.status_code == 201, response.text
    assert response.headers["Location"].startswith(stack.bff_url + METHODS + "/")
    return t.cast(dict[str, t.Any], response.json())


def methods(stack: Stack, http: requests.Session, **params: str) -> list[dict[str, t.Any]]:
    response = http.get(stack.bff_url + METHODS, params=params)
    assert response.status_code == 200, response.text
    return t.cast(list[dict[str, t.Any]], response.json()["authentication_methods"])


def test_factors_are_listed(stack: Stack, http: requests.Session) -> None:
    response = http.get(stack.bff_url + "/me/v1/factors")
    assert response.status_code == 200
    assert {factor["type"] for factor in response.json()["factors"]} >= {"passkey", "totp", "email", "phone"}


def test_passkey_enrollment_with_a_real_none_attestation(stack: Stack, http: requests.Session) -> None:
    started = enroll(stack, http, {"type": "passkey"})
    assert started.headers["Location"] == stack.bff_url + METHODS + "/passkey%7Cnew"
    options = started.json()["authn_params_public_key"]
    assert options["rp"]["id"] == "127.0.0.1"
    credential = passkey_credential(options, origin=stack.bff_url)

    passkey = confirmed(stack, verify(stack, http, started, authn_response=credential))

    assert passkey["type"] == "passkey" and passkey["id"] != "passkey|new"
    assert passkey["key_id"] == credential["id"]
    location = METHODS + "/" + passkey["id"].replace("|", "%7C")
    assert http.get(stack.bff_url + location).json() == passkey
    assert [method["id"] for method in methods(stack, http, type="passkey")] == [passkey["id"]]


def test_a_passkey_made_for_another_origin_is_refused(stack: Stack, http: requests.Session) -> None:
    started = enroll(stack, http, {"type": "passkey"})
    credential = passkey_credential(started.json()["authn_params_public_key"], origin="https://evil.example")
    assert verify(stack, http, started, authn_response=credential).status_code == 400
    assert methods(stack, http, type="passkey") == []


def test_totp_enrollment_with_the_manual_input_code(stack: Stack, http: requests.Session) -> None:
    started = enroll(stack, http, {"type": "totp"})
    secret = started.json()["manual_input_code"]
    assert started.json()["barcode_uri"].startswith("otpauth://totp/")
    assert verify(stack, http, started, otp_code="000000").status_code == 400

    totp = confirmed(stack, verify(stack, http, started, otp_code=pyotp.TOTP(secret).at(int(stack.idp.clock.now()))))

    assert totp["confirmed"] is True and totp["type"] == "totp"
    assert stack.idp.users[sub_of(stack, http)].totp_secrets == [secret]


@pytest.mark.parametrize(
    ("body", "attribute"),
    [
        ({"type": "email", "email": "alice.mfa@example.com"}, "email"),
        ({"type": "phone", "phone_number": "+15551234567"}, "phone_number"),
    ],
    ids=["email", "phone"],
)
def test_email_and_phone_enrollment_with_the_code_sent(
    stack: Stack, http: requests.Session, body: dict[str, str], attribute: str
) -> None:
    started = enroll(stack, http, body)
    code = stack.idp.my_account.last_otp(sub_of(stack, http), body["type"])
    wrong = "000000" if code != "000000" else "111111"
    assert verify(stack, http, started, otp_code=wrong).status_code == 400

    method = confirmed(stack, verify(stack, http, started, otp_code=code))

    assert method["type"] == body["type"] and method["confirmed"] is True
    assert method[attribute] == body[attribute]


@pytest.mark.parametrize("kind", ["recovery-code", "push-notification"])
def test_recovery_code_and_push_enrollment_confirm_with_the_auth_session(
    stack: Stack, http: requests.Session, kind: str
) -> None:
    started = enroll(stack, http, {"type": kind})
    if kind == "recovery-code":
        assert len(started.json()["recovery_code"]) == 24
    else:
        assert started.json()["barcode_uri"].startswith("otpauth://")
    method = confirmed(stack, verify(stack, http, started))
    assert method["type"] == kind and method["confirmed"] is True


def test_password_enrollment_enforces_the_policy_and_changes_the_login_password(
    stack: Stack, http: requests.Session
) -> None:
    started = enroll(stack, http, {"type": "password"})
    assert started.headers["Location"] == stack.bff_url + METHODS + "/password%7Cnew"
    assert started.json()["policy"]["complexity"]["min_length"] == 8
    assert verify(stack, http, started, new_password="abcdefgh").status_code == 400

    confirmed(stack, verify(stack, http, started, new_password="Tr0ub4dor&Z"))

    fresh = stack.browser()
    assert login(fresh, stack.bff_url, password="Tr0ub4dor&Z").status_code == 302


def test_a_method_is_renamed_read_and_deleted(stack: Stack, http: requests.Session) -> None:
    started = enroll(stack, http, {"type": "phone", "phone_number": "+15551234567"})
    method = confirmed(stack, verify(stack, http, started, otp_code=stack.idp.my_account.last_otp(sub_of(stack, http))))
    location = stack.bff_url + METHODS + "/" + method["id"].replace("|", "%7C")

    renamed = http.patch(location, json={"name": "Work phone", "preferred_authentication_method": "voice"})

    assert renamed.status_code == 200, renamed.text
    read = http.get(location).json()
    assert read["name"] == "Work phone" and read["preferred_authentication_method"] == "voice"
    assert http.delete(location).status_code == 204
    assert http.get(location).status_code == 404


def test_the_list_filters_by_type(stack: Stack, http: requests.Session) -> None:
    started = enroll(stack, http, {"type": "recovery-code"})
    confirmed(stack, verify(stack, http, started))
    assert {method["type"] for method in methods(stack, http)} == {"password", "recovery-code"}
    assert [method["type"] for method in methods(stack, http, type="recovery-code")] == ["recovery-code"]
    assert methods(stack, http, type="email") == []
    assert http.get(stack.bff_url + METHODS, params={"type": "bogus"}).status_code == 400


def test_no_token_reaches_the_browser(stack: Stack, http: requests.Session) -> None:
    started = enroll(stack, http, {"type": "totp"})
    assert "authorization" not in {name.lower() for name in started.headers}
    assert "eyJ" not in started.text
